#!/usr/bin/env python3
"""End-to-end test of the deltaserve server binary, driven as a separate process by Python grpcio.

The client is independent of the C++ code: its stubs are generated from proto/ with grpc_tools.protoc
at test time, token ids are checked against the `tokenizers` library, chat prompts against transformers'
apply_chat_template, and greedy tokens and log probabilities against transformers' Qwen3_5ForCausalLM on
the same checkpoint. The checkpoint is a random-weight Qwen3.5 with Qwen3's real tokenizer and padded
vocabulary (tools/make_random_qwen35.py tiny-qwen3-vocab), written into a temporary folder.

Usage:
  test_server_e2e.py --server BUILD/server/deltaserve --proto-root REPO/proto --repo REPO [unittest args]
Every path may also come from the environment (DELTASERVE_SERVER, DELTASERVE_PROTO_ROOT, DELTASERVE_REPO);
the defaults are relative to this file's place in the repository. --keep keeps the temporary folder.
Unittest arguments follow, e.g. `-v` or `-k Shutdown`.

Exit codes: 0 passed, 1 failed, 77 skipped (grpcio or grpcio-tools missing from this Python).
"""

import argparse
import errno
import json
import os
import pathlib
import random
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import unicodedata
import unittest
import urllib.request

SKIP = 77
PROTOS = ["deltaserve/v1/text_generation.proto", "deltaserve/v1/models.proto"]

# Health and reflection messages, written here because grpcio-health-checking and grpcio-reflection are
# not among the project's Python packages. Only the wire format matters (field numbers as in
# grpc/health/v1/health.proto and grpc/reflection/v1alpha/reflection.proto); a package of our own keeps
# the names from clashing with those packages if they are installed.
SUPPORT_PROTO = """
syntax = "proto3";
package deltaserve_e2e;

message HealthCheckRequest { string service = 1; }
message HealthCheckResponse {
  enum ServingStatus { UNKNOWN = 0; SERVING = 1; NOT_SERVING = 2; SERVICE_UNKNOWN = 3; }
  ServingStatus status = 1;
}

message ServerReflectionRequest {
  string host = 1;
  oneof message_request {
    string file_by_filename = 3;
    string file_containing_symbol = 4;
    string list_services = 7;
  }
}
message FileDescriptorResponse { repeated bytes file_descriptor_proto = 1; }
message ServiceResponse { string name = 1; }
message ListServiceResponse { repeated ServiceResponse service = 1; }
message ErrorResponse { int32 error_code = 1; string error_message = 2; }
message ServerReflectionResponse {
  string valid_host = 1;
  ServerReflectionRequest original_request = 2;
  oneof message_response {
    FileDescriptorResponse file_descriptor_response = 4;
    ListServiceResponse list_services_response = 6;
    ErrorResponse error_response = 7;
  }
}
"""

# The checkpoint (tools/make_random_qwen35.py preset) and the main server's settings.
PRESET = "tiny-qwen3-vocab"
MODEL_NAME = "tiny-qwen35"  # the checkpoint folder's name, which the server uses by default
VOCAB_SIZE = 151936
HIDDEN_SIZE = 32
MAX_MODEL_LEN = 2048
MAX_NUM_SEQS = 4
MAX_QUEUE = 2
IM_END, ENDOFTEXT = 151645, 151643
LONG = MAX_MODEL_LEN - 8  # max_tokens of a generation that outlasts any test step (~2 ms a token)

ARGS = None  # parsed command line
WORK = None  # temporary folder: generated stubs, checkpoint, server logs
GEN = {}  # generated modules: tg, models, support
TOKENIZER = None  # tokenizers.Tokenizer of the checkpoint
MODEL_DIR = None
SERVER = None  # the main ServerProcess
ALL_SERVERS = []  # every server started, for the logs printed on failure


# ---------------------------------------------------------------------------------------------------
# Setup: stubs, checkpoint, server processes.


def compile_protos(out):
    import grpc_tools
    from grpc_tools import protoc

    root = pathlib.Path(ARGS.proto_root).resolve()
    well_known = pathlib.Path(grpc_tools.__file__).parent / "_proto"
    support_dir = out / "support_src"
    support_dir.mkdir(parents=True)
    (support_dir / "deltaserve_e2e_support.proto").write_text(SUPPORT_PROTO)
    rc = protoc.main(["grpc_tools.protoc", f"-I{root}", f"-I{well_known}", f"-I{support_dir}",
                      f"--python_out={out}", f"--grpc_python_out={out}",
                      *[str(root / p) for p in PROTOS], str(support_dir / "deltaserve_e2e_support.proto")])
    if rc != 0:
        raise RuntimeError(f"grpc_tools.protoc exited with {rc}")
    sys.path.insert(0, str(out))
    import importlib

    GEN["tg"] = importlib.import_module("deltaserve.v1.text_generation_pb2")
    GEN["tg_grpc"] = importlib.import_module("deltaserve.v1.text_generation_pb2_grpc")
    GEN["models"] = importlib.import_module("deltaserve.v1.models_pb2")
    GEN["models_grpc"] = importlib.import_module("deltaserve.v1.models_pb2_grpc")
    GEN["support"] = importlib.import_module("deltaserve_e2e_support_pb2")


def make_checkpoint(out):
    repo = pathlib.Path(ARGS.repo).resolve()
    cmd = [sys.executable, str(repo / "tools" / "make_random_qwen35.py"), PRESET, str(out),
           "--tokenizer", str(repo / "tests" / "data" / "qwen3-tokenizer")]
    env = dict(os.environ, OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "1"))
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({done.returncode}):\n{done.stdout}\n{done.stderr}")


def free_ports(n):
    """n distinct free TCP ports on 127.0.0.1 (the metrics server cannot bind port 0 and report it)."""
    socks = []
    try:
        for _ in range(n):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def wait_for_binary(path, timeout=180):
    """The binary may be rebuilt under us: wait for it to be there and executable."""
    deadline = time.monotonic() + timeout
    while not (os.path.isfile(path) and os.access(path, os.X_OK)):
        if time.monotonic() > deadline:
            raise RuntimeError(f"server binary {path} not found")
        time.sleep(1)


def run_server_once(args, timeout=60):
    """Runs the binary to completion (for startup errors): (returncode, stderr)."""
    wait_for_binary(ARGS.server)
    env = dict(os.environ, OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "1"))
    done = subprocess.run([ARGS.server, *args], capture_output=True, text=True, timeout=timeout, env=env,
                          stdin=subprocess.DEVNULL)
    return done.returncode, done.stderr


class ServerProcess:
    """One deltaserve process on 127.0.0.1 with free ports; stderr and stdout go to a log file."""

    def __init__(self, label, model_dir, extra_args):
        self.label = label
        self.model_dir = model_dir
        self.extra_args = list(extra_args)
        self.proc = None
        self.port = self.metrics_port = None
        self.log_path = pathlib.Path(WORK) / f"server-{label}.log"
        self.log_text = ""
        self.channel = None
        ALL_SERVERS.append(self)

    @property
    def address(self):
        return f"127.0.0.1:{self.port}"

    def command(self):
        return [ARGS.server, "--model", str(self.model_dir), "--host", "127.0.0.1", "--port", str(self.port),
                "--metrics-port", str(self.metrics_port), *self.extra_args]

    def start(self, timeout=90):
        import grpc

        last_error = None
        for attempt in range(4):
            wait_for_binary(ARGS.server)
            self.port, self.metrics_port = free_ports(2)
            env = dict(os.environ, OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "1"))
            log = open(self.log_path, "ab")
            log.write(f"$ {' '.join(self.command())}\n".encode())
            log.flush()
            try:
                self.proc = subprocess.Popen(self.command(), stdout=log, stderr=subprocess.STDOUT,
                                             stdin=subprocess.DEVNULL, env=env)
            except OSError as e:  # ENOENT / ETXTBSY while the binary is being relinked
                log.close()
                last_error = e
                if e.errno in (errno.ENOENT, errno.ETXTBSY, errno.EACCES):
                    time.sleep(2)
                    continue
                raise
            log.close()
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline:
                if self.proc.poll() is not None:
                    break
                try:
                    if self.health("", timeout=1.0) == "SERVING":
                        self.channel = grpc.insecure_channel(self.address)
                        return self
                except grpc.RpcError:
                    pass
                time.sleep(0.1)
            if self.proc.poll() is None:
                self.kill()
                raise RuntimeError(f"server {self.label} not SERVING after {timeout} s:\n{self.read_log()}")
            last_error = RuntimeError(f"server {self.label} exited with {self.proc.returncode} at startup:\n"
                                      f"{self.read_log()}")
            if "cannot listen" not in self.read_log():  # a port taken meanwhile: retry with new ones
                raise last_error
        raise last_error

    def health(self, service, timeout=2.0):
        """grpc.health.v1.Health/Check on a fresh channel: the status name, or raises grpc.RpcError."""
        import grpc

        support = GEN["support"]
        with grpc.insecure_channel(self.address) as ch:
            check = ch.unary_unary("/grpc.health.v1.Health/Check",
                                   request_serializer=support.HealthCheckRequest.SerializeToString,
                                   response_deserializer=support.HealthCheckResponse.FromString)
            resp = check(support.HealthCheckRequest(service=service), timeout=timeout)
        return support.HealthCheckResponse.ServingStatus.Name(resp.status)

    def read_log(self):
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return self.log_text

    def signal(self, sig):
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(sig)

    def kill(self):
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)

    def stop(self, timeout=30):
        if self.channel is not None:
            self.channel.close()
            self.channel = None
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.kill()
        self.log_text = self.read_log()


