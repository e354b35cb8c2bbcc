#!/usr/bin/env python3
"""Times `transformers` on a Qwen3.5 checkpoint the way bench/model_bench times deltaserve: prefill of
one prompt of N random tokens, then M greedy decode steps with the cache; prints one JSON line with
tokens/s and the process's peak RSS.

Usage: bench_transformers_qwen35.py MODEL_DIR --prompt-len N --decode M [--threads T] [--dtype ...]
"""
import argparse
import json
import resource
import time

import torch
from transformers import Qwen3_5ForCausalLM


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("model")
    ap.add_argument("--prompt-len", type=int, default=256)
    ap.add_argument("--decode", type=int, default=32)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    model = Qwen3_5ForCausalLM.from_pretrained(args.model, dtype=getattr(torch, args.dtype)).eval()
    load_s = time.perf_counter() - t0
    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(0, model.config.vocab_size, (1, args.prompt_len), generator=gen)
    with torch.no_grad():
        t0 = time.perf_counter()
        out = model(input_ids=ids, use_cache=True)
        prefill_s = time.perf_counter() - t0
        cache = out.past_key_values
        token = out.logits[:, -1].argmax(-1, keepdim=True)
        t0 = time.perf_counter()
        for _ in range(args.decode):
            out = model(input_ids=token, past_key_values=cache, use_cache=True)
            cache = out.past_key_values
            token = out.logits[:, -1].argmax(-1, keepdim=True)
        decode_s = time.perf_counter() - t0
    print(json.dumps({"bench": "model", "engine": "transformers", "prompt_len": args.prompt_len,
                      "decode_tokens": args.decode, "threads": args.threads, "dtype": args.dtype,
                      "load_s": round(load_s, 3), "prefill_tok_s": args.prompt_len / prefill_s,
                      "decode_tok_s": args.decode / decode_s,
                      "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))


if __name__ == "__main__":
    main()
