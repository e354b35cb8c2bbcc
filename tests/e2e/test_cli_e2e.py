#!/usr/bin/env python3
"""End-to-end test of deltaserve-cli, run as a user would against the real deltaserve server binary.

Both binaries run as separate processes: the server on a random-weight Qwen3.5 checkpoint with Qwen3's
real tokenizer (tools/make_random_qwen35.py tiny-qwen3-vocab, in a temporary folder), the client as
`deltaserve-cli COMMAND ... --server=127.0.0.1:PORT` with its exit code, stdout and stderr checked. What
the client prints is checked against independent references: the `tokenizers` library for the text, and
direct Generate calls through Python grpcio stubs (generated from proto/ at test time) for the tokens.
The setup and the grpcio helpers are test_server_e2e.py's, imported from beside this file.

Usage:
  test_cli_e2e.py --cli BUILD/client/deltaserve-cli --server BUILD/server/deltaserve --proto-root REPO/proto
                  --repo REPO [unittest args]
Every path may also come from the environment (DELTASERVE_CLI, DELTASERVE_SERVER, DELTASERVE_PROTO_ROOT,
DELTASERVE_REPO); the defaults are relative to this file's place in the repository. --keep keeps the
temporary folder. Unittest arguments follow, e.g. `-v` or `-k Bench`.

Exit codes: 0 passed, 1 failed, 77 skipped (grpcio, grpcio-tools or tokenizers missing from this Python).
"""

import argparse
import errno
import json
import os
import pathlib
import re
import select
import signal
import subprocess
import sys
import time
import unittest

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
import test_server_e2e as base  # noqa: E402  (setup, server processes, grpcio helpers)

CLI = None  # the deltaserve-cli binary
CANCEL_SERVER = None  # a one-slot server for the Ctrl-C test, started by CtrlCTest
VISION_SERVER = None  # a server with the shipped detector for detect-bench, started by DetectBenchTest

# What `generate` prints on stderr after the answer (client/generate_commands.cc, PrintUsage).
USAGE_LINE = re.compile(r"^\[(stop|length|cancelled|error|unfinished); (\d+) prompt \+ (\d+) generated tokens; "
                        r"TTFT ([0-9.]+) ms; ([0-9.]+) tokens/s\]$")
TOKENS_LINE = re.compile(r"^\[tokens: ([0-9,]*)\]$")
LONG = 2000  # max_tokens of the generation interrupted by Ctrl-C: seconds of work, within max_model_len


def setUpModule():
    if CLI is None:  # run by a test runner rather than main()
        parse_args([])
    base.setUpModule()


def tearDownModule():
    base.tearDownModule()


# ---------------------------------------------------------------------------------------------------
# Running the client.


class CliRun:
    """One finished deltaserve-cli process."""

    def __init__(self, argv, rc, out_bytes, err_bytes, seconds):
        self.argv = argv
        self.rc = rc
        self.out_bytes = out_bytes
        self.out = out_bytes.decode("utf-8")  # the server never sends invalid UTF-8: strict on purpose
        self.err = err_bytes.decode("utf-8", errors="replace")
        self.seconds = seconds

    def __repr__(self):
        return (f"$ {' '.join(self.argv)}\nexit {self.rc} after {self.seconds:.2f} s\n"
                f"--- stdout ---\n{self.out}\n--- stderr ---\n{self.err}")

    @property
    def err_lines(self):
        return [l for l in self.err.splitlines() if l.strip()]

    def usage(self):
        """The usage line: (finish reason, prompt tokens, generated tokens, ttft_ms), or None."""
        for line in self.err_lines:
            m = USAGE_LINE.match(line)
            if m:
                return m.group(1), int(m.group(2)), int(m.group(3)), float(m.group(4))
        return None

    def token_ids(self):
        """The ids of the --show-tokens line, or None."""
        for line in self.err_lines:
            m = TOKENS_LINE.match(line)
            if m:
                return [int(x) for x in m.group(1).split(",") if x]
        return None


def cli_command(args, server):
    """The command line: the subcommand and its arguments, then --server as a user would add it."""
    address = [] if server is False else [f"--server={(server or base.SERVER).address}"]
    return [CLI, *args, *address]


