#!/usr/bin/env python3
"""End-to-end check of deltaserve-generate as a user runs it: on each golden checkpoint, greedy
generation from the golden prompt must print transformers' 20 tokens, --logits-out must hold
transformers' logits for every step (numpy.load-able), and bad flags must fail with one clear line.

Usage: generate_cli_test.py DELTASERVE_GENERATE GOLDEN_DIR
"""
import json
import os
import subprocess
import sys
import tempfile

import numpy as np


def run(binary, *args):
    return subprocess.run([binary, *args], capture_output=True, text=True, timeout=300)


def main():
    binary, golden_root = sys.argv[1], sys.argv[2]
    failures = []
    for name in ("flat_untied", "nested_tied"):
        d = os.path.join(golden_root, name)
        golden = json.load(open(os.path.join(d, "golden.json")))
        g = golden["greedy"]
        with tempfile.TemporaryDirectory() as tmp:
            npy = os.path.join(tmp, "logits.npy")
            r = run(binary, "--model", d, "--prompt-ids", ",".join(map(str, g["prompt"])),
                    "--max-new-tokens", str(len(g["tokens"])), "--temperature", "0", "--logits-out", npy)
            if r.returncode != 0:
                failures.append(f"{name}: exit {r.returncode}: {r.stderr}")
                continue
            tokens = [int(t) for t in r.stdout.split()]
            if tokens != g["tokens"]:
                failures.append(f"{name}: tokens {tokens} != transformers {g['tokens']}")
            logits = np.load(npy)
            ref = np.fromfile(os.path.join(d, g["logits_file"]), dtype=np.float32).reshape(g["shape"])
            err = float(np.abs(logits - ref).max() / max(1.0, float(np.abs(ref).max())))
            if logits.shape != ref.shape or err > 1e-4:
                failures.append(f"{name}: logits shape {logits.shape} vs {ref.shape}, rel err {err:.2e}")
            if "decode" not in r.stderr or "prefill" not in r.stderr:
                failures.append(f"{name}: no timing line on stderr: {r.stderr}")
    d = os.path.join(golden_root, "flat_untied")
    for args, expect in [((), "--model is required"),
                         (("--model", d), "exactly one of --prompt, --prompt-ids and --chat-file"),
                         (("--model", d, "--chat-file", "/nonexistent.json"), "tokenizer.json: not found"),
                         (("--model", d, "--prompt-ids", "1,x"), '"x" is not an integer'),
                         (("--model", d, "--prompt-ids", "1", "--top-p", "0"), "top_p"),
                         (("--model", d, "--prompt-ids", "1,9999"), "9999"),
                         (("--model", d, "--prompt", "hello"), "tokenizer.json: not found"),
                         (("--model", d, "--prompt-ids", "1", "--dtype", "int4"), "--dtype"),
                         (("--model", "/nonexistent", "--prompt-ids", "1"), "/nonexistent")]:
        r = run(binary, *args)
        if r.returncode == 0 or expect not in r.stderr:
            failures.append(f"{args}: expected failure mentioning {expect!r}, got {r.returncode}: {r.stderr!r}")
    r = run(binary, "--help")
    text = r.stdout + r.stderr
    for needle in ("Recurrent decode state", "Tokens to generate at most", "--logits_out", "--chat_file"):
        if needle not in text:
            failures.append(f"--help does not explain the flags (missing {needle!r})")
    for f in failures:
        print("FAIL:", f)
    print(f"generate_cli_test: {len(failures)} failures")
    sys.exit(1 if failures else 0)


if __name__ == "__main__":
    main()
