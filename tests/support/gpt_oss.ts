/**
 * gpt-oss test data: openai/gpt-oss-20b's `config.json` as published on the Hugging Face hub, for config
 * tests and the `gpt-oss-20b` preset of bench/synth.ts; a chat template in the shape of its harmony
 * template, for chat tests.
 *
 * @module
 */

type Json = Record<string, unknown>;

/** openai/gpt-oss-20b's config.json as published on the hub (transformers 4.55's names). */
export const GPT_OSS_20B_CONFIG: Readonly<Json> = {
  architectures: ["GptOssForCausalLM"],
  attention_bias: true,
  attention_dropout: 0.0,
  eos_token_id: 200002,
  experts_per_token: 4,
  head_dim: 64,
  hidden_act: "silu",
  hidden_size: 2880,
  initial_context_length: 4096,
  initializer_range: 0.02,
  intermediate_size: 2880,
  layer_types: Array.from({ length: 24 }, (_, i) => (i % 2 === 0 ? "sliding_attention" : "full_attention")),
  max_position_embeddings: 131072,
  model_type: "gpt_oss",
  num_attention_heads: 64,
  num_experts_per_tok: 4,
  num_hidden_layers: 24,
  num_key_value_heads: 8,
  num_local_experts: 32,
  output_router_logits: false,
  pad_token_id: 199999,
  quantization_config: {
    modules_to_not_convert: [
      "model.layers.*.self_attn",
      "model.layers.*.mlp.router",
      "model.embed_tokens",
      "lm_head",
    ],
    quant_method: "mxfp4",
  },
  rms_norm_eps: 1e-5,
  rope_scaling: {
    beta_fast: 32.0,
    beta_slow: 1.0,
    factor: 32.0,
    original_max_position_embeddings: 4096,
    rope_type: "yarn",
    truncate: false,
  },
  rope_theta: 150000,
  router_aux_loss_coef: 0.9,
  sliding_window: 128,
  swiglu_limit: 7.0,
  tie_word_embeddings: false,
  transformers_version: "4.55.0.dev0",
  use_cache: true,
  vocab_size: 201088,
};

/**
 * A template in the shape of gpt-oss's harmony template (chat_template.jinja of openai/gpt-oss-20b),
 * using each Jinja feature the published one uses; its markers are `<|start|>`, `<|message|>`, `<|end|>`,
 * `<|channel|>` and `<|return|>`.
 */
export const HARMONY_LIKE = `{#- harmony-shaped: system block, developer instructions, final channel #}
{%- macro system_block() -%}
  {%- if reasoning_effort is not defined %}{%- set reasoning_effort = "medium" %}{%- endif %}
  {{- "Current date: " + strftime_now("%Y-%m-%d") + "\\n\\nReasoning: " + reasoning_effort }}
{%- endmacro -%}
{{- "<|start|>system<|message|>" + system_block() + "<|end|>" }}
{%- if messages[0].role == "system" %}
  {%- set loop_messages = messages[1:] %}
  {{- "<|start|>developer<|message|># Instructions\\n\\n" + messages[0].content + "<|end|>" }}
{%- else %}{%- set loop_messages = messages %}{%- endif %}
{%- set last = namespace(role=none) %}
{%- for m in loop_messages -%}
  {%- if m.role == "assistant" -%}
    {%- if "<|channel|>" in m.content %}{{- raise_exception("Pass channels in thinking, not content") }}{%- endif %}
    {{- "<|start|>assistant<|channel|>final<|message|>" + m.content }}
    {{- "<|return|>" if loop.last and not add_generation_prompt else "<|end|>" }}
  {%- elif m.role == "tool" -%}
    {{- "<|start|>functions to=assistant<|message|>" + m.content|tojson + "<|end|>" }}
  {%- else -%}
    {{- "<|start|>" + m.role + "<|message|>" + m.content + "<|end|>" }}
  {%- endif -%}
  {%- set last.role = m.role %}
{%- endfor -%}
{%- if add_generation_prompt -%}<|start|>assistant{%- endif -%}`;
