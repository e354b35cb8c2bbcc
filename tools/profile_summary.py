#!/usr/bin/env python3
"""Where a decode step's GPU time goes, from a Chrome trace of bench_model --profile-trace (Kineto).

Kernels are grouped (GEMM, Gated DeltaNet recurrent step, ATen copies and elementwise, norms, paged
attention, other own kernels) and divided by the steps the trace holds, counted from a kernel that runs a
known number of times per step (default: the GDN recurrent step kernel, once per linear-attention layer).
Prints a table and, with --jsonl, one JSON object per trace.

  tools/profile_summary.py TRACE.json[.xz] ... --per-step-count 18 [--per-step-kernel StepKernel] [--jsonl]
"""
import argparse
import collections
import json
import lzma
import re
import sys


def group(name):
    if "nvjet" in name or "gemm" in name.lower() or "splitKreduce" in name or "cublas" in name.lower():
        return "gemm"
    if "ConvStep" in name:  # the conv state's step, not the recurrent one
        return "other"
    if "StepKernel" in name:
        return "gdn_recurrent_step"
    if "Paged" in name:
        return "paged_attention"
    if "RowNorm" in name or "Norm" in name:
        return "norms"
    if "at::native" in name:
        return "aten_elementwise_copies"
    return "other"


def summarize(path, kernel_re, per_step):
    opener = lzma.open if path.endswith(".xz") else open
    with opener(path, "rt") as f:
        events = json.load(f)["traceEvents"]
    kernels = [e for e in events if e.get("cat") == "kernel"]
    steps = sum(1 for e in kernels if re.search(kernel_re, e["name"])) / per_step
    if steps == 0:
        raise SystemExit(f"{path}: no kernel matches {kernel_re}")
    by = collections.defaultdict(lambda: [0, 0.0])
    for e in kernels:
        g = by[group(e["name"])]
        g[0] += 1
        g[1] += e["dur"]
    total = sum(v[1] for v in by.values())
    start = min(e["ts"] for e in kernels)
    end = max(e["ts"] + e["dur"] for e in kernels)
    runtime = collections.Counter(e["name"] for e in events if e.get("cat") == "cuda_runtime")
    return {
        "trace": path.rsplit("/", 1)[-1], "steps_in_trace": round(steps, 2),
        "kernels_per_step": round(len(kernels) / steps, 1), "kernel_us_per_step": round(total / steps, 1),
        "gpu_window_us_per_step": round((end - start) / steps, 1),
        "gpu_busy_fraction": round(total / (end - start), 3),
        "kernel_launches_per_step": round((runtime["cudaLaunchKernel"] + runtime["cudaLaunchKernelExC"]) / steps, 1),
        "groups": {k: {"kernels_per_step": round(v[0] / steps, 1), "us_per_step": round(v[1] / steps, 1),
                       "share": round(v[1] / total, 3)} for k, v in sorted(by.items(), key=lambda x: -x[1][1])},
    }


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("traces", nargs="+")
    ap.add_argument("--per-step-kernel", default=r"(?<!Conv)StepKernel")
    ap.add_argument("--per-step-count", type=int, default=18)
    ap.add_argument("--jsonl", action="store_true")
    args = ap.parse_args()
    for t in args.traces:
        s = summarize(t, args.per_step_kernel, args.per_step_count)
        if args.jsonl:
            print(json.dumps(s))
            continue
        print(f"{s['trace']}: {s['steps_in_trace']} steps; per step {s['kernels_per_step']} kernels, "
              f"{s['kernel_us_per_step']} us of kernels in a {s['gpu_window_us_per_step']} us GPU window "
              f"(busy {100 * s['gpu_busy_fraction']:.0f}%), {s['kernel_launches_per_step']} host launches")
        for k, v in s["groups"].items():
            print(f"  {k:26s} {v['kernels_per_step']:7.1f} kernels {v['us_per_step']:8.1f} us {100 * v['share']:5.1f}%")
    return 0


if __name__ == "__main__":
    sys.exit(main())
