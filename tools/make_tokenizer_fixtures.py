#!/usr/bin/env python3
"""Golden fixtures for the C++ tokenizer (tests/tokenizer), made with the `tokenizers` library.

    make_tokenizer_fixtures.py QWEN3_TOKENIZER_JSON OUT_DIR

Writes, into OUT_DIR, one fixture set per tokenizer: <name>.json holding the tokenizer.json path and
the cases {text, parse_special, ids, decoded, decoded_skip_special} (encoding) and {ids, decoded,
decoded_skip_special} (decoding, including ids whose bytes are not UTF-8), plus index.json naming the
sets. The tokenizers:

  qwen3         the given Qwen3 tokenizer.json
  small_qwen35  a byte-level BPE trained here with Qwen3.5's split regex (letters join \\p{M} marks),
                NFC, a few hundred merges and the Qwen special tokens
  small_legacy  the same model with merges written as "a b" strings, ignore_merges on, and added tokens
                that use lstrip, rstrip, single_word and normalized

Run it with the project venv's python (scripts/setup.sh); CTest runs it as the tokenizer_fixtures
fixture.
"""
import json
import os
import random
import sys

from tokenizers import (AddedToken, Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers,
                        processors, trainers)

QWEN_SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<think>", "</think>"]
QWEN3_LETTERS = r"[^\r\n\p{L}\p{N}]?\p{L}+"
QWEN35_LETTERS = r"[^\r\n\p{L}\p{N}]?[\p{L}\p{M}]+"


