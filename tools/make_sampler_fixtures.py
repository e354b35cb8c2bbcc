#!/usr/bin/env python3
"""Runs transformers' logits processors on fixed random logits, for the C++ sampler to cross-check against.

Usage: make_sampler_fixtures.py OUT_DIR

Writes OUT_DIR/sampler_fixtures.json: a list of cases, each with float32 logits (every float32 is exact as
a JSON double), the prompt and output token ids, the sampling parameters, and the logits after the chain
transformers' generate() builds for them with do_sample=True (_get_logits_processor, min_tokens_to_keep
1): RepetitionPenaltyLogitsProcessor over prompt + output, then TemperatureLogitsWarper, TopKLogitsWarper,
TopPLogitsWarper, MinPLogitsWarper, each only when generate() would add it. Removed tokens (-inf) are
written as null, since JSON has no infinity. Cases marked "ties" have coarse logits with many equal values.
"""
import json
import os
import sys

import torch
from transformers import __version__ as transformers_version
from transformers.generation.logits_process import (
    LogitsProcessorList,
    MinPLogitsWarper,
    RepetitionPenaltyLogitsProcessor,
    TemperatureLogitsWarper,
    TopKLogitsWarper,
    TopPLogitsWarper,
)

SEED = 20240611  # fixed: the fixture is a regression reference, not a fuzzer


def chain(params):
    """The processors generate() appends for these settings, in its order."""
    procs = LogitsProcessorList()
    if params["repetition_penalty"] != 1.0:
        procs.append(RepetitionPenaltyLogitsProcessor(penalty=params["repetition_penalty"]))
    if params["temperature"] != 1.0:
        procs.append(TemperatureLogitsWarper(params["temperature"]))
    if params["top_k"] != 0:
        procs.append(TopKLogitsWarper(top_k=params["top_k"], min_tokens_to_keep=1))
    if params["top_p"] < 1.0:
        procs.append(TopPLogitsWarper(top_p=params["top_p"], min_tokens_to_keep=1))
    if params["min_p"] > 0.0:
        procs.append(MinPLogitsWarper(min_p=params["min_p"], min_tokens_to_keep=1))
    return procs


def make_case(name, gen, vocab, params, scale=3.0, quantum=None, n_prompt=40, n_output=15):
    logits = torch.randn(vocab, generator=gen, dtype=torch.float32) * scale
    if quantum is not None:
        # Coarse values make ties, which exercise the threshold rules of top-k and top-p.
        logits = torch.round(logits / quantum) * quantum
    ids = torch.randint(0, vocab, (n_prompt + n_output,), generator=gen)
    # Repeat some ids so the penalty's treatment of duplicates is covered.
    ids[n_prompt - 5 : n_prompt] = ids[:5]
    ids[-3:] = ids[n_prompt : n_prompt + 3]
    full = dict(temperature=1.0, top_k=0, top_p=1.0, min_p=0.0, repetition_penalty=1.0)
    full.update(params)
    out = chain(full)(ids.unsqueeze(0), logits.clone().unsqueeze(0)).squeeze(0)
    assert out.dtype == torch.float32
    return {
        "name": name,
        "params": full,
        "logits": [float(v) for v in logits.tolist()],
        "prompt_ids": ids[:n_prompt].tolist(),
        "output_ids": ids[n_prompt:].tolist(),
        "expected": [None if v == float("-inf") else float(v) for v in out.tolist()],
        "kept": int(torch.isfinite(out).sum()),
        # torch.sort is not stable on CPU, so where top-p cuts through tokens of equal logit transformers'
        # choice among them is arbitrary; the C++ side then checks the count and the value, not the ids.
        "ties": quantum is not None,
    }


def main() -> int:
    if len(sys.argv) != 2:
        print(__doc__, file=sys.stderr)
        return 2
    out_dir = sys.argv[1]
    os.makedirs(out_dir, exist_ok=True)
    gen = torch.Generator().manual_seed(SEED)
    cases = [
        make_case("all_filters", gen, 4096,
                  dict(repetition_penalty=1.3, temperature=0.7, top_k=50, top_p=0.9, min_p=0.05)),
        make_case("top_p_alone_full_sort", gen, 4096,
                  dict(repetition_penalty=0.8, temperature=1.3, top_p=0.95), scale=1.5),
        # Large vocabularies without top-k: the C++ side narrows top-p's sort to the 1024 most likely
        # tokens (peaked), to 8192 after a second round (medium), or sorts everything (flat).
        make_case("top_p_large_vocab_peaked", gen, 50000, dict(temperature=0.7, top_p=0.9)),
        make_case("top_p_large_vocab_medium", gen, 60000, dict(top_p=0.9), scale=2.5),
        make_case("top_p_large_vocab_flat", gen, 60000, dict(top_p=0.95), scale=2.0),
        make_case("top_k_alone", gen, 1000, dict(temperature=0.5, top_k=7)),
        make_case("min_p_alone", gen, 1000, dict(min_p=0.1, temperature=2.0)),
        make_case("repetition_only", gen, 1000, dict(repetition_penalty=1.7)),
        make_case("ties", gen, 512, dict(repetition_penalty=2.0, top_k=20, top_p=0.7), quantum=0.5),
        make_case("ties_top_k_only", gen, 512, dict(top_k=20), scale=1.0, quantum=0.5),
        make_case("ties_top_p_only", gen, 512, dict(top_p=0.5), scale=1.0, quantum=0.5),
        make_case("qwen3_defaults", gen, 8192, dict(temperature=0.6, top_k=20, top_p=0.95)),
        make_case("nothing", gen, 300, dict()),
    ]
    with open(os.path.join(out_dir, "sampler_fixtures.json"), "w") as f:
        json.dump({"transformers_version": transformers_version, "torch_version": torch.__version__,
                   "cases": cases}, f)
    for c in cases:
        print(f"{c['name']}: vocab {len(c['logits'])}, {c['kept']} tokens kept")
    return 0


if __name__ == "__main__":
    sys.exit(main())
