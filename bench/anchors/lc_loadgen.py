#!/usr/bin/env python3
"""Load generator for llama.cpp's llama-server (native /completion endpoint), measured the way
`deltaserve-cli bench` and vLLM's serving benchmark measure, so their rows compare: N requests of IN
random prompt token ids and exactly OUTLEN generated tokens (ignore_eos, greedy, no prompt cache), at
most C in flight, streamed. One untimed warm-up request of the same shape goes first.

  output_throughput = all output tokens / wall time (first send to last finish)
  TTFT = time to the first streamed token; TPOT = (E2E - TTFT) / (tokens - 1) per request;
  ITL  = gaps between token-carrying stream events; percentiles interpolated linearly (as the CLI).

Prints one JSON line with the same keys as `deltaserve-cli bench --json` (num_prompts, max_concurrency,
completed, failed, duration, output_throughput, median_ttft_ms, p99_ttft_ms, median_tpot_ms, ...).
Adapted from the project's shared GPU recipe (recipes/gpu-anchors/lc_loadgen.py).

usage: lc_loadgen.py PORT N C IN OUTLEN [SEED] [--host H] [--ids LO:HI] [--timeout S] [--result-json F]
"""
import argparse
import http.client
import json
import math
import random
import sys
import threading
import time


def percentile(samples, q):
    """Linear interpolation between closest ranks (numpy's default; client/latency_stats.cc's too)."""
    if not samples:
        return None
    s = sorted(samples)
    rank = q / 100.0 * (len(s) - 1)
    lo = math.floor(rank)
    hi = min(lo + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (rank - lo)


def summarize(out, name, seconds):
    ms = [x * 1e3 for x in seconds]
    out[f"mean_{name}_ms"] = sum(ms) / len(ms) if ms else None
    out[f"median_{name}_ms"] = percentile(ms, 50)
    out[f"p90_{name}_ms"] = percentile(ms, 90)
    out[f"p99_{name}_ms"] = percentile(ms, 99)
    out[f"max_{name}_ms"] = max(ms) if ms else None


def one_request(host, port, prompt, outlen, timeout):
    body = json.dumps({"prompt": prompt, "n_predict": outlen, "ignore_eos": True, "stream": True,
                       "temperature": 0, "cache_prompt": False, "return_tokens": True})
    conn = http.client.HTTPConnection(host, port, timeout=timeout)
    t0 = time.perf_counter()
    try:
        conn.request("POST", "/completion", body, {"Content-Type": "application/json"})
        resp = conn.getresponse()
        if resp.status != 200:
            return {"error": f"HTTP {resp.status}: {resp.read(300).decode(errors='replace')}"}
        times, ntok = [], 0
        while True:
            raw = resp.readline()
            if not raw:
                break
            line = raw.strip()
            if not line.startswith(b"data:"):
                continue
            d = json.loads(line[5:])
            now = time.perf_counter()
            if "error" in d:
                return {"error": f"stream error: {d['error']}"}
            k = len(d.get("tokens", [])) or (1 if d.get("content") else 0)
            if k:
                times.append(now)
                ntok += k
            if d.get("stop"):
                ntok = max(ntok, d.get("tokens_predicted", 0), d.get("timings", {}).get("predicted_n", 0))
                break
    except (OSError, http.client.HTTPException, ValueError) as e:
        return {"error": f"{type(e).__name__}: {e}"}
    finally:
        conn.close()
    e2e = time.perf_counter() - t0
    if not times:
        return {"error": "no token streamed"}
    ttft = times[0] - t0
    return {"ttft": ttft, "e2e": e2e, "tokens": ntok, "tpot": (e2e - ttft) / (ntok - 1) if ntok > 1 else None,
            "itl": [b - a for a, b in zip(times, times[1:])]}


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("port", type=int)
    ap.add_argument("num_prompts", type=int, metavar="N", help="measured requests")
    ap.add_argument("concurrency", type=int, metavar="C", help="requests in flight at most")
    ap.add_argument("input_len", type=int, metavar="IN", help="prompt tokens per request (random ids)")
    ap.add_argument("output_len", type=int, metavar="OUTLEN", help="generated tokens per request (EOS ignored)")
    ap.add_argument("seed", type=int, nargs="?", default=1, help="prompts' random seed (default 1)")
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--ids", default="1000:150000", metavar="LO:HI",
                    help="prompt ids drawn uniformly in [LO, HI) (default 1000:150000, inside Qwen's vocabulary)")
    ap.add_argument("--timeout", type=float, default=600, help="per request, seconds")
    ap.add_argument("--result-json", help="also write the JSON object to this file")
    a = ap.parse_args()
    if min(a.num_prompts, a.concurrency, a.input_len, a.output_len) < 1:
        ap.error("N, C, IN and OUTLEN must be at least 1")
    lo, hi = (int(x) for x in a.ids.split(":"))

    rng = random.Random(a.seed)
    prompts = [[rng.randrange(lo, hi) for _ in range(a.input_len)] for _ in range(a.num_prompts)]
    warm = one_request(a.host, a.port, [rng.randrange(lo, hi) for _ in range(a.input_len)], a.output_len,
                       a.timeout)
    if "error" in warm:
        print(f"lc_loadgen: the warm-up request failed: {warm['error']}", file=sys.stderr)
        return 1

    results, lock, nxt = [], threading.Lock(), [0]

    def worker():
        while True:
            with lock:
                if nxt[0] >= len(prompts):
                    return
                p = prompts[nxt[0]]
                nxt[0] += 1
            r = one_request(a.host, a.port, p, a.output_len, a.timeout)
            with lock:
                results.append(r)

    t = time.perf_counter()
    threads = [threading.Thread(target=worker) for _ in range(min(a.concurrency, a.num_prompts))]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    wall = time.perf_counter() - t

    ok = [r for r in results if "error" not in r]
    errors = [r["error"] for r in results if "error" in r]
    out_tok = sum(r["tokens"] for r in ok)
    row = {"server": "llama.cpp", "num_prompts": a.num_prompts, "max_concurrency": a.concurrency,
           "input_len": a.input_len, "output_len": a.output_len, "seed": a.seed, "completed": len(ok),
           "failed": len(errors), "duration": wall, "total_input_tokens": a.input_len * len(ok),
           "total_output_tokens": out_tok, "request_throughput": len(ok) / wall,
           "output_throughput": out_tok / wall,
           "total_token_throughput": (out_tok + a.input_len * len(ok)) / wall}
    summarize(row, "ttft", [r["ttft"] for r in ok])
    summarize(row, "tpot", [r["tpot"] for r in ok if r["tpot"] is not None])
    summarize(row, "itl", [g for r in ok for g in r["itl"]])
    summarize(row, "e2el", [r["e2e"] for r in ok])
    if errors:
        row["first_error"] = errors[0]
    text = json.dumps(row)
    print(text)
    if a.result_json:
        with open(a.result_json, "w") as f:
            f.write(text + "\n")
    return 0 if not errors else 1


if __name__ == "__main__":
    sys.exit(main())