def corpus():
    """(name, text) pairs covering what the tokenizer must get exactly right."""
    cases = [
        ("empty", ""),
        ("ascii", "Hello world! The quick brown fox jumps over the lazy dog."),
        ("contractions", "I'm sure they'RE here, it's John's; we'VE said we'll go, I'd've. DON'T 'S 'T"),
        ("prose", "Tokenization is the first step: text becomes pieces, pieces become ids.\n\n"
                  "It has to match the reference byte for byte, or the model sees a different prompt."),
        ("code_python", "def f(x, *args, **kw):\n    \"\"\"Doc.\"\"\"\n"
                        "    return {'a': x ** 2, \"b\": [1, 2]}\n\n\n"
                        "if __name__ == '__main__':\n\tprint(f(3))  # trailing   \n"),
        ("code_cpp", "template <typename T>\nstd::vector<T> v{1, 2, 3};\nfor (auto& x : v) { x <<= 1; }\n"
                     "#include <iostream>\nint main() { return 0; }//end\r\n"),
        ("json", '{"key": [1.5e-3, -2, null, true], "nested": {"a b": "c\\"d"}}'),
        ("html", "<div class=\"x\">&nbsp;<br/><a href='https://example.com/path?q=1&r=2'>link</a></div>"),
        ("emoji", "I ❤️ tokens 😀😃😄 👍 🎉🎉🎉"),
        ("emoji_zwj", "family 👨‍👩‍👧‍👦 couple 👩‍❤️‍💋‍👨 technologist 🧑🏽‍💻 rainbow 🏳️‍🌈"),
        ("emoji_skin_tones", "👋🏻 👋🏼 👋🏽 👋🏾 👋🏿 👍🏽👍🏿"),
        ("emoji_flags_keycaps", "🇯🇵🇺🇸🇩🇪 1️⃣ #️⃣ *️⃣ ©️ ™️ ☺︎"),
        ("chinese", "你好，世界！今天天气很好。我们在测试分词器：中文、標點和數字123。"),
        ("japanese", "日本語のテキストです。カタカナとひらがな、漢字が混ざっています。ｶﾀｶﾅ"),
        ("korean", "안녕하세요, 세계! 한국어 문장입니다."),
        ("korean_jamo_decomposed", "\u1112\u1161\u11ab\u1100\u1173\u11af \u110b\u1161\u11ab"),
        ("arabic", "مَرْحَبًا بِالْعَالَمِ! هذا نصّ عربيّ مع تشكيل ١٢٣٤٥"),
        ("hebrew", "שָׁלוֹם עוֹלָם"),
        ("hindi", "नमस्ते दुनिया! यह हिन्दी पाठ है। क़ ख़ ग़ ज़ ड़ ढ़ फ़ य़ ०१२३"),
        ("hindi_decomposed_nukta", "\u0915\u093c\u0916\u093c \u0921\u093c"),
        ("bengali_tamil_thai", "বাংলা ড় ঢ় য় তামিল தமிழ் ภาษาไทย สวัสดี"),
        ("accents_precomposed", "café naïve résumé Ångström Œuvre ñ ü ß"),
        ("accents_decomposed", "cafe\u0301 nai\u0308ve re\u0301sume\u0301 A\u030angstro\u0308m n\u0303"),
        ("accents_mixed_order", "e\u0323\u0301 e\u0301\u0323 \u1e9b\u0323 a\u0328\u0301 q\u0307\u0323"),
        ("nfc_singletons", "\u212b \u2126 \u212a \uf900 \u0958 \u2000 \u1fee ﬁ ＡＢＣ"),
        ("marks_standalone", "\u0301start \u0300\u0301 x\u20dd \u0e31\u0e48"),
        ("new_unicode", "Kawi \U00011f04\U00011f34\U00011f05 Kaktovik \U0001d2c0\U0001d2c5 "
                        "CJK-H \U00031350\U00031351 Nag Mundari \U0001e4d0\U0001e4ec "
                        "mark \u1df6 a\u0301\u1df6\u0308 \u180e \u0085"),
        ("digits", "0 1 22 333 4444 55555 3.14159265358979 1,000,000 -42 +7 1e10 0x1F 2024-11-29"),
        ("long_number", "123456789012345678901234567890123456789012345678901234567890"),
        ("other_digits", "٠١٢٣٤٥ ０１２３ ²³¹ ½ ⅓ Ⅻ ① ໑໒"),
        ("whitespace_runs", "a  b   c    d\t\te\n\nf\n\n\ng \t \n h\r\n\r\ni"),
        ("trailing_spaces", "line with trailing spaces   \nnext line\t\t\n   \n"),
        ("leading_spaces", "   leading and\n    indented\n\tcode"),
        ("only_spaces", "     "),
        ("only_newlines", "\n\n\n\n"),
        ("unicode_spaces", "a\u00a0b\u3000c\u2028d\u2029e\u2009f\u200bg\ufeffh\u202fi"),
        ("control_chars", "\x00\x01\x07\x1b[0m\x7f end"),
        ("punctuation", "!!! ??? ... --- *** ;;; ,,, \"\" '' `` ~~ ^^ || \\\\ // @@ ## $$ %% &&"),
        ("mixed_scripts", "English русский Ελληνικά 中文 العربية हिन्दी 日本語 한국어 ქართული"),
        ("special_inline", "<|im_start|>user\nHi there<|im_end|>\n<|im_start|>assistant\n"
                           "<think>\n\n</think>\n\nHello!<|im_end|><|endoftext|>"),
        ("special_adjacent", "<|im_end|><|im_start|><|im_start|>x<|endoftext|><|endoftext|>"),
        ("special_in_word", "abc<|endoftext|>def and<think>inline</think>tags"),
        ("special_partial", "<|im_start <|im_start| <|im_end|> <<|im_end|>> <|endoftext|| <think"),
        ("special_spaces", "  <|im_start|>  system  <|im_end|>  "),
        ("tool_call", "<tool_call>\n{\"name\": \"f\", \"arguments\": {}}\n</tool_call>"),
        ("long_letter_run", "a" * 3000),
        ("long_space_run", " " * 2000 + "x"),
        ("long_newline_run", "\n" * 1000),
        ("long_punct_run", "!?" * 400),
        ("long_emoji_run", "😀👍🏽" * 200),
        ("long_word_repeat", "supercalifragilisticexpialidocious" * 60),
        ("long_digits", "9876543210" * 100),
        ("long_cjk", "中文分词测试" * 300),
        ("long_mixed", ("The year 2024 was 😀 great; 你好 世界! \n\t" * 120)),
    ]
    return cases


def sweep_texts():
    """Every code point of many blocks, each in a few contexts: classes and NFC, code point by code point."""
    ranges = [(0x20, 0x3400), (0xA000, 0xD800), (0xF900, 0x10000), (0x10000, 0x11000), (0x11000, 0x12000),
              (0x16000, 0x17000), (0x1D000, 0x1F000), (0x1F000, 0x1FC00), (0x31340, 0x31360),
              (0xE0000, 0xE0080), (0x4E00, 0x4E80), (0xAC00, 0xAC80)]
    out = []
    for lo, hi in ranges:
        for start in range(lo, hi, 256):
            chars = [chr(c) for c in range(start, min(start + 256, hi)) if not 0xD800 <= c <= 0xDFFF]
            text = "".join(f"{ch}{ch}a{ch} {ch}\u0301 1{ch}\n" for ch in chars)
            out.append((f"sweep_{start:05X}", text))
    return out


