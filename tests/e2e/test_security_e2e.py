#!/usr/bin/env python3
"""The server's security flags end to end: the real `deltaserve` and `deltaserve-cli` binaries, driven by
Python grpcio (stubs from proto/ at test time, through test_server_e2e.py's helpers) on the shipped model.

  TLS (--tls-cert/--tls-key): a client trusting the test CA talks; a plaintext client cannot.
  mTLS (--tls-client-ca): no client certificate, or one from another CA, fails the handshake; a good one
      talks. Certificate files replaced on disk are served to new connections within the reload
      interval, while a stream started before the swap runs to its end.
  Bearer tokens (--auth-token-file): every deltaserve method refuses a call without or with a wrong token
      (UNAUTHENTICATED, the token never echoed) and admits each listed token; health needs none; the CLI
      sends --token-file.
  --reflection=false hides the reflection service; --rate-limit answers RESOURCE_EXHAUSTED with a
  retry-after-ms trailer; --max-request-bytes is the receive limit (a 5 MiB request passes by default);
  every service answers UNAVAILABLE once a shutdown starts (Tokenize included); every method answers bytes
  that do not parse with INVALID_ARGUMENT naming the field.

Certificates come from the `openssl` command line (Debian's openssl package).
Usage: test_security_e2e.py --server BUILD/server/deltaserve --cli BUILD/client/deltaserve-cli --repo REPO
Exit codes: 0 passed, 1 failed, 77 skipped (grpcio, grpcio-tools or openssl missing).
"""
import argparse
import os
import pathlib
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import time
import unittest

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
import test_server_e2e as base  # noqa: E402  (proto compilation, free ports)

ARGS = None
WORK = None
CERTS = None
TOKENS = ["tok-" + "a" * 28, "tok-" + "b" * 28]


def openssl(*args, cwd):
    subprocess.run(["openssl", *args], check=True, cwd=cwd, capture_output=True)


def make_ca(d, name):
    openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", f"/CN={name}",
            "-keyout", f"{name}.key", "-out", f"{name}.pem", cwd=d)


def make_cert(d, ca, name, server):
    """A certificate `name` signed by `ca`; a server one names localhost and 127.0.0.1."""
    ext = pathlib.Path(d) / f"{name}.ext"
    ext.write_text("subjectAltName=DNS:localhost,IP:127.0.0.1\nextendedKeyUsage=serverAuth\n" if server
                   else "extendedKeyUsage=clientAuth\n")
    openssl("req", "-newkey", "rsa:2048", "-nodes", "-subj", f"/CN={name}", "-keyout", f"{name}.key",
            "-out", f"{name}.csr", cwd=d)
    openssl("x509", "-req", "-in", f"{name}.csr", "-CA", f"{ca}.pem", "-CAkey", f"{ca}.key", "-CAcreateserial",
            "-days", "2", "-extfile", ext.name, "-out", f"{name}.pem", cwd=d)


def grey_png(width, height):
    """An 8-bit grey PNG of one colour: megapixels in a few kilobytes."""
    import struct
    import zlib

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xffffffff)
    rows = (b"\x00" + b"\x80" * width) * height
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(rows, 9)) + chunk(b"IEND", b""))


def der_of(pem_path):
    return ssl.PEM_cert_to_DER_cert(pathlib.Path(pem_path).read_text().split("-----END CERTIFICATE-----")[0]
                                    + "-----END CERTIFICATE-----\n")


def served_certificate(port):
    """The DER certificate a new TLS handshake on `port` gets (ALPN h2, as gRPC clients offer)."""
    ctx = ssl.create_default_context(cafile=str(CERTS / "ca.pem"))
    ctx.set_alpn_protocols(["h2"])
    with socket.create_connection(("127.0.0.1", port), timeout=5) as raw:
        with ctx.wrap_socket(raw, server_hostname="localhost") as s:
            return s.getpeercert(binary_form=True)