def setUpModule():
    global WORK, TOKENIZER, MODEL_DIR, SERVER
    if ARGS is None:
        parse_args([])
    WORK = tempfile.mkdtemp(prefix="deltaserve-e2e-")
    compile_protos(pathlib.Path(WORK) / "gen")
    MODEL_DIR = pathlib.Path(WORK) / MODEL_NAME
    make_checkpoint(MODEL_DIR)
    import tokenizers

    TOKENIZER = tokenizers.Tokenizer.from_file(str(MODEL_DIR / "tokenizer.json"))
    SERVER = ServerProcess("main", MODEL_DIR, [
        "--max-num-seqs", str(MAX_NUM_SEQS), "--max-model-len", str(MAX_MODEL_LEN),
        "--max-queue", str(MAX_QUEUE), "--shutdown-grace", "5"]).start()


def tearDownModule():
    for s in ALL_SERVERS:
        s.stop()
    if WORK and not ARGS.keep:
        shutil.rmtree(WORK, ignore_errors=True)


# ---------------------------------------------------------------------------------------------------
# Client helpers.


class Stream:
    """A finished (or failed) Generate call: its messages, the concatenations and the final status."""

    def __init__(self, messages, code, details):
        self.messages = messages
        self.code = code
        self.details = details
        self.ids = [i for m in messages for i in m.token_ids]
        self.text = "".join(m.text for m in messages)
        self.last = messages[-1] if messages else None


def tg():
    return GEN["tg"]


def text_stub(server=None):
    return GEN["tg_grpc"].TextGenerationStub((server or SERVER).channel)


def models_stub(server=None):
    return GEN["models_grpc"].ModelsStub((server or SERVER).channel)


GENERATE_CALLS = {"count": 0}  # Generate calls made to the main server (for wait_idle)
GENERATE_LOCK = threading.Lock()


def start_generate(request, timeout=None, server=None):
    if server is None or server is SERVER:
        with GENERATE_LOCK:
            GENERATE_CALLS["count"] += 1
    return text_stub(server).Generate(request, timeout=timeout)


def collect(call):
    import grpc

    messages = []
    try:
        for m in call:
            messages.append(m)
        return Stream(messages, grpc.StatusCode.OK, "")
    except grpc.RpcError as e:
        return Stream(messages, e.code(), e.details())


def generate(request, timeout=60, server=None):
    return collect(start_generate(request, timeout=timeout, server=server))


def greedy(max_tokens=16, **kw):
    return tg().SamplingParams(temperature=0, ignore_eos=True, max_tokens=max_tokens, **kw)


def decode(ids, skip_special_tokens):
    return TOKENIZER.decode(ids, skip_special_tokens=skip_special_tokens)


def metrics_text(server=None):
    server = server or SERVER
    with urllib.request.urlopen(f"http://127.0.0.1:{server.metrics_port}/metrics", timeout=5) as r:
        return r.status, r.headers.get("Content-Type", ""), r.read().decode()


METRIC_LINE = re.compile(r'^deltaserve_requests_total\{([^}]*)\}\s+(\S+)$')


def request_counts(server=None):
    """{(method, code): count} from deltaserve_requests_total."""
    out = {}
    for line in metrics_text(server)[2].splitlines():
        m = METRIC_LINE.match(line)
        if m:
            labels = dict(re.findall(r'(\w+)="([^"]*)"', m.group(1)))
            out[(labels.get("method"), labels.get("code"))] = float(m.group(2))
    return out


def wait_idle(timeout=20):
    """Waits until the server has finished every Generate call made so far (each is counted in
    deltaserve_requests_total once the call is done, and a call's slot is free before that)."""
    deadline = time.monotonic() + timeout
    while True:
        done = sum(v for (method, _), v in request_counts().items() if method == "Generate")
        with GENERATE_LOCK:
            started = GENERATE_CALLS["count"]
        if done == started:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"server not idle after {timeout} s: {done} Generate calls finished of "
                                 f"{started} made (deltaserve_requests_total)")
        time.sleep(0.05)


def chat_input(messages, enable_thinking=None, tools=None):
    ci = tg().ChatInput(messages=[tg().ChatMessage(role=r, content=c) for r, c in messages])
    if enable_thinking is not None:
        ci.enable_thinking = enable_thinking
    for t in tools or []:
        ci.tools_json.append(t)
    return ci


_REFERENCE = {}


def hf_tokenizer():
    """transformers' tokenizer of the checkpoint (for apply_chat_template), or None without transformers."""
    if "tok" not in _REFERENCE:
        try:
            import transformers

            transformers.logging.set_verbosity_error()
            _REFERENCE["tok"] = transformers.AutoTokenizer.from_pretrained(str(MODEL_DIR))
        except ImportError:
            _REFERENCE["tok"] = None
    return _REFERENCE["tok"]


def render_chat(messages, enable_thinking=None, tools=None):
    """The reference prompt text: transformers' apply_chat_template with the checkpoint's template."""
    tok = hf_tokenizer()
    if tok is None:
        raise unittest.SkipTest("transformers not installed")
    kw = {} if enable_thinking is None else {"enable_thinking": enable_thinking}
    if tools:
        kw["tools"] = tools
    return tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True, **kw)


def reference_model():
    """transformers' Qwen3_5ForCausalLM of the checkpoint, fp32 on the CPU."""
    if "model" not in _REFERENCE:
        try:
            import torch
            import transformers
            from transformers import Qwen3_5ForCausalLM
        except ImportError:
            raise unittest.SkipTest("torch / transformers not installed")
        torch.set_num_threads(1)
        transformers.logging.set_verbosity_error()
        transformers.logging.disable_progress_bar()
        _REFERENCE["model"] = Qwen3_5ForCausalLM.from_pretrained(str(MODEL_DIR), dtype=torch.float32).eval()
    return _REFERENCE["model"]


def reference_greedy(prompt_ids, n):
    """transformers' greedy tokens, the log-softmax at each generated step and each step's top-2 gap."""
    import torch

    model = reference_model()
    ids = torch.tensor([prompt_ids])
    with torch.no_grad():
        out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), do_sample=False,
                             max_new_tokens=n, min_new_tokens=n, eos_token_id=None, pad_token_id=0)
        logits = model(input_ids=out).logits[0, len(prompt_ids) - 1:-1].float()
    top2 = logits.topk(2, dim=-1).values
    return out[0, len(prompt_ids):].tolist(), torch.log_softmax(logits, dim=-1), (top2[:, 0] - top2[:, 1]).tolist()


