#!/usr/bin/env python3
"""Random-weight PADRe and softmax detectors at input sizes 128, 256 and 512 (256, 1024 and 4096 tokens
with 8-pixel patches; SIZES, e.g. 128,256,512,1024 for 16,384 tokens too), the shipped models' shape
otherwise, for bench/vision.sh and bench_vision --sizes. Latency does not depend on the weights' values.
Usage: make_vision_bench_models.py OUT_DIR [SIZES]"""
import pathlib
import sys

import torch

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1] / "tools" / "vision"))
from padre_detector import PadreDetector, make_config, save_detector  # noqa: E402

out = pathlib.Path(sys.argv[1])
sizes = [int(v) for v in sys.argv[2].split(",")] if len(sys.argv) > 2 else [128, 256, 512]
torch.manual_seed(0)
for mixer in ("padre", "softmax"):
    for size in sizes:
        d = out / f"{mixer}-{size}"
        if (d / "model.safetensors").exists():
            continue
        save_detector(PadreDetector(make_config(mixer=mixer, image_size=size)), d, dtype=torch.float32)
        print("wrote", d)
