#!/usr/bin/env python3
"""Converts a Hugging Face checkpoint to GGUF for llama.cpp by running llama.cpp's own
convert_hf_to_gguf.py unchanged, with one fallback: a BPE pre-tokenizer it does not know by hash. (The
converter recognises tokenizers by hashing the ids of a fixed test string, so a tokenizer it has not
listed fails with "BPE pre-tokenizer was not recognized".) Used by scripts/gpu_serving_bench.sh to give
llama-server the same random checkpoint deltaserve serves. Adapted from the project's shared GPU recipe
(recipes/gpu-anchors/convert_gguf.py).

Usage: PYTHONPATH=LLAMA_CPP_SRC/gguf-py convert_gguf.py LLAMA_CPP_SRC [--pre NAME] -- CONVERTER_ARGS...
  --pre NAME  the tokenizer.ggml.pre value to write when the hash is unknown (e.g. qwen35).
              Without it, an unknown hash fails exactly as upstream does.
Example: convert_gguf.py /tmp/lc/src --pre qwen35 -- CKPT --no-mtp --outtype bf16 --outfile X.gguf
"""
import os
import runpy
import sys


def main():
    argv = sys.argv[1:]
    if not argv or argv[0] in ("-h", "--help"):
        print(__doc__)
        return 0 if argv else 2
    src = os.path.realpath(argv.pop(0))
    pre = None
    if argv and argv[0] == "--pre":
        pre = argv[1]
        argv = argv[2:]
    if argv and argv[0] == "--":
        argv = argv[1:]

    sys.path.insert(0, src)
    import conversion.base as base  # noqa: E402  (the converter's own package)

    original = base.TextModel.get_vocab_base_pre

    def get_vocab_base_pre(self, tokenizer):
        try:
            return original(self, tokenizer)
        except NotImplementedError:
            if pre is None:
                raise
            print(f"convert_gguf.py: unknown pre-tokenizer hash, writing tokenizer.ggml.pre = {pre!r}",
                  file=sys.stderr)
            return pre

    base.TextModel.get_vocab_base_pre = get_vocab_base_pre
    sys.argv = [os.path.join(src, "convert_hf_to_gguf.py")] + argv
    runpy.run_path(sys.argv[0], run_name="__main__")
    return 0


if __name__ == "__main__":
    sys.exit(main())