class ServerTestCase(unittest.TestCase):
    maxDiff = 4000

    def assertStatus(self, err_or_stream, code, *needles, prefix=None):
        import grpc

        if isinstance(err_or_stream, Stream):
            got_code, details = err_or_stream.code, err_or_stream.details
        else:
            got_code, details = err_or_stream.code(), err_or_stream.details()
        self.assertEqual(got_code, getattr(grpc.StatusCode, code), f"details: {details!r}")
        if prefix is not None:
            self.assertTrue(details.startswith(prefix), f"message should start with {prefix!r}: {details!r}")
        for n in needles:
            self.assertIn(n, details)

    def assertRefused(self, stream, code, *needles, prefix=None):
        """A refused Generate: the status and no message at all."""
        self.assertEqual(stream.messages, [], "a refused request must end with no message")
        self.assertStatus(stream, code, *needles, prefix=prefix)

    def assertWellFormed(self, s, request_id=None, max_tokens=None):
        """The per-message contract of a Generate stream that ended STOP or LENGTH."""
        import grpc

        self.assertEqual(s.code, grpc.StatusCode.OK, s.details)
        self.assertTrue(s.messages)
        rid = request_id or s.messages[0].request_id
        self.assertTrue(rid)
        for m in s.messages[:-1]:
            self.assertEqual(m.request_id, rid)
            self.assertEqual(m.finish_reason, tg().FINISH_REASON_UNSPECIFIED)
            self.assertFalse(m.HasField("usage"))
            self.assertFalse(m.HasField("seed"))
            self.assertIsNone(m.WhichOneof("stop_reason"))
        last = s.last
        self.assertEqual(last.request_id, rid)
        self.assertIn(last.finish_reason, (tg().FINISH_REASON_STOP, tg().FINISH_REASON_LENGTH))
        self.assertTrue(last.HasField("usage") and last.HasField("seed"))
        u = last.usage
        self.assertEqual(u.completion_tokens, len(s.ids))
        self.assertGreater(u.total_seconds, 0)
        self.assertGreater(u.time_to_first_token_seconds, 0)
        self.assertLessEqual(u.time_to_first_token_seconds, u.total_seconds)
        if max_tokens is not None and last.finish_reason == tg().FINISH_REASON_LENGTH:
            self.assertEqual(len(s.ids), max_tokens)
        for i in s.ids:
            self.assertTrue(0 <= i < VOCAB_SIZE)
        # Generated text: the decoded tokens with special tokens left out.
        self.assertEqual(s.text, decode(s.ids, skip_special_tokens=True))


# ---------------------------------------------------------------------------------------------------
# Tests.


class ModelsTest(ServerTestCase):
    def check_info(self, info):
        m = GEN["models"]
        self.assertEqual(info.name, MODEL_NAME)
        self.assertEqual(info.kind, m.MODEL_KIND_TEXT_GENERATION)
        self.assertEqual(info.architecture, "Qwen3_5ForCausalLM")
        self.assertEqual(info.dtype, "float32")
        self.assertEqual(info.device, "cpu")
        self.assertTrue(info.ready)
        self.assertEqual(info.num_layers, 4)
        self.assertEqual((info.layer_types.linear_attention, info.layer_types.full_attention), (3, 1))
        self.assertEqual(info.hidden_size, HIDDEN_SIZE)
        self.assertEqual(info.vocab_size, VOCAB_SIZE)
        self.assertEqual(info.max_model_len, MAX_MODEL_LEN)
        self.assertEqual(info.max_num_seqs, MAX_NUM_SEQS)
        self.assertEqual(info.inverse_method, "solve-triangular")  # "auto" resolved on the CPU
        self.assertEqual(info.state_dtype, "fp32")
        self.assertEqual(info.limits.max_prompt_tokens, MAX_MODEL_LEN - 1)
        self.assertEqual(info.limits.max_new_tokens, MAX_MODEL_LEN - 1)
        self.assertEqual(info.limits.max_logprobs, 20)
        self.assertEqual(info.limits.max_queued_requests, MAX_QUEUE)
        # generation_config.json: Qwen3's sampling defaults; no max_new_tokens, so transformers' 20.
        d = info.default_sampling
        for field in ["temperature", "top_k", "top_p", "min_p", "repetition_penalty", "max_tokens", "logprobs"]:
            self.assertTrue(d.HasField(field), f"default_sampling.{field} unset")
        self.assertAlmostEqual(d.temperature, 0.6)
        self.assertEqual(d.top_k, 20)
        self.assertAlmostEqual(d.top_p, 0.95)
        self.assertEqual(d.min_p, 0)
        self.assertEqual(d.repetition_penalty, 1)
        self.assertEqual(d.max_tokens, 20)
        self.assertEqual(d.logprobs, -1)
        self.assertEqual(list(info.eos_token_ids), [IM_END, ENDOFTEXT])

    def test_list_models(self):
        resp = models_stub().ListModels(GEN["models"].ListModelsRequest(), timeout=10)
        self.assertEqual(resp.default_model, MODEL_NAME)
        self.assertEqual(len(resp.models), 1)
        self.check_info(resp.models[0])

    def test_get_model(self):
        m = GEN["models"]
        self.check_info(models_stub().GetModel(m.GetModelRequest(name=MODEL_NAME), timeout=10))
        self.check_info(models_stub().GetModel(m.GetModelRequest(), timeout=10))  # empty: the default

    def test_unknown_model_is_not_found(self):
        import grpc

        calls = [
            lambda: models_stub().GetModel(GEN["models"].GetModelRequest(name="nope"), timeout=10),
            lambda: text_stub().Tokenize(tg().TokenizeRequest(model="nope", text="hi"), timeout=10),
            lambda: text_stub().Detokenize(tg().DetokenizeRequest(model="nope", token_ids=[1]), timeout=10),
        ]
        for call in calls:
            with self.assertRaises(grpc.RpcError) as cm:
                call()
            self.assertStatus(cm.exception, "NOT_FOUND", "nope", MODEL_NAME)  # lists the served names
        s = generate(tg().GenerateRequest(model="nope", prompt="hi", sampling=greedy()))
        self.assertRefused(s, "NOT_FOUND", "nope", MODEL_NAME)

    def test_health(self):
        import grpc

        self.assertEqual(SERVER.health(""), "SERVING")
        self.assertEqual(SERVER.health(MODEL_NAME), "SERVING")
        with self.assertRaises(grpc.RpcError) as cm:
            SERVER.health("no-such-model")
        self.assertEqual(cm.exception.code(), grpc.StatusCode.NOT_FOUND)

    def test_reflection(self):
        from google.protobuf import descriptor_pb2

        support = GEN["support"]
        info = SERVER.channel.stream_stream(
            "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo",
            request_serializer=support.ServerReflectionRequest.SerializeToString,
            response_deserializer=support.ServerReflectionResponse.FromString)
        responses = list(info(iter([
            support.ServerReflectionRequest(list_services=""),
            support.ServerReflectionRequest(file_containing_symbol="deltaserve.v1.TextGeneration"),
        ]), timeout=10))
        self.assertEqual(len(responses), 2)
        names = {s.name for s in responses[0].list_services_response.service}
        self.assertLessEqual({"deltaserve.v1.TextGeneration", "deltaserve.v1.Models", "grpc.health.v1.Health"},
                             names)
        files = {}
        for raw in responses[1].file_descriptor_response.file_descriptor_proto:
            f = descriptor_pb2.FileDescriptorProto.FromString(raw)
            files[f.name] = f
        self.assertIn("deltaserve/v1/text_generation.proto", files, sorted(files))
        served = files["deltaserve/v1/text_generation.proto"]
        ours = descriptor_pb2.FileDescriptorProto()
        tg().DESCRIPTOR.CopyToProto(ours)
        # The server's descriptor is the same contract as the .proto files this client compiled.
        self.assertEqual([(m.name, m.input_type, m.output_type, m.server_streaming)
                          for m in served.service[0].method],
                         [(m.name, m.input_type, m.output_type, m.server_streaming) for m in ours.service[0].method])
        self.assertEqual(sorted(m.name for m in served.message_type), sorted(m.name for m in ours.message_type))


