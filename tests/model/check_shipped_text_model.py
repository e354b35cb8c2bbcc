#!/usr/bin/env python3
"""The shipped text model (models/qwen35-small) through deltaserve matches transformers and its record.

1. tools/train/check_deltaserve.py: deltaserve-generate's logits over 20 greedy steps equal transformers'
   (relative error < 1e-4) and its greedy tokens, for a text and a chat prompt.
2. deltaserve-generate's output for the recorded prompt, greedy and with a fixed seed, equals the text in
   models/qwen35-small/expected_generation.json (loader, tokenizer and sampler regressions show here).
Usage: check_shipped_text_model.py --generate BIN --repo DIR
"""
import argparse
import json
import pathlib
import subprocess
import sys


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--generate", required=True)
    ap.add_argument("--repo", required=True)
    args = ap.parse_args()
    repo = pathlib.Path(args.repo)
    model = repo / "models" / "qwen35-small"
    rc = subprocess.run([sys.executable, str(repo / "tools/train/check_deltaserve.py"), str(model), args.generate]).returncode
    if rc != 0:
        print("FAIL: deltaserve differs from transformers on the shipped model")
        return 1
    expected = json.loads((model / "expected_generation.json").read_text())
    failures = 0
    for kind in ("greedy", "sampled"):
        want = expected[kind]
        cmd = [args.generate, "--model", str(model), "--prompt", expected["prompt"], "--max-new-tokens",
               str(expected["max_new_tokens"]), "--temperature", str(want["temperature"])]
        if "seed" in want:
            cmd += ["--seed", str(want["seed"])]
        got = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout.rstrip("\n")
        ok = got == want["text"]
        failures += not ok
        print(f"{'ok  ' if ok else 'FAIL'} {kind}: {got!r}" + ("" if ok else f"\n     expected {want['text']!r}"))
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