def popen_cli(argv, **kw):
    """Starts the client; the binary may be relinked under us (ENOENT / ETXTBSY for a moment): retry."""
    env = dict(os.environ, OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "1"))
    for attempt in range(10):
        base.wait_for_binary(CLI)
        try:
            return subprocess.Popen(argv, env=env, **kw)
        except OSError as e:
            if e.errno in (errno.ENOENT, errno.ETXTBSY, errno.EACCES) and attempt < 9:
                time.sleep(1)
                continue
            raise


def run_cli(*args, server=None, stdin=None, timeout=60):
    """Runs `deltaserve-cli ARGS --server=...` to completion (server=False: no --server flag). stdin is
    text written to the client's stdin, or None for an empty stdin."""
    argv = cli_command(list(args), server)
    t0 = time.monotonic()
    proc = popen_cli(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        out, err = proc.communicate((stdin or "").encode(), timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
        raise AssertionError(f"deltaserve-cli did not finish within {timeout} s:\n"
                             f"{CliRun(argv, None, out, err, timeout)!r}")
    return CliRun(argv, proc.returncode, out, err, time.monotonic() - t0)


def shown(text):
    """What the client prints on stdout for a streamed text: the text, plus a newline unless it is empty or
    already ends with one (so the shell prompt does not follow a half line)."""
    return text + "\n" if text and not text.endswith("\n") else text


def tg():
    return base.tg()


def greedy_request(max_tokens, **input_fields):
    return tg().GenerateRequest(sampling=base.greedy(max_tokens), **input_fields)


def generate_counts(server=None):
    """{status code: Generate calls finished} from the server's deltaserve_requests_total."""
    return {code: v for (method, code), v in base.request_counts(server).items() if method == "Generate"}


def settled_generate_counts(server=None, at_least=0, timeout=10):
    """generate_counts() once their total reaches at_least, then a moment later: the server counts a call just
    after its stream ends, so a client may be done a little before its call is counted."""
    deadline = time.monotonic() + timeout
    while sum(generate_counts(server).values()) < at_least and time.monotonic() < deadline:
        time.sleep(0.02)
    time.sleep(0.1)
    return generate_counts(server)


def counts_delta(before, after):
    return {k: v - before.get(k, 0) for k, v in after.items() if v != before.get(k, 0)}


class CliTestCase(base.ServerTestCase):
    maxDiff = 8000

    def assertExit(self, run, rc):
        self.assertEqual(run.rc, rc, f"unexpected exit code:\n{run!r}")

    def assertGenerated(self, run, reference, max_tokens):
        """A `generate --show-tokens` run against the same request's direct grpc stream `reference`: same
        token ids, stdout = their text (also `tokenizers`' decode of the ids) and a complete usage line."""
        self.assertExit(run, 0)
        self.assertWellFormed(reference, max_tokens=max_tokens)
        ids = run.token_ids()
        self.assertIsNotNone(ids, f"no [tokens: ...] line on stderr:\n{run!r}")
        self.assertEqual(ids, reference.ids, f"the client's tokens differ from a direct Generate:\n{run!r}")
        self.assertEqual(run.out, shown(base.decode(ids, skip_special_tokens=True)), repr(run))
        self.assertEqual(run.out, shown(reference.text), repr(run))
        usage = run.usage()
        self.assertIsNotNone(usage, f"no usage line on stderr:\n{run!r}")
        reason, prompt_tokens, generated, ttft_ms = usage
        self.assertEqual(reason, "length", repr(run))
        self.assertEqual(generated, max_tokens, repr(run))
        self.assertEqual(prompt_tokens, reference.last.usage.prompt_tokens, repr(run))
        self.assertGreater(ttft_ms, 0, repr(run))
        # Nothing else on stderr: the usage line and the tokens line.
        self.assertEqual(len(run.err_lines), 2, repr(run))


# ---------------------------------------------------------------------------------------------------
# Tests.


class GenerateTest(CliTestCase):
    GREEDY = ["--temperature", "0", "--ignore-eos", "--show-tokens"]

    def test_greedy_prompt(self):
        prompt = "The capital of France is"
        run = run_cli("generate", prompt, "--temperature", "0", "--max-tokens", "12", "--ignore-eos",
                      "--show-tokens")
        reference = base.generate(greedy_request(12, prompt=prompt))
        self.assertGenerated(run, reference, 12)
        usage_line = next(l for l in run.err_lines if USAGE_LINE.match(l))
        self.assertIn("length", usage_line)
        self.assertIn("12 generated", usage_line)
        # The prompt's words may also come as separate arguments: they are joined with spaces.
        words = run_cli("generate", *prompt.split(), "--temperature", "0", "--max-tokens", "12", "--ignore-eos",
                        "--show-tokens")
        self.assertGenerated(words, reference, 12)

    def test_chat_with_system(self):
        system, user = "You are a terse assistant.", "Name three colours."
        run = run_cli("generate", "--chat", "--system", system, user, "--max-tokens", "10", *self.GREEDY)
        reference = base.generate(greedy_request(10, chat=base.chat_input([("system", system), ("user", user)])))
        self.assertGenerated(run, reference, 10)
        # Not the same as sending the text as a plain prompt.
        plain = base.generate(greedy_request(10, prompt=user))
        self.assertNotEqual(reference.last.usage.prompt_tokens, plain.last.usage.prompt_tokens)

    def test_token_ids(self):
        run = run_cli("generate", "--token-ids", "1,2,3", "--max-tokens", "5", *self.GREEDY)
        reference = base.generate(greedy_request(5, token_ids=tg().TokenIds(ids=[1, 2, 3])))
        self.assertGenerated(run, reference, 5)
        self.assertEqual(run.usage()[1], 3)

    def test_prompt_from_stdin(self):
        # `echo hi | deltaserve-cli generate --max-tokens 4`: the model's default sampling.
        run = run_cli("generate", "--max-tokens", "4", stdin="hi\n")
        self.assertExit(run, 0)
        reason, prompt_tokens, generated, _ = run.usage()
        self.assertIn(reason, ("length", "stop"), repr(run))
        self.assertLessEqual(generated, 4)
        if reason == "length":
            self.assertEqual(generated, 4)
        # The whole of stdin is the prompt, as read (echo's newline included).
        run = run_cli("generate", "--max-tokens", "4", *self.GREEDY, stdin="hi\n")
        reference = base.generate(greedy_request(4, prompt="hi\n"))
        self.assertGenerated(run, reference, 4)
        self.assertEqual(prompt_tokens, reference.last.usage.prompt_tokens)
        self.assertEqual(prompt_tokens, len(base.TOKENIZER.encode("hi\n").ids))
        # Several lines.
        text = "Line one.\nLine two.\n"
        run = run_cli("generate", "--max-tokens", "4", *self.GREEDY, stdin=text)
        self.assertGenerated(run, base.generate(greedy_request(4, prompt=text)), 4)


class ChatTest(CliTestCase):
    FLAGS = ["--temperature", "0", "--max-tokens", "8", "--ignore-eos"]

    def answer(self, messages):
        s = base.generate(greedy_request(8, chat=base.chat_input(messages)))
        self.assertWellFormed(s, max_tokens=8)
        return s.text

    def test_reset_and_exit(self):
        before = settled_generate_counts()
        run = run_cli("chat", *self.FLAGS, stdin="hello\n/reset\nagain\n/exit\n")
        self.assertExit(run, 0)
        # Exactly two Generate calls: the commands are not sent as messages.
        after = settled_generate_counts(at_least=sum(before.values()) + 2)
        self.assertEqual(counts_delta(before, after), {"OK": 2}, repr(run))
        # /reset forgot "hello": the second answer is to "again" alone.
        first = self.answer([("user", "hello")])
        second = self.answer([("user", "again")])
        self.assertEqual(run.out, shown(first) + shown(second), repr(run))
        self.assertEqual(run.err_lines, [], repr(run))

    def test_history_and_system(self):
        # Without /reset the conversation carries on; an empty line is skipped; end of input quits.
        system = "Answer in one word."
        before = settled_generate_counts()
        run = run_cli("chat", "--system", system, *self.FLAGS, stdin="hello\n\nagain\n")
        self.assertExit(run, 0)
        after = settled_generate_counts(at_least=sum(before.values()) + 2)
        self.assertEqual(counts_delta(before, after), {"OK": 2}, repr(run))
        first = self.answer([("system", system), ("user", "hello")])
        second = self.answer([("system", system), ("user", "hello"), ("assistant", first), ("user", "again")])
        self.assertEqual(run.out, shown(first) + shown(second), repr(run))


class ModelsTest(CliTestCase):
    def test_table(self):
        run = run_cli("models")
        self.assertExit(run, 0)
        lines = run.out.splitlines()
        self.assertEqual(len(lines), 2, repr(run))  # header + the one model
        self.assertEqual(lines[0].split()[0], "NAME", repr(run))
        for column in ("ARCH", "DTYPE", "DEVICE", "MAX_LEN", "SLOTS", "READY"):
            self.assertIn(column, lines[0])
        row = lines[1].split()
        self.assertEqual(row[0], base.MODEL_NAME, repr(run))
        self.assertEqual(row[1], "Qwen3_5ForCausalLM")
        for cell in ("3/1", "float32", "cpu", str(base.MAX_MODEL_LEN), str(base.MAX_NUM_SEQS), "yes", "(default)"):
            self.assertIn(cell, row, repr(run))

    def test_list_json(self):
        run = run_cli("models", "--json")
        self.assertExit(run, 0)
        listing = json.loads(run.out)
        self.assertEqual(listing["default_model"], base.MODEL_NAME)
        self.assertEqual([m["name"] for m in listing["models"]], [base.MODEL_NAME])
        self.assertEqual(listing["models"][0]["vocab_size"], base.VOCAB_SIZE)

    def test_one_model_json(self):
        run = run_cli("models", base.MODEL_NAME)
        self.assertExit(run, 0)
        info = json.loads(run.out)
        self.assertEqual(info["name"], base.MODEL_NAME)
        self.assertEqual(info["vocab_size"], base.VOCAB_SIZE)
        self.assertEqual(info["hidden_size"], base.HIDDEN_SIZE)
        self.assertEqual(info["max_model_len"], base.MAX_MODEL_LEN)
        self.assertEqual(info["max_num_seqs"], base.MAX_NUM_SEQS)
        self.assertIs(info["ready"], True)
        self.assertEqual(info["architecture"], "Qwen3_5ForCausalLM")
        self.assertEqual(info["layer_types"], {"linear_attention": 3, "full_attention": 1})
        self.assertEqual(info["limits"]["max_prompt_tokens"], base.MAX_MODEL_LEN - 1)
        self.assertEqual(info["eos_token_ids"], [base.IM_END, base.ENDOFTEXT])
        self.assertAlmostEqual(info["default_sampling"]["temperature"], 0.6)
        # The same as GetModel through grpcio.
        ref = base.models_stub().GetModel(base.GEN["models"].GetModelRequest(name=base.MODEL_NAME), timeout=10)
        self.assertEqual(info["vocab_size"], ref.vocab_size)

    def test_unknown_model(self):
        run = run_cli("models", "nope")
        self.assertExit(run, 1)
        self.assertEqual(run.out, "")
        self.assertEqual(len(run.err_lines), 1, repr(run))
        self.assertIn("NOT_FOUND", run.err)
        self.assertIn("nope", run.err)
        self.assertIn(base.MODEL_NAME, run.err)  # the server lists what it serves


class HealthTest(CliTestCase):
    def test_serving(self):
        run = run_cli("health")
        self.assertExit(run, 0)
        rows = [l.split() for l in run.out.splitlines()]
        self.assertEqual(rows, [["server", "SERVING"], ["model", base.MODEL_NAME, "SERVING"]], repr(run))
        self.assertEqual(run.err_lines, [])

    def test_no_server(self):
        port = base.free_ports(1)[0]
        run = run_cli("health", "--server", f"127.0.0.1:{port}", server=False, timeout=30)
        self.assertExit(run, 1)
        self.assertEqual(run.out, "")
        self.assertEqual(len(run.err_lines), 1, repr(run))
        self.assertIn("UNAVAILABLE", run.err_lines[0])
        self.assertIn(f"127.0.0.1:{port}", run.err_lines[0])
        self.assertLess(run.seconds, 10, "a refused connection should fail at once, not wait out a timeout")


class BenchTest(CliTestCase):
    PERCENTILE_METRICS = ("ttft", "tpot", "itl", "e2el")

    def test_bench_json(self):
        result_file = pathlib.Path(base.WORK) / "bench-result.json"
        before = settled_generate_counts()
        run = run_cli("bench", "--num-requests", "8", "--concurrency", "4", "--input-len", "16", "--output-len", "8",
                      "--json", "--seed", "1", "--result-json", str(result_file), timeout=120)
        delta = counts_delta(before, settled_generate_counts(at_least=sum(before.values()) + 9))
        context = f"{run!r}\nserver: Generate calls finished during the run, by status code: {delta}"
        self.assertEqual(run.rc, 0, f"unexpected exit code:\n{context}")
        result = json.loads(run.out)
        self.assertEqual(result["completed"], 8, context)
        self.assertEqual(result["failed"], 0, context)
        self.assertNotIn("first_error", result, context)
        self.assertEqual(result["total_output_tokens"], 8 * 8, context)  # range_ratio 0: exact lengths
        self.assertEqual(result["total_input_tokens"], 8 * 16, context)
        self.assertEqual((result["num_prompts"], result["max_concurrency"], result["input_len"],
                          result["output_len"], result["seed"], result["range_ratio"], result["request_rate"]),
                         (8, 4, 16, 8, 1, 0, "inf"))
        self.assertGreater(result["duration"], 0)
        for key in ("request_throughput", "output_throughput", "total_token_throughput"):
            self.assertGreater(result[key], 0, key)
        self.assertAlmostEqual(result["output_throughput"], 64 / result["duration"],
                               delta=1e-6 * 64 / result["duration"])
        for name in self.PERCENTILE_METRICS:
            with self.subTest(metric=name):
                p50, p90, p99, top = (result[f"{k}_{name}_ms"] for k in ("median", "p90", "p99", "max"))
                self.assertGreater(p50, 0)
                self.assertLessEqual(p50, p90)
                self.assertLessEqual(p90, p99)
                self.assertLessEqual(p99, top)
                self.assertGreater(result[f"mean_{name}_ms"], 0)
                self.assertLessEqual(result[f"mean_{name}_ms"], top)
        # TTFT comes before the end of a request.
        self.assertLessEqual(result["median_ttft_ms"], result["max_e2el_ms"])
        # The server saw one warm-up request and the 8 measured ones, all OK.
        self.assertEqual(delta, {"OK": 9}, context)
        # Progress goes to stderr, the JSON alone to stdout; --result-json holds the same JSON.
        self.assertTrue(any(l.startswith("bench: 8/8") for l in run.err_lines), repr(run))
        self.assertEqual(json.loads(result_file.read_text()), result)

    def test_bench_table(self):
        run = run_cli("bench", "--num-requests", "4", "--concurrency", "2", "--input-len", "8", "--output-len", "4",
                      timeout=120)
        self.assertExit(run, 0)
        rows = dict(re.findall(r"^(.+?):\s+(\S+)$", run.out, re.MULTILINE))
        self.assertEqual(rows.get("Successful requests"), "4", repr(run))
        self.assertEqual(rows.get("Failed requests"), "0", repr(run))
        self.assertEqual(rows.get("Total input tokens"), "32", repr(run))
        self.assertEqual(rows.get("Total generated tokens"), "16", repr(run))
        for key in ("P50 TTFT (ms)", "P99 E2EL (ms)", "Mean ITL (ms)"):
            self.assertGreater(float(rows[key]), 0, key)


class DetectBenchTest(CliTestCase):
    """`detect-bench` against a server with the shipped detector: every request answered, the counts and
    the latency order statistics consistent, the server's batches seen, bad arguments refused."""

    @classmethod
    def setUpClass(cls):
        global VISION_SERVER
        if VISION_SERVER is None:
            repo = pathlib.Path(base.ARGS.repo)
            VISION_SERVER = base.ServerProcess("vision", base.MODEL_DIR, [
                "--max-num-seqs", "1", "--max-model-len", str(base.MAX_MODEL_LEN),
                "--vision-model", str(repo / "models" / "padre-detector"), "--vision-max-batch", "4"]).start()
        cls.image = str(pathlib.Path(base.ARGS.repo) / "models" / "padre-detector" / "sample.png")

    def test_json_result(self):
        result_file = pathlib.Path(base.WORK) / "detect-bench.json"
        run = run_cli("detect-bench", self.image, "--num-requests", "12", "--concurrency", "4", "--json",
                      "--result-json", str(result_file), server=VISION_SERVER, timeout=120)
        self.assertExit(run, 0)
        result = json.loads(run.out)
        self.assertEqual((result["num_requests"], result["concurrency"], result["completed"], result["failed"]),
                         (12, 4, 12, 0), repr(run))
        self.assertAlmostEqual(result["images_per_s"], 12 / result["wall_s"], delta=1e-3 * result["images_per_s"])
        # Four clients in flight against a batch of up to four: the batcher merged some of them.
        self.assertGreaterEqual(result["mean_batch"], 1.0)
        self.assertLessEqual(result["mean_batch"], 4.0)
        for part in ("e2e", "server", "inference"):
            s = result[part]
            self.assertGreater(s["p50_ms"], 0, part)
            self.assertLessEqual(s["p50_ms"], s["p90_ms"], part)
            self.assertLessEqual(s["p90_ms"], s["p99_ms"], part)
        # The client waits at least as long as the server works, which works at least the forward pass.
        self.assertGreaterEqual(result["e2e"]["p50_ms"], result["server"]["p50_ms"])
        self.assertGreaterEqual(result["server"]["p50_ms"], result["inference"]["p50_ms"])
        self.assertEqual(json.loads(result_file.read_text()), result)

    def test_table_and_usage_errors(self):
        run = run_cli("detect-bench", self.image, "--num-requests", "3", "--concurrency", "1",
                      server=VISION_SERVER, timeout=120)
        self.assertExit(run, 0)
        self.assertRegex(run.out, r"^3 requests at concurrency 1 in [0-9.]+ s: [0-9.]+ images/s")
        self.assertRegex(run.out, r"(?m)^end to end \(client\)\s+[0-9.]+")
        for args, needle in ((["detect-bench"], "exactly one IMAGE"),
                             (["detect-bench", "/nonexistent.png"], "cannot read /nonexistent.png"),
                             (["detect-bench", self.image, "--concurrency", "0"], "--concurrency")):
            run = run_cli(*args, server=False)
            self.assertExit(run, 2)
            self.assertIn(needle, run.err, repr(run))
        # A server without a detector: the first (warm-up) call's error, exit 1.
        run = run_cli("detect-bench", self.image, "--num-requests", "1", timeout=60)
        self.assertExit(run, 1)
        self.assertIn("warm-up", run.err, repr(run))


class ErrorsTest(CliTestCase):
    def check_usage_error(self, args, *needles):
        run = run_cli(*args, server=False)
        self.assertExit(run, 2)
        self.assertEqual(run.out, "")
        for needle in needles:
            self.assertIn(needle, run.err, repr(run))

    def test_usage_errors(self):
        # Found by the client before any call (no --server needed; none is given).
        self.check_usage_error([], "missing command")
        self.check_usage_error(["frobnicate"], "unknown command", "frobnicate")
        self.check_usage_error(["generate", "--token-ids", "x"], "--token-ids", '"x"')
        self.check_usage_error(["generate", "--token-ids", "1,,2"], "--token-ids")
        self.check_usage_error(["generate", "hello", "--token-ids", "1,2"], "PROMPT", "--token-ids")
        self.check_usage_error(["chat", "hello"], "chat")
        self.check_usage_error(["bench", "extra"], "bench")
        self.check_usage_error(["models", "a", "b"], "models")

    def test_refused_sampling_values(self):
        # proto/deltaserve/v1/text_generation.proto: temperature in [0, 100], top_p in (0, 1], top_k in
        # [0, vocab_size], max_tokens in [1, max_model_len - 1]. The server's INVALID_ARGUMENT names the field.
        cases = [
            (["--temperature", "101"], "sampling.temperature"),
            (["--top-p", "1.5"], "sampling.top_p"),
            (["--top-k", str(base.VOCAB_SIZE + 1)], "sampling.top_k"),
            (["--max-tokens", "0"], "sampling.max_tokens"),
            (["--max-tokens", str(base.MAX_MODEL_LEN)], "sampling.max_tokens"),
        ]
        for flags, field in cases:
            with self.subTest(flags=flags):
                run = run_cli("generate", "hello", *flags)
                self.assertExit(run, 1)
                self.assertEqual(run.out, "")
                self.assertEqual(len(run.err_lines), 1, repr(run))
                self.assertIn("INVALID_ARGUMENT", run.err_lines[0])
                self.assertIn(field, run.err_lines[0])

    def test_unknown_model_and_no_server(self):
        run = run_cli("generate", "hello", "--model", "nope", "--max-tokens", "2")
        self.assertExit(run, 1)
        self.assertIn("NOT_FOUND", run.err)
        port = base.free_ports(1)[0]
        for args in (["generate", "hello"], ["models"]):
            with self.subTest(command=args[0]):
                run = run_cli(*args, "--server", f"127.0.0.1:{port}", server=False, timeout=30)
                self.assertExit(run, 1)
                self.assertEqual(len(run.err_lines), 1, repr(run))
                self.assertIn("UNAVAILABLE", run.err)


class CtrlCTest(CliTestCase):
    """SIGINT during `generate` cancels the call: exit 130, and the server frees the sequence's slot. On a
    server of its own with a single slot, so a following generate runs only if that slot was freed."""

    @classmethod
    def setUpClass(cls):
        global CANCEL_SERVER
        if CANCEL_SERVER is None:
            CANCEL_SERVER = base.ServerProcess("ctrl-c", base.MODEL_DIR, [
                "--max-num-seqs", "1", "--max-model-len", str(base.MAX_MODEL_LEN), "--max-queue", "1",
                "--shutdown-grace", "2"]).start()

    def test_ctrl_c_cancels(self):
        server = CANCEL_SERVER
        cancelled_before = settled_generate_counts(server).get("CANCELLED", 0)
        prompt = "Tell me a very long story:"
        argv = cli_command(["generate", prompt, "--temperature", "0", "--max-tokens", str(LONG), "--ignore-eos",
                            "--show-tokens"], server)
        proc = popen_cli(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        try:
            # Wait for the first bytes of the answer: the call is running.
            ready, _, _ = select.select([proc.stdout], [], [], 30)
            self.assertTrue(ready, "no output from generate within 30 s")
            head = os.read(proc.stdout.fileno(), 4096)
            self.assertTrue(head, f"stdout closed before any output; exit {proc.poll()}")
            t0 = time.monotonic()
            proc.send_signal(signal.SIGINT)
            out, err = proc.communicate(timeout=30)
            elapsed = time.monotonic() - t0
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.communicate()
        run = CliRun(argv, proc.returncode, head + out, err, elapsed)
        self.assertExit(run, 130)
        self.assertLess(elapsed, 3.0, f"the client took {elapsed:.2f} s to stop after SIGINT")
        self.assertIn("[cancelled]", run.err_lines, repr(run))
        # The answer so far ends with a newline, no half line; it is the text of the tokens received, and
        # those are the start of the greedy answer.
        self.assertTrue(run.out.endswith("\n"), repr(run))
        ids = run.token_ids()
        self.assertIsNotNone(ids, repr(run))
        self.assertTrue(0 < len(ids) < LONG, f"{len(ids)} tokens received: not interrupted?\n{run!r}")
        full = base.decode(ids, skip_special_tokens=True)
        text = run.out.rstrip("\n")
        self.assertTrue(full.startswith(text), repr(run))
        self.assertEqual(full[len(text):].strip("\n\ufffd"), "", "text held back beyond an incomplete character")

        # The server ended the call as CANCELLED (not run to max_tokens) ...
        deadline = time.monotonic() + 10
        while generate_counts(server).get("CANCELLED", 0) - cancelled_before < 1:
            self.assertLess(time.monotonic(), deadline, "the server did not count the call as CANCELLED")
            time.sleep(0.05)
        # ... and freed the only slot: the next generate starts at once (the interrupted one would have run
        # for seconds more).
        after = run_cli("generate", "after the interruption", "--temperature", "0", "--max-tokens", "8",
                        "--ignore-eos", "--show-tokens", "--timeout", "30", server=server)
        self.assertExit(after, 0)
        reason, _, generated, ttft_ms = after.usage()
        self.assertEqual((reason, generated), ("length", 8), repr(after))
        self.assertLess(ttft_ms, 2000, repr(after))
        # The interrupted tokens are the greedy answer's first ones.
        reference = base.generate(greedy_request(len(ids), prompt=prompt), server=server)
        self.assertEqual(reference.ids, ids)

    def test_ctrl_c_in_chat_stops_the_answer_only(self):
        # `chat`: Ctrl-C stops the answer being streamed and the conversation goes on.
        server = CANCEL_SERVER
        cancelled_before = settled_generate_counts(server).get("CANCELLED", 0)
        argv = cli_command(["chat", "--temperature", "0", "--max-tokens", str(LONG), "--ignore-eos"], server)
        proc = popen_cli(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        out, err = bytearray(), bytearray()
        stdout_fd, stderr_fd = proc.stdout.fileno(), proc.stderr.fileno()
        os.set_blocking(stdout_fd, False)
        os.set_blocking(stderr_fd, False)

        def pump(until, what, timeout=30):
            """Reads both pipes until until() holds."""
            deadline = time.monotonic() + timeout
            while not until():
                self.assertLess(time.monotonic(), deadline, f"{what} within {timeout} s; exit {proc.poll()}, "
                                f"stdout {bytes(out)!r}, stderr {bytes(err)!r}")
                ready, _, _ = select.select([stdout_fd, stderr_fd], [], [], 0.1)
                for fd in ready:
                    data = os.read(fd, 65536)
                    (out if fd == stdout_fd else err).extend(data)
                    if not data and proc.poll() is not None:
                        self.fail(f"chat exited with {proc.returncode} while waiting for {what}")

        try:
            for n, line in enumerate(("Tell me a long story.", "And another one."), start=1):
                seen = len(out)
                proc.stdin.write((line + "\n").encode())
                proc.stdin.flush()
                pump(lambda: len(out) > seen, f"an answer to {line!r}")  # streaming: the call is running
                proc.send_signal(signal.SIGINT)
                pump(lambda: err.count(b"[cancelled]") == n, f"[cancelled] for answer {n}")
                # The rest of the answer was flushed before [cancelled]: read it, so that what comes next
                # is the next answer.
                while select.select([stdout_fd], [], [], 0.2)[0]:
                    data = os.read(stdout_fd, 65536)
                    if not data:
                        break
                    out.extend(data)
                # The server ended the call as CANCELLED.
                deadline = time.monotonic() + 10
                while generate_counts(server).get("CANCELLED", 0) - cancelled_before < n:
                    self.assertLess(time.monotonic(), deadline, f"answer {n} not counted CANCELLED by the server")
                    time.sleep(0.05)
                self.assertIsNone(proc.poll(), "chat exited on Ctrl-C")
            os.set_blocking(stdout_fd, True)
            os.set_blocking(stderr_fd, True)
            rest, rest_err = proc.communicate(b"/exit\n", timeout=30)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.communicate()
        run = CliRun(argv, proc.returncode, bytes(out) + rest, bytes(err) + rest_err, 0)
        self.assertExit(run, 0)
        self.assertEqual(run.err_lines, ["[cancelled]", "[cancelled]"], repr(run))
        # Each interrupted answer ends its line (no half line before the next prompt).
        self.assertTrue(run.out.endswith("\n"), repr(run))
        # The second answer streamed on a one-slot server, so the first one's slot was freed; so was the
        # second's: a generate runs at once.
        after = run_cli("generate", "after the chat", "--temperature", "0", "--max-tokens", "4", "--ignore-eos",
                        "--timeout", "30", server=server)
        self.assertExit(after, 0)
        self.assertLess(after.usage()[3], 2000, repr(after))


# ---------------------------------------------------------------------------------------------------


def parse_args(argv):
    global CLI
    ap = argparse.ArgumentParser(add_help=False)
    ap.add_argument("--cli", default=os.environ.get("DELTASERVE_CLI"),
                    help="the deltaserve-cli binary (default: REPO/build/client/deltaserve-cli)")
    ours, rest = ap.parse_known_args(argv)
    rest = base.parse_args(rest)  # --server, --proto-root, --repo, --keep
    CLI = str(pathlib.Path(ours.cli or pathlib.Path(base.ARGS.repo) / "build/client/deltaserve-cli").resolve())
    return rest


def main():
    return base.main(parse_args, "e2e cli")


if __name__ == "__main__":
    sys.exit(main())
