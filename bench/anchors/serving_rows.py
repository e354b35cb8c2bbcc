#!/usr/bin/env python3
"""The GPU serving benchmark's rows (scripts/gpu_serving_bench.sh): one JSON object per server x preset x
concurrency, as `deltaserve-cli bench --result-json` and lc_loadgen.py write them, plus who/what/when.

  serving_rows.py add ROWS RESULT_JSON key=value...   merge RESULT_JSON with the keys into ROWS (JSON
                                                      lines), replacing an earlier row of the same server,
                                                      preset and concurrency; prints a one-line summary
  serving_rows.py lcbench ROWS LLAMA_BENCH_JSONL preset=P  llama-bench's JSON lines into ROWS, tagged
  serving_rows.py table ROWS [LLAMA_BENCH_ROWS]       markdown tables of everything in ROWS
  serving_rows.py fake SERVER CONCURRENCY N OUT_JSON  an invented result (GPU_BENCH_DRY=1 runs)
Values of key=value that parse as JSON numbers become numbers.
"""
import json
import os
import sys

KEY = ("server", "preset", "concurrency")
# A new row replaces an earlier one of the same build only: two builds measured on one machine both stay.
ROW_KEY = KEY + ("commit",)


def read_rows(path):
    if not os.path.exists(path):
        return []
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def write_rows(path, rows):
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        for r in rows:
            f.write(json.dumps(r, sort_keys=False) + "\n")
    os.replace(tmp, path)


def parse_value(v):
    try:
        return json.loads(v) if v[:1] in "-0123456789" else v
    except ValueError:
        return v


def add(rows_path, result_path, pairs):
    with open(result_path) as f:
        result = json.load(f)
    row = {}
    for p in pairs:
        k, _, v = p.partition("=")
        row[k] = parse_value(v)
    for k, v in result.items():
        row.setdefault(k, v)
    row["concurrency"] = int(row.get("concurrency", result.get("max_concurrency", 0)))
    rows = [r for r in read_rows(rows_path) if tuple(r.get(k) for k in ROW_KEY) != tuple(row.get(k) for k in ROW_KEY)]
    rows.append(row)
    write_rows(rows_path, rows)
    f = lambda k: "n/a" if row.get(k) is None else f"{row[k]:.1f}"  # noqa: E731
    print(f"{row['server']} {row['preset']} c={row['concurrency']} ({row.get('num_prompts')} prompts, "
          f"{row.get('run_wall_s', '?')} s): {row.get('completed')} ok, "
          f"{row.get('failed', 0)} failed, {f('duration')} s, {f('output_throughput')} tok/s, "
          f"TTFT p50 {f('median_ttft_ms')} ms, TPOT p50 {f('median_tpot_ms')} ms")


def lcbench(rows_path, bench_path, pairs):
    tags = dict(p.partition("=")[::2] for p in pairs)
    new = []
    for line in open(bench_path):
        line = line.strip()
        if line.startswith("{"):
            r = json.loads(line)
            r.update(tags)
            new.append(r)
    keep = [r for r in read_rows(rows_path) if r.get("preset") != tags.get("preset")]
    write_rows(rows_path, keep + new)


def preset_size(name):
    """0.8b < 9b < 27b; names that are no size go last, alphabetically."""
    try:
        return (float(name.lower().rstrip("b")), name)
    except ValueError:
        return (float("inf"), name)


def num(v, fmt="{:.1f}"):
    return "–" if v is None else fmt.format(v)


def table(rows_path, bench_path=None):
    rows = read_rows(rows_path)
    if not rows:
        print("(no serving rows yet)")
    by = {tuple(r.get(k) for k in KEY): r for r in rows}
    presets = sorted({r["preset"] for r in rows}, key=preset_size)
    servers = ["llama.cpp", "deltaserve"]
    for preset in presets:
        any_row = next(r for r in rows if r["preset"] == preset)
        print(f"\n### {preset}: {any_row.get('input_len')} prompt ids -> {any_row.get('output_len')} tokens, "
              f"EOS ignored; {any_row.get('gpu', '')} {any_row.get('date', '')} commit {any_row.get('commit', '')}\n")
        print("| concurrency | prompts | llama.cpp tok/s | deltaserve tok/s | ds/lc | TTFT p50 lc / ds (ms) | "
              "TTFT p99 lc / ds | TPOT p50 lc / ds (ms) | TPOT p99 lc / ds | failed lc / ds |")
        print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
        concs = sorted({r["concurrency"] for r in rows if r["preset"] == preset})
        for c in concs:
            lc, ds = (by.get((s, preset, c)) or {} for s in servers)
            ratio = (ds["output_throughput"] / lc["output_throughput"]
                     if ds.get("output_throughput") and lc.get("output_throughput") else None)
            prompts = "/".join(sorted({str(r["num_prompts"]) for r in (lc, ds) if r}))
            pair = lambda k: f"{num(lc.get(k))} / {num(ds.get(k))}"  # noqa: E731
            print(f"| {c} | {prompts} | {num(lc.get('output_throughput'))} | {num(ds.get('output_throughput'))} | "
                  f"{num(ratio, '{:.2f}x')} | {pair('median_ttft_ms')} | {pair('p99_ttft_ms')} | "
                  f"{pair('median_tpot_ms')} | {pair('p99_tpot_ms')} | "
                  f"{num(lc.get('failed'), '{}')} / {num(ds.get('failed'), '{}')} |")
    bench = read_rows(bench_path) if bench_path else []
    if bench:
        print("\nllama-bench (single stream, -ngl 99, -r 3):\n")
        print("| preset | test | tokens/s | stddev |")
        print("|---|---|---:|---:|")
        for r in bench:
            test = f"pp{r['n_prompt']}" if r.get("n_prompt") else f"tg{r.get('n_gen')}"
            print(f"| {r.get('preset')} | {test} | {num(r.get('avg_ts'))} | {num(r.get('stddev_ts'))} |")
    if any(r.get("dry_run") for r in rows):
        print("\n(GPU_BENCH_DRY=1: invented numbers)")


def fake(server, conc, n, out_path):
    conc, n = int(conc), int(n)
    tpot = 2.0 + conc * (0.5 if server == "llama.cpp" else 0.3)
    r = {"num_prompts": n, "max_concurrency": conc, "completed": n, "failed": 0, "duration": 1.0,
         "output_throughput": conc * 1000.0 / tpot, "median_ttft_ms": 10.0 * conc ** 0.5, "p99_ttft_ms": 20.0,
         "median_tpot_ms": tpot, "p99_tpot_ms": tpot * 1.5, "dry_run": True}
    with open(out_path, "w") as f:
        json.dump(r, f)


def main(argv):
    if len(argv) >= 3 and argv[0] == "add":
        add(argv[1], argv[2], argv[3:])
    elif len(argv) >= 3 and argv[0] == "lcbench":
        lcbench(argv[1], argv[2], argv[3:])
    elif len(argv) in (2, 3) and argv[0] == "table":
        table(*argv[1:])
    elif len(argv) == 5 and argv[0] == "fake":
        fake(*argv[1:])
    else:
        print(__doc__, file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