TEXTS = [
    "Hello, world!",
    "The quick brown fox jumps over the lazy dog. 1234567890",
    "naïve café — Ünïcödé “quotes” ½ ∑ ∞",
    "你好，世界！今天天气很好，我们去公园散步吧。",
    "日本語のテキストと한국어 텍스트",
    "emoji 👍🏽 👨‍👩‍👧 🎉🇺🇸 ✨",
    "   leading and trailing spaces   ",
    "tabs\tand\nnew\nlines\r\n\n\n  indented",
    "مرحبا بالعالم — नमस्ते दुनिया — Привет, мир",
    "code: def f(x):\n    return x ** 2  # squared",
    "<|im_start|>user\nspecial tokens<|im_end|>\n<|endoftext|>",
    "e\u0301 Cafe\u0301",  # not NFC: the tokenizer normalizes
    " ",
    "",
]


class TokenizeTest(ServerTestCase):
    def test_tokenize_matches_tokenizers(self):
        for text in TEXTS:
            with self.subTest(text=text):
                expected = TOKENIZER.encode(text)
                resp = text_stub().Tokenize(tg().TokenizeRequest(text=text, return_tokens=True), timeout=10)
                self.assertEqual(list(resp.token_ids), expected.ids)
                self.assertEqual(list(resp.tokens), expected.tokens)
                self.assertEqual(resp.chat_prompt, "")
                plain = text_stub().Tokenize(tg().TokenizeRequest(text=text), timeout=10)
                self.assertEqual(list(plain.token_ids), expected.ids)
                self.assertEqual(list(plain.tokens), [])

    def test_detokenize_round_trips(self):
        for text in TEXTS:
            with self.subTest(text=text):
                ids = TOKENIZER.encode(text).ids
                for skip in (False, True):
                    resp = text_stub().Detokenize(
                        tg().DetokenizeRequest(token_ids=ids, skip_special_tokens=skip), timeout=10)
                    self.assertEqual(resp.text, decode(ids, skip_special_tokens=skip))
                    if not skip:
                        self.assertEqual(resp.text, unicodedata.normalize("NFC", text))

    def test_detokenize_partial_characters(self):
        # Byte-level pieces of a multi-byte character decode to U+FFFD, as tokenizers does.
        ids = TOKENIZER.encode("𝑡😀你").ids
        for cut in range(len(ids) + 1):
            for part in (ids[:cut], ids[cut:]):
                resp = text_stub().Detokenize(tg().DetokenizeRequest(token_ids=part), timeout=10)
                self.assertEqual(resp.text, decode(part, skip_special_tokens=False), part)
        self.assertEqual(text_stub().Detokenize(tg().DetokenizeRequest(), timeout=10).text, "")

    def test_detokenize_accepts_every_model_id(self):
        # Token ids index the model's vocabulary: [0, vocab_size) where vocab_size is GetModel's 151,936.
        # Qwen pads the embedding past the tokenizer's 151,669 entries; the model can generate those ids
        # (Generate streams them as no text), so Detokenize must accept them too: tokenizers skips ids
        # it has no entry for.
        tokenizer_size = TOKENIZER.get_vocab_size(with_added_tokens=True)
        self.assertLess(tokenizer_size, VOCAB_SIZE)
        hello = TOKENIZER.encode("Hello").ids
        import grpc

        for pad in (tokenizer_size, 151700, VOCAB_SIZE - 1):
            with self.subTest(id=pad):
                ids = hello + [pad] + hello
                try:
                    resp = text_stub().Detokenize(tg().DetokenizeRequest(token_ids=ids), timeout=10)
                except grpc.RpcError as e:
                    self.fail(f"Detokenize({ids}) refused a token id inside [0, vocab_size {VOCAB_SIZE}): "
                              f"{e.code().name} {e.details()!r}")
                self.assertEqual(resp.text, decode(ids, skip_special_tokens=False))

    def test_tokenize_chat_matches_template(self):
        tools = [{"type": "function", "function": {
            "name": "get_weather", "description": "Weather for a city, in °C",
            "parameters": {"type": "object", "properties": {"city": {"type": "string"}, "days": {
                "type": "integer", "minimum": 1, "maximum": 7.5}}, "required": ["city"]}}}]
        cases = [
            ([("user", "Hi")], None, None),
            ([("system", "You are terse."), ("user", "What is 2+2?")], False, None),
            ([("user", "Hi"), ("assistant", "<think>\nhmm\n</think>\n\nHello!"), ("user", "再见 👋")], None, None),
            ([("user", "Hi"), ("assistant", "Hello!"), ("user", "And now?")], True, None),
            ([("system", "Use tools."), ("user", "Weather in Paris?")], None, tools),
        ]
        for messages, thinking, tool_list in cases:
            with self.subTest(messages=messages, enable_thinking=thinking, tools=bool(tool_list)):
                rendered = render_chat([{"role": r, "content": c} for r, c in messages], thinking, tool_list)
                tools_json = [json.dumps(t, indent=2) for t in tool_list or []]  # any formatting
                resp = text_stub().Tokenize(
                    tg().TokenizeRequest(chat=chat_input(messages, thinking, tools_json)), timeout=10)
                self.assertEqual(resp.chat_prompt, rendered)
                self.assertEqual(list(resp.token_ids), TOKENIZER.encode(rendered).ids)
        # Tool calls (arguments as JSON text, written verbatim), reasoning and tool results.
        calls = [("get_weather", '{"city": "Paris"}'), ("get_weather", '{"city": "Oslo", "days": 2}')]
        hf_messages = [
            {"role": "user", "content": "Weather in Paris and Oslo?"},
            {"role": "assistant", "content": "", "reasoning_content": "Two cities: two calls.",
             "tool_calls": [{"type": "function", "function": {"name": n, "arguments": a}} for n, a in calls]},
            {"role": "tool", "content": '{"temp": 21}'},
            {"role": "tool", "content": '{"temp": 9}'},
        ]
        chat = tg().ChatInput(messages=[
            tg().ChatMessage(role="user", content="Weather in Paris and Oslo?"),
            tg().ChatMessage(role="assistant", content="", reasoning_content="Two cities: two calls.",
                             tool_calls=[tg().ToolCall(name=n, arguments=a) for n, a in calls]),
            tg().ChatMessage(role="tool", content='{"temp": 21}'),
            tg().ChatMessage(role="tool", content='{"temp": 9}'),
        ], tools_json=[json.dumps(t) for t in tools])
        rendered = render_chat(hf_messages, None, tools)
        resp = text_stub().Tokenize(tg().TokenizeRequest(chat=chat), timeout=10)
        self.assertEqual(resp.chat_prompt, rendered)
        self.assertEqual(list(resp.token_ids), TOKENIZER.encode(rendered).ids)
        # The simplest conversation, spelled out: ChatML with the generation prompt.
        resp = text_stub().Tokenize(tg().TokenizeRequest(chat=chat_input([("user", "Hi")])), timeout=10)
        self.assertEqual(resp.chat_prompt, "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n")

    def test_tokenize_detokenize_errors(self):
        import grpc

        cases = [
            (lambda: text_stub().Tokenize(tg().TokenizeRequest(), timeout=10), "input"),
            (lambda: text_stub().Tokenize(tg().TokenizeRequest(chat=tg().ChatInput()), timeout=10),
             "chat.messages"),
            (lambda: text_stub().Tokenize(tg().TokenizeRequest(chat=chat_input([("robot", "x")])), timeout=10),
             "chat.messages[0].role"),
            (lambda: text_stub().Tokenize(
                tg().TokenizeRequest(chat=chat_input([("user", "x")], tools=["[1, 2]"])), timeout=10),
             "chat.tools_json[0]"),
            (lambda: text_stub().Detokenize(tg().DetokenizeRequest(token_ids=[5, VOCAB_SIZE]), timeout=10),
             "token_ids[1]"),
            (lambda: text_stub().Detokenize(tg().DetokenizeRequest(token_ids=[-1]), timeout=10), "token_ids[0]"),
            (lambda: text_stub().Detokenize(tg().DetokenizeRequest(token_ids=[1] * (MAX_MODEL_LEN + 1)),
                                            timeout=10), "token_ids"),
        ]
        for call, field in cases:
            with self.subTest(field=field):
                with self.assertRaises(grpc.RpcError) as cm:
                    call()
                self.assertStatus(cm.exception, "INVALID_ARGUMENT", prefix=field)
        # Text may be empty for Tokenize (no tokens).
        self.assertEqual(list(text_stub().Tokenize(tg().TokenizeRequest(text=""), timeout=10).token_ids), [])


