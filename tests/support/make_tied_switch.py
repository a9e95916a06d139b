"""Builds tests/fixtures/tiny-switch-tied: tiny-switch's weights with tie_word_embeddings = True (the LM head is
shared.weight and the decoder output is scaled by d_model**-0.5 first), and transformers' outputs for it:
decoder logits of tiny-switch's four prompts (float32 from the bfloat16 weights) and 16 greedy decoder tokens.
Needs torch, transformers 5.x and safetensors (the GPU machine has them):

    python3 tests/support/make_tied_switch.py OUT_DIR
"""
import json, os, shutil, sys

import torch
import transformers
from safetensors.torch import save_file

src = "tests/fixtures/tiny-switch"
out = sys.argv[1] if len(sys.argv) > 1 else "tests/fixtures/tiny-switch-tied"
os.makedirs(out, exist_ok=True)

config = transformers.SwitchTransformersConfig.from_pretrained(src)
config.tie_word_embeddings = True
model = transformers.SwitchTransformersForConditionalGeneration.from_pretrained(
    src, config=config, dtype=torch.bfloat16
).eval()
model.tie_weights()
assert model.lm_head.weight.data_ptr() == model.shared.weight.data_ptr(), "the head is not tied"
model.save_pretrained(out)
for name in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja"):
    shutil.copy(os.path.join(src, name), out)

ref = json.load(open(os.path.join(src, "reference.json")))
model = model.float()  # float32 arithmetic on the bfloat16 weights
tensors, prompts = {}, []
with torch.no_grad():
    for i, p in enumerate(ref["prompts"]):
        ids = torch.tensor([p["ids"]])
        dec = torch.tensor([p["decoder_input_ids"]])
        tensors[f"p{i}.logits"] = model(input_ids=ids, decoder_input_ids=dec).logits[0].contiguous()
        n = ref["greedy_new_tokens"]
        greedy = model.generate(ids, max_new_tokens=n, min_new_tokens=n, do_sample=False)[0].tolist()
        prompts.append({"text": p["text"], "ids": p["ids"], "decoder_input_ids": p["decoder_input_ids"], "greedy": greedy})
save_file(tensors, os.path.join(out, "reference.safetensors"))
json.dump(
    {
        "transformers_version": transformers.__version__,
        "model_class": "SwitchTransformersForConditionalGeneration",
        "dtype_of_reference": "float32 from the bfloat16 weights",
        "made_by": "tests/support/make_tied_switch.py from tests/fixtures/tiny-switch",
        "greedy_new_tokens": ref["greedy_new_tokens"],
        "decoder_start_token_id": ref["decoder_start_token_id"],
        "prompts": prompts,
    },
    open(os.path.join(out, "reference.json"), "w"),
    indent=1,
)
print(json.dumps({"out": out, "files": sorted(os.listdir(out)), "greedy0": prompts[0]["greedy"]}))
