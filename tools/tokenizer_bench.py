#!/usr/bin/env python3
"""Encode/decode throughput of the `tokenizers` library, the reference for bench/tokenizer_bench.cc.

    tokenizer_bench.py [--tokenizer tokenizer.json] [--text-out FILE] [--ids-out FILE] [--mib 1] [--reps 5]

Builds the benchmark text (deterministic for a given Python: three quarters the standard library's own
top-level .py sources, code and English docstrings; one quarter multilingual text drawn from the fixture
corpus of tools/make_tokenizer_fixtures.py: CJK, Arabic, Hindi, emoji, numbers, whitespace, special
tokens), writes it and the ids `tokenizers` gives it, and prints the same table as the C++ benchmark,
which then reads both files:

    build/bench/tokenizer_bench --text FILE --ids FILE
"""
import argparse
import array
import json
import os
import random
import statistics
import sys
import sysconfig
import time

from tokenizers import Tokenizer

sys.dont_write_bytecode = True  # no __pycache__ in tools/ from the import below
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import make_tokenizer_fixtures  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def bench_text(size):
    stdlib = sysconfig.get_paths()["stdlib"]
    code_budget = size * 3 // 4
    parts, used = [], 0
    for name in sorted(os.listdir(stdlib)):
        if not name.endswith(".py"):
            continue
        with open(os.path.join(stdlib, name), encoding="utf-8", errors="replace") as f:
            src = f.read()
        parts.append(src)
        used += len(src.encode("utf-8"))
        if used >= code_budget:
            break
    rng = random.Random(7)
    base = [t for n, t in make_tokenizer_fixtures.corpus() if not n.startswith("long_")]
    words = sorted({w for t in base for w in t.replace("\n", " ").split(" ") if w})
    while used < size:
        _, text = make_tokenizer_fixtures.random_texts(rng, words, 1)[0]
        text += "\n" + rng.choice(base) + "\n"
        parts.append(text)
        used += len(text.encode("utf-8"))
    data = "".join(parts).encode("utf-8")[:size]
    return data.decode("utf-8", errors="ignore")  # drop a character cut at the end


def median_seconds(reps, f):
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        f()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def report(case, seconds, nbytes, tokens):
    print(f"{case:<24} {seconds * 1e3:10.1f} {nbytes / seconds / 1e6:10.2f} {tokens / seconds:14.0f}")
    print(json.dumps({"bench": "tokenizer", "impl": "tokenizers", "case": case, "ms": round(seconds * 1e3, 2),
                      "mb_per_s": round(nbytes / seconds / 1e6, 3), "tokens_per_s": round(tokens / seconds)}))


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tokenizer", default=os.path.join(ROOT, "tests/data/qwen3-tokenizer/tokenizer.json"))
    p.add_argument("--text-out", default="/tmp/deltaserve_tokenizer_bench.txt")
    p.add_argument("--ids-out", default="/tmp/deltaserve_tokenizer_bench.ids")
    p.add_argument("--mib", type=float, default=1.0)
    p.add_argument("--reps", type=int, default=5)
    a = p.parse_args()

    import tokenizers
    text = bench_text(int(a.mib * 1024 * 1024))
    nbytes = len(text.encode("utf-8"))
    with open(a.text_out, "w", encoding="utf-8", newline="") as f:
        f.write(text)
    lines = text.split("\n")
    t0 = time.perf_counter()
    tok = Tokenizer.from_file(a.tokenizer)
    load = time.perf_counter() - t0
    print(f"tokenizer_bench.py: tokenizers {tokenizers.__version__}, {a.tokenizer}, text {a.text_out} "
          f"({nbytes / 1e6:.2f} MB, {len(lines)} lines), load {load * 1e3:.0f} ms, reps {a.reps}")
    print(f"{'case':<24} {'ms':>10} {'MB/s':>10} {'tokens/s':>14}")

    t0 = time.perf_counter()
    ids = tok.encode(text).ids
    report("encode_cold", time.perf_counter() - t0, nbytes, len(ids))
    report("encode_warm", median_seconds(a.reps, lambda: tok.encode(text)), nbytes, len(ids))
    # encode_batch_fast skips offsets and token strings, which the C++ API does not produce either.
    fast = tok.encode_batch_fast([text])[0].ids
    assert fast == ids, "encode_batch_fast disagrees with encode"
    report("encode_fast_warm", median_seconds(a.reps, lambda: tok.encode_batch_fast([text])), nbytes, len(ids))
    line_tokens = sum(len(tok.encode(line).ids) for line in lines)
    report("encode_lines_warm", median_seconds(a.reps, lambda: [tok.encode(line) for line in lines]), nbytes,
           line_tokens)
    decode_s = median_seconds(a.reps, lambda: tok.decode(ids, skip_special_tokens=False))
    report("decode", decode_s, nbytes, len(ids))
    print(f"tokens {len(ids)} (whole text), {line_tokens} (line by line)")
    with open(a.ids_out, "wb") as f:
        array.array("i", ids).tofile(f)
    print(f"wrote {a.text_out} and {a.ids_out}")


if __name__ == "__main__":
    main()