def random_texts(rng, words, n):
    out = []
    for i in range(n):
        k = rng.randint(1, 40)
        pieces = []
        for _ in range(k):
            r = rng.random()
            if r < 0.1:
                pieces.append(rng.choice(QWEN_SPECIALS + ["<tool_call>", "<|im_start", " ", "\n", "\t"]))
            elif r < 0.2:
                pieces.append(rng.choice([" ", "  ", "\n", "\n\n", " \n", "\t", "\r\n"]))
            else:
                pieces.append(rng.choice(words))
        out.append((f"random_{i:03d}", "".join(pieces)))
    return out


def byte_level_alphabet():
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(0xA1, 0xAD)) + list(range(0xAE, 0x100))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return {b: chr(c) for b, c in zip(bs, cs)}


def byte_ids(tok):
    vocab = tok.get_vocab(with_added_tokens=False)
    return {b: vocab[ch] for b, ch in byte_level_alphabet().items() if ch in vocab}


def decode_cases(tok, rng, n_random):
    """Id sequences to decode, many of them not UTF-8: lone and truncated bytes, surrogates, overlong."""
    b = byte_ids(tok)
    enc = lambda s: tok.encode(s).ids  # noqa: E731
    bad_bytes = [0x80, 0xBF, 0xC0, 0xC1, 0xC2, 0xDF, 0xE0, 0xED, 0xEF, 0xF0, 0xF4, 0xF5, 0xF8, 0xFF]
    cases = []
    for x in bad_bytes:
        cases.append((f"lone_{x:02X}", [b[x]]))
        cases.append((f"lone_{x:02X}_in_text", enc("ab") + [b[x]] + enc("cd")))
    sequences = {
        "truncated_2_of_3": [0xE4, 0xB8],
        "truncated_2_of_3_then_ascii": [0xE4, 0xB8, 0x41],
        "truncated_3_of_4": [0xF0, 0x9F, 0x98],
        "truncated_3_of_4_then_valid": [0xF0, 0x9F, 0x98, 0xE4, 0xB8, 0xAD],
        "overlong_2": [0xC0, 0x80],
        "overlong_3": [0xE0, 0x80, 0x80],
        "overlong_4": [0xF0, 0x80, 0x80, 0x80],
        "surrogate": [0xED, 0xA0, 0x80],
        "surrogate_pair": [0xED, 0xA0, 0xBD, 0xED, 0xB8, 0x80],
        "above_max": [0xF4, 0x90, 0x80, 0x80],
        "continuations": [0x80, 0x80, 0x80, 0x41],
        "valid_split_4": [0xF0, 0x9F, 0x98, 0x80],
        "valid_split_3": [0xE4, 0xB8, 0xAD],
        "lead_lead": [0xE4, 0xE4, 0xB8, 0xAD],
    }
    for name, seq in sequences.items():
        cases.append((name, [b[x] for x in seq]))
    # Vocab tokens that are themselves incomplete UTF-8 (a character split across tokens).
    partial = []
    for token, i in sorted(tok.get_vocab(with_added_tokens=False).items(), key=lambda kv: kv[1]):
        try:
            tok.decode([i]).encode("utf-8")
        except UnicodeEncodeError:
            continue
        if "\ufffd" in tok.decode([i]) and len(token) > 1:
            partial.append(i)
    for j, i in enumerate(partial[:40]):
        cases.append((f"partial_token_{j:02d}", [i]))
    for j in range(0, min(len(partial), 60) - 1, 2):
        cases.append((f"partial_pair_{j:02d}", [partial[j], partial[j + 1]]))
    size = tok.get_vocab_size(with_added_tokens=True)
    specials = [tok.token_to_id(s) for s in QWEN_SPECIALS if tok.token_to_id(s) is not None]
    cases.append(("specials_between_text", specials + enc("hi") + specials))
    for k in range(n_random):
        ids = [rng.randrange(size) for _ in range(rng.randint(1, 30))]
        cases.append((f"random_ids_{k:03d}", ids))
    out = []
    for name, ids in cases:
        out.append({"name": name, "ids": ids, "decoded": tok.decode(ids, skip_special_tokens=False),
                    "decoded_skip_special": tok.decode(ids, skip_special_tokens=True)})
    return out


def encode_cases(tok, texts):
    out = []
    for parse_special in (True, False):
        tok.encode_special_tokens = not parse_special
        for name, text in texts:
            if not parse_special and not name.startswith(("special", "tool_call", "random")):
                continue
            ids = tok.encode(text).ids
            out.append({"name": name, "text": text, "parse_special": parse_special, "ids": ids,
                        "decoded": tok.decode(ids, skip_special_tokens=False),
                        "decoded_skip_special": tok.decode(ids, skip_special_tokens=True)})
    tok.encode_special_tokens = False
    return out


