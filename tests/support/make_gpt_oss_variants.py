"""Builds gpt-oss fixtures beyond tests/fixtures/tiny-gpt-oss, the way it was made, with transformers as the
oracle:

1. random weights (transformers' init, bf16-rounded), with random attention and expert biases, norm weights
   around 1 and sinks of either sign (tiny-gpt-oss has zero biases and unit norms, so it cannot catch a bias
   read from the wrong place);
2. the routed experts drawn as float weights [E, out, in] (gate_up's rows interleaved gate, up) and quantized
   to MXFP4 (OCP MX: a shared e8m0 exponent per 32 values, e2m1 codes, low nibble first), so that their
   dequantized values are exact in bf16;
3. saved in the published layout: `*_blocks` / `*_scales` uint8, everything else bf16, config.json with
   `rope_scaling` beside `rope_theta` and `quantization_config` {quant_method: mxfp4};
4. loaded back through transformers' own dequantizer (Mxfp4Config(dequantize=True)), checked to hold exactly
   the weights drawn, and run in float32 with eager attention for the references that make_fixtures.py
   writes: every position's logits, full and under masked routing, the routers' choices, greedy ids (KV
   cache, 24 new tokens), full and masked.

Needs torch, transformers 5.17 and safetensors (the GPU machine has them); takes about a minute:

    python3 tests/support/make_gpt_oss_variants.py OUT_DIR [VARIANT ...]      # default: every variant

From the repository root, `python3 tests/support/make_gpt_oss_variants.py tests/fixtures` writes
tests/fixtures/tiny-gpt-oss-{4layers,e16,tied,window3,truncate}/, where tests/parity_test.ts looks for them
(its tests of a variant are ignored until its folder is there). Each variant's folder holds config.json, generation_config.json, model.safetensors, the tokenizer and chat
template of tiny-gpt-oss (so prompt ids are the same), reference.json and reference.safetensors.
"""
import json, math, os, random, shutil, sys

import torch
import torch.nn.functional as TF
import transformers
from safetensors.torch import save_file

HERE = os.path.dirname(os.path.abspath(__file__))
TINY = os.path.join(HERE, "..", "fixtures", "tiny-gpt-oss")
DEV = "cuda" if torch.cuda.is_available() else "cpu"
PROMPTS = ["The state of the Union is", "Mr. Speaker, Mr. Vice President, Members of Congress",
           "Our economy has grown, and the American people", "Call me Ishmael. Some years ago"]
GREEDY = 24
log = lambda *a: print(*a, flush=True)

# name → (what it tests, seed, config.json overrides on tiny-gpt-oss's)
VARIANTS = {
    "tiny-gpt-oss-4layers": ("the published layer_types pattern (sliding, full, …) over 4 layers", 31,
                             dict(num_hidden_layers=4, layer_types=["sliding_attention", "full_attention"] * 2)),
    "tiny-gpt-oss-e16": ("16 experts, top-4", 32, dict(num_local_experts=16, num_experts_per_tok=4)),
    "tiny-gpt-oss-tied": ("a tied head (no lm_head.weight in the file)", 33, dict(tie_word_embeddings=True)),
    "tiny-gpt-oss-window3": ("a 3-key window, shorter than every prompt, on two sliding layers then a full one", 34,
                             dict(sliding_window=3, num_hidden_layers=3,
                                  layer_types=["sliding_attention", "sliding_attention", "full_attention"])),
    "tiny-gpt-oss-truncate": ("YaRN with truncate true (the correction range rounded outwards)", 35,
                              dict(rope_scaling={"beta_fast": 32.0, "beta_slow": 1.0, "factor": 4.0,
                                                 "original_max_position_embeddings": 64, "rope_type": "yarn",
                                                 "truncate": True})),
}

# ---------------------------------------------------------------- MXFP4
FP4_MAGNITUDES = torch.tensor([0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0])
FP4_VALUES = torch.cat([FP4_MAGNITUDES, -FP4_MAGNITUDES])  # code = sign bit (8) | magnitude index


