#!/usr/bin/env python3
"""Writes a random-weight Qwen3.5 text checkpoint (config.json + model.safetensors) for benchmarks.

Presets: `small` (the golden tests' flat config scaled up a little) and `0.8b` (Qwen3.5-0.8B's text
dimensions: hidden 1024, 24 layers, GDN 16/16 heads of 128, attention 8/2 heads of 256, FFN 3584,
vocab 248,320, tied). Weights are random with the spread the golden tests use; nothing is downloaded.

Usage: make_random_qwen35.py {small,0.8b} OUT_DIR [--dtype float32|bfloat16]
"""
import argparse
import json
import os

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
}
COMMON = dict(linear_conv_kernel_dim=4, rms_norm_eps=1e-6, max_position_embeddings=262144, eos_token_id=1,
              bos_token_id=0, rope_parameters=dict(rope_type="default", rope_theta=10000000.0,
                                                   partial_rotary_factor=0.25))


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("preset", choices=sorted(PRESETS))
    ap.add_argument("out")
    ap.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    args = ap.parse_args()
    spec = dict(PRESETS[args.preset], **COMMON)
    config = Qwen3_5TextConfig(**spec)
    with torch.device("cpu"):
        model = Qwen3_5ForCausalLM(config).eval()
    randomize(model, torch.Generator().manual_seed(7))
    dtype = getattr(torch, args.dtype)
    state = {k: v.to(dtype).contiguous() for k, v in model.state_dict().items() if k != "lm_head.weight"}
    os.makedirs(args.out, exist_ok=True)
    save_file(state, os.path.join(args.out, "model.safetensors"), metadata={"format": "pt"})
    cfg = dict(spec, model_type="qwen3_5_text", architectures=["Qwen3_5ForCausalLM"], torch_dtype=args.dtype)
    with open(os.path.join(args.out, "config.json"), "w") as f:
        json.dump(cfg, f, indent=1)
    n = sum(p.numel() for p in model.parameters())
    print(f"make_random_qwen35: {args.preset} ({n / 1e6:.1f} M parameters, {args.dtype}) -> {args.out}")


if __name__ == "__main__":
    main()
