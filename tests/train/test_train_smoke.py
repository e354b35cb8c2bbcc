#!/usr/bin/env python3
"""Smoke test of the training pipeline in tools/train (unittest; CTest runs it as train_smoke).

One smoke run (train_qwen35_small.py --smoke: a byte-level BPE trained on /usr/share/common-licenses, a
tiny Qwen3.5 model, 40 CPU steps) is shared by the tests, which check that the loss went down, that the
checkpoint is complete and transformers reloads it with identical logits and greedy tokens, that the
tokenizer has Qwen's layout and chat template, that training runs without the `tokenizers` library,
the corpus builder's cleaning, and, when DELTASERVE_GENERATE names the deltaserve-generate binary, that
deltaserve loads the checkpoint and generates transformers' greedy tokens.

    python tests/train/test_train_smoke.py            # needs torch, transformers, tokenizers, safetensors
"""
import json
import os
import subprocess
import sys
import tempfile
import time
import unittest

import numpy as np

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
TRAIN = os.path.join(ROOT, "tools", "train")
sys.path.insert(0, TRAIN)
QWEN3_DIR = os.path.join(ROOT, "tests", "data", "qwen3-tokenizer")


def load_json(path):
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def run(*cmd, timeout=300, env=None):
    return subprocess.run(list(cmd), capture_output=True, text=True, timeout=timeout, env=env)


