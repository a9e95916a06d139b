"""Builds a variant of a tiny causal fixture with config.json overrides, and transformers' outputs for it:
logits of the source's prompts (float32 from the bfloat16 weights) and greedy ids. Weights the source lacks
(a dense MLP that `mlp_only_layers` asks for) are initialised by transformers from torch seed 0; a tied head
reads the embedding. Needs torch, transformers 5.x and safetensors (the GPU machine has them):

    python3 tests/support/make_variant.py tests/fixtures/tiny-qwen2-moe OUT mlp_only_layers='[0]' tie_word_embeddings=true
"""
import json, os, shutil, sys

import torch
import transformers
from safetensors.torch import save_file

src, out, overrides = sys.argv[1], sys.argv[2], sys.argv[3:]
os.makedirs(out, exist_ok=True)
config = transformers.AutoConfig.from_pretrained(src)
for kv in overrides:
    key, value = kv.split("=", 1)
    setattr(config, key, json.loads(value))
torch.manual_seed(0)
model = transformers.AutoModelForCausalLM.from_pretrained(src, config=config, dtype=torch.bfloat16).eval()
if config.tie_word_embeddings:
    model.tie_weights()
    assert model.lm_head.weight.data_ptr() == model.get_input_embeddings().weight.data_ptr(), "the head is not tied"
model.save_pretrained(out)
for name in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja"):
    if os.path.exists(os.path.join(src, name)):
        shutil.copy(os.path.join(src, name), out)

ref = json.load(open(os.path.join(src, "reference.json")))
model = model.float()  # float32 arithmetic on the bfloat16 weights
n = ref["greedy_new_tokens"]
tensors, prompts = {}, []
with torch.no_grad():
    for i, p in enumerate(ref["prompts"]):
        ids = torch.tensor([p["ids"]])
        tensors[f"p{i}.logits"] = model(input_ids=ids).logits[0].contiguous()
        seq = model.generate(ids, max_new_tokens=n, min_new_tokens=n, do_sample=False)[0].tolist()
        prompts.append({"text": p["text"], "ids": p["ids"], "greedy": seq[len(p["ids"]):]})
save_file(tensors, os.path.join(out, "reference.safetensors"))
json.dump(
    {
        "transformers_version": transformers.__version__,
        "model_class": type(model).__name__,
        "dtype_of_reference": "float32 from the bfloat16 weights",
        "made_by": f"tests/support/make_variant.py {src} {' '.join(overrides)}",
        "greedy_new_tokens": n,
        "prompts": prompts,
    },
    open(os.path.join(out, "reference.json"), "w"),
    indent=1,
)
print(json.dumps({"out": out, "files": sorted(os.listdir(out)), "greedy0": prompts[0]["greedy"]}))
