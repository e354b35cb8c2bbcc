#!/usr/bin/env python3
"""Trains a byte-level BPE tokenizer in Qwen's format on a corpus from build_corpus.py.

    train_tokenizer.py TRAIN_TXT OUT_DIR [--vocab-size 8192] [--reference DIR]

Writes OUT_DIR/tokenizer.json and OUT_DIR/tokenizer_config.json. Everything but the vocabulary and
merges is copied from the reference Qwen3 tokenizer (default: tests/data/qwen3-tokenizer of this
repository): the NFC normalizer, the Split + ByteLevel pre-tokenizer (with Qwen3.5's letter branch,
`[^\\r\\n\\p{L}\\p{N}]?[\\p{L}\\p{M}]+`, which keeps combining marks with their letters), the ByteLevel
post-processor and decoder, the 26 added tokens with their flags (<|endoftext|>, <|im_start|>,
<|im_end|>, ..., <tool_call>, <think>, </think>; special or not as in Qwen3), and in
tokenizer_config.json the ChatML chat_template, eos_token <|im_end|> and pad_token <|endoftext|>.

--vocab-size counts everything: the 256 byte tokens, the merges and the added tokens, which take the
last ids (as in Qwen). Documents in TRAIN_TXT are separated by <|endoftext|> (build_corpus.py's format).
"""
import argparse
import copy
import json
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
DEFAULT_REFERENCE = os.path.join(HERE, "..", "..", "tests", "data", "qwen3-tokenizer")
DOC_SEPARATOR = "<|endoftext|>"
QWEN3_LETTERS = r"[^\r\n\p{L}\p{N}]?\p{L}+"
QWEN35_LETTERS = r"[^\r\n\p{L}\p{N}]?[\p{L}\p{M}]+"


def load_reference(ref_dir):
    with open(os.path.join(ref_dir, "tokenizer.json"), encoding="utf-8") as f:
        tok = json.load(f)
    with open(os.path.join(ref_dir, "tokenizer_config.json"), encoding="utf-8") as f:
        cfg = json.load(f)
    return tok, cfg


def qwen35_pre_tokenizer(reference_tok):
    pre = copy.deepcopy(reference_tok["pre_tokenizer"])
    split = pre["pretokenizers"][0]
    regex = split["pattern"]["Regex"]
    if QWEN3_LETTERS not in regex:
        raise ValueError("the reference split regex has no Qwen3 letter branch to replace")
    split["pattern"]["Regex"] = regex.replace(QWEN3_LETTERS, QWEN35_LETTERS, 1)
    return pre


def iter_documents(path, chunk_chars=1 << 22):
    """Documents of a build_corpus.py text file, streamed."""
    tail = ""
    with open(path, encoding="utf-8") as f:
        while True:
            block = f.read(chunk_chars)
            if not block:
                break
            parts = (tail + block).split(DOC_SEPARATOR)
            tail = parts.pop()
            yield from parts
    if tail.strip():
        yield tail


