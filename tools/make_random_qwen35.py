#!/usr/bin/env python3
"""Writes a random-weight Qwen3.5 text checkpoint (config.json + model.safetensors) for benchmarks and tests.

Presets: `small` (the golden tests' flat config scaled up a little), `0.8b` (Qwen3.5-0.8B's text
dimensions: hidden 1024, 24 layers, GDN 16/16 heads of 128, attention 8/2 heads of 256, FFN 3584,
vocab 248,320, tied) and `tiny-qwen3-vocab` (hidden 32, 4 layers: 3 Gated DeltaNet + 1 full attention,
Qwen3's padded vocabulary of 151,936, untied: about 10 M parameters, 40 MB in fp32, loads and runs in
moments on a CPU; meant for end-to-end tests with the real Qwen3 tokenizer. Untied because random tied
embeddings make greedy decoding repeat one token forever). Weights are random with the
spread the golden tests use; nothing is downloaded.

--tokenizer DIR copies the Hugging Face tokenizer files found in DIR (tokenizer.json,
tokenizer_config.json, ...) into OUT_DIR, sets the end-of-sequence ids from the tokenizer's eos_token and
pad_token (Qwen: <|im_end|>, <|endoftext|>) and writes a generation_config.json with them and Qwen3's
sampling defaults (do_sample, temperature 0.6, top_k 20, top_p 0.95). The model's vocab_size must
exceed the tokenizer's largest id.

Usage: make_random_qwen35.py {small,0.8b,tiny-qwen3-vocab} OUT_DIR [--dtype float32|bfloat16]
                             [--tokenizer DIR] [--seed N]
"""
import argparse
import json
import os
import shutil

import torch
from safetensors.torch import save_file
from transformers import Qwen3_5ForCausalLM, Qwen3_5TextConfig

from make_qwen35_golden import randomize

PRESETS = {
    "small": dict(vocab_size=4096, hidden_size=256, intermediate_size=768, num_hidden_layers=8,
                  num_attention_heads=4, num_key_value_heads=2, head_dim=64, linear_num_key_heads=4,
                  linear_num_value_heads=8, linear_key_head_dim=32, linear_value_head_dim=32,
                  tie_word_embeddings=True),
    "0.8b": dict(vocab_size=248320, hidden_size=1024, intermediate_size=3584, num_hidden_layers=24,
                 num_attention_heads=8, num_key_value_heads=2, head_dim=256, linear_num_key_heads=16,
                 linear_num_value_heads=16, linear_key_head_dim=128, linear_value_head_dim=128,
                 tie_word_embeddings=True),
    # Layers 0-2 linear attention, layer 3 full attention (transformers' default 3:1 pattern).
    "tiny-qwen3-vocab": dict(vocab_size=151936, hidden_size=32, intermediate_size=64, num_hidden_layers=4,
                             num_attention_heads=2, num_key_value_heads=1, head_dim=16, linear_num_key_heads=2,
                             linear_num_value_heads=4, linear_key_head_dim=16, linear_value_head_dim=16,
                             tie_word_embeddings=False),
}
COMMON = dict(linear_conv_kernel_dim=4, rms_norm_eps=1e-6, max_position_embeddings=262144, eos_token_id=1,
              bos_token_id=0, rope_parameters=dict(rope_type="default", rope_theta=10000000.0,
                                                   partial_rotary_factor=0.25))
# Hugging Face tokenizer files copied by --tokenizer, where present.
TOKENIZER_FILES = ["tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "added_tokens.json",
                   "vocab.json", "merges.txt", "chat_template.jinja", "chat_template.json"]
# Qwen3's generation_config.json sampling defaults.
QWEN3_SAMPLING = dict(do_sample=True, temperature=0.6, top_k=20, top_p=0.95)


def _token_name(value):
    """tokenizer_config.json writes a special token as a string or as {"content": ...}."""
    if isinstance(value, dict):
        return value.get("content")
    return value


