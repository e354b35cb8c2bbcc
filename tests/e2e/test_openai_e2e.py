#!/usr/bin/env python3
"""The OpenAI-compatible HTTP front end (deltaserve --http-port) end to end, with the official `openai`
Python client against the real server binary on the shipped model, checked against the gRPC path of the
same process:

  chat and completions, streamed and not: greedy text equal to gRPC Generate's for the same input; usage
  counts; stop strings; logprobs equal to gRPC's; /v1/models and /health; every bad field answered with its
  HTTP status and error.param; a client that disconnects mid-stream frees its slot (the running gauge goes
  back to 0 and the only slot serves the next request); X-Request-Timeout ends a request with 408 and frees
  its slot; 32 concurrent streams equal their solo runs; `curl -N` streams server-sent events as a user
  would first try it; `deltaserve-cli bench --protocol openai` loads the API.

Usage: test_openai_e2e.py --server BUILD/server/deltaserve --repo REPO
Exit codes: 0 passed, 1 failed, 77 skipped (openai, grpcio or grpcio-tools missing).
"""
import argparse
import concurrent.futures
import json
import pathlib
import re
import shutil
import subprocess
import sys
import tempfile
import time
import unittest
import urllib.error
import urllib.request

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
import test_server_e2e as base  # noqa: E402  (proto compilation, free ports, server process)

ARGS = None
SERVER = None
HTTP_PORT = None
CLIENT = None
MODEL = "qwen35-small"


class HttpServer(base.ServerProcess):
    """A deltaserve process that also serves the OpenAI API on a free port."""

    def command(self):
        return [*super().command(), "--http-port", str(HTTP_PORT)]


def client(**kw):
    import openai
    return openai.OpenAI(base_url=f"http://127.0.0.1:{HTTP_PORT}/v1", api_key="unused", max_retries=0, **kw)


def grpc_generate(**fields):
    """The gRPC Generate of the same server: (text, token ids, finish reason, logprobs, usage)."""
    tg = base.GEN["tg"]
    s = base.collect(base.text_stub(SERVER).Generate(tg.GenerateRequest(model=MODEL, **fields), timeout=120))
    assert str(s.code).endswith("OK"), (s.code, s.details)
    return s


def running():
    with urllib.request.urlopen(f"http://127.0.0.1:{SERVER.metrics_port}/metrics", timeout=5) as r:
        for line in r.read().decode().splitlines():
            m = re.match(r"^deltaserve_num_requests_running(\{[^}]*\})?\s+(\S+)$", line)
            if m:
                return float(m.group(2))
    raise AssertionError("no deltaserve_num_requests_running in /metrics")


