#!/usr/bin/env python3
"""Builds small random-weight Qwen3.5 checkpoints with `transformers` and records what it computes.

For each configuration it writes OUT/<name>/ with config.json, model.safetensors and golden.json, plus
raw little-endian float32 logits files: the oracle the C++ model is tested against. Configurations cover
both layer types (2-3 each), GQA in both mixers, tied and untied embeddings, the flat `qwen3_5_text`
config and the multimodal-style nested `text_config` (weights under model.language_model.*).

Usage: make_qwen35_golden.py OUT_DIR
"""
import copy
import json
import math
import os
import sys

import torch
from safetensors.torch import save_file
from transformers import Qwen3_5ForCausalLM, Qwen3_5TextConfig

PROMPT_LENGTHS = [1, 63, 64, 65, 200]  # around the 64-token chunk boundary
GREEDY_PROMPT_LENGTH = 65
GREEDY_TOKENS = 20

CONFIGS = {
    # 6 layers, every 3rd full: 4 linear + 2 full. Hv = 2 Hk in the delta rule, GQA 4:2 in attention.
    "flat_untied": dict(
        nested=False,
        text=dict(vocab_size=512, hidden_size=64, intermediate_size=128, num_hidden_layers=6,
                  full_attention_interval=3, num_attention_heads=4, num_key_value_heads=2, head_dim=32,
                  linear_num_key_heads=2, linear_num_value_heads=4, linear_key_head_dim=16,
                  linear_value_head_dim=16, linear_conv_kernel_dim=4, tie_word_embeddings=False,
                  rms_norm_eps=1e-6, max_position_embeddings=1024, eos_token_id=[1, 2], bos_token_id=0,
                  rope_parameters=dict(rope_type="default", rope_theta=10000000.0, partial_rotary_factor=0.25,
                                       mrope_section=[1, 1, 2], mrope_interleaved=True)),
    ),
    # Explicit layer_types, 3 linear + 2 full, tied embeddings, nested multimodal-style config.
    "nested_tied": dict(
        nested=True,
        text=dict(vocab_size=384, hidden_size=48, intermediate_size=96, num_hidden_layers=5,
                  layer_types=["full_attention", "linear_attention", "linear_attention", "full_attention",
                               "linear_attention"],
                  num_attention_heads=2, num_key_value_heads=1, head_dim=16, linear_num_key_heads=2,
                  linear_num_value_heads=2, linear_key_head_dim=16, linear_value_head_dim=24,
                  linear_conv_kernel_dim=4, tie_word_embeddings=True, rms_norm_eps=1e-6,
                  max_position_embeddings=1024, eos_token_id=3, bos_token_id=0,
                  rope_parameters=dict(rope_type="default", rope_theta=1000000.0, partial_rotary_factor=0.5,
                                       mrope_section=[2, 1, 1], mrope_interleaved=True)),
    ),
    # Delta-rule heads of 64 (Qwen3.5 has 128): the shape the tiled CUDA decode kernel serves; the
    # CUDA golden test runs it.
    "wide_heads": dict(
        nested=False,
        text=dict(vocab_size=256, hidden_size=64, intermediate_size=128, num_hidden_layers=4,
                  full_attention_interval=2, num_attention_heads=2, num_key_value_heads=1, head_dim=32,
                  linear_num_key_heads=1, linear_num_value_heads=2, linear_key_head_dim=64,
                  linear_value_head_dim=64, linear_conv_kernel_dim=4, tie_word_embeddings=False,
                  rms_norm_eps=1e-6, max_position_embeddings=1024, eos_token_id=1, bos_token_id=0,
                  rope_parameters=dict(rope_type="default", rope_theta=10000000.0, partial_rotary_factor=0.25,
                                       mrope_section=[1, 1, 2], mrope_interleaved=True)),
    ),
}


def randomize(model, gen):
    """Weights with real spread: default init leaves logits nearly flat and greedy choices near ties."""
    for name, p in model.named_parameters():
        if name.endswith("A_log"):
            p.data = torch.log(torch.rand(p.shape, generator=gen) * 15 + 1)
        elif name.endswith("dt_bias"):
            p.data = torch.randn(p.shape, generator=gen) * 0.5
        elif p.dim() == 1:  # norm weights (zero-centred ones around 0, the gated norm's around 1)
            base = 1.0 if name.endswith("linear_attn.norm.weight") else 0.0
            p.data = base + torch.randn(p.shape, generator=gen) * 0.1
        elif "embed_tokens" in name:
            p.data = torch.randn(p.shape, generator=gen)
        else:
            fan_in = p.shape[-1] if p.dim() == 2 else p[0].numel()
            p.data = torch.randn(p.shape, generator=gen) / math.sqrt(fan_in)