def quantize_mxfp4(w):
    """w [E, out, in] float → blocks [E, out, in/32, 16] u8 (low nibble = even element), scales [E, out, in/32] u8."""
    E, O, I = w.shape
    g = w.float().reshape(E, O, I // 32, 32)
    amax = g.abs().amax(-1).clamp_min(2.0 ** -120)
    exp = (torch.floor(torch.log2(amax)) - 2).clamp(-127, 127)  # OCP MX: floor(log2 amax) − emax(e2m1 = 2)
    scaled = g / torch.exp2(exp)[..., None]
    mag = (scaled.abs().clamp(max=6.0)[..., None] - FP4_MAGNITUDES).abs().argmin(-1)  # nearest magnitude
    code = mag | (((scaled < 0) & (mag > 0)).long() << 3)  # no −0 codes
    code = code.to(torch.uint8)
    blocks = (code[..., 0::2] | (code[..., 1::2] << 4)).contiguous()
    scales = (exp + 127).to(torch.uint8).contiguous()
    return blocks, scales


def dequantize_mxfp4(blocks, scales):
    """The inverse, written independently of transformers: [E, out, G, 16] u8, [E, out, G] u8 → [E, out, G·32]."""
    lo = FP4_VALUES[(blocks & 0x0F).long()]
    hi = FP4_VALUES[(blocks >> 4).long()]
    vals = torch.stack([lo, hi], -1).reshape(*blocks.shape[:-1], 32)
    return (vals * torch.exp2(scales.float() - 127)[..., None]).reshape(*blocks.shape[:-2], -1)


# ---------------------------------------------------------------- routers
class RouterTap:
    """While active, F.linear records each router's logits (in layer order), and with `allowed` sets the
    logits of every other expert to −inf before the model's own top-k and softmax (make_fixtures.py's rule)."""

    def __init__(self, model, allowed=None):
        routers = [p for n, p in model.named_parameters() if n.endswith("mlp.router.weight")]
        assert len(routers) == model.config.num_hidden_layers, "one router per layer"
        self.layer = {id(p): i for i, p in enumerate(routers)}
        self.masks = {}
        if allowed is not None:
            for i, p in enumerate(routers):
                m = torch.zeros(p.shape[0], dtype=torch.bool, device=p.device)
                m[allowed[i]] = True
                self.masks[id(p)] = m
        self.logits = []

    def __enter__(self):
        self.orig = TF.linear

        def lin(x, w, b=None):
            y = self.orig(x, w, b)
            if id(w) in self.masks:
                y = y.masked_fill(~self.masks[id(w)], float("-inf"))
            if id(w) in self.layer:
                self.logits.append((self.layer[id(w)], y.detach().float().reshape(-1, y.shape[-1]).cpu()))
            return y

        TF.linear = lin
        torch.nn.functional.linear = lin
        return self

    def __exit__(self, *a):
        TF.linear = self.orig
        torch.nn.functional.linear = self.orig


# ---------------------------------------------------------------- building
def published_names(cfg):
    """Every tensor name of a gpt-oss checkpoint as published (src/models/gpt_oss/names.ts, in Python)."""
    names = {"model.embed_tokens.weight", "model.norm.weight"}
    if not cfg["tie_word_embeddings"]:
        names.add("lm_head.weight")
    for i in range(cfg["num_hidden_layers"]):
        p = f"model.layers.{i}"
        names |= {f"{p}.input_layernorm.weight", f"{p}.post_attention_layernorm.weight", f"{p}.self_attn.sinks",
                  f"{p}.mlp.router.weight", f"{p}.mlp.router.bias"}
        for proj in ("q", "k", "v", "o"):
            names |= {f"{p}.self_attn.{proj}_proj.weight", f"{p}.self_attn.{proj}_proj.bias"}
        for m in ("gate_up_proj", "down_proj"):
            names |= {f"{p}.mlp.experts.{m}_blocks", f"{p}.mlp.experts.{m}_scales", f"{p}.mlp.experts.{m}_bias"}
    return names


def build(name, out_root):
    doc, seed, overrides = VARIANTS[name]
    torch.manual_seed(seed)
    random.seed(seed)
    out = os.path.join(out_root, name)
    os.makedirs(out, exist_ok=True)
    cfg = json.load(open(os.path.join(TINY, "config.json")))
    cfg.update(overrides)
    assert cfg["quantization_config"]["quant_method"] == "mxfp4"
    E, D, I = cfg["num_local_experts"], cfg["hidden_size"], cfg["intermediate_size"]
    std = cfg["initializer_range"]

    # 1. the random model, from the config as transformers reads it (legacy rope_scaling and all)
    plain = os.path.join(out, "_plain")
    os.makedirs(plain, exist_ok=True)
    json.dump({k: v for k, v in cfg.items() if k != "quantization_config"}, open(os.path.join(plain, "config.json"), "w"))
    config = transformers.AutoConfig.from_pretrained(plain)
    shutil.rmtree(plain)
    model = transformers.GptOssForCausalLM._from_config(config, attn_implementation="eager").float()
    with torch.no_grad():
        for n, p in model.named_parameters():
            if (n.endswith("_bias") or n.endswith(".bias")) and "router" not in n:
                p.normal_(0.0, std)  # attention and expert biases (transformers' init leaves them 0)
            elif n.endswith("norm.weight") or n.endswith("layernorm.weight"):
                p.normal_(1.0, 0.1)
            elif n.endswith("sinks"):
                p.normal_(0.0, 1.0)
            p.copy_(p.to(torch.bfloat16).float())

    # 2. the experts: float weights in the published [E, out, in] layout, quantized
    experts = {}
    for i in range(cfg["num_hidden_layers"]):
        for m, shape in (("gate_up_proj", (E, 2 * I, D)), ("down_proj", (E, D, I))):
            blocks, scales = quantize_mxfp4(torch.randn(shape) * std)
            experts[f"model.layers.{i}.mlp.experts.{m}"] = (blocks, scales)

    # 3. the published layout
    sd = {k: v.detach().to(torch.bfloat16).cpu().contiguous() for k, v in model.state_dict().items()}
    hub = {k: v for k, v in sd.items() if not k.endswith(("mlp.experts.gate_up_proj", "mlp.experts.down_proj"))}
    if cfg["tie_word_embeddings"]:
        hub.pop("lm_head.weight", None)
    for base, (blocks, scales) in experts.items():
        hub[f"{base}_blocks"], hub[f"{base}_scales"] = blocks, scales
    missing, extra = published_names(cfg) - hub.keys(), hub.keys() - published_names(cfg)
    assert not missing and not extra, f"{name}: names differ from the published layout: missing {missing}, extra {extra}"
    save_file({k: hub[k] for k in sorted(hub)}, os.path.join(out, "model.safetensors"), metadata={"format": "pt"})
    cfg["torch_dtype"] = "bfloat16"
    cfg["transformers_version"] = transformers.__version__
    json.dump(cfg, open(os.path.join(out, "config.json"), "w"), indent=2)
    for f in ("generation_config.json", "tokenizer.json", "tokenizer_config.json", "chat_template.jinja"):
        shutil.copy(os.path.join(TINY, f), out)

    # 4. back through transformers' dequantizer: the model the references come from
    re = transformers.GptOssForCausalLM.from_pretrained(
        out, quantization_config=transformers.Mxfp4Config(dequantize=True), dtype=torch.float32,
        attn_implementation="eager").to(DEV).float().eval()  # the dequantizer leaves the experts in bf16
    params = dict(re.named_parameters())
    # transformers holds the experts as [E, in, out] (4.x) or [E, out, in]: gate_up's shape tells, as 2I != D
    transposed = tuple(params["model.layers.0.mlp.experts.gate_up_proj"].shape) == (E, D, 2 * I)
    assert transposed or tuple(params["model.layers.0.mlp.experts.gate_up_proj"].shape) == (E, 2 * I, D)
    for base, (blocks, scales) in experts.items():
        want = dequantize_mxfp4(blocks, scales)  # [E, out, in]
        got = params[base].detach().float().cpu()
        assert torch.equal(got.transpose(1, 2) if transposed else got, want), \
            f"{name}: {base} differs from the drawn weights after transformers' dequantization"
    for k, v in hub.items():
        if k in params and not k.endswith(("_blocks", "_scales")):
            assert torch.equal(params[k].detach().cpu().to(torch.bfloat16), v), f"{name}: {k} differs after reload"
    if cfg["tie_word_embeddings"]:
        assert re.lm_head.weight.data_ptr() == re.get_input_embeddings().weight.data_ptr(), "the head is not tied"
    references(re, name, doc, out, cfg)
    return out


@torch.no_grad()
def references(model, name, doc, out, cfg):
    tokenizer = transformers.AutoTokenizer.from_pretrained(out)
    E, K, L = cfg["num_local_experts"], cfg["num_experts_per_tok"], cfg["num_hidden_layers"]
    allowed = [sorted(random.sample(range(E), max(K, E // 2))) for _ in range(L)]
    tiny = json.load(open(os.path.join(TINY, "reference.json")))
    ref = {"transformers_version": transformers.__version__, "model_class": type(model).__name__,
           "dtype_of_reference": "float32 from the bfloat16 (and MXFP4-exact) weights, eager attention",
           "made_by": f"tests/support/make_gpt_oss_variants.py ({name}: {doc})",
           "greedy_new_tokens": GREEDY,
           "masked_routing": {"rule": "router logits of experts not in allowed[layer] are set to -inf before the model's own softmax and top-k",
                              "allowed": allowed},
           "prompts": []}
    tensors = {}
    for i, text in enumerate(PROMPTS):
        ids = tokenizer(text, return_tensors="pt")["input_ids"].to(DEV)
        assert ids[0].tolist() == tiny["prompts"][i]["ids"], "the tokenizer is tiny-gpt-oss's"
        assert ids.shape[1] > cfg["sliding_window"], "every prompt is longer than the window"
        with RouterTap(model) as tap:
            logits = model(ids).logits[0].float().cpu()
        assert [layer for layer, _ in tap.logits] == list(range(L)), "one router call per layer, in order"
        topk = [torch.topk(r, K, dim=-1).indices.tolist() for _, r in tap.logits]
        g = model.generate(ids, max_new_tokens=GREEDY, min_new_tokens=GREEDY, do_sample=False)[0, ids.shape[1]:].tolist()
        with RouterTap(model, allowed) as tap:
            mlogits = model(ids).logits[0].float().cpu()
            for li, r in tap.logits:
                bad = torch.ones(E, dtype=torch.bool)
                bad[allowed[li]] = False
                assert torch.isinf(r[:, bad]).all(), f"{name}: the mask did not reach router {li}"
            mg = model.generate(ids, max_new_tokens=GREEDY, min_new_tokens=GREEDY, do_sample=False)[0, ids.shape[1]:].tolist()
        tensors[f"p{i}.logits"] = logits.contiguous()
        tensors[f"p{i}.masked_logits"] = mlogits.contiguous()
        ref["prompts"].append({"text": text, "ids": ids[0].tolist(), "greedy": g, "masked_greedy": mg,
                               "router_topk": topk, "last_top5": torch.topk(logits[-1], 5).indices.tolist()})
    save_file(tensors, os.path.join(out, "reference.safetensors"))
    json.dump(ref, open(os.path.join(out, "reference.json"), "w"), indent=1)
    log(json.dumps({"variant": name, "out": out, "greedy0": ref["prompts"][0]["greedy"][:8],
                    "max_logit": max(t.abs().max().item() for t in tensors.values())}))


if __name__ == "__main__":
    if len(sys.argv) < 2:
        sys.exit(__doc__)
    names = sys.argv[2:] or list(VARIANTS)
    unknown = [n for n in names if n not in VARIANTS]
    if unknown:
        sys.exit(f"unknown variant(s) {unknown}; known: {', '.join(VARIANTS)}")
    assert transformers.__version__.startswith("5."), f"transformers {transformers.__version__}: the fixtures are 5.x's"
    for n in names:
        build(n, sys.argv[1])
    log("done")