class OpenAiTest(unittest.TestCase):
    def test_models_and_health(self):
        models = CLIENT.models.list()
        self.assertEqual([m.id for m in models.data], [MODEL])
        with urllib.request.urlopen(f"http://127.0.0.1:{HTTP_PORT}/health", timeout=5) as r:
            self.assertEqual(r.status, 200)

    def test_requests_are_counted_in_the_metrics(self):
        def count(method, code):
            with urllib.request.urlopen(f"http://127.0.0.1:{SERVER.metrics_port}/metrics", timeout=5) as r:
                for line in r.read().decode().splitlines():
                    if (line.startswith("deltaserve_requests_total{") and f'method="{method}"' in line
                            and f'code="{code}"' in line):
                        return float(line.split()[-1])
            return 0.0
        ok, bad = count("http.Completions", "OK"), count("http.Completions", "INVALID_ARGUMENT")
        CLIENT.completions.create(model=MODEL, prompt="hi", max_tokens=1)
        import openai
        with self.assertRaises(openai.BadRequestError):
            CLIENT.completions.create(model=MODEL, prompt="hi", max_tokens=0)
        self.assertEqual(count("http.Completions", "OK"), ok + 1)
        self.assertEqual(count("http.Completions", "INVALID_ARGUMENT"), bad + 1)

    def test_completion_equals_grpc(self):
        for stream in (False, True):
            with self.subTest(stream=stream):
                kw = dict(model=MODEL, prompt="Once upon a time", max_tokens=12, temperature=0,
                          extra_body={"ignore_eos": True})
                if stream:
                    chunks = list(CLIENT.completions.create(stream=True, stream_options={"include_usage": True},
                                                            **kw))
                    text = "".join(c.choices[0].text for c in chunks if c.choices)
                    finish = [c.choices[0].finish_reason for c in chunks if c.choices][-1]
                    usage = chunks[-1].usage
                else:
                    r = CLIENT.completions.create(**kw)
                    text, finish, usage = r.choices[0].text, r.choices[0].finish_reason, r.usage
                ref = grpc_generate(prompt="Once upon a time", sampling=base.greedy(max_tokens=12))
                self.assertEqual(text, ref.text)
                self.assertEqual(finish, "length")
                self.assertEqual(usage.completion_tokens, 12)
                self.assertEqual(usage.prompt_tokens, ref.last.usage.prompt_tokens)
                self.assertEqual(usage.total_tokens, usage.prompt_tokens + 12)

    def test_chat_equals_grpc(self):
        messages = [{"role": "system", "content": "You are terse."}, {"role": "user", "content": "Name a colour."}]
        # Thinking off: the answer is then all content, comparable with gRPC's text as it is.
        kw = dict(model=MODEL, messages=messages, max_tokens=10, temperature=0,
                  extra_body={"ignore_eos": True, "chat_template_kwargs": {"enable_thinking": False}})
        whole = CLIENT.chat.completions.create(**kw)
        chunks = list(CLIENT.chat.completions.create(stream=True, **kw))
        streamed = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        self.assertEqual(chunks[0].choices[0].delta.role, "assistant")
        ref = grpc_generate(chat=base.chat_input([(m["role"], m["content"]) for m in messages], enable_thinking=False),
                            sampling=base.greedy(max_tokens=10))
        self.assertEqual(whole.choices[0].message.content, ref.text)
        self.assertEqual(streamed, ref.text)
        self.assertEqual(whole.choices[0].message.role, "assistant")
        self.assertEqual(whole.usage.completion_tokens, 10)
        self.assertTrue(whole.id.startswith("chatcmpl-"))

    def test_tool_turns_render_like_grpc(self):
        # A conversation with tools offered, an assistant tool call and its result: the HTTP request renders
        # the same prompt as gRPC's ChatInput with the same turns (the template emits the tool calls), and
        # the greedy answer is the same.
        tool = {"type": "function", "function": {"name": "get_weather", "description": "Weather in a city",
                "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}}
        call = {"id": "call_1", "type": "function",
                "function": {"name": "get_weather", "arguments": json.dumps({"city": "Paris"})}}
        messages = [{"role": "user", "content": "Weather in Paris?"},
                    {"role": "assistant", "content": "", "tool_calls": [call]},
                    {"role": "tool", "tool_call_id": "call_1", "content": "18 C, sunny"}]
        r = CLIENT.chat.completions.create(model=MODEL, messages=messages, tools=[tool], max_tokens=8, temperature=0,
                                           extra_body={"ignore_eos": True,
                                                       "chat_template_kwargs": {"enable_thinking": False}})
        tg = base.GEN["tg"]
        ci = base.chat_input([("user", "Weather in Paris?"), ("assistant", ""), ("tool", "18 C, sunny")],
                             enable_thinking=False,
                             tools=[json.dumps(tool, sort_keys=True, separators=(",", ":"))])  # as the server dumps it
        ci.messages[1].tool_calls.append(tg.ToolCall(name="get_weather", arguments=json.dumps({"city": "Paris"})))
        ref = grpc_generate(chat=ci, sampling=base.greedy(max_tokens=8))
        self.assertEqual(r.usage.prompt_tokens, ref.last.usage.prompt_tokens)
        self.assertEqual(r.choices[0].message.content, ref.text)
        # Without the tool call the prompt is shorter: the call was rendered, not dropped.
        plain = CLIENT.chat.completions.create(model=MODEL, messages=[messages[0], messages[2]], tools=[tool],
                                               max_tokens=1, temperature=0)
        self.assertLess(plain.usage.prompt_tokens, r.usage.prompt_tokens)

    def test_stop_string(self):
        full = CLIENT.completions.create(model=MODEL, prompt="Once upon a time", max_tokens=24, temperature=0,
                                         extra_body={"ignore_eos": True}).choices[0].text
        stop = full[len(full) // 2:len(full) // 2 + 3]
        self.assertTrue(stop.strip(), full)
        r = CLIENT.completions.create(model=MODEL, prompt="Once upon a time", max_tokens=24, temperature=0,
                                      stop=[stop], extra_body={"ignore_eos": True})
        self.assertEqual(r.choices[0].finish_reason, "stop")
        self.assertEqual(r.choices[0].text, full[:full.index(stop)])

    def test_logprobs_equal_grpc(self):
        r = CLIENT.completions.create(model=MODEL, prompt="The sky is", max_tokens=6, temperature=0, logprobs=3,
                                      extra_body={"ignore_eos": True})
        ref = grpc_generate(prompt="The sky is", sampling=base.greedy(max_tokens=6, logprobs=3))
        lp = r.choices[0].logprobs
        self.assertEqual(len(lp.token_logprobs), 6)
        for got, want in zip(lp.token_logprobs, [x.logprob for m in ref.messages for x in m.logprobs]):
            self.assertAlmostEqual(got, want, places=5)
        self.assertTrue(all(len(t) == 3 for t in lp.top_logprobs))
        chat = CLIENT.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "Hi"}],
                                              max_tokens=4, temperature=0, logprobs=True, top_logprobs=2,
                                              extra_body={"ignore_eos": True})
        content = chat.choices[0].logprobs.content
        self.assertEqual(len(content), 4)
        self.assertTrue(all(len(c.top_logprobs) == 2 and c.logprob <= 0 for c in content))

    def test_bad_fields_name_the_param(self):
        import openai
        user = [{"role": "user", "content": "hi"}]
        cases = [
            (dict(messages=user, temperature="hot"), openai.BadRequestError, "temperature"),
            (dict(messages=user, max_tokens=-3), openai.BadRequestError, "max_tokens"),
            (dict(messages=user, top_p=7), openai.BadRequestError, "top_p"),
            (dict(messages=user, n=17), openai.BadRequestError, "n"),
            (dict(messages=user, top_logprobs=3), openai.BadRequestError, "top_logprobs"),
            (dict(messages=[{"role": "wizard", "content": "hi"}]), openai.BadRequestError, "messages[0].role"),
            (dict(messages=[]), openai.BadRequestError, "messages"),
            (dict(messages=user, model="nope"), openai.NotFoundError, "model"),
        ]
        for kw, error, param in cases:
            kw.setdefault("model", MODEL)
            with self.subTest(kw=kw), self.assertRaises(error) as e:
                CLIENT.chat.completions.create(**kw)
            body = e.exception.body
            self.assertEqual(body.get("param"), param, body)
            self.assertTrue(body.get("message"), body)
        with self.assertRaises(openai.BadRequestError) as e:
            CLIENT.completions.create(model=MODEL, prompt=[1, 2, 10 ** 9])
        self.assertEqual(e.exception.body.get("param"), "prompt[2]")  # the id out of the vocabulary
        # Not JSON, and an unknown endpoint, through plain HTTP.
        req = urllib.request.Request(f"http://127.0.0.1:{HTTP_PORT}/v1/completions", data=b"{not json")
        with self.assertRaises(urllib.error.HTTPError) as e:
            urllib.request.urlopen(req, timeout=10)
        self.assertEqual(e.exception.code, 400)
        self.assertEqual(json.loads(e.exception.read())["error"]["type"], "invalid_request_error")
        with self.assertRaises(urllib.error.HTTPError) as e:
            urllib.request.urlopen(f"http://127.0.0.1:{HTTP_PORT}/v1/embeddings", timeout=10)
        self.assertEqual(e.exception.code, 404)

    def test_disconnect_mid_stream_frees_the_slot(self):
        import httpx
        body = {"model": MODEL, "prompt": "Once upon a time", "max_tokens": 3000, "temperature": 0,
                "ignore_eos": True, "stream": True}
        with httpx.Client(timeout=60) as h:
            with h.stream("POST", f"http://127.0.0.1:{HTTP_PORT}/v1/completions", json=body) as r:
                lines = r.iter_lines()
                got = [next(lines) for _ in range(6)]
                self.assertTrue(any(l.startswith("data: ") for l in got))
        deadline = time.monotonic() + 30
        while running() != 0:
            self.assertLess(time.monotonic(), deadline, "the slot of a disconnected stream was not freed")
            time.sleep(0.1)
        # The server holds one slot: it serves the next request.
        r = CLIENT.completions.create(model=MODEL, prompt="hi", max_tokens=2, temperature=0, timeout=60)
        self.assertEqual(r.usage.completion_tokens, 2)

    def test_n_choices(self):
        kw = dict(model=MODEL, prompt="Once upon a time", max_tokens=6, temperature=1.0, seed=5,
                  extra_body={"ignore_eos": True})
        r = CLIENT.completions.create(n=3, **kw)
        self.assertEqual([c.index for c in r.choices], [0, 1, 2])
        # Choice i is the request with seed + i: the same tokens whatever else runs.
        for i in range(3):
            solo = CLIENT.completions.create(**{**kw, "seed": 5 + i})
            self.assertEqual(r.choices[i].text, solo.choices[0].text, i)
        self.assertEqual(r.usage.completion_tokens, 18)
        self.assertEqual(r.usage.prompt_tokens, solo.usage.prompt_tokens)
        # Streamed, the choices' pieces add up to the same texts; usage counts all of them.
        texts, finishes, usage = ["", "", ""], {}, None
        for c in CLIENT.completions.create(n=3, stream=True, stream_options={"include_usage": True}, **kw):
            for ch in c.choices:
                texts[ch.index] += ch.text
                if ch.finish_reason:
                    finishes[ch.index] = ch.finish_reason
            usage = c.usage or usage
        self.assertEqual(texts, [c.text for c in r.choices])
        self.assertEqual(finishes, {0: "length", 1: "length", 2: "length"})
        self.assertEqual(usage.completion_tokens, 18)
        chat = CLIENT.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "Hi"}], n=2,
                                              max_tokens=4, temperature=0)
        self.assertEqual(len(chat.choices), 2)
        self.assertEqual(chat.choices[0].message.content, chat.choices[1].message.content)  # greedy

    def test_request_timeout_header(self):
        import httpx
        import openai
        url = f"http://127.0.0.1:{HTTP_PORT}/v1/completions"
        kw = dict(model=MODEL, prompt="Once upon a time", max_tokens=3000, temperature=0)
        body = {**kw, "ignore_eos": True}
        # Not streamed: 408 once the deadline passes, long before 3000 tokens.
        start = time.monotonic()
        with self.assertRaises(openai.APIStatusError) as e:
            CLIENT.completions.create(**kw, extra_body={"ignore_eos": True}, extra_headers={"X-Request-Timeout": "0.5"},
                                      timeout=60)
        self.assertEqual(e.exception.status_code, 408)
        self.assertEqual(e.exception.body.get("type"), "timeout_error")
        self.assertLess(time.monotonic() - start, 30)
        # Streamed: the stream ends with an error event instead of a finish chunk.
        with httpx.Client(timeout=60) as h:
            r = h.post(url, json={**body, "stream": True}, headers={"X-Request-Timeout": "0.5"})
            events = [l[len("data: "):] for l in r.text.splitlines() if l.startswith("data: ")]
        self.assertEqual(events[-1], "[DONE]")
        self.assertEqual(json.loads(events[-2])["error"]["code"], 408)
        # The slot is free again, and a bad header value is refused naming it.
        deadline = time.monotonic() + 30
        while running() != 0:
            self.assertLess(time.monotonic(), deadline, "the slot of a timed-out request was not freed")
            time.sleep(0.1)
        with self.assertRaises(openai.BadRequestError) as e:
            CLIENT.completions.create(**kw, extra_headers={"X-Request-Timeout": "soon"})
        self.assertEqual(e.exception.body.get("param"), "X-Request-Timeout")
        r = CLIENT.completions.create(model=MODEL, prompt="hi", max_tokens=2, temperature=0,
                                      extra_headers={"X-Request-Timeout": "60"}, timeout=60)
        self.assertEqual(r.usage.completion_tokens, 2)

    def test_cli_bench_over_openai(self):
        cli = pathlib.Path(ARGS.server).parent.parent / "client" / "deltaserve-cli"
        out = subprocess.run([str(cli), "bench", "--protocol", "openai", "--server", f"127.0.0.1:{HTTP_PORT}",
                              "--num-requests", "3", "--concurrency", "2", "--input-len", "12", "--output-len", "5",
                              "--json"], capture_output=True, text=True, timeout=300)
        self.assertEqual(out.returncode, 0, out.stderr)
        report = json.loads(out.stdout)
        self.assertEqual(report["completed"], 3)
        self.assertEqual(report["total_output_tokens"], 15)
        self.assertEqual(report["total_input_tokens"], 36)
        # Random lengths: the same seed plans the same requests over either protocol.
        same = ["bench", "--num-requests", "4", "--concurrency", "2", "--input-len", "10", "--output-len", "6",
                "--range-ratio", "0.5", "--seed", "9", "--json"]
        over = {}
        for proto, server in (("openai", f"127.0.0.1:{HTTP_PORT}"), ("grpc", f"127.0.0.1:{SERVER.port}")):
            r = subprocess.run([str(cli), *same, "--protocol", proto, "--server", server], capture_output=True,
                               text=True, timeout=300)
            self.assertEqual(r.returncode, 0, r.stderr)
            over[proto] = json.loads(r.stdout)
        for key in ("completed", "total_input_tokens", "total_output_tokens"):
            self.assertEqual(over["openai"][key], over["grpc"][key], key)
        bad = subprocess.run([str(cli), "bench", "--protocol", "smoke-signals"], capture_output=True, text=True,
                             timeout=60)
        self.assertEqual(bad.returncode, 2)
        self.assertIn("--protocol", bad.stderr)

    def test_concurrent_streams_equal_solo(self):
        prompts = [f"Story number {i}:" for i in range(32)]

        def run(p, stream):
            kw = dict(model=MODEL, prompt=p, max_tokens=8, temperature=0, extra_body={"ignore_eos": True})
            if stream:
                return "".join(c.choices[0].text for c in CLIENT.completions.create(stream=True, **kw) if c.choices)
            return CLIENT.completions.create(**kw).choices[0].text

        solo = [run(p, False) for p in prompts]
        with concurrent.futures.ThreadPoolExecutor(32) as pool:
            together = list(pool.map(lambda p: run(p, True), prompts))
        self.assertEqual(together, solo)

    def test_curl_streams_server_sent_events(self):
        if shutil.which("curl") is None:
            self.skipTest("curl not installed")
        body = json.dumps({"model": MODEL, "messages": [{"role": "user", "content": "Hello"}], "max_tokens": 3,
                           "temperature": 0, "ignore_eos": True, "stream": True})
        out = subprocess.run(["curl", "-sN", f"http://127.0.0.1:{HTTP_PORT}/v1/chat/completions",
                              "-H", "Content-Type: application/json", "-d", body],
                             capture_output=True, text=True, timeout=60, check=True).stdout
        events = [l[len("data: "):] for l in out.splitlines() if l.startswith("data: ")]
        self.assertEqual(events[-1], "[DONE]")
        chunks = [json.loads(e) for e in events[:-1]]
        self.assertEqual(chunks[-1]["choices"][0]["finish_reason"], "length")
        self.assertTrue(all(c["object"] == "chat.completion.chunk" for c in chunks))


