#!/usr/bin/env python3
"""FLA (flash-linear-attention, the `fla-core` wheel) on the shapes `bench_kernels --device cuda` uses, for
the same machine session: the whole Gated DeltaNet prefill layer (bf16 and fp32), the 64 x 64 chunk
inverse (`solve_tril`, as many chunks as that prefill has) and one decode step. Hv = 32 value heads
(16 key heads expanded), dk = dv = 128, C = 64, unit keys at mean cosine about 0.2, weak decay. CUDA-event
medians with L2 flushed between calls. One JSON object per figure on stdout and in $OUT/fla_compare.jsonl,
keys as docs/data/bench_kernels_h200_*.jsonl: impl, what, method (dtype or state), T or batch, ms.

  python3 bench/anchors/fla_compare.py [--seq 4096,16384,65536] [--batches 16,64,256] [--seq-len L]

--seq-len L packs each prefill's T tokens as T / L sequences of L tokens (cu_seqlens), as
`bench_kernels --seq-len L` does; --batches '' skips the decode step. --profile also times each GPU kernel
of the bf16 prefill with PyTorch's profiler (CUPTI; mean over 5 calls after warm-up), one row per kernel
(what = "prefill_kernel"), to set beside Nsight Compute's durations of deltaserve's three passes.
"""
import argparse
import json
import os
import statistics

import torch
import torch.nn.functional as F

DEV = "cuda"


def median_ms(fn, reps=20, warm=3):
    flush = torch.empty(64 * 1024 * 1024, dtype=torch.int32, device=DEV)
    for _ in range(warm):
        fn()
    torch.cuda.synchronize()
    start = [torch.cuda.Event(enable_timing=True) for _ in range(reps)]
    end = [torch.cuda.Event(enable_timing=True) for _ in range(reps)]
    for i in range(reps):
        flush.zero_()
        start[i].record()
        fn()
        end[i].record()
    torch.cuda.synchronize()
    return statistics.median(a.elapsed_time(b) for a, b in zip(start, end))


def make_inputs(batch, time, dtype, heads=32, dim=128, seed=0):
    gen = torch.Generator(device=DEV).manual_seed(seed)
    shared = torch.randn(1, 1, heads, dim, device=DEV, generator=gen)
    k = F.normalize(torch.randn(batch, time, heads, dim, device=DEV, generator=gen) + 0.5 * shared, dim=-1)
    q = F.normalize(torch.randn(batch, time, heads, dim, device=DEV, generator=gen), dim=-1)
    v = torch.randn(batch, time, heads, dim, device=DEV, generator=gen)
    beta = torch.rand(batch, time, heads, device=DEV, generator=gen).sigmoid()
    gate = -0.1 * torch.rand(batch, time, heads, device=DEV, generator=gen)  # log decay
    return q.to(dtype), k.to(dtype), v.to(dtype), gate.float(), beta.to(dtype)


def kernel_times_ms(fn, calls=5):
    """Mean GPU time per call of every kernel fn launches, by kernel name (PyTorch profiler, CUPTI)."""
    for _ in range(3):
        fn()
    torch.cuda.synchronize()
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
        for _ in range(calls):
            fn()
        torch.cuda.synchronize()
    times = {}
    for event in prof.key_averages():
        device_us = getattr(event, "self_device_time_total", None)
        if device_us is None:
            device_us = getattr(event, "self_cuda_time_total", 0)
        if device_us > 0:
            times[event.key] = device_us / calls / 1e3
    return times


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seq", default="4096,16384,65536")
    parser.add_argument("--batches", default="16,64,256")
    parser.add_argument("--seq-len", type=int, default=0)
    parser.add_argument("--profile", action="store_true", help="per-kernel times of the bf16 prefill")
    args = parser.parse_args()
    from fla.ops.gated_delta_rule import chunk_gated_delta_rule, fused_recurrent_gated_delta_rule
    from fla.ops.utils.solve_tril import solve_tril
    import fla

    torch.backends.cuda.matmul.allow_tf32 = False
    common = dict(impl="fla", fla=getattr(fla, "__version__", "?"), torch=torch.__version__,
                  gpu=torch.cuda.get_device_name())

    # Each row is written as it is measured: a run cut short by a timeout (Triton's first compiles take
    # minutes) keeps what it measured.
    out_file = open(os.path.join(os.environ.get("OUT", "."), "fla_compare.jsonl"), "w")

    def emit(**row):
        row = {**common, **row}
        print(json.dumps(row), flush=True)
        out_file.write(json.dumps(row) + "\n")
        out_file.flush()

    for t in (int(x) for x in args.seq.split(",")):
        for dtype, name in ((torch.bfloat16, "bfloat16"), (torch.float32, "float32")):
            try:
                q, k, v, gate, beta = make_inputs(1, t, dtype)
                cu = None
                if args.seq_len > 0:
                    cu = torch.tensor(list(range(0, t, args.seq_len)) + [t], dtype=torch.long, device=DEV)
                ms = median_ms(lambda: chunk_gated_delta_rule(q, k, v, gate, beta, scale=128 ** -0.5,
                                                              output_final_state=True, cu_seqlens=cu))
                emit(what="prefill", method=name, T=t, seq_len=args.seq_len or t, ms=ms, tok_per_s=t / ms * 1e3)
                if args.profile and dtype == torch.bfloat16:
                    times = kernel_times_ms(lambda: chunk_gated_delta_rule(
                        q, k, v, gate, beta, scale=128 ** -0.5, output_final_state=True, cu_seqlens=cu))
                    for kernel, kernel_ms in sorted(times.items(), key=lambda kv: -kv[1]):
                        emit(what="prefill_kernel", method=name, T=t, seq_len=args.seq_len or t,
                             kernel=kernel[:120], ms=kernel_ms)
            except Exception as e:  # noqa: BLE001 - a failing shape is reported, the rest still run
                emit(what="prefill", method=name, T=t, seq_len=args.seq_len or t, error=repr(e)[:300])
        try:  # strictly lower chunk matrices in FLA's [B, T, H, C] layout
            gen = torch.Generator(device=DEV).manual_seed(1)
            a = torch.randn(1, t, 32, 64, device=DEV, generator=gen) * 0.05
            row = torch.arange(t, device=DEV) % 64
            mask = (torch.arange(64, device=DEV)[None, :] < row[:, None]).float()
            a = (a * mask[None, :, None, :]).float()
            ms = median_ms(lambda: solve_tril(a, output_dtype=torch.bfloat16))
            emit(what="inverse", method="solve_tril", T=t, chunks=t // 64 * 32, ms=ms)
        except Exception as e:  # noqa: BLE001
            emit(what="inverse", method="solve_tril", T=t, error=repr(e)[:300])

    for batch in (int(x) for x in args.batches.split(",") if x):
        try:
            q, k, v, gate, beta = make_inputs(batch, 1, torch.bfloat16)
            h0 = torch.randn(batch, 32, 128, 128, device=DEV) * 0.1
            ms = median_ms(lambda: fused_recurrent_gated_delta_rule(
                q, k, v, gate, beta, scale=128 ** -0.5, initial_state=h0, output_final_state=True), reps=50)
            state_bytes = batch * 32 * 128 * 128 * 4 * 2  # fp32 state read and written
            emit(what="decode", method="float32", batch=batch, ms=ms, bytes=state_bytes,
                 gbps=state_bytes / (ms * 1e-3) / 1e9)
        except Exception as e:  # noqa: BLE001
            emit(what="decode", method="float32", batch=batch, error=repr(e)[:300])

    out_file.close()


if __name__ == "__main__":
    main()
