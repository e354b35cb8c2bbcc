#!/usr/bin/env python3
"""Runs tools/make_random_qwen35.py (same arguments) with the presets the GPU serving benchmark needs
added where that tool lacks them: `9b`, Qwen3.5-9B's text dimensions (hidden 4096, 32 layers with
every 4th full attention, GDN 16 key / 32 value heads of 128, attention 16 q / 4 kv heads of 256, FFN
12288, vocab 248,320, untied: about 9.0 B parameters, 18 GB in bf16). A preset the tool defines itself
is used as the tool defines it.

--device cuda (this wrapper's only flag of its own) makes the weights on the GPU: the model is built
without the default initialisation (meta device, then uninitialised storage there) and the tool's
randomize() draws every parameter (it assigns them all) from a CUDA generator seeded with --seed. Same
distributions, other numbers; the 9B takes seconds instead of minutes of single-threaded CPU sampling.
--device cpu goes the same way on the CPU and writes exactly the tool's bytes (the default init draws
nothing from the seeded generator).

Usage: make_random_ckpt.py PRESET OUT_DIR [--dtype bfloat16] [--tokenizer DIR] [--seed N] [--device D]
       make_random_ckpt.py --count PRESET     (parameter count from the config alone, nothing written)
"""
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "tools"))
import make_random_qwen35 as tool  # noqa: E402

EXTRA_PRESETS = {
    "9b": dict(vocab_size=248320, hidden_size=4096, intermediate_size=12288, num_hidden_layers=32,
               num_attention_heads=16, num_key_value_heads=4, head_dim=256, linear_num_key_heads=16,
               linear_num_value_heads=32, linear_key_head_dim=128, linear_value_head_dim=128,
               tie_word_embeddings=False),
}
for _name, _spec in EXTRA_PRESETS.items():
    tool.PRESETS.setdefault(_name, _spec)


def build_on(device):
    """Routes the tool's model construction and randomize() to DEVICE (see the module's doc)."""
    import torch
    real_cls, real_randomize = tool.Qwen3_5ForCausalLM, tool.randomize

    def make_model(config):
        with torch.device("meta"):
            model = real_cls(config)
        model = model.to_empty(device=device)
        model.tie_weights()  # to_empty gives tied parameters storage each
        return model

    def randomize(model, gen):
        g = torch.Generator(device=device).manual_seed(gen.initial_seed())
        with torch.device(device):
            real_randomize(model, g)

    tool.Qwen3_5ForCausalLM, tool.randomize = make_model, randomize


def count(preset):
    import torch
    config = tool.Qwen3_5TextConfig(**dict(tool.PRESETS[preset], **tool.COMMON))
    with torch.device("meta"):
        model = tool.Qwen3_5ForCausalLM(config)
    n = sum(p.numel() for p in model.parameters())
    print(f"{preset}: {n / 1e9:.3f} B parameters, {2 * n / 1e9:.1f} GB in bf16, layer types "
          f"{''.join('F' if t == 'full_attention' else 'L' for t in config.layer_types)}")


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--count":
        count(sys.argv[2])
    else:
        if "--device" in sys.argv:
            i = sys.argv.index("--device")
            build_on(sys.argv[i + 1])
            del sys.argv[i:i + 2]
        tool.main()