def train_small(qwen3_regex, texts):
    regex = qwen3_regex.replace(QWEN3_LETTERS, QWEN35_LETTERS, 1)
    assert regex != qwen3_regex, "the Qwen3 letter branch was not found in the split regex"
    tok = Tokenizer(models.BPE())
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(regex), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    tok.decoder = decoders.ByteLevel()
    alphabet = pre_tokenizers.ByteLevel.alphabet()
    trainer = trainers.BpeTrainer(vocab_size=len(alphabet) + len(QWEN_SPECIALS) + 400, min_frequency=2,
                                  special_tokens=QWEN_SPECIALS, initial_alphabet=alphabet,
                                  show_progress=False)
    tok.train_from_iterator(texts, trainer)
    return tok


def legacy_variant(small):
    """The small model with "a b" merges and ignore_merges, plus added tokens exercising every flag."""
    tok = Tokenizer.from_str(small.to_str())
    tok.add_tokens([
        AddedToken("<tool_call>", special=False, normalized=False),
        AddedToken("wordy", single_word=True, normalized=False),
        AddedToken("cafe\u0301", normalized=True),
    ])
    tok.add_special_tokens([
        AddedToken("[MASK]", lstrip=True, rstrip=True, special=True, normalized=False),
        AddedToken("<pad>", lstrip=True, special=True, normalized=False),
    ])
    spec = json.loads(tok.to_str())
    spec["model"]["merges"] = [" ".join(m) if isinstance(m, list) else m for m in spec["model"]["merges"]]
    spec["model"]["ignore_merges"] = True
    return Tokenizer.from_str(json.dumps(spec)), spec


def write_set(out_dir, name, tokenizer_path, tok, texts, rng, n_random_decode):
    data = {"name": name, "tokenizer": os.path.abspath(tokenizer_path),
            "vocab_size": tok.get_vocab_size(with_added_tokens=True),
            "encode": encode_cases(tok, texts), "decode": decode_cases(tok, rng, n_random_decode)}
    with open(os.path.join(out_dir, f"{name}.json"), "w", encoding="utf-8") as f:
        json.dump(data, f, ensure_ascii=False)
    return len(data["encode"]), len(data["decode"])


def main():
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    qwen3_path, out_dir = sys.argv[1], sys.argv[2]
    os.makedirs(out_dir, exist_ok=True)
    rng = random.Random(20261129)

    base = corpus()
    words = sorted({w for _, t in base for w in t.replace("\n", " ").split(" ") if w})
    texts = base + random_texts(rng, words, 200)
    extra_for_legacy = [("legacy_flags", "x [MASK] y  [MASK]  z[MASK]w <pad> <pad>q wordy wordyx xwordy "
                                         "(wordy) cafe\u0301 café <tool_call>"),
                        ("legacy_flags_lines", "\n[MASK]\n\t<pad>\n wordy\nwordy.\ncafé!")]

    qwen3 = Tokenizer.from_file(qwen3_path)
    summary = {}
    summary["qwen3"] = write_set(out_dir, "qwen3", qwen3_path, qwen3, texts + sweep_texts(), rng, 200)

    with open(qwen3_path, encoding="utf-8") as f:
        qwen3_regex = json.load(f)["pre_tokenizer"]["pretokenizers"][0]["pattern"]["Regex"]
    training = [t for _, t in base] * 3 + [t for _, t in texts]
    small = train_small(qwen3_regex, training)
    small_path = os.path.join(out_dir, "small_qwen35_tokenizer.json")
    small.save(small_path)
    summary["small_qwen35"] = write_set(out_dir, "small_qwen35", small_path, small, texts, rng, 100)

    legacy, legacy_spec = legacy_variant(small)
    legacy_path = os.path.join(out_dir, "small_legacy_tokenizer.json")
    with open(legacy_path, "w", encoding="utf-8") as f:
        json.dump(legacy_spec, f, ensure_ascii=False)
    summary["small_legacy"] = write_set(out_dir, "small_legacy", legacy_path, legacy,
                                        texts + extra_for_legacy, rng, 100)

    with open(os.path.join(out_dir, "index.json"), "w", encoding="utf-8") as f:
        json.dump({"sets": sorted(summary)}, f)
    for name, (n_enc, n_dec) in sorted(summary.items()):
        print(f"{name}: {n_enc} encode cases, {n_dec} decode cases")


if __name__ == "__main__":
    main()