class GenerateTest(ServerTestCase):
    def setUp(self):
        wait_idle()

    def run_twice(self, request, max_tokens):
        a = generate(request)
        b = generate(request)
        self.assertWellFormed(a, max_tokens=max_tokens)
        self.assertWellFormed(b, max_tokens=max_tokens)
        self.assertEqual(a.ids, b.ids, "greedy decoding must be deterministic")
        self.assertEqual(a.text, b.text)
        self.assertEqual(a.last.finish_reason, tg().FINISH_REASON_LENGTH)
        self.assertEqual(a.last.usage.completion_tokens, max_tokens)
        return a

    def test_generate_prompt(self):
        for text in ["Hello world", "你好，世界！", "emoji 👍🏽 🎉 and\ttabs\n"]:
            with self.subTest(prompt=text):
                req = tg().GenerateRequest(prompt=text, request_id="e2e-prompt", sampling=greedy(16))
                s = self.run_twice(req, 16)
                self.assertEqual(s.messages[0].request_id, "e2e-prompt")
                self.assertEqual(s.last.usage.prompt_tokens, len(TOKENIZER.encode(text).ids))
                # The same prompt as token ids gives the same tokens.
                by_ids = generate(tg().GenerateRequest(
                    token_ids=tg().TokenIds(ids=TOKENIZER.encode(text).ids), sampling=greedy(16)))
                self.assertEqual(by_ids.ids, s.ids)

    def test_generate_chat(self):
        messages = [("system", "You are a helpful assistant."), ("user", "Write a haiku about the sea 🌊.")]
        for thinking in (None, False):
            with self.subTest(enable_thinking=thinking):
                rendered = render_chat([{"role": r, "content": c} for r, c in messages], thinking)
                req = tg().GenerateRequest(chat=chat_input(messages, thinking), sampling=greedy(16))
                s = self.run_twice(req, 16)
                prompt_ids = TOKENIZER.encode(rendered).ids
                self.assertEqual(s.last.usage.prompt_tokens, len(prompt_ids))
                by_ids = generate(tg().GenerateRequest(token_ids=tg().TokenIds(ids=prompt_ids), sampling=greedy(16)))
                self.assertEqual(by_ids.ids, s.ids)

    def test_generate_token_ids_matches_transformers(self):
        rng = random.Random(2024)
        prompts = [
            TOKENIZER.encode("The capital of France is").ids,
            # Crosses the 64-token chunk boundary; ends on an id of the padded vocabulary past the tokenizer.
            [rng.randrange(VOCAB_SIZE) for _ in range(99)] + [VOCAB_SIZE - 1],
            [rng.randrange(VOCAB_SIZE) for _ in range(600)],  # more than one step's 512-token budget
        ]
        n = 16
        for prompt in prompts:
            with self.subTest(prompt_len=len(prompt)):
                req = tg().GenerateRequest(token_ids=tg().TokenIds(ids=prompt), sampling=greedy(n, logprobs=3))
                s = self.run_twice(req, n)
                self.assertEqual(s.last.usage.prompt_tokens, len(prompt))
                ref_ids, ref_logprobs, gaps = reference_greedy(prompt, n)
                # Greedy decisions closer than float rounding may go either way: compare up to the first.
                upto = next((i for i, g in enumerate(gaps) if g < 1e-4), n)
                if upto < n:
                    print(f"note: prompt of {len(prompt)}: near-tie at step {upto} (gap {gaps[upto]:.2e})",
                          file=sys.stderr)
                self.assertGreaterEqual(upto, n // 2, "too close to a tie to compare: change the prompt")
                self.assertEqual(s.ids[:upto], ref_ids[:upto])
                # Logprobs: one per token, the raw model's log-softmax; top 3 most likely first.
                lps = [lp for m in s.messages for lp in m.logprobs]
                self.assertEqual([lp.token_id for lp in lps], s.ids)
                for step in range(upto):
                    lp = lps[step]
                    ref = ref_logprobs[step]
                    self.assertAlmostEqual(lp.logprob, float(ref[lp.token_id]), delta=2e-3)
                    self.assertEqual(len(lp.top_logprobs), 3)
                    top = ref.topk(3)
                    self.assertEqual([t.token_id for t in lp.top_logprobs], top.indices.tolist())
                    for t, v in zip(lp.top_logprobs, top.values.tolist()):
                        self.assertAlmostEqual(t.logprob, v, delta=2e-3)
                    self.assertEqual(lp.top_logprobs[0].token_id, lp.token_id)  # greedy took the best

    def test_default_sampling_and_seed_replay(self):
        # No sampling at all: the model's defaults (temperature 0.6, top-k 20, top-p 0.95, 20 tokens) with
        # a fresh seed, which the last message reports; replaying it gives the same tokens.
        prompt = "Once upon a time"
        first = generate(tg().GenerateRequest(prompt=prompt))
        self.assertWellFormed(first)
        self.assertLessEqual(len(first.ids), 20)
        if first.last.finish_reason == tg().FINISH_REASON_LENGTH:
            self.assertEqual(len(first.ids), 20)
        else:
            self.assertIn(first.last.stop_token_id, (IM_END, ENDOFTEXT))
        replay = generate(tg().GenerateRequest(prompt=prompt, sampling=tg().SamplingParams(seed=first.last.seed)))
        self.assertEqual(replay.ids, first.ids)
        self.assertEqual(replay.last.seed, first.last.seed)
        # Explicit seeded sampling, seed 0 included: reproducible, and different seeds differ.
        runs = {}
        for seed in (0, 1234, 1234):
            sp = tg().SamplingParams(temperature=1.0, top_k=50, top_p=0.9, seed=seed, ignore_eos=True,
                                     max_tokens=24)
            s = generate(tg().GenerateRequest(prompt=prompt, sampling=sp))
            self.assertWellFormed(s, max_tokens=24)
            self.assertEqual(s.last.seed, seed)
            runs.setdefault(seed, []).append(s.ids)
        self.assertEqual(runs[1234][0], runs[1234][1])
        self.assertNotEqual(runs[0][0], runs[1234][0])

    def test_max_tokens_default_cut_to_room_left(self):
        rng = random.Random(7)
        for prompt_len, expected in ((MAX_MODEL_LEN - 8, 8), (MAX_MODEL_LEN - 1, 1)):
            with self.subTest(prompt_len=prompt_len):
                ids = [rng.randrange(TOKENIZER.get_vocab_size()) for _ in range(prompt_len)]
                sp = tg().SamplingParams(temperature=0, ignore_eos=True)  # max_tokens unset: 20, cut
                s = generate(tg().GenerateRequest(token_ids=tg().TokenIds(ids=ids), sampling=sp))
                self.assertWellFormed(s)
                self.assertEqual(s.last.finish_reason, tg().FINISH_REASON_LENGTH)
                self.assertEqual(len(s.ids), expected)
                self.assertEqual(s.last.usage.prompt_tokens, prompt_len)

    def test_stop_string_and_stop_token(self):
        full = generate(tg().GenerateRequest(prompt="Hello world", sampling=greedy(32)))
        self.assertWellFormed(full, max_tokens=32)
        # A stop token id: generation ends on its first occurrence, which is the last token sent.
        k = 5
        stop_id = full.ids[k]
        first = full.ids.index(stop_id)
        s = generate(tg().GenerateRequest(prompt="Hello world", sampling=greedy(32, stop_token_ids=[stop_id])))
        self.assertWellFormed(s)
        self.assertEqual(s.last.finish_reason, tg().FINISH_REASON_STOP)
        self.assertEqual(s.last.WhichOneof("stop_reason"), "stop_token_id")
        self.assertEqual(s.last.stop_token_id, stop_id)
        self.assertEqual(s.ids, full.ids[:first + 1])
        # A stop string: the text up to it (not included) comes back; the tokens that made it are sent.
        stop = None
        for i in range(4, len(full.ids)):
            piece = decode([full.ids[i]], skip_special_tokens=True)
            if len(piece.strip()) >= 2 and "\ufffd" not in piece and full.text.find(piece) > 0:
                stop = piece.strip()
                break
        self.assertIsNotNone(stop, f"no usable stop string in {full.text!r}")
        cut = full.text.find(stop)
        s = generate(tg().GenerateRequest(prompt="Hello world", sampling=greedy(32, stop=["never-seen", stop])))
        self.assertEqual(s.code.name, "OK", s.details)
        self.assertEqual(s.last.finish_reason, tg().FINISH_REASON_STOP)
        self.assertEqual(s.last.WhichOneof("stop_reason"), "stop_string")
        self.assertEqual(s.last.stop_string, stop)
        self.assertEqual(s.text, full.text[:cut])
        self.assertEqual(s.ids, full.ids[:len(s.ids)])
        self.assertIn(stop, decode(s.ids, skip_special_tokens=True))
        self.assertEqual(s.last.usage.completion_tokens, len(s.ids))

    def test_concurrent_streams_equal_solo(self):
        # More requests than slots (4 run, 2 wait in the full queue): each gets exactly its solo tokens,
        # greedy and seeded sampling alike, whatever is batched with it.
        requests = []
        for i, text in enumerate(["alpha", "βeta gamma", "第三个请求", "four 4 IV", "fifth ✋", "six sixes"]):
            sp = greedy(24) if i % 2 == 0 else tg().SamplingParams(
                temperature=0.9, top_p=0.95, seed=100 + i, ignore_eos=True, max_tokens=24)
            requests.append(tg().GenerateRequest(prompt=text, request_id=f"concurrent-{i}", sampling=sp))
        solo = [generate(r) for r in requests]
        wait_idle()
        # The first MAX_NUM_SEQS are sent one by one, each seen running before the next (so that no
        # burst meets the admission queue's limit); the rest wait in the queue for a slot.
        results = [None] * len(requests)
        threads = []
        for i, r in enumerate(requests):
            call = start_generate(r, timeout=120)
            first = next(call) if i < MAX_NUM_SEQS else None

            def run(i=i, call=call, first=first):
                rest = collect(call)
                results[i] = Stream(([first] if first is not None else []) + rest.messages, rest.code, rest.details)

            threads.append(threading.Thread(target=run))
            threads[-1].start()
        for t in threads:
            t.join(150)
        for i, (a, b) in enumerate(zip(solo, results)):
            with self.subTest(request=i):
                self.assertWellFormed(a, request_id=f"concurrent-{i}", max_tokens=24)
                self.assertIsNotNone(b)
                self.assertWellFormed(b, request_id=f"concurrent-{i}", max_tokens=24)
                self.assertEqual(b.ids, a.ids)
                self.assertEqual(b.text, a.text)


class ValidationTest(ServerTestCase):
    def setUp(self):
        wait_idle()

    def test_invalid_generate_requests(self):
        G, S = tg().GenerateRequest, tg().SamplingParams
        t = lambda i: tg().TokenIds(ids=i)  # noqa: E731
        cases = [
            # (what, request, prefix the message starts with, other words it must hold)
            ("no input", G(sampling=greedy()), "input", []),
            ("empty prompt", G(prompt="", sampling=greedy()), "prompt", []),
            ("empty token ids", G(token_ids=t([]), sampling=greedy()), "token_ids.ids", []),
            ("no chat messages", G(chat=tg().ChatInput(), sampling=greedy()), "chat.messages", []),
            ("bad role", G(chat=chat_input([("user", "a"), ("wizard", "b")]), sampling=greedy()),
             "chat.messages[1].role", ["wizard"]),
            ("reasoning on user", G(chat=tg().ChatInput(messages=[tg().ChatMessage(
                role="user", content="a", reasoning_content="r")]), sampling=greedy()),
             "chat.messages[0].reasoning_content", []),
            ("tool call without name", G(chat=tg().ChatInput(messages=[
                tg().ChatMessage(role="user", content="a"),
                tg().ChatMessage(role="assistant", tool_calls=[tg().ToolCall(arguments="{}")])]),
                sampling=greedy()), "chat.messages[1].tool_calls[0].name", []),
            ("id past vocab", G(token_ids=t([1, VOCAB_SIZE, 2]), sampling=greedy()), "token_ids.ids[1]",
             ["vocab_size", str(VOCAB_SIZE)]),
            ("negative id", G(token_ids=t([-5]), sampling=greedy()), "token_ids.ids[0]", ["vocab_size"]),
            ("temperature -1", G(prompt="a", sampling=S(temperature=-1)), "sampling.temperature", ["-1"]),
            ("temperature 101", G(prompt="a", sampling=S(temperature=101)), "sampling.temperature", ["101"]),
            ("temperature nan", G(prompt="a", sampling=S(temperature=float("nan"))), "sampling.temperature", []),
            ("top_p 2", G(prompt="a", sampling=S(top_p=2)), "sampling.top_p", ["2"]),
            ("top_p 0", G(prompt="a", sampling=S(top_p=0)), "sampling.top_p", []),
            ("top_k past vocab", G(prompt="a", sampling=S(top_k=VOCAB_SIZE + 1)), "sampling.top_k", []),
            ("top_k -1", G(prompt="a", sampling=S(top_k=-1)), "sampling.top_k", []),
            ("min_p 1.5", G(prompt="a", sampling=S(min_p=1.5)), "sampling.min_p", []),
            ("repetition_penalty 0", G(prompt="a", sampling=S(repetition_penalty=0)),
             "sampling.repetition_penalty", []),
            ("presence_penalty 3", G(prompt="a", sampling=S(presence_penalty=3)), "sampling.presence_penalty", []),
            ("frequency_penalty -3", G(prompt="a", sampling=S(frequency_penalty=-3)),
             "sampling.frequency_penalty", []),
            ("max_tokens 0", G(prompt="a", sampling=S(max_tokens=0)), "sampling.max_tokens", ["0"]),
            ("max_tokens -1", G(prompt="a", sampling=S(max_tokens=-1)), "sampling.max_tokens", []),
            ("max_tokens huge", G(prompt="a", sampling=S(max_tokens=2_000_000_000)), "sampling.max_tokens",
             [str(MAX_MODEL_LEN - 1)]),
            ("max_tokens past the room left", G(token_ids=t([7] * 2000), sampling=S(max_tokens=100)),
             "sampling.max_tokens", ["max_model_len"]),
            ("logprobs 21", G(prompt="a", sampling=S(logprobs=21)), "sampling.logprobs", []),
            ("logprobs -2", G(prompt="a", sampling=S(logprobs=-2)), "sampling.logprobs", []),
            ("17 stop strings", G(prompt="a", sampling=S(stop=["x"] * 17)), "sampling.stop", []),
            ("empty stop string", G(prompt="a", sampling=S(stop=["ok", ""])), "sampling.stop[1]", []),
            ("stop string 257 bytes", G(prompt="a", sampling=S(stop=["x" * 257])), "sampling.stop[0]", []),
            ("stop id past vocab", G(prompt="a", sampling=S(stop_token_ids=[3, VOCAB_SIZE])),
             "sampling.stop_token_ids[1]", ["vocab_size"]),
            ("65 stop ids", G(prompt="a", sampling=S(stop_token_ids=[3] * 65)), "sampling.stop_token_ids", []),
            ("request_id too long", G(prompt="a", request_id="r" * 129), "request_id", []),
            ("request_id not printable", G(prompt="a", request_id="bad\nid"), "request_id", []),
            ("request_id not ASCII", G(prompt="a", request_id="idé"), "request_id", []),
        ]
        for what, request, prefix, needles in cases:
            with self.subTest(what):
                s = generate(request)
                self.assertRefused(s, "INVALID_ARGUMENT", *needles, prefix=prefix)
        # Boundaries that are valid: 128-byte request id, max_tokens at its limit, top_k = vocab_size.
        ok = [G(prompt="a", request_id="r" * 128, sampling=greedy(1)),
              G(token_ids=t([7] * (MAX_MODEL_LEN - 4)), sampling=greedy(4)),  # exactly max_model_len
              G(prompt="a", sampling=S(top_k=VOCAB_SIZE, seed=1, max_tokens=2, logprobs=20))]
        for request in ok:
            self.assertWellFormed(generate(request))

    def test_prompt_longer_than_max_model_len(self):
        # The proto: INVALID_ARGUMENT (waiting cannot help), naming max_model_len and the prompt's length.
        for n in (MAX_MODEL_LEN, MAX_MODEL_LEN + 500):
            with self.subTest(prompt_tokens=n):
                s = generate(tg().GenerateRequest(token_ids=tg().TokenIds(ids=[11] * n), sampling=greedy()))
                self.assertRefused(s, "INVALID_ARGUMENT", "max_model_len", str(n))
        # As text: a prompt that tokenizes to more than max_model_len - 1 tokens.
        text = "hello " * MAX_MODEL_LEN
        n = len(TOKENIZER.encode(text).ids)
        self.assertGreater(n, MAX_MODEL_LEN - 1)
        s = generate(tg().GenerateRequest(prompt=text, sampling=greedy()))
        self.assertRefused(s, "INVALID_ARGUMENT", "max_model_len", str(n))


class CancellationTest(ServerTestCase):
    def setUp(self):
        wait_idle()

    def start_running(self, count, prompt="A long story:"):
        """Starts `count` long generations one after the other, each seen running (it has streamed a
        token) before the next is sent, so none of them waits in the admission queue."""
        calls = []
        for i in range(count):
            call = start_generate(tg().GenerateRequest(prompt=f"{prompt} {i}", sampling=greedy(LONG)), timeout=120)
            calls.append(call)
            self.assertTrue(next(call).token_ids)
        return calls

    def start_waiting(self, count, prompt="queued"):
        return [start_generate(tg().GenerateRequest(prompt=f"{prompt} {i}", sampling=greedy(LONG)), timeout=120)
                for i in range(count)]

    def test_cancel_frees_slots(self):
        before = request_counts()
        # Fill every slot with a long generation, each seen running (it has streamed tokens).
        calls = self.start_running(MAX_NUM_SEQS)
        for call in calls:
            call.cancel()
        for call in calls:
            s = collect(call)
            self.assertEqual(s.code.name, "CANCELLED")
        # The server ends each one as cancelled (the client's cancellation: no final message) ...
        deadline = time.monotonic() + 15
        while request_counts().get(("Generate", "CANCELLED"), 0) - before.get(("Generate", "CANCELLED"), 0) < MAX_NUM_SEQS:
            self.assertLess(time.monotonic(), deadline, "cancelled calls not counted as CANCELLED")
            time.sleep(0.05)
        # ... and frees their slots: a new request runs at once, not after a ~2000-token generation.
        s = generate(tg().GenerateRequest(prompt="after cancel", sampling=greedy(16)), timeout=30)
        self.assertWellFormed(s, max_tokens=16)
        self.assertLess(s.last.usage.time_to_first_token_seconds, 2.0)

    def test_deadline_exceeded(self):
        t0 = time.monotonic()
        call = start_generate(tg().GenerateRequest(prompt="deadline", sampling=greedy(LONG)), timeout=0.5)
        s = collect(call)
        self.assertEqual(s.code.name, "DEADLINE_EXCEEDED", s.details)
        self.assertLess(time.monotonic() - t0, 5)
        self.assertTrue(all(m.finish_reason == tg().FINISH_REASON_UNSPECIFIED for m in s.messages))
        wait_idle()
        s = generate(tg().GenerateRequest(prompt="after deadline", sampling=greedy(16)), timeout=30)
        self.assertWellFormed(s, max_tokens=16)
        self.assertLess(s.last.usage.time_to_first_token_seconds, 2.0)

    def test_full_queue_is_resource_exhausted(self):
        running = self.start_running(MAX_NUM_SEQS)
        try:
            # Every slot busy: MAX_QUEUE requests may wait, one more is refused at once.
            waiting = self.start_waiting(MAX_QUEUE + 1)
            deadline = time.monotonic() + 10
            while sum(c.done() for c in waiting) < 1 and time.monotonic() < deadline:
                time.sleep(0.02)
            time.sleep(0.3)
            done = [c for c in waiting if c.done()]
            self.assertEqual(len(done), 1, "exactly the request past the queue's capacity ends at once")
            refused = collect(done[0])
            self.assertRefused(refused, "RESOURCE_EXHAUSTED")
            for c in waiting:
                c.cancel()
        finally:
            for c in running:
                c.cancel()
        wait_idle()

    def test_burst_within_capacity_is_accepted(self):
        # An idle server with MAX_NUM_SEQS free slots and room for MAX_QUEUE waiting requests must accept
        # MAX_NUM_SEQS + MAX_QUEUE requests sent at once (ModelLimits.max_queued_requests counts requests
        # waiting for a free slot). Repeated: whether the burst reaches the engine before its next
        # admission step is a matter of timing.
        for attempt in range(5):
            with self.subTest(attempt=attempt):
                wait_idle()
                calls = [start_generate(tg().GenerateRequest(prompt=f"burst {attempt} {i}", sampling=greedy(4)),
                                        timeout=60) for i in range(MAX_NUM_SEQS + MAX_QUEUE)]
                results = [collect(c) for c in calls]
                codes = [r.code.name for r in results]
                self.assertEqual(codes, ["OK"] * len(calls), [r.details for r in results if r.details])


class MetricsTest(ServerTestCase):
    def test_metrics_endpoint(self):
        import grpc

        status, ctype, text = metrics_text()
        self.assertEqual(status, 200)
        self.assertTrue(ctype.startswith("text/plain"), ctype)
        self.assertIn("# TYPE deltaserve_requests_total counter", text)
        before = request_counts()
        text_stub().Tokenize(tg().TokenizeRequest(text="count me"), timeout=10)
        with self.assertRaises(grpc.RpcError):
            text_stub().Tokenize(tg().TokenizeRequest(model="nope", text="x"), timeout=10)
        want = {("Tokenize", "OK"): 1, ("Tokenize", "NOT_FOUND"): 1}
        deadline = time.monotonic() + 10
        while True:
            after = request_counts()
            got = {k: after.get(k, 0) - before.get(k, 0) for k in want}
            if got == want or time.monotonic() > deadline:
                break
            time.sleep(0.05)
        self.assertEqual(got, want)


class StartupErrorTest(ServerTestCase):
    """Bad flags, an unreadable model or a taken port: non-zero exit with one clear line."""

    def check(self, args, flag, code=None):
        rc, err = run_server_once(args)
        self.assertNotEqual(rc, 0, err)
        if code is not None:
            self.assertEqual(rc, code, err)
        lines = [l for l in err.splitlines() if l.startswith("deltaserve:")]
        self.assertEqual(len(lines), 1, err)
        self.assertIn(flag, lines[0])

    def test_startup_errors(self):
        model = ["--model", str(MODEL_DIR), "--host", "127.0.0.1"]
        p, m = free_ports(2)
        empty = pathlib.Path(WORK) / "empty-model-dir"
        empty.mkdir(exist_ok=True)
        self.check(["--model", str(empty), "--port", str(p), "--metrics-port", str(m)], "--model", code=1)
        self.check(["--model", f"named={MODEL_DIR}", "--model-name", "other", "--port", str(p), "--metrics-port",
                    str(m)], "--model", code=2)
        self.check(["--model", str(pathlib.Path(WORK) / "no-such-dir"), "--port", str(p), "--metrics-port", str(m)],
                   "no-such-dir", code=1)
        self.check(model + ["--port", str(p), "--metrics-port", str(m), "--max-num-seqs", "0"], "--max-num-seqs")
        self.check(model + ["--port", str(p), "--metrics-port", str(m), "--dtype", "int4"], "--dtype")
        self.check(model + ["--port", str(p), "--metrics-port", str(m), "--weight-dtype", "int3"], "--weight-dtype")
        self.check(model + ["--port", str(p), "--metrics-port", str(m), "--prefill-chunk", "100"], "--prefill-chunk")
        # The main server's ports are taken.
        self.check(model + ["--port", str(p), "--metrics-port", str(SERVER.metrics_port)], "--metrics-port", code=1)
        self.check(model + ["--port", str(SERVER.port), "--metrics-port", str(m)], "--port", code=1)


class Int8WeightsTest(ServerTestCase):
    """--weight-dtype int8 / int4: the shipped trained model served with INT8 or 4-bit projections (quantized at
    load)."""

    def test_serves_and_reports_int8_weights(self):
        shipped = pathlib.Path(ARGS.repo) / "models" / "qwen35-small"
        servers = {w: ServerProcess(f"shipped-{w}", shipped, ["--weight-dtype", w]).start()
                   for w in ("same", "int8", "int4")}
        try:
            request = tg().GenerateRequest(prompt="Once upon a time", sampling=greedy(24))
            ids = {}
            for w, server in servers.items():
                got = generate(request, server=server)
                self.assertEqual(got.code.name, "OK", got.details)
                ids[w] = [t for m in got.messages for t in m.token_ids]
                self.assertEqual(len(ids[w]), 24)
                self.assertIn(f'weight_dtype="{w}"', metrics_text(server)[2])
            # A trained model keeps its greedy text through INT8 weights for a while (held-out perplexity
            # changes by well under 1%, docs/accuracy.md): the first tokens agree; noise would not.
            self.assertEqual(ids["int8"][:8], ids["same"][:8])
            # 4-bit weights move held-out perplexity by about 0.9% (93% top-1 agreement), so greedy text
            # may part within a few tokens (on this prompt at the third): the first two agree; noise would not.
            self.assertEqual(ids["int4"][:2], ids["same"][:2])
        finally:
            for server in servers.values():
                server.stop()


class ShutdownTest(ServerTestCase):
    """SIGTERM with streams in flight, on a server of its own."""

    GRACE = 2.0

    def test_sigterm_with_streams_in_flight(self):
        import grpc

        server = ServerProcess("shutdown", MODEL_DIR, [
            "--max-num-seqs", "4", "--max-model-len", "4096", "--shutdown-grace", str(self.GRACE)]).start()
        stub = text_stub(server)
        long_req = tg().GenerateRequest(prompt="a very long answer", sampling=greedy(4000))  # ~8 s or more
        short_req = tg().GenerateRequest(prompt="a short answer", sampling=greedy(48))
        long_call = start_generate(long_req, timeout=120, server=server)
        first = next(long_call)
        self.assertTrue(first.token_ids)
        short_call = start_generate(short_req, timeout=120, server=server)
        short_first = next(short_call)
        self.assertTrue(short_first.token_ids)
        results, ended = {}, {}

        def consume(name, call):
            results[name] = collect(call)
            ended[name] = time.monotonic()

        threads = [threading.Thread(target=consume, args=("long", long_call)),
                   threading.Thread(target=consume, args=("short", short_call))]
        for t in threads:
            t.start()
        t0 = time.monotonic()
        server.signal(signal.SIGTERM)

        # During the grace period: health NOT_SERVING, the model not ready, new requests UNAVAILABLE.
        status = None
        while time.monotonic() - t0 < self.GRACE:
            status = server.health("", timeout=1.0)
            if status == "NOT_SERVING":
                break
            time.sleep(0.02)
        self.assertEqual(status, "NOT_SERVING")
        self.assertEqual(server.health(MODEL_NAME, timeout=1.0), "NOT_SERVING")
        info = models_stub(server).GetModel(GEN["models"].GetModelRequest(), timeout=2)
        self.assertFalse(info.ready)
        late = generate(tg().GenerateRequest(prompt="too late", sampling=greedy(4)), timeout=5, server=server)
        self.assertRefused(late, "UNAVAILABLE")

        rc = server.proc.wait(self.GRACE + 20)
        elapsed = time.monotonic() - t0
        for t in threads:
            t.join(10)
        print(f"\nshutdown: exit {rc} {elapsed:.2f} s after SIGTERM (grace {self.GRACE} s); streams ended after "
              + ", ".join(f"{k} {v - t0:.2f} s" for k, v in sorted(ended.items())), file=sys.stderr)
        self.assertEqual(rc, 0, server.read_log())
        # Streams end within the grace period (a little slack for a loaded machine); the process then
        # stops the gRPC server (its own 5 s limit) and exits.
        for name, when in ended.items():
            self.assertLess(when - t0, self.GRACE + 1.5, f"{name} stream ended late")
        self.assertLess(elapsed, self.GRACE + 5 + 3)
        first_ids = list(first.token_ids)
        for name in ("long", "short"):
            with self.subTest(stream=name):
                s = results.get(name)
                self.assertIsNotNone(s, f"{name} stream did not end")
                self.assertTrue(s.messages, f"{name}: no message; status {s.code} {s.details!r}")
                reason = s.last.finish_reason
                if reason == tg().FINISH_REASON_LENGTH:  # finished within the grace period
                    self.assertEqual(s.code, grpc.StatusCode.OK, s.details)
                else:  # cut by the end of the grace period: a final CANCELLED message, then UNAVAILABLE
                    self.assertEqual(reason, tg().FINISH_REASON_CANCELLED)
                    self.assertEqual(s.code, grpc.StatusCode.UNAVAILABLE, s.details)
                ids = (first_ids if name == "long" else list(short_first.token_ids)) + s.ids
                self.assertEqual(s.last.usage.completion_tokens, len(ids))
                self.assertTrue(s.last.HasField("usage"))
        self.assertEqual(results["short"].last.finish_reason, tg().FINISH_REASON_LENGTH)
        self.assertEqual(len(short_first.token_ids) + len(results["short"].ids), 48)
        # 4000 tokens take far longer than the grace period.
        self.assertEqual(results["long"].last.finish_reason, tg().FINISH_REASON_CANCELLED)
        # Gone: health probes fail.
        with self.assertRaises(grpc.RpcError) as cm:
            server.health("", timeout=1.0)
        self.assertEqual(cm.exception.code(), grpc.StatusCode.UNAVAILABLE)
        log = server.read_log()
        self.assertIn("shutting down", log)
        self.assertIn("stopped", log)
        server.stop()


# ---------------------------------------------------------------------------------------------------


def parse_args(argv):
    global ARGS
    here = pathlib.Path(__file__).resolve().parent
    repo_default = os.environ.get("DELTASERVE_REPO", str(here.parent.parent))
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0], add_help=True)
    ap.add_argument("--server", default=os.environ.get("DELTASERVE_SERVER"),
                    help="the deltaserve binary (default: REPO/build/server/deltaserve)")
    ap.add_argument("--proto-root", default=os.environ.get("DELTASERVE_PROTO_ROOT"),
                    help="folder holding deltaserve/v1/*.proto (default: REPO/proto)")
    ap.add_argument("--repo", default=repo_default, help="the repository root (tools/, tests/data/)")
    ap.add_argument("--keep", action="store_true", help="keep the temporary folder")
    ARGS, rest = ap.parse_known_args(argv)
    ARGS.server = str(pathlib.Path(ARGS.server or pathlib.Path(ARGS.repo) / "build/server/deltaserve").resolve())
    ARGS.proto_root = ARGS.proto_root or str(pathlib.Path(ARGS.repo) / "proto")
    return rest


def main(parse=None, label="e2e"):
    """Runs the tests of the __main__ module (this file, or test_cli_e2e.py with its own `parse`)."""
    rest = (parse or parse_args)(sys.argv[1:])
    try:
        import grpc  # noqa: F401
        import grpc_tools  # noqa: F401
        import tokenizers  # noqa: F401
    except ImportError as e:
        print(f"skipped: {e}")
        return SKIP
    t0 = time.monotonic()
    program = unittest.main(argv=[sys.argv[0], *rest], exit=False)
    result = program.result
    if not result.wasSuccessful():
        for s in ALL_SERVERS:
            print(f"\n===== server {s.label} log ({s.log_path}) =====\n{s.log_text or s.read_log()}",
                  file=sys.stderr)
    print(f"{label}: {time.monotonic() - t0:.1f} s", file=sys.stderr)
    return 0 if result.wasSuccessful() else 1


if __name__ == "__main__":
    sys.exit(main())