def train(texts, vocab_size, reference_tok, reference_cfg, min_frequency=2):
    """Returns (tokenizer.json dict, tokenizer_config.json dict)."""
    from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers

    added = reference_tok["added_tokens"]
    pre = qwen35_pre_tokenizer(reference_tok)
    tok = Tokenizer(models.BPE())
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(pre["pretokenizers"][0]["pattern"]["Regex"]), behavior="isolated",
                             invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    tok.decoder = decoders.ByteLevel()
    alphabet = pre_tokenizers.ByteLevel.alphabet()
    bpe_size = vocab_size - len(added)
    if bpe_size <= len(alphabet):
        raise ValueError(f"--vocab-size {vocab_size} leaves no room for merges")
    trainer = trainers.BpeTrainer(vocab_size=bpe_size, min_frequency=min_frequency, special_tokens=[],
                                  initial_alphabet=alphabet, show_progress=False)
    tok.train_from_iterator(texts, trainer)

    spec = json.loads(tok.to_str())
    vocab = spec["model"]["vocab"]
    n = len(vocab)
    if sorted(vocab.values()) != list(range(n)):
        raise AssertionError("the trained vocabulary's ids are not 0..n-1")
    # The reference's components, verbatim but for the regex; the added tokens after the BPE vocabulary.
    spec["normalizer"] = copy.deepcopy(reference_tok["normalizer"])
    spec["pre_tokenizer"] = pre
    spec["post_processor"] = copy.deepcopy(reference_tok["post_processor"])
    spec["decoder"] = copy.deepcopy(reference_tok["decoder"])
    for key in ("dropout", "unk_token", "continuing_subword_prefix", "end_of_word_suffix", "fuse_unk",
                "byte_fallback", "ignore_merges"):
        spec["model"][key] = reference_tok["model"].get(key)
    spec["added_tokens"] = []
    for i, t in enumerate(added):
        entry = dict(t)
        entry["id"] = n + i
        spec["added_tokens"].append(entry)
    spec["truncation"] = None
    spec["padding"] = None

    cfg = {k: copy.deepcopy(v) for k, v in reference_cfg.items() if k != "added_tokens_decoder"}
    cfg["added_tokens_decoder"] = {
        str(t["id"]): {k: t[k] for k in ("content", "lstrip", "normalized", "rstrip", "single_word", "special")}
        for t in spec["added_tokens"]}
    cfg["model_max_length"] = 32768
    return spec, cfg


def check(spec, cfg, texts):
    """Loads the result with `tokenizers` and checks round trips and the special tokens."""
    from tokenizers import Tokenizer
    tok = Tokenizer.from_str(json.dumps(spec, ensure_ascii=False))
    for t in spec["added_tokens"]:
        ids = tok.encode(t["content"]).ids
        if ids != [t["id"]]:
            raise AssertionError(f"{t['content']} encodes to {ids}, not [{t['id']}]")
    for text in texts:
        ids = tok.encode(text).ids
        back = tok.decode(ids, skip_special_tokens=False)
        if back != text:
            raise AssertionError(f"round trip changed {text[:60]!r} into {back[:60]!r}")
    return tok


def write(out_dir, spec, cfg):
    os.makedirs(out_dir, exist_ok=True)
    with open(os.path.join(out_dir, "tokenizer.json"), "w", encoding="utf-8") as f:
        json.dump(spec, f, ensure_ascii=False, indent=1)
    with open(os.path.join(out_dir, "tokenizer_config.json"), "w", encoding="utf-8") as f:
        json.dump(cfg, f, ensure_ascii=False, indent=1)


def token_ids(spec):
    """The ids of the tokens a training run needs."""
    by_content = {t["content"]: t["id"] for t in spec["added_tokens"]}
    return {"endoftext": by_content["<|endoftext|>"], "im_start": by_content["<|im_start|>"],
            "im_end": by_content["<|im_end|>"],
            "vocab_size": len(spec["model"]["vocab"]) + len(spec["added_tokens"])}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("train_txt")
    ap.add_argument("out")
    ap.add_argument("--vocab-size", type=int, default=8192)
    ap.add_argument("--min-frequency", type=int, default=2)
    ap.add_argument("--reference", default=DEFAULT_REFERENCE, help="directory of Qwen3's tokenizer files")
    args = ap.parse_args(argv)
    import time
    t0 = time.time()
    ref_tok, ref_cfg = load_reference(args.reference)
    spec, cfg = train(iter_documents(args.train_txt), args.vocab_size, ref_tok, ref_cfg, args.min_frequency)
    samples = [d for _, d in zip(range(200), iter_documents(args.train_txt))]
    samples.append("<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\nHello")
    tok = check(spec, cfg, samples)
    write(args.out, spec, cfg)
    ids = token_ids(spec)
    print(f"train_tokenizer: {ids['vocab_size']} tokens ({len(spec['model']['merges'])} merges, "
          f"{len(spec['added_tokens'])} added; <|endoftext|> {ids['endoftext']}, <|im_end|> {ids['im_end']}) "
          f"in {time.time() - t0:.0f} s -> {args.out}")
    return tok


if __name__ == "__main__":
    main()
    sys.exit(0)