def read_tokenizer(tok_dir):
    """Returns (largest id, eos ids, bos id or None) of the tokenizer in tok_dir."""
    with open(os.path.join(tok_dir, "tokenizer.json"), encoding="utf-8") as f:
        tok = json.load(f)
    ids = {}
    vocab = tok.get("model", {}).get("vocab", {})
    if isinstance(vocab, dict):
        ids.update(vocab)
    for added in tok.get("added_tokens", []):
        ids[added["content"]] = added["id"]
    largest = max(ids.values())
    cfg = {}
    cfg_path = os.path.join(tok_dir, "tokenizer_config.json")
    if os.path.exists(cfg_path):
        with open(cfg_path, encoding="utf-8") as f:
            cfg = json.load(f)
    eos = []
    for key in ("eos_token", "pad_token"):  # Qwen: <|im_end|> ends a turn, <|endoftext|> a document
        name = _token_name(cfg.get(key))
        if name is not None:
            if name not in ids:
                raise SystemExit(f"make_random_qwen35: {key} {name!r} is not in {tok_dir}/tokenizer.json")
            if ids[name] not in eos:
                eos.append(ids[name])
    bos_name = _token_name(cfg.get("bos_token"))
    bos = ids.get(bos_name) if bos_name is not None else None
    return largest, eos, bos


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("preset", choices=sorted(PRESETS))
    ap.add_argument("out")
    ap.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    ap.add_argument("--tokenizer", metavar="DIR",
                    help="copy this Hugging Face tokenizer into OUT and write generation_config.json")
    ap.add_argument("--seed", type=int, default=7, help="weights' random seed (default 7)")
    args = ap.parse_args()
    spec = dict(PRESETS[args.preset], **COMMON)
    generation = None
    if args.tokenizer:
        largest, eos, bos = read_tokenizer(args.tokenizer)
        if largest >= spec["vocab_size"]:
            raise SystemExit(f"make_random_qwen35: the tokenizer's largest id {largest} does not fit preset "
                             f"{args.preset}'s vocab_size {spec['vocab_size']}")
        if not eos:
            raise SystemExit(f"make_random_qwen35: {args.tokenizer}/tokenizer_config.json names no eos_token")
        spec["eos_token_id"] = eos if len(eos) > 1 else eos[0]
        # Qwen has no BOS; its generation_config names <|endoftext|> (the pad token) as bos_token_id.
        spec["bos_token_id"] = bos if bos is not None else eos[-1]
        generation = dict(bos_token_id=spec["bos_token_id"], eos_token_id=eos, pad_token_id=eos[-1],
                          **QWEN3_SAMPLING)
    config = Qwen3_5TextConfig(**spec)
    with torch.device("cpu"):
        model = Qwen3_5ForCausalLM(config).eval()
    randomize(model, torch.Generator().manual_seed(args.seed))
    dtype = getattr(torch, args.dtype)
    state = {k: v.to(dtype).contiguous() for k, v in model.state_dict().items()
             if not (config.tie_word_embeddings and k == "lm_head.weight")}
    os.makedirs(args.out, exist_ok=True)
    save_file(state, os.path.join(args.out, "model.safetensors"), metadata={"format": "pt"})
    cfg = dict(spec, model_type="qwen3_5_text", architectures=["Qwen3_5ForCausalLM"], torch_dtype=args.dtype)
    with open(os.path.join(args.out, "config.json"), "w") as f:
        json.dump(cfg, f, indent=1)
    copied = []
    if args.tokenizer:
        for name in TOKENIZER_FILES:
            src = os.path.join(args.tokenizer, name)
            if os.path.exists(src):
                shutil.copyfile(src, os.path.join(args.out, name))
                copied.append(name)
        with open(os.path.join(args.out, "generation_config.json"), "w") as f:
            json.dump(generation, f, indent=1)
    n = sum(p.numel() for p in model.parameters())
    extra = f", tokenizer ({', '.join(copied)}), eos {generation['eos_token_id']}" if args.tokenizer else ""
    print(f"make_random_qwen35: {args.preset} ({n / 1e6:.1f} M parameters, {args.dtype}{extra}) -> {args.out}")


if __name__ == "__main__":
    main()