class TrainSmokeTest(unittest.TestCase):
    tmp = None
    ckpt = None
    log = None

    @classmethod
    def setUpClass(cls):
        cls.tmp = tempfile.TemporaryDirectory(prefix="train-smoke-")
        cls.ckpt = os.path.join(cls.tmp.name, "ckpt")
        t0 = time.time()
        r = run(sys.executable, os.path.join(TRAIN, "train_qwen35_small.py"), "--smoke", "--out", cls.ckpt,
                "--threads", "2")
        cls.smoke_seconds = time.time() - t0
        cls.smoke = r
        if r.returncode == 0:
            with open(os.path.join(cls.ckpt, "train_log.json")) as f:
                cls.log = json.load(f)

    @classmethod
    def tearDownClass(cls):
        cls.tmp.cleanup()

    def setUp(self):
        self.assertEqual(self.smoke.returncode, 0, f"smoke run failed:\n{self.smoke.stdout[-3000:]}\n"
                                                   f"{self.smoke.stderr[-3000:]}")

    def test_loss_goes_down(self):
        losses = self.log["smoke_losses"]
        self.assertEqual(len(losses), 40)
        self.assertLess(sum(losses[-5:]) / 5, 0.85 * sum(losses[:3]) / 3)
        evals = self.log["evals"]
        self.assertLess(evals[-1]["loss"], evals[0]["loss"] - 0.5)
        self.assertTrue(np.isfinite(self.log["final"]["test_ppl"]))
        # About 11 s on an idle 2-core machine; not asserted, since a loaded machine can take several times that.
        print(f"\nsmoke run: {self.smoke_seconds:.1f} s", file=sys.stderr)

    def test_checkpoint_files(self):
        for name in ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json",
                     "generation_config.json", "train_log.json"):
            self.assertTrue(os.path.exists(os.path.join(self.ckpt, name)), name)
        cfg = load_json(os.path.join(self.ckpt, "config.json"))
        self.assertEqual(cfg["architectures"], ["Qwen3_5ForCausalLM"])
        self.assertEqual(cfg["model_type"], "qwen3_5_text")
        self.assertEqual(cfg["vocab_size"] % 64, 0)
        self.assertTrue(cfg["tie_word_embeddings"])
        self.assertEqual(cfg["layer_types"], ["linear_attention"] * 3 + ["full_attention"])
        self.assertEqual(cfg["rope_parameters"]["partial_rotary_factor"], 0.25)
        self.assertEqual(cfg["linear_conv_kernel_dim"], 4)
        self.assertLess(cfg["num_key_value_heads"], cfg["num_attention_heads"])
        gen = load_json(os.path.join(self.ckpt, "generation_config.json"))
        tok = load_json(os.path.join(self.ckpt, "tokenizer.json"))
        ids = {t["content"]: t["id"] for t in tok["added_tokens"]}
        self.assertEqual(gen["eos_token_id"], [ids["<|im_end|>"], ids["<|endoftext|>"]])
        self.assertEqual(cfg["eos_token_id"], ids["<|endoftext|>"])
        from safetensors import safe_open
        with safe_open(os.path.join(self.ckpt, "model.safetensors"), "pt") as f:
            names = set(f.keys())
        self.assertIn("model.embed_tokens.weight", names)
        self.assertNotIn("lm_head.weight", names)  # tied

    def test_reload_identical_logits(self):
        import torch
        from transformers import AutoModelForCausalLM
        self.assertEqual(self.log["reload"]["max_abs_logit_diff"], 0.0)
        model = AutoModelForCausalLM.from_pretrained(self.ckpt, dtype=torch.float32).eval()
        self.assertEqual(type(model).__name__, "Qwen3_5ForCausalLM")
        probe = self.log["probe"]
        ids = torch.tensor([probe["prompt_ids"]])
        with torch.no_grad():
            last = model(input_ids=ids).logits[0, -1]
            out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), do_sample=False,
                                 max_new_tokens=len(probe["greedy_ids"]),
                                 min_new_tokens=len(probe["greedy_ids"]), eos_token_id=None, pad_token_id=0,
                                 repetition_penalty=1.0)
        for token, value in probe["last_logits_top20"]:
            self.assertEqual(float(last[token]), value)
        self.assertEqual(out[0, len(probe["prompt_ids"]):].tolist(), probe["greedy_ids"])

    def test_tokenizer_layout_and_chat_template(self):
        from tokenizers import Tokenizer
        from transformers import AutoTokenizer
        spec = load_json(os.path.join(self.ckpt, "tokenizer.json"))
        ref = load_json(os.path.join(QWEN3_DIR, "tokenizer.json"))
        n = len(spec["model"]["vocab"])
        self.assertEqual([t["content"] for t in spec["added_tokens"]], [t["content"] for t in ref["added_tokens"]])
        self.assertEqual([t["id"] for t in spec["added_tokens"]], list(range(n, n + len(ref["added_tokens"]))))
        for ours, theirs in zip(spec["added_tokens"], ref["added_tokens"]):
            self.assertEqual({k: v for k, v in ours.items() if k != "id"}, {k: v for k, v in theirs.items() if k != "id"})
        for key in ("normalizer", "post_processor", "decoder"):
            self.assertEqual(spec[key], ref[key], key)
        regex = spec["pre_tokenizer"]["pretokenizers"][0]["pattern"]["Regex"]
        self.assertIn(r"[^\r\n\p{L}\p{N}]?[\p{L}\p{M}]+", regex)
        self.assertEqual(spec["pre_tokenizer"]["pretokenizers"][1], ref["pre_tokenizer"]["pretokenizers"][1])
        tok = Tokenizer.from_file(os.path.join(self.ckpt, "tokenizer.json"))
        text = "Copying and distribution — naïve café, <think>x</think> 2024!\n"
        self.assertEqual(tok.decode(tok.encode(text).ids, skip_special_tokens=False), text)
        ours = AutoTokenizer.from_pretrained(self.ckpt)
        theirs = AutoTokenizer.from_pretrained(QWEN3_DIR)
        messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"},
                    {"role": "assistant", "content": "<think>\nhm\n</think>\n\nHello."},
                    {"role": "user", "content": "What is GPL?"}]
        for kw in ({}, {"enable_thinking": False}):
            self.assertEqual(ours.apply_chat_template(messages, tokenize=False, add_generation_prompt=True, **kw),
                             theirs.apply_chat_template(messages, tokenize=False, add_generation_prompt=True, **kw))
        self.assertEqual(ours.eos_token, "<|im_end|>")
        self.assertEqual(ours.convert_tokens_to_ids("<|im_start|>"), n + 1)

    def test_trains_without_tokenizers_library(self):
        """The GPU side may lack `tokenizers`: a pre-tokenized bundle must train with it hidden."""
        import tokenizers
        site = os.path.dirname(os.path.dirname(os.path.abspath(tokenizers.__file__)))
        with tempfile.TemporaryDirectory() as tmp:
            shadow = os.path.join(tmp, "site")
            os.makedirs(shadow)
            for name in os.listdir(site):
                if name == "tokenizers" or name.startswith("tokenizers-"):
                    continue
                os.symlink(os.path.join(site, name), os.path.join(shadow, name))
            bundle = os.path.join(tmp, "bundle")
            os.makedirs(bundle)
            for name in ("tokenizer.json", "tokenizer_config.json"):
                with open(os.path.join(self.ckpt, name), "rb") as src, open(os.path.join(bundle, name), "wb") as dst:
                    dst.write(src.read())
            info = dict(self.log["data"])
            rng = np.random.default_rng(0)
            for split, n in (("train", 6000), ("test", 1000)):
                np.save(os.path.join(bundle, f"{split}.npy"),
                        rng.integers(0, info["vocab_size"], n).astype(np.uint16))
                info[split] = {"file": f"{split}.npy", "tokens": n, "text_bytes": 3 * n}
            with open(os.path.join(bundle, "data.json"), "w") as f:
                json.dump(info, f)
            env = dict(os.environ, PYTHONPATH=shadow)
            out = os.path.join(tmp, "out")
            r = run(sys.executable, "-S", os.path.join(TRAIN, "train_qwen35_small.py"), "--data", bundle,
                    "--out", out, "--preset", "smoke", "--device", "cpu", "--max-steps", "3", "--seq-len", "64",
                    "--batch-size", "2", "--threads", "2", env=env)
            self.assertEqual(r.returncode, 0, r.stdout[-2000:] + r.stderr[-2000:])
            self.assertIn("tokenizers library is missing", r.stdout)
            self.assertTrue(os.path.exists(os.path.join(out, "model.safetensors")))

    def test_deltaserve_generate(self):
        binary = os.environ.get("DELTASERVE_GENERATE")
        if not binary:
            self.skipTest("DELTASERVE_GENERATE is not set")
        r = run(sys.executable, os.path.join(TRAIN, "check_deltaserve.py"), self.ckpt, binary)
        self.assertEqual(r.returncode, 0, r.stdout[-3000:] + r.stderr[-3000:])