def main():
    global ARGS, SERVER, HTTP_PORT, CLIENT
    p = argparse.ArgumentParser()
    p.add_argument("--server", required=True)
    p.add_argument("--repo", required=True)
    ARGS, rest = p.parse_known_args()
    try:
        import grpc  # noqa: F401
        import grpc_tools  # noqa: F401
        import openai  # noqa: F401
    except ImportError as e:
        print(f"test_openai_e2e: skipped: {e}", file=sys.stderr)
        return 77
    work = tempfile.mkdtemp(prefix="deltaserve-openai-")
    base.parse_args(["--server", ARGS.server, "--repo", ARGS.repo, "--proto-root", str(pathlib.Path(ARGS.repo) / "proto")])
    base.WORK = work
    base.compile_protos(pathlib.Path(work) / "gen")
    HTTP_PORT = base.free_ports(1)[0]
    SERVER = HttpServer("openai", pathlib.Path(ARGS.repo) / "models" / MODEL, ["--max-num-seqs", "1"]).start()
    CLIENT = client()
    try:
        result = unittest.main(argv=[sys.argv[0], *rest], exit=False, verbosity=2).result
    finally:
        SERVER.stop()
        shutil.rmtree(work, ignore_errors=True)
    return 0 if result.wasSuccessful() else 1


if __name__ == "__main__":
    sys.exit(main())
