/**
 * `chat`: a read–eval–print loop over stdin lines. Each line is a user turn; the conversation goes
 * through the model's chat template (`engine.generate({ messages })`) and the reply joins the history.
 * The oldest turns are dropped when the history outgrows the context.
 *
 * @module
 */
import { type ChatMessage, type Engine, OptionError } from "../../mod.ts";
import { type Command, UsageError } from "./command.ts";
import { PROGRAM } from "./program.ts";
import { type HarmonyPiece, harmonyReader } from "../text/harmony.ts";
import {
  contextLengthOf,
  describeModel,
  engineOptions,
  isInteractive,
  MODEL_OPTIONS,
  modelUsage,
  openEngine,
  parseFlags,
  SAMPLING_OPTIONS,
  samplingRequest,
  samplingUsage,
  summaryLines,
  writeOut,
} from "./options.ts";

const MAX_TOKENS = 256;

const COMMANDS_HELP = `  /reset   forget the conversation (the --system message stays)
  /stats   print speed, GPU bytes, resident experts, hit rate and swaps
  /help    print this list
  /exit    leave (so does end of input, Ctrl-D)`;

const usage = `Usage: ${PROGRAM} chat [options]

Chats with the model: each line on standard input is a user message, rendered with the model's
chat template together with the history; the reply streams to stdout. Lines starting with / are
commands:
${COMMANDS_HELP}
Ctrl-C stops a reply early.

Options:
  --system <text>         A system message at the head of the conversation

${samplingUsage(MAX_TOKENS)}

${modelUsage()}`;

/** Lines of a byte stream, without their line ends. */
async function* lines(stream: ReadableStream<Uint8Array>): AsyncGenerator<string> {
  const decoder = new TextDecoder();
  let buffer = "";
  for await (const chunk of stream) {
    buffer += decoder.decode(chunk, { stream: true });
    for (let i = buffer.indexOf("\n"); i >= 0; i = buffer.indexOf("\n")) {
      yield buffer.slice(0, i).replace(/\r$/, "");
      buffer = buffer.slice(i + 1);
    }
  }
  buffer += decoder.decode();
  if (buffer !== "") yield buffer;
}

/** Tokens of the conversation as the engine will see it (template with the generation prompt). */
function promptTokens(engine: Engine, messages: ChatMessage[]): number {
  return engine.tokenizer.encodeChat(messages, { addGenerationPrompt: true }).length;
}

/** Drops the oldest turns after the system messages until the prompt leaves `room` tokens free. */
function fitHistory(engine: Engine, messages: ChatMessage[], limit: number): ChatMessage[] {
  const system = messages.filter((m) => m.role === "system");
  let turns = messages.filter((m) => m.role !== "system");
  while (turns.length > 1 && promptTokens(engine, [...system, ...turns]) > limit) {
    // a user message and the reply to it leave together
    turns = turns.slice(turns[1]?.role === "assistant" ? 2 : 1);
  }
  return [...system, ...turns];
}

/** The `chat` subcommand. */
export const command: Command = {
  name: "chat",
  summary: "Chat with the model through its chat template, line by line on stdin",
  usage,
  async run(args) {
    const { values } = parseFlags({
      args,
      allowPositionals: false,
      options: { ...MODEL_OPTIONS, ...SAMPLING_OPTIONS, system: { type: "string" } },
    });
    if (values.help) {
      console.log(usage);
      return 0;
    }
    const request = samplingRequest(values, MAX_TOKENS);
    const options = engineOptions(values);
    const system: ChatMessage[] = values.system !== undefined
      ? [{ role: "system", content: values.system }]
      : [];

    // a conversation: one sequence's KV caches, the rest of the budget for experts
    await using engine = await openEngine({ ...options, maxBatchSequences: 1 }, true);
    if (!engine.tokenizer.hasChatTemplate) {
      throw new UsageError(
        `The model has no chat template: ${engine.modelDir} has no chat_template.jinja and no chat_template in tokenizer_config.json; use generate`,
      );
    }
    const contextLength = contextLengthOf(engine, options);
    const maxTokens = Math.min(request.maxTokens!, contextLength - 1);
    const tty = Deno.stdin.isTerminal() && isInteractive();
    if (tty) {
      console.log(`Chatting with ${describeModel(engine)}\nCommands:\n${COMMANDS_HELP}\n`);
    }

    let messages: ChatMessage[] = [...system];
    if (tty) await writeOut("> ");
    for await (const raw of lines(Deno.stdin.readable)) {
      const line = raw.trim();
      if (line.startsWith("/")) {
        const [cmd] = line.split(/\s+/);
        if (cmd === "/exit" || cmd === "/quit") break;
        if (cmd === "/reset") {
          messages = [...system];
          console.log("(conversation forgotten)");
        } else if (cmd === "/stats") { for (const l of summaryLines(engine)) console.log(l); }
        else if (cmd === "/help") console.log(COMMANDS_HELP);
        else console.log(`Unknown command: ${cmd}, known are /reset, /stats, /help, /exit`);
      } else if (line !== "") {
        const reply = await answer(
          engine,
          fitHistory(engine, [...messages, { role: "user", content: line }], contextLength - maxTokens),
          {
            ...request,
            maxTokens,
          },
          tty,
        );
        if (reply !== undefined) messages = reply;
      }
      if (tty) await writeOut("> ");
    }
    if (tty) await writeOut("\n");
    return 0;
  },
};

/**
 * Streams the reply to `messages`; returns the history with the reply, or `undefined` (history
 * unchanged) when the turn does not fit the context. A template error ends the chat (exit code 2).
 * Ctrl-C stops the reply where it is. A harmony model's (gpt-oss) reply is its `final` channel; its
 * `analysis` (reasoning) is shown dimmed on a terminal, and left out of the history.
 */
async function answer(
  engine: Engine,
  messages: ChatMessage[],
  request: { maxTokens: number },
  tty: boolean,
): Promise<ChatMessage[] | undefined> {
  const abort = new AbortController();
  const onInterrupt = () => abort.abort();
  Deno.addSignalListener("SIGINT", onInterrupt);
  const harmony = harmonyReader(engine.tokenizer);
  let reply = "";
  const show = async (pieces: HarmonyPiece[]) => {
    for (const p of pieces) {
      if (p.channel !== "analysis") {
        await writeOut(p.text);
        reply += p.text;
      } else if (tty) await writeOut(`\x1b[2m${p.text}\x1b[0m`);
    }
  };
  try {
    for await (const chunk of engine.generate({ ...request, messages, signal: abort.signal })) {
      if (!harmony) {
        await writeOut(chunk.text);
        reply += chunk.text;
        continue;
      }
      await show(harmony.push(chunk.ids));
      if (chunk.finishReason) await show(harmony.flush());
    }
  } catch (e) {
    // a turn too long for the context: say so and carry on; a template that fails (or stops at its
    // limits) fails every turn after it too, and ends the chat with an error
    if (!(e instanceof OptionError)) throw e;
    console.error(`\nerror: ${e.message}`);
    return undefined;
  } finally {
    Deno.removeSignalListener("SIGINT", onInterrupt);
  }
  await writeOut(reply === "" ? "(no reply: the model ended its turn at once; try --min-tokens)\n" : "\n");
  return [...messages, { role: "assistant", content: reply.trim() }];
}
