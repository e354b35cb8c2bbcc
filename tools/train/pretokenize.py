#!/usr/bin/env python3
"""Turns build_corpus.py text files into token ids, so training needs no `tokenizers` library.

    pretokenize.py TOKENIZER_DIR CORPUS_DIR OUT_DIR

Reads CORPUS_DIR/train.txt and test.txt (documents separated by <|endoftext|>), encodes each document
with TOKENIZER_DIR/tokenizer.json (special-token strings inside a document are encoded as text) and
appends the <|endoftext|> id after it. Writes OUT_DIR/train.npy and test.npy (uint16, one flat array
each) and OUT_DIR/data.json (ids of the special tokens, token and byte counts, the tokenizer's sha256).
"""
import argparse
import hashlib
import json
import os
import sys
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from train_tokenizer import iter_documents  # noqa: E402


def encode_documents(tokenizer, docs, eos_id, batch=512):
    """One uint16 array: each document's ids followed by eos_id."""
    tokenizer.encode_special_tokens = True
    pieces, buf = [], []

    def flush():
        for enc in tokenizer.encode_batch_fast(buf) if hasattr(tokenizer, "encode_batch_fast") \
                else tokenizer.encode_batch(buf):
            ids = enc.ids
            ids.append(eos_id)
            pieces.append(np.asarray(ids, dtype=np.uint16))
        buf.clear()

    for doc in docs:
        buf.append(doc)
        if len(buf) >= batch:
            flush()
    if buf:
        flush()
    tokenizer.encode_special_tokens = False
    return np.concatenate(pieces) if pieces else np.zeros(0, dtype=np.uint16)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("tokenizer_dir")
    ap.add_argument("corpus_dir")
    ap.add_argument("out")
    args = ap.parse_args(argv)
    from tokenizers import Tokenizer

    t0 = time.time()
    tok_path = os.path.join(args.tokenizer_dir, "tokenizer.json")
    tokenizer = Tokenizer.from_file(tok_path)
    size = tokenizer.get_vocab_size(with_added_tokens=True)
    if size > 65536:
        sys.exit(f"pretokenize: {size} tokens do not fit uint16")
    eos = tokenizer.token_to_id("<|endoftext|>")
    os.makedirs(args.out, exist_ok=True)
    info = {"tokenizer_sha256": hashlib.sha256(open(tok_path, "rb").read()).hexdigest(),
            "vocab_size": size, "endoftext_id": eos, "im_start_id": tokenizer.token_to_id("<|im_start|>"),
            "im_end_id": tokenizer.token_to_id("<|im_end|>"), "dtype": "uint16"}
    for split in ("train", "test"):
        text_path = os.path.join(args.corpus_dir, f"{split}.txt")
        docs = list(iter_documents(text_path))
        ids = encode_documents(tokenizer, docs, eos)
        np.save(os.path.join(args.out, f"{split}.npy"), ids)
        n_bytes = sum(len(d.encode("utf-8")) for d in docs)
        info[split] = {"file": f"{split}.npy", "tokens": int(ids.size), "documents": len(docs),
                       "text_bytes": n_bytes, "bytes_per_token": round(n_bytes / max(1, ids.size), 4)}
        print(f"pretokenize: {split}: {len(docs)} documents, {n_bytes / 2**20:.2f} MiB -> {ids.size} tokens "
              f"({n_bytes / max(1, ids.size):.2f} bytes/token)", flush=True)
    with open(os.path.join(args.out, "data.json"), "w") as f:
        json.dump(info, f, indent=1)
    print(f"pretokenize: done in {time.time() - t0:.0f} s -> {args.out}")
    return info


if __name__ == "__main__":
    main()