class CorpusTest(unittest.TestCase):
    def test_html_to_text(self):
        import build_corpus as bc
        html = (b"<html><head><title>T</title><script>x=1</script></head><body>"
                b"<div class='navheader'>Prev Next</div><div role='main'><h1>Title</h1><p>One  two\nthree.</p>"
                b"<ul><li><p>first</p></li><li>second</li></ul><pre>a  b\n  c</pre></div>"
                b"<div class='footer'>(c)</div></body></html>")
        text = bc.clean_text(bc.html_to_text(html, ("role", "main")))
        self.assertEqual(text, "Title\n\nOne two three.\n\n- first\n- second\n\na  b\n  c\n")

    def test_clean_text(self):
        import build_corpus as bc
        text = bc.clean_text("Mail me at jo.doe@example.org\r\n\x07please <|endoftext|> <think>\n\n\n\nend   \n")
        self.assertEqual(text, "Mail me at <email>\nplease < |endoftext|> < think>\n\nend\n")
        self.assertIsNone(bc.QWEN_TOKEN_STRINGS.search(text))

    def test_fortunes_and_paragraph_dedup(self):
        import build_corpus as bc
        self.assertEqual(bc.split_fortunes(b"one\n%\ntwo\nlines\n%\n"), ["one", "two\nlines"])
        seen = set()
        para = "x " * 150
        self.assertIn(para, bc.drop_repeated_paragraphs(f"a\n\n{para}", seen))
        self.assertNotIn(para, bc.drop_repeated_paragraphs(f"b\n\n{para}", seen))

    def test_build_licenses_source(self):
        """A real run on the one source every Debian system has (base-files' common-licenses)."""
        with tempfile.TemporaryDirectory() as out:
            r = run(sys.executable, os.path.join(TRAIN, "build_corpus.py"), out, "--sources", "licenses",
                    "--test-fraction", "0.2")
            self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
            manifest = load_json(os.path.join(out, "manifest.json"))
            src = manifest["sources"][0]
            self.assertEqual(src["name"], "licenses")
            self.assertGreater(src["documents"], 5)
            self.assertEqual(src["packages"][0]["package"], "base-files")
            with open(os.path.join(out, "train.txt"), encoding="utf-8") as f:
                train = f.read()
            docs = train.split("<|endoftext|>")
            self.assertEqual(docs[-1], "")
            self.assertTrue(all(d.endswith("\n") for d in docs[:-1]))
            self.assertEqual(manifest["train"]["documents"] + manifest["test"]["documents"], src["documents"])


if __name__ == "__main__":
    unittest.main(verbosity=2)
