#!/usr/bin/env python3
"""Writes a safetensors file with the `safetensors` library, for the C++ reader to cross-check against.

Usage: make_safetensors_fixture.py OUT_DIR

OUT_DIR/fixture.safetensors holds bf16, fp16, fp32 and int64 tensors of fresh random values (a 0-dim one
and an empty one among them); OUT_DIR/expected.json lists each tensor's dtype, shape and values (floats
are exact: every bf16/fp16/fp32 value is a double), so the reader's decoding is checked against numbers,
not only against the file's own bytes.
"""
import json
import os
import sys

import torch
from safetensors.torch import save_file


def main() -> int:
    if len(sys.argv) != 2:
        print(__doc__, file=sys.stderr)
        return 2
    out_dir = sys.argv[1]
    os.makedirs(out_dir, exist_ok=True)
    gen = torch.Generator().manual_seed(int.from_bytes(os.urandom(4), "little"))

    def normal(shape, dtype):
        # Scaled so fp16 and bf16 see a wide exponent range, never exactly zero.
        x = torch.randn(shape, generator=gen, dtype=torch.float64) * 37.0
        x = torch.where(x == 0, torch.ones_like(x), x)
        return x.to(dtype)

    tensors = {
        "model.embed_tokens.weight": normal((11, 8), dtype=torch.bfloat16),
        "model.layers.0.linear_attn.A_log": normal((16,), dtype=torch.float32),
        "model.layers.3.self_attn.q_norm.weight": normal((2, 3, 4), dtype=torch.float16),
        "positions": torch.randint(-(2**62), 2**62, (5, 3), generator=gen, dtype=torch.int64),
        "scale": normal((), dtype=torch.float32),  # 0-dim
        "empty": torch.empty(0, 4, dtype=torch.bfloat16),
    }
    path = os.path.join(out_dir, "fixture.safetensors")
    save_file(tensors, path, metadata={"format": "pt"})

    names = {torch.bfloat16: "BF16", torch.float16: "F16", torch.float32: "F32", torch.int64: "I64"}
    expected = {}
    for name, t in tensors.items():
        flat = t.reshape(-1)
        values = [int(v) for v in flat.tolist()] if t.dtype == torch.int64 else flat.double().tolist()
        expected[name] = {"dtype": names[t.dtype], "shape": list(t.shape), "values": values}
    with open(os.path.join(out_dir, "expected.json"), "w", encoding="utf-8") as f:
        json.dump({"file": path, "tensors": expected}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