def config_json(cfg_dict, nested):
    text = dict(cfg_dict)
    text["model_type"] = "qwen3_5_text"
    text["torch_dtype"] = "float32"
    if not nested:
        text["architectures"] = ["Qwen3_5ForCausalLM"]
        return text
    tie = text.pop("tie_word_embeddings")
    return {"architectures": ["Qwen3_5ForConditionalGeneration"], "model_type": "qwen3_5",
            "tie_word_embeddings": tie, "text_config": text,
            "vision_config": {"depth": 2, "hidden_size": 32, "out_hidden_size": cfg_dict["hidden_size"]},
            "image_token_id": 5, "video_token_id": 6}


def write_f32(path, tensor):
    tensor.detach().to(torch.float32).contiguous().numpy().tofile(path)


def main():
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    out = sys.argv[1]
    torch.set_num_threads(max(1, os.cpu_count() or 1))
    for index, (name, spec) in enumerate(CONFIGS.items()):
        gen = torch.Generator().manual_seed(1000 + index)
        config = Qwen3_5TextConfig(**spec["text"])
        model = Qwen3_5ForCausalLM(config).eval().to(torch.float32)
        randomize(model, gen)
        d = os.path.join(out, name)
        os.makedirs(d, exist_ok=True)
        state = {k: v.contiguous() for k, v in model.state_dict().items()}
        if config.tie_word_embeddings:
            state.pop("lm_head.weight", None)
        if spec["nested"]:
            state = {k.replace("model.", "model.language_model.", 1) if k.startswith("model.") else k: v
                     for k, v in state.items()}
            # What multimodal checkpoints also carry and the text model must skip.
            state["model.visual.patch_embed.proj.weight"] = torch.randn(4, 3, generator=gen)
            state["mtp.fc.weight"] = torch.randn(4, 4, generator=gen)
        save_file(state, os.path.join(d, "model.safetensors"), metadata={"format": "pt"})
        with open(os.path.join(d, "config.json"), "w") as f:
            json.dump(config_json(spec["text"], spec["nested"]), f, indent=1)

        golden = {"name": name, "vocab_size": config.vocab_size, "prompts": [], "greedy": None}
        # The same weights run in bfloat16 by transformers: the yardstick for a bf16 model's own error.
        model_bf16 = copy.deepcopy(model).to(torch.bfloat16)
        with torch.no_grad():
            for n in PROMPT_LENGTHS:
                ids = torch.randint(0, config.vocab_size, (1, n), generator=gen)
                logits = model(input_ids=ids).logits[0]
                fname = f"logits_len{n}.f32"
                write_f32(os.path.join(d, fname), logits)
                bf16_name = f"bf16_logits_len{n}.f32"
                write_f32(os.path.join(d, bf16_name), model_bf16(input_ids=ids).logits[0])
                golden["prompts"].append({"ids": ids[0].tolist(), "logits_file": fname,
                                          "bf16_logits_file": bf16_name, "shape": list(logits.shape)})
            ids = torch.randint(0, config.vocab_size, (1, GREEDY_PROMPT_LENGTH), generator=gen)
            out_ids = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), do_sample=False,
                                     max_new_tokens=GREEDY_TOKENS, min_new_tokens=GREEDY_TOKENS,
                                     eos_token_id=None, pad_token_id=0)
            new = out_ids[0, GREEDY_PROMPT_LENGTH:]
            # The logits of every generated step from one full forward: where greedy decisions are close
            # calls, the C++ test knows how close (the smallest top-1/top-2 gap is recorded).
            full = model(input_ids=out_ids).logits[0, GREEDY_PROMPT_LENGTH - 1:-1]
            top2 = full.topk(2, dim=-1).values
            gap = float((top2[:, 0] - top2[:, 1]).min())
            write_f32(os.path.join(d, "greedy_logits.f32"), full)
            golden["greedy"] = {"prompt": ids[0].tolist(), "tokens": new.tolist(), "min_top2_gap": gap,
                                "logits_file": "greedy_logits.f32", "shape": list(full.shape)}
        with open(os.path.join(d, "golden.json"), "w") as f:
            json.dump(golden, f)
        print(f"{name}: {sum(p.numel() for p in model.parameters())} parameters, greedy min top-2 gap {gap:.4f}")


if __name__ == "__main__":
    main()
