#!/usr/bin/env python3
"""Checks that deltaserve serves a checkpoint from train_qwen35_small.py as transformers does.

    check_deltaserve.py CKPT DELTASERVE_GENERATE [--dtype float32] [--state-dtype fp32]

Runs DELTASERVE_GENERATE greedily on the probe prompt recorded in CKPT/train_log.json and compares
(1) the 20 generated ids with transformers' (recorded by the training run from the weights as saved),
and (2) the logits of every step (--logits-out) with transformers' own, recomputed here by loading
CKPT with AutoModelForCausalLM in float32. Also runs a text prompt and a --chat-file conversation
through the binary (tokenizer and chat template). Prints one line per check; exits 1 on a mismatch.
"""
import argparse
import json
import os
import re
import subprocess
import sys
import tempfile

import numpy as np


def run(binary, *args):
    return subprocess.run([binary, *args], capture_output=True, text=True, timeout=600)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("ckpt")
    ap.add_argument("binary")
    ap.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    ap.add_argument("--state-dtype", default="fp32")
    ap.add_argument("--tolerance", type=float, default=1e-4, help="max |ours - theirs| / max(1, max |theirs|)")
    args = ap.parse_args(argv)

    with open(os.path.join(args.ckpt, "train_log.json")) as f:
        probe = json.load(f)["probe"]
    prompt, expected = probe["prompt_ids"], probe["greedy_ids"]
    failures = []
    with tempfile.TemporaryDirectory() as tmp:
        npy = os.path.join(tmp, "logits.npy")
        r = run(args.binary, "--model", args.ckpt, "--prompt-ids", ",".join(map(str, prompt)),
                "--max-new-tokens", str(len(expected)), "--temperature", "0", "--repetition-penalty", "1",
                "--ignore-eos", "--logprobs", "0", "--logits-out", npy, "--dtype", args.dtype,
                "--state-dtype", args.state_dtype)
        if r.returncode != 0:
            print(f"FAIL load/generate: exit {r.returncode}: {r.stderr.strip()[-2000:]}")
            return 1
        got = [int(m) for m in re.findall(r"^token (\d+) logprob", r.stderr, re.M)]
        same = got == expected
        print(f"{'ok  ' if same else 'FAIL'} greedy ids: deltaserve {got}\n{'':5} transformers {expected}")
        if not same:
            failures.append("greedy ids")
        ours = np.load(npy)

    import torch
    from transformers import AutoModelForCausalLM
    model = AutoModelForCausalLM.from_pretrained(args.ckpt, dtype=torch.float32).eval()
    ids = torch.tensor([prompt + got], dtype=torch.long)
    with torch.no_grad():
        theirs = model(input_ids=ids).logits[0, len(prompt) - 1:len(prompt) - 1 + len(got)].numpy()
    err = float(np.abs(ours - theirs).max() / max(1.0, float(np.abs(theirs).max())))
    tol = args.tolerance if args.dtype == "float32" and args.state_dtype == "fp32" else 5e-2
    ok = ours.shape == theirs.shape and err <= tol
    print(f"{'ok  ' if ok else 'FAIL'} logits of {len(got)} steps: relative max error {err:.2e} (bound {tol:g})")
    if not ok:
        failures.append("logits")

    if os.path.exists(os.path.join(args.ckpt, "tokenizer.json")):
        r = run(args.binary, "--model", args.ckpt, "--prompt", "The file system", "--max-new-tokens", "24",
                "--temperature", "0", "--dtype", args.dtype)
        ok = r.returncode == 0
        print(f"{'ok  ' if ok else 'FAIL'} text prompt: {r.stdout.strip()[:200]!r}")
        if not ok:
            failures.append("text prompt: " + r.stderr.strip()[-500:])
        with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as f:
            json.dump([{"role": "user", "content": "What does the ls command do?"}], f)
        r = run(args.binary, "--model", args.ckpt, "--chat-file", f.name, "--max-new-tokens", "24",
                "--temperature", "0", "--enable-thinking=false", "--dtype", args.dtype)
        os.unlink(f.name)
        ok = r.returncode == 0
        print(f"{'ok  ' if ok else 'FAIL'} chat prompt: {r.stdout.strip()[:200]!r}")
        if not ok:
            failures.append("chat prompt: " + r.stderr.strip()[-500:])
    print("check_deltaserve: " + ("all checks passed" if not failures else "FAILED: " + ", ".join(failures)))
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