class Server:
    """A deltaserve process on free loopback ports with the given extra flags; waits for its log line."""

    def __init__(self, *flags, vision=False):
        self.port, self.metrics_port = base.free_ports(2)
        repo = pathlib.Path(ARGS.repo)
        self.cmd = [ARGS.server, "--model", str(repo / "models" / "qwen35-small"), "--host", "127.0.0.1",
                    "--port", str(self.port), "--metrics-port", "0", "--max-num-seqs", "2", "--shutdown-grace", "20",
                    *flags]
        if vision:
            self.cmd += ["--vision-model", str(repo / "models" / "padre-detector")]
        self.log = pathlib.Path(WORK) / f"server-{self.port}.log"
        with open(self.log, "wb") as log:
            self.proc = subprocess.Popen(self.cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                         env=dict(os.environ, OMP_NUM_THREADS="1"))
        deadline = time.monotonic() + 90
        while "transport " not in self.text():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"server did not start:\n{self.text()}")
            time.sleep(0.1)

    def text(self):
        return self.log.read_text(errors="replace")

    @property
    def address(self):
        return f"127.0.0.1:{self.port}"

    def stop(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def tls_channel(port, cert=None, ca="ca.pem"):
    import grpc
    key = None
    if cert is not None:
        key = (CERTS / f"{cert}.key").read_bytes()
        cert = (CERTS / f"{cert}.pem").read_bytes()
    creds = grpc.ssl_channel_credentials(root_certificates=(CERTS / ca).read_bytes(), private_key=key,
                                         certificate_chain=cert)
    return grpc.secure_channel(f"localhost:{port}", creds)


def list_models(channel, metadata=None, timeout=10):
    stub = base.GEN["models_grpc"].ModelsStub(channel)
    return stub.ListModels(base.GEN["models"].ListModelsRequest(), metadata=metadata, timeout=timeout)


def tokenize(channel, text="hello", metadata=None, timeout=30):
    stub = base.GEN["tg_grpc"].TextGenerationStub(channel)
    return stub.Tokenize(base.GEN["tg"].TokenizeRequest(text=text), metadata=metadata, timeout=timeout)


def generate_stream(channel, max_tokens, metadata=None):
    tg = base.GEN["tg"]
    req = tg.GenerateRequest(prompt="Once upon a time", sampling=tg.SamplingParams(max_tokens=max_tokens,
                                                                                  temperature=0, ignore_eos=True))
    return base.GEN["tg_grpc"].TextGenerationStub(channel).Generate(req, metadata=metadata, timeout=120)


def health(channel):
    support = base.GEN["support"]
    check = channel.unary_unary("/grpc.health.v1.Health/Check",
                                request_serializer=support.HealthCheckRequest.SerializeToString,
                                response_deserializer=support.HealthCheckResponse.FromString)
    return support.HealthCheckResponse.ServingStatus.Name(check(support.HealthCheckRequest(service=""), timeout=10).status)


def cli(server, *args):
    return subprocess.run([ARGS.cli, "--server", server, *args], capture_output=True, text=True, timeout=120,
                          env=dict(os.environ, OMP_NUM_THREADS="1"))


class Tls(unittest.TestCase):
    def test_tls_serves_trusting_clients_only(self):
        import grpc
        s = Server("--tls-cert", str(CERTS / "server1.pem"), "--tls-key", str(CERTS / "server1.key"))
        try:
            self.assertIn("transport TLS", s.text())
            with tls_channel(s.port) as ch:
                self.assertEqual(list_models(ch).default_model, "qwen35-small")
                self.assertEqual(health(ch), "SERVING")
            with grpc.insecure_channel(s.address) as ch:
                with self.assertRaises(grpc.RpcError) as e:
                    list_models(ch, timeout=5)
                self.assertEqual(e.exception.code(), grpc.StatusCode.UNAVAILABLE)
            with tls_channel(s.port, ca="other-ca.pem") as ch:  # a client that does not trust our CA
                with self.assertRaises(grpc.RpcError):
                    list_models(ch, timeout=5)
            ok = cli(f"localhost:{s.port}", "--tls-ca", str(CERTS / "ca.pem"), "health")
            self.assertEqual(ok.returncode, 0, ok.stderr)
            self.assertIn("SERVING", ok.stdout)
            plain = cli(s.address, "--timeout", "5", "health")
            self.assertNotEqual(plain.returncode, 0)
        finally:
            s.stop()

    def test_mutual_tls_requires_a_client_certificate_from_the_ca(self):
        import grpc
        s = Server("--tls-cert", str(CERTS / "server1.pem"), "--tls-key", str(CERTS / "server1.key"),
                   "--tls-client-ca", str(CERTS / "ca.pem"))
        try:
            self.assertIn("transport mutual TLS", s.text())
            with tls_channel(s.port, cert="client") as ch:
                self.assertEqual(list_models(ch).default_model, "qwen35-small")
            for cert in (None, "stranger"):
                with self.subTest(cert=cert), tls_channel(s.port, cert=cert) as ch:
                    with self.assertRaises(grpc.RpcError) as e:
                        list_models(ch, timeout=5)
                    self.assertEqual(e.exception.code(), grpc.StatusCode.UNAVAILABLE)
            ok = cli(f"localhost:{s.port}", "--tls-ca", str(CERTS / "ca.pem"), "--tls-cert", str(CERTS / "client.pem"),
                     "--tls-key", str(CERTS / "client.key"), "health")
            self.assertEqual(ok.returncode, 0, ok.stderr)
            no_cert = cli(f"localhost:{s.port}", "--tls-ca", str(CERTS / "ca.pem"), "--timeout", "5", "health")
            self.assertNotEqual(no_cert.returncode, 0)
        finally:
            s.stop()

    def test_renewed_certificate_is_served_without_dropping_streams(self):
        live = pathlib.Path(WORK) / "live"
        live.mkdir(exist_ok=True)
        for ext in ("pem", "key"):
            shutil.copy(CERTS / f"server1.{ext}", live / f"server.{ext}")
        s = Server("--tls-cert", str(live / "server.pem"), "--tls-key", str(live / "server.key"),
                   "--tls-reload-interval", "1")
        try:
            self.assertEqual(served_certificate(s.port), der_of(CERTS / "server1.pem"))
            with tls_channel(s.port) as ch:
                stream = generate_stream(ch, max_tokens=400)
                first = next(stream)  # the stream is up on a connection made with the first certificate
                # Replace the files (key first, then the certificate, each renamed into place).
                for ext in ("key", "pem"):
                    shutil.copy(CERTS / f"server2.{ext}", live / f"server.{ext}.new")
                    os.replace(live / f"server.{ext}.new", live / f"server.{ext}")
                deadline = time.monotonic() + 20
                while served_certificate(s.port) != der_of(CERTS / "server2.pem"):
                    self.assertLess(time.monotonic(), deadline, "the renewed certificate was not served")
                    time.sleep(0.5)
                messages = [first] + list(stream)  # the old stream finishes normally
                tokens = sum(len(m.token_ids) for m in messages)
                self.assertEqual(tokens, 400)
            with tls_channel(s.port) as ch:  # and new connections work with the new certificate
                self.assertEqual(list_models(ch).default_model, "qwen35-small")
        finally:
            s.stop()


class Auth(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        tokens = pathlib.Path(WORK) / "tokens"
        tokens.write_text("# two clients\n" + "\n".join(TOKENS) + "\n\n")
        cls.server = Server("--auth-token-file", str(tokens), "--reflection=false", vision=True)

    @classmethod
    def tearDownClass(cls):
        cls.server.stop()

    def test_every_method_needs_a_listed_token(self):
        import grpc
        tg, models, vision = base.GEN["tg"], base.GEN["models"], base.GEN.get("vision")
        with grpc.insecure_channel(self.server.address) as ch:
            tstub = base.GEN["tg_grpc"].TextGenerationStub(ch)
            mstub = base.GEN["models_grpc"].ModelsStub(ch)
            calls = {
                "ListModels": lambda md: mstub.ListModels(models.ListModelsRequest(), metadata=md, timeout=10),
                "GetModel": lambda md: mstub.GetModel(models.GetModelRequest(name="qwen35-small"), metadata=md,
                                                      timeout=10),
                "Tokenize": lambda md: tstub.Tokenize(tg.TokenizeRequest(text="hi"), metadata=md, timeout=10),
                "Detokenize": lambda md: tstub.Detokenize(tg.DetokenizeRequest(token_ids=[1, 2]), metadata=md,
                                                          timeout=10),
                "Generate": lambda md: list(generate_stream(ch, 2, metadata=md)),
            }
            if vision is not None:
                vstub = base.GEN["vision_grpc"].VisionStub(ch)
                png = (pathlib.Path(ARGS.repo) / "models" / "padre-detector" / "sample.png").read_bytes()
                calls["Detect"] = lambda md: vstub.Detect(vision.DetectRequest(encoded=png),
                                                          metadata=md, timeout=30)
            wrong = "tok-" + "c" * 28
            for name, call in calls.items():
                for md in (None, (("authorization", f"Bearer {wrong}"),), (("authorization", TOKENS[0]),)):
                    with self.subTest(method=name, metadata=md), self.assertRaises(grpc.RpcError) as e:
                        call(md)
                    self.assertEqual(e.exception.code(), grpc.StatusCode.UNAUTHENTICATED, e.exception.details())
                    self.assertIn(name, e.exception.details())
                    self.assertNotIn(wrong, e.exception.details())
                for token in TOKENS:
                    with self.subTest(method=name, token=token[:5]):
                        call((("authorization", f"Bearer {token}"),))
            # The gate answers before the parser: a caller without a token learns nothing of its bytes.
            raw = ch.unary_unary("/deltaserve.v1.TextGeneration/Tokenize", request_serializer=lambda x: x,
                                 response_deserializer=lambda x: x)
            with self.assertRaises(grpc.RpcError) as e:
                raw(b"\x12\x02\xff\xfe", timeout=10)
            self.assertEqual(e.exception.code(), grpc.StatusCode.UNAUTHENTICATED, e.exception.details())
            self.assertEqual(health(ch), "SERVING")  # health needs no token (probes send none)

    def test_http_api_needs_a_listed_token(self):
        """The OpenAI-compatible HTTP API (--http-port) asks the same gate: "Authorization: Bearer"."""
        try:
            import openai
        except ImportError:
            self.skipTest("openai not installed")
        tokens = pathlib.Path(WORK) / "tokens-http"
        tokens.write_text("\n".join(TOKENS) + "\n")
        http_port = base.free_ports(1)[0]
        s = Server("--auth-token-file", str(tokens), "--http-port", str(http_port))
        try:
            def client(key):
                return openai.OpenAI(base_url=f"http://127.0.0.1:{http_port}/v1", api_key=key, max_retries=0)
            for key in ("tok-" + "c" * 28, TOKENS[0][:-1]):
                with self.subTest(key=key[:5]), self.assertRaises(openai.AuthenticationError) as e:
                    client(key).completions.create(model="qwen35-small", prompt="hi", max_tokens=2)
                self.assertNotIn(key, str(e.exception.body))
            with self.assertRaises(openai.AuthenticationError):
                client("x").models.list()
            for token in TOKENS:
                r = client(token).completions.create(model="qwen35-small", prompt="hi", max_tokens=2)
                self.assertEqual(r.usage.completion_tokens, 2)
        finally:
            s.stop()

    def test_cli_sends_its_token_file(self):
        f = pathlib.Path(WORK) / "client-token"
        f.write_text(TOKENS[1] + "\n")
        ok = cli(self.server.address, "--token-file", str(f), "models")
        self.assertEqual(ok.returncode, 0, ok.stderr)
        self.assertIn("qwen35-small", ok.stdout)
        refused = cli(self.server.address, "models")
        self.assertEqual(refused.returncode, 1)
        self.assertIn("UNAUTHENTICATED", refused.stderr)

    def test_reflection_is_off(self):
        import grpc
        support = base.GEN["support"]
        with grpc.insecure_channel(self.server.address) as ch:
            info = ch.stream_stream("/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo",
                                    request_serializer=support.ServerReflectionRequest.SerializeToString,
                                    response_deserializer=support.ServerReflectionResponse.FromString)
            with self.assertRaises(grpc.RpcError) as e:
                list(info(iter([support.ServerReflectionRequest(list_services="")]), timeout=10))
            self.assertEqual(e.exception.code(), grpc.StatusCode.UNIMPLEMENTED)
        self.assertIn("reflection off", self.server.text())


class Limits(unittest.TestCase):
    def test_rate_limit_answers_resource_exhausted_with_a_retry_hint(self):
        import grpc
        s = Server("--rate-limit", "0.1", "--rate-burst", "2")  # 2 calls at once, then one per 10 s
        try:
            with grpc.insecure_channel(s.address) as ch:
                list_models(ch)
                list_models(ch)
                with self.assertRaises(grpc.RpcError) as e:
                    list_models(ch)
                self.assertEqual(e.exception.code(), grpc.StatusCode.RESOURCE_EXHAUSTED)
                self.assertIn("--rate-limit", e.exception.details())
                trailers = dict(e.exception.trailing_metadata())
                self.assertGreater(int(trailers["retry-after-ms"]), 0)
                self.assertLessEqual(int(trailers["retry-after-ms"]), 10000)
                self.assertEqual(trailers["grpc-retry-pushback-ms"], trailers["retry-after-ms"])
                self.assertEqual(health(ch), "SERVING")  # health is not rate limited
        finally:
            s.stop()

    def test_request_size_limit_is_the_flag(self):
        import grpc
        big = "word " * (1 << 20)  # 5 MiB: over gRPC's default 4 MiB, under the server's default 24 MiB
        s = Server()
        small = Server("--max-request-bytes", "65536")
        try:
            with grpc.insecure_channel(s.address, options=[("grpc.max_send_message_length", 64 << 20)]) as ch:
                try:
                    tokenize(ch, big, timeout=120)
                except grpc.RpcError as e:  # the server may refuse the text itself, but not as too large
                    self.assertNotEqual(e.code(), grpc.StatusCode.RESOURCE_EXHAUSTED, e.details())
            with grpc.insecure_channel(small.address) as ch:
                with self.assertRaises(grpc.RpcError) as e:
                    tokenize(ch, "word " * 20000)
                self.assertEqual(e.exception.code(), grpc.StatusCode.RESOURCE_EXHAUSTED)
                self.assertGreaterEqual(len(tokenize(ch, "word " * 100).token_ids), 100)  # small ones pass
        finally:
            s.stop()
            small.stop()

    def test_huge_model_name_is_not_found_with_a_short_message(self):
        import grpc
        s = Server()
        try:
            with grpc.insecure_channel(s.address) as ch:
                stub = base.GEN["models_grpc"].ModelsStub(ch)
                with self.assertRaises(grpc.RpcError) as e:
                    stub.GetModel(base.GEN["models"].GetModelRequest(name="x" * 20000), timeout=10)
                self.assertEqual(e.exception.code(), grpc.StatusCode.NOT_FOUND)
                self.assertIn("(20000 bytes)", e.exception.details())
                self.assertLess(len(e.exception.details()), 400)
        finally:
            s.stop()

    def test_non_finite_weights_refuse_to_start_naming_the_tensor(self):
        import torch
        from safetensors.torch import load_file, save_file
        src = pathlib.Path(ARGS.repo) / "models" / "qwen35-small"
        bad = pathlib.Path(WORK) / "nan-model"
        shutil.copytree(src, bad)
        tensors = load_file(str(bad / "model.safetensors"))
        name = sorted(n for n in tensors if n.endswith("mlp.down_proj.weight"))[0]
        tensors[name] = tensors[name].clone()
        tensors[name].view(-1)[123] = float("nan")
        save_file(tensors, str(bad / "model.safetensors"), metadata={"format": "pt"})
        out = subprocess.run([ARGS.server, "--model", str(bad), "--port", str(base.free_ports(1)[0]),
                              "--metrics-port", "0"], capture_output=True, text=True, timeout=120)
        self.assertEqual(out.returncode, 1, out.stderr)
        self.assertIn("non-finite values (NaN or Inf) in [" + name + "]", out.stderr)

    def test_image_memory_is_bounded_before_decoding(self):
        import grpc
        from concurrent.futures import ThreadPoolExecutor
        vision = base.GEN["vision"]
        bomb = grey_png(6324, 6324)  # 40 MP in a few KB: over the default per-image limit of 16 MP
        big = grey_png(2900, 2900)   # 8.4 MP each: two fit in the 18 MP budget below
        s = Server("--vision-max-pixels", "9000000", "--vision-max-inflight-pixels", "18000000", vision=True)
        default = Server(vision=True)
        try:
            with grpc.insecure_channel(default.address) as ch:
                with self.assertRaises(grpc.RpcError) as e:
                    base.GEN["vision_grpc"].VisionStub(ch).Detect(vision.DetectRequest(encoded=bomb), timeout=30)
                self.assertEqual(e.exception.code(), grpc.StatusCode.INVALID_ARGUMENT)
                self.assertIn("above the limit of 16000000 pixels", e.exception.details())
            with grpc.insecure_channel(s.address) as ch:
                stub = base.GEN["vision_grpc"].VisionStub(ch)

                def detect(_):
                    try:
                        stub.Detect(vision.DetectRequest(encoded=big), timeout=120)
                        return "OK", ""
                    except grpc.RpcError as err:
                        return err.code().name, err.details()
                with ThreadPoolExecutor(12) as pool:
                    results = list(pool.map(detect, range(12)))
                codes = [c for c, _ in results]
                self.assertGreaterEqual(codes.count("OK"), 2, results)
                self.assertGreaterEqual(codes.count("RESOURCE_EXHAUSTED"), 1, results)
                self.assertEqual(codes.count("OK") + codes.count("RESOURCE_EXHAUSTED"), 12, results)
                self.assertIn("--vision-max-inflight-pixels 18000000", next(d for c, d in results if c != "OK"))
                stub.Detect(vision.DetectRequest(encoded=big), timeout=120)  # the budget was given back
        finally:
            s.stop()
            default.stop()

    def test_malformed_requests_do_not_flood_the_log(self):
        import grpc
        s = Server()
        try:
            with grpc.insecure_channel(s.address) as ch:
                raw = ch.unary_unary("/deltaserve.v1.TextGeneration/Tokenize", request_serializer=lambda x: x,
                                     response_deserializer=lambda x: x)
                for _ in range(100):  # TokenizeRequest.text (field 2) holding invalid UTF-8
                    with self.assertRaises(grpc.RpcError) as e:
                        raw(b"\x12\x02\xff\xfe", timeout=10)
                    self.assertEqual(e.exception.code(), grpc.StatusCode.INVALID_ARGUMENT)
                self.assertEqual(len(tokenize(ch, "still serving").token_ids) > 0, True)
            lines = [l for l in s.text().splitlines() if "invalid UTF-8" in l]
            self.assertGreaterEqual(len(lines), 1)
            self.assertLessEqual(len(lines), 10)  # 10 a minute, then counted, not printed
        finally:
            s.stop()

    def test_every_method_names_what_does_not_parse(self):
        """Bytes that are not the method's request message: INVALID_ARGUMENT from every method, naming the
        string field that is not UTF-8, or the message the bytes should have been; the server serves on."""
        import grpc
        s = Server(vision=True)
        ident = dict(request_serializer=lambda x: x, response_deserializer=lambda x: x)
        try:
            with grpc.insecure_channel(s.address) as ch:
                def unary(method):
                    return lambda body: ch.unary_unary(method, **ident)(body, timeout=30)

                def server_stream(method):
                    return lambda body: list(ch.unary_stream(method, **ident)(body, timeout=30))

                def bidi(method):
                    return lambda body: list(ch.stream_stream(method, **ident)(iter([body]), timeout=30))

                bad_utf8 = b"\xff\xfe"
                cases = [  # method, its call, the request type, a field 1 string that is not UTF-8 (or None)
                    ("Generate", server_stream("/deltaserve.v1.TextGeneration/Generate"), "GenerateRequest", "model"),
                    ("Tokenize", unary("/deltaserve.v1.TextGeneration/Tokenize"), "TokenizeRequest", "model"),
                    ("Detokenize", unary("/deltaserve.v1.TextGeneration/Detokenize"), "DetokenizeRequest", "model"),
                    ("ListModels", unary("/deltaserve.v1.Models/ListModels"), "ListModelsRequest", None),
                    ("GetModel", unary("/deltaserve.v1.Models/GetModel"), "GetModelRequest", "name"),
                    ("Detect", unary("/deltaserve.v1.Vision/Detect"), "DetectRequest", "model"),
                    ("DetectStream", bidi("/deltaserve.v1.Vision/DetectStream"), "DetectRequest", "model"),
                ]
                for name, call, message, utf8_field in cases:
                    with self.subTest(method=name, body="not protobuf"), self.assertRaises(grpc.RpcError) as e:
                        call(b"\x0a\x05ab")  # field 1, 5 bytes long, but only 2 follow
                    self.assertEqual(e.exception.code(), grpc.StatusCode.INVALID_ARGUMENT, e.exception.details())
                    self.assertIn(f"do not parse as deltaserve.v1.{message}", e.exception.details())
                    if utf8_field is None:
                        continue
                    with self.subTest(method=name, body="not UTF-8"), self.assertRaises(grpc.RpcError) as e:
                        call(b"\x0a\x02" + bad_utf8)
                    self.assertEqual(e.exception.code(), grpc.StatusCode.INVALID_ARGUMENT, e.exception.details())
                    self.assertIn(f"{utf8_field}: not valid UTF-8", e.exception.details())
                # Nested: GenerateRequest.sampling (field 6) whose stop string is not UTF-8.
                sampling = base.GEN["tg"].SamplingParams(stop=["PLACEHOLDER"]).SerializeToString()
                sampling = sampling.replace(b"PLACEHOLDER", b"\xff" * len("PLACEHOLDER"))
                body = base.GEN["tg"].GenerateRequest(prompt="hi").SerializeToString()
                body += b"\x32" + bytes([len(sampling)]) + sampling
                with self.assertRaises(grpc.RpcError) as e:
                    server_stream("/deltaserve.v1.TextGeneration/Generate")(body)
                self.assertEqual(e.exception.code(), grpc.StatusCode.INVALID_ARGUMENT, e.exception.details())
                self.assertIn("sampling.stop: not valid UTF-8", e.exception.details())
                self.assertTrue(list(generate_stream(ch, 2)))  # still serving, no slot held
        finally:
            s.stop()

    def test_every_service_follows_the_drain(self):
        import grpc
        s = Server()
        try:
            with grpc.insecure_channel(s.address) as ch:
                stream = generate_stream(ch, max_tokens=3000)
                next(stream)
                s.proc.send_signal(signal.SIGTERM)
                deadline = time.monotonic() + 10
                while "shutting down" not in s.text():
                    self.assertLess(time.monotonic(), deadline)
                    time.sleep(0.05)
                for name, call in (("Tokenize", lambda: tokenize(ch)),
                                   ("Detokenize", lambda: base.GEN["tg_grpc"].TextGenerationStub(ch).Detokenize(
                                       base.GEN["tg"].DetokenizeRequest(token_ids=[1]), timeout=10))):
                    with self.subTest(name), self.assertRaises(grpc.RpcError) as e:
                        call()
                    self.assertEqual(e.exception.code(), grpc.StatusCode.UNAVAILABLE, e.exception.details())
                # The Models service keeps answering: that is how a client sees the model is not ready.
                self.assertFalse(list_models(ch).models[0].ready)
                stream.cancel()
        finally:
            s.stop()


def setUpModule():
    global WORK, CERTS
    WORK = tempfile.mkdtemp(prefix="deltaserve-security-")
    base.parse_args(["--server", ARGS.server, "--repo", ARGS.repo])
    base.PROTOS.append("deltaserve/v1/vision.proto")
    base.compile_protos(pathlib.Path(WORK) / "gen")
    import importlib
    base.GEN["vision"] = importlib.import_module("deltaserve.v1.vision_pb2")
    base.GEN["vision_grpc"] = importlib.import_module("deltaserve.v1.vision_pb2_grpc")
    CERTS = pathlib.Path(WORK) / "certs"
    CERTS.mkdir()
    make_ca(CERTS, "ca")
    make_ca(CERTS, "other-ca")
    make_cert(CERTS, "ca", "server1", server=True)
    make_cert(CERTS, "ca", "server2", server=True)
    make_cert(CERTS, "ca", "client", server=False)
    make_cert(CERTS, "other-ca", "stranger", server=False)


def tearDownModule():
    if WORK:
        shutil.rmtree(WORK, ignore_errors=True)


def main():
    global ARGS
    ap = argparse.ArgumentParser()
    ap.add_argument("--server", required=True)
    ap.add_argument("--cli", required=True)
    ap.add_argument("--repo", required=True)
    ARGS, rest = ap.parse_known_args()
    try:
        import grpc  # noqa: F401
        import grpc_tools  # noqa: F401
    except ImportError as e:
        print(f"skipped: {e}")
        return 77
    if shutil.which("openssl") is None:
        print("skipped: no openssl command (Debian package openssl)")
        return 77
    prog = unittest.main(argv=[sys.argv[0]] + rest, exit=False, verbosity=2)
    return 0 if prog.result.wasSuccessful() else 1


if __name__ == "__main__":
    sys.exit(main())
