#!/usr/bin/env python3
"""Prepares everything the GPU machine needs to train the small Qwen3.5 model, in one directory.

    prepare_bundle.py WORK_DIR [--max-mb 56] [--vocab-size 8192] [--seed 20261129] [--reuse-corpus]

Runs, on this (CPU) machine:
  1. build_corpus.py     -> WORK_DIR/corpus/{train,test}.txt, manifest.json (Debian documentation text)
  2. train_tokenizer.py  -> WORK_DIR/bundle/{tokenizer,tokenizer_config}.json (byte-level BPE, Qwen format)
  3. pretokenize.py      -> WORK_DIR/bundle/{train,test}.npy, data.json (uint16 ids)
and copies into WORK_DIR/bundle the corpus manifest (sources and licences) and train_qwen35_small.py,
so the bundle is self-contained: carry WORK_DIR/bundle (~30 MB) to the GPU machine and run

    python3 bundle/train_qwen35_small.py --data bundle --out qwen35-small --minutes 6

which needs torch, numpy, safetensors and transformers there (not the tokenizers library).
WORK_DIR should be untracked (e.g. .train/ at the repository root).
"""
import argparse
import os
import shutil
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import build_corpus  # noqa: E402
import pretokenize  # noqa: E402
import train_tokenizer  # noqa: E402

BUNDLE_LIMIT = 60 * 1000 * 1000


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("work")
    ap.add_argument("--max-mb", type=float, default=56.0, help="corpus text cap, MiB")
    ap.add_argument("--vocab-size", type=int, default=8192)
    ap.add_argument("--seed", type=int, default=20261129)
    ap.add_argument("--jobs", type=int, default=os.cpu_count() or 2)
    ap.add_argument("--reuse-corpus", action="store_true", help="keep an existing WORK_DIR/corpus")
    args = ap.parse_args(argv)

    t0 = time.time()
    corpus = os.path.join(args.work, "corpus")
    bundle = os.path.join(args.work, "bundle")
    if not (args.reuse_corpus and os.path.exists(os.path.join(corpus, "manifest.json"))):
        build_corpus.main([corpus, "--max-mb", str(args.max_mb), "--seed", str(args.seed), "--jobs", str(args.jobs)])
    if os.path.exists(bundle):
        shutil.rmtree(bundle)
    train_tokenizer.main([os.path.join(corpus, "train.txt"), bundle, "--vocab-size", str(args.vocab_size)])
    pretokenize.main([bundle, corpus, bundle])
    shutil.copyfile(os.path.join(corpus, "manifest.json"), os.path.join(bundle, "manifest.json"))
    shutil.copyfile(os.path.join(HERE, "train_qwen35_small.py"), os.path.join(bundle, "train_qwen35_small.py"))
    with open(os.path.join(bundle, "README.txt"), "w") as f:
        f.write("Training bundle for a small Qwen3.5-architecture model (deltaserve tools/train).\n\n"
                "  python3 train_qwen35_small.py --data . --out ../qwen35-small --minutes 6\n\n"
                "train.npy / test.npy: uint16 token ids, <|endoftext|> after each document (data.json);\n"
                "tokenizer.json / tokenizer_config.json: the tokenizer the ids come from;\n"
                "manifest.json: the corpus's sources, packages and licences.\n")
    total = sum(os.path.getsize(os.path.join(bundle, n)) for n in os.listdir(bundle))
    for name in sorted(os.listdir(bundle)):
        print(f"  {name:28s} {os.path.getsize(os.path.join(bundle, name)) / 1e6:8.2f} MB")
    print(f"prepare_bundle: {bundle}: {total / 1e6:.1f} MB in {time.time() - t0:.0f} s")
    if total > BUNDLE_LIMIT:
        print(f"prepare_bundle: over {BUNDLE_LIMIT / 1e6:.0f} MB: lower --max-mb", file=sys.stderr)
        return 1
    print("on the GPU machine:\n  python3 bundle/train_qwen35_small.py --data bundle --out qwen35-small --minutes 6")
    return 0


if __name__ == "__main__":
    sys.exit(main())
