#!/usr/bin/env python3
"""Training-step throughput of the detector (the trainer's step: batch building on the device, bf16
autocast on CUDA, loss, backward, fused AdamW, EMA), and data-generation throughput.

    bench_detector.py [--device cuda] [--mixers padre softmax] [--batch-sizes 256 512] [--steps 30]
                      [--gen-seconds 0] [--compile] [--padre-reference]

Prints one JSON line per (mixer, batch size): ms per step and images/s (after --warmup steps), and the
forward GFLOPs per image counted by torch.utils.flop_counter; with --gen-seconds, also how many training
images per second one process generates (synth_dataset + letterbox).
"""
import argparse
import json
import os
import sys
import time

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import padre_detector as pd  # noqa: E402
import synth_dataset as synth  # noqa: E402
import train_detector as td  # noqa: E402


def forward_flops(cfg):
    from torch.utils.flop_counter import FlopCounterMode
    model = pd.PadreDetector(cfg)
    x = torch.zeros(1, 3, cfg["image_size"], cfg["image_size"])
    with FlopCounterMode(display=False) as fc, torch.no_grad():
        model(x)
    return fc.get_total_flops()


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--mixers", nargs="+", default=["padre", "softmax"])
    ap.add_argument("--batch-sizes", nargs="+", type=int, default=[256])
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--gen-seconds", type=float, default=0.0)
    ap.add_argument("--compile", action="store_true")
    ap.add_argument("--padre-reference", action="store_true",
                    help="time PadreMixer.forward_reference (term by term) instead of the fused forward")
    args = ap.parse_args(argv)
    if args.padre_reference:
        pd.PadreMixer.forward = pd.PadreMixer.forward_reference
    if args.gen_seconds > 0:
        t0, n = time.time(), 0
        while time.time() - t0 < args.gen_seconds:
            td.make_chunk(0, 128, n, 16)
            n += 16
        print(json.dumps({"generation_images_per_s_per_process": n / (time.time() - t0)}), flush=True)
    device = torch.device(args.device)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
        torch.backends.cudnn.benchmark = True
    data = td.RingData(0, 128, 1024, 128, 0, device)
    data.fill_sync(1024)
    for mixer in args.mixers:
        cfg = pd.make_config(mixer=mixer)
        flops = forward_flops(cfg)
        for bs in args.batch_sizes:
            torch.manual_seed(0)
            model = pd.init_for_training(pd.PadreDetector(cfg)).to(device)
            params = list(model.parameters())
            opt = torch.optim.AdamW(td.param_groups(model, 0.05), lr=1e-3, fused=device.type == "cuda")
            ema = [p.detach().clone() for p in params]
            fwd = torch.compile(model) if args.compile else model
            gen = torch.Generator(device=device)
            gen.manual_seed(0)
            ac = torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else torch.autocast("cpu", enabled=False)
            t_start = None
            for i in range(args.warmup + args.steps):
                if i == args.warmup:
                    if device.type == "cuda":
                        torch.cuda.synchronize()
                    t_start = time.time()
                x, tgt = td.make_batch(data, bs, cfg, gen)
                with ac:
                    out = fwd(x)
                loss, parts = td.detection_loss(out, tgt, 5.0, 1.0)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                torch.nn.utils.clip_grad_norm_(params, 2.0)
                opt.step()
                torch._foreach_lerp_(ema, [p.detach() for p in params], 0.001)
            if device.type == "cuda":
                torch.cuda.synchronize()
            dt = (time.time() - t_start) / args.steps
            rec = {"mixer": mixer, "device": str(device), "batch": bs, "ms_per_step": round(dt * 1000, 2),
                   "images_per_s": round(bs / dt, 1), "forward_gflops_per_image": round(flops / 1e9, 4),
                   "loss": round(float(loss.detach()), 4), "compile": args.compile,
                   "padre_reference": args.padre_reference}
            if device.type == "cuda":
                rec["max_mem_gb"] = round(torch.cuda.max_memory_allocated() / 1e9, 2)
            print(json.dumps(rec), flush=True)


if __name__ == "__main__":
    main()
