#!/usr/bin/env python3
"""End-to-end test of deltaserve's metrics with a real Prometheus: scrape, lint, rules, queries.

Writes a random-weight checkpoint (tools/make_random_qwen35.py small: no tokenizer needed), starts
`deltaserve --layer-metrics all` on free loopback ports and a real `prometheus` (temporary storage,
scrape and rule evaluation every second, deploy/prometheus/recording_rules.yml and alert_rules.yml
loaded), and drives two short rounds of `deltaserve-cli bench`, waiting after each until Prometheus has
scraped the server. Then:
  - `promtool check metrics` on one /metrics scrape: errors fail, lint warnings are printed;
  - tests/metrics/check_dashboard.py --scrape --require-documented on that scrape: every metric the
    dashboard and the rules use is exported, every documented family is, with its type and labels;
  - label values as documented: gRPC status code names, finish reasons, phases, layer kinds, decoder
    layers 0..N-1 plus embedding / lm_head, model=<served name> on every engine metric;
  - under --layer-metrics all, every layer histogram's count equals deltaserve_engine_steps_total;
  - Prometheus' HTTP API answers a per-layer quantile (kind="mlp", phase="decode"), the TTFT quantile
    and recording rules with finite values; every dashboard and rule expression evaluates without
    error; every loaded rule reports health "ok" and, the server being healthy, no alert is pending
    or firing;
  - `promtool check rules` on both rule files and `promtool test rules` on rules_test.yml pass.

Usage:
  test_prometheus_e2e.py --server BUILD/server/deltaserve --cli BUILD/client/deltaserve-cli --repo REPO
                         [--prometheus prometheus] [--promtool promtool] [--keep] [unittest args]
--prometheus and --promtool take a path or a name looked up on PATH (default: those names). Paths may
also come from DELTASERVE_SERVER, DELTASERVE_CLI, DELTASERVE_REPO. --keep keeps the temporary folder.

Exit codes: 0 passed, 1 failed, 77 skipped (no prometheus binary: Debian package `prometheus`).
"""

import argparse
import datetime
import json
import math
import os
import re
import pathlib
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import unittest
import urllib.error
import urllib.parse
import urllib.request

HERE = pathlib.Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import check_dashboard  # noqa: E402

SKIP = 77
MODEL = "tiny"  # --model-name
SMALL_LAYERS = 8  # decoder layers of make_random_qwen35.py's `small` preset
GRPC_CODES = {"OK", "CANCELLED", "UNKNOWN", "INVALID_ARGUMENT", "DEADLINE_EXCEEDED", "NOT_FOUND", "ALREADY_EXISTS",
              "PERMISSION_DENIED", "RESOURCE_EXHAUSTED", "FAILED_PRECONDITION", "ABORTED", "OUT_OF_RANGE",
              "UNIMPLEMENTED", "INTERNAL", "UNAVAILABLE", "DATA_LOSS", "UNAUTHENTICATED"}
BENCH = ["--num-requests", "8", "--concurrency", "4", "--input-len", "24", "--output-len", "12"]

ARGS = None
WORK = None
PROCS = {}  # label -> Proc
STATE = {}  # scrape text, addresses, timings


class Proc:
    """A background process whose stdout and stderr go to a log file."""

    def __init__(self, label, cmd):
        self.label = label
        self.log_path = pathlib.Path(WORK) / f"{label}.log"
        with open(self.log_path, "ab") as log:
            log.write(f"$ {' '.join(map(str, cmd))}\n".encode())
            log.flush()
            self.proc = subprocess.Popen([str(c) for c in cmd], stdout=log, stderr=subprocess.STDOUT,
                                         stdin=subprocess.DEVNULL, env=child_env())
        PROCS[label] = self

    def alive(self):
        return self.proc.poll() is None

    def log(self):
        try:
            self.saved_log = self.log_path.read_text(errors="replace")
        except OSError:
            pass
        return getattr(self, "saved_log", "")

    def stop(self, timeout=10):
        if self.alive():
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self.log()  # kept in memory: the folder may be removed


def child_env():
    return dict(os.environ, OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "1"))


def free_ports(n):
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


def http_get(url, timeout=5):
    with urllib.request.urlopen(url, timeout=timeout) as r:
        return r.status, r.read().decode()


def run(cmd, timeout=60, **kw):
    if "input" not in kw:
        kw["stdin"] = subprocess.DEVNULL
    return subprocess.run([str(c) for c in cmd], capture_output=True, text=True, timeout=timeout,
                          env=child_env(), **kw)


def resolve_tool(name_or_path):
    """A path, or a name looked up on PATH; None when not found."""
    if os.sep in name_or_path:
        p = pathlib.Path(name_or_path)
        return str(p.resolve()) if p.is_file() and os.access(p, os.X_OK) else None
    return shutil.which(name_or_path)


def wait_for(what, predicate, timeout, interval=0.2):
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        try:
            result = predicate()
            if result:
                return result
        except (OSError, urllib.error.URLError, ValueError, KeyError) as e:
            last = e
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}" + (f" (last error: {last})" if last else ""))


# ---------------------------------------------------------------------------------------------------
# Setup: checkpoint, server, Prometheus, workload.


def make_checkpoint(out):
    cmd = [sys.executable, pathlib.Path(ARGS.repo) / "tools" / "make_random_qwen35.py", "small", out]
    done = run(cmd, timeout=120)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(map(str, cmd))} failed ({done.returncode}):\n{done.stdout}\n{done.stderr}")


def server_healthy(address):
    return run([ARGS.cli, "--server", address, "--timeout", "2", "health"], timeout=10).returncode == 0


def start_server(model_dir):
    for attempt in range(3):
        port, metrics_port = free_ports(2)
        label = f"deltaserve-{attempt}"
        p = Proc(label, [ARGS.server, "--model", model_dir, "--model-name", MODEL, "--host", "127.0.0.1",
                         "--port", port, "--metrics-port", metrics_port, "--layer-metrics", "all",
                         "--max-num-seqs", "4", "--max-model-len", "256", "--shutdown-grace", "2"])
        address = f"127.0.0.1:{port}"
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and p.alive():
            if server_healthy(address):
                return p, address, metrics_port
            time.sleep(0.2)
        if p.alive():
            p.stop()
            raise RuntimeError(f"deltaserve not healthy after 60 s:\n{p.log()}")
        if "cannot listen" not in p.log():  # a port taken meanwhile: retry with new ones
            raise RuntimeError(f"deltaserve exited with {p.proc.returncode} at startup:\n{p.log()}")
    raise RuntimeError("deltaserve: no free ports after 3 attempts")


def start_prometheus(metrics_port):
    prom_dir = pathlib.Path(WORK) / "prometheus"
    (prom_dir / "data").mkdir(parents=True)
    rules = pathlib.Path(ARGS.repo) / "deploy" / "prometheus"
    # JSON is YAML: no YAML writer needed.
    config = {
        "global": {"scrape_interval": "1s", "scrape_timeout": "1s", "evaluation_interval": "1s"},
        "rule_files": [str((rules / "recording_rules.yml").resolve()), str((rules / "alert_rules.yml").resolve())],
        "scrape_configs": [{"job_name": "deltaserve",
                            "static_configs": [{"targets": [f"127.0.0.1:{metrics_port}"]}]}],
    }
    (prom_dir / "prometheus.yml").write_text(json.dumps(config, indent=2))
    for attempt in range(3):
        (port,) = free_ports(1)
        p = Proc(f"prometheus-{attempt}", [ARGS.prometheus, f"--config.file={prom_dir / 'prometheus.yml'}",
                                           f"--storage.tsdb.path={prom_dir / 'data'}",
                                           f"--web.listen-address=127.0.0.1:{port}",
                                           "--storage.tsdb.retention.time=1h", "--log.level=info"])
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and p.alive():
            try:
                if http_get(f"{url}/-/ready", timeout=1)[0] == 200:
                    return p, url
            except (OSError, urllib.error.URLError):
                pass
            time.sleep(0.2)
        if p.alive():
            p.stop()
            raise RuntimeError(f"prometheus not ready after 30 s:\n{p.log()}")
        if "address already in use" not in p.log():
            raise RuntimeError(f"prometheus exited with {p.proc.returncode}:\n{p.log()}")
    raise RuntimeError("prometheus: no free port after 3 attempts")


def query(expr, at=None):
    """/api/v1/query: (resultType, result); raises AssertionError on an API error."""
    params = {"query": expr}
    if at is not None:
        params["time"] = f"{at:.3f}"
    url = f"{STATE['prom_url']}/api/v1/query?{urllib.parse.urlencode(params)}"
    try:
        with urllib.request.urlopen(url, timeout=10) as r:
            body = json.loads(r.read().decode())
    except urllib.error.HTTPError as e:
        body = json.loads(e.read().decode() or "{}")
    if body.get("status") != "success":
        raise AssertionError(f"query {expr!r}: {body.get('errorType')}: {body.get('error')}")
    return body["data"]["resultType"], body["data"]["result"]


def last_scrape_time():
    _, result = query('timestamp(up{job="deltaserve"})')
    return float(result[0]["value"][1]) if result else 0.0


def bench(label):
    cmd = [ARGS.cli, "--server", STATE["address"], "--timeout", "60", "bench", *BENCH]
    done = run(cmd, timeout=90)
    (pathlib.Path(WORK) / f"bench-{label}.txt").write_text(done.stdout + done.stderr)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(map(str, cmd))} failed ({done.returncode}):\n{done.stdout}\n{done.stderr}")
    return time.time()


def wait_scraped_after(t, what):
    """Waits until Prometheus has a scrape of the server that started after wall-clock time t (the
    scrape manager applies new targets about 5 s after start, so the first wait is the longest)."""
    wait_for(f"a Prometheus scrape after {what}", lambda: last_scrape_time() > t, timeout=20)
    return last_scrape_time()


def rfc3339(text):
    """Seconds since the epoch of Prometheus' RFC 3339 times (nanosecond fractions allowed)."""
    m = re.fullmatch(r"(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(?:\.(\d+))?(Z|[+-]\d\d:\d\d)", text)
    if not m:
        raise ValueError(f"not an RFC 3339 time: {text!r}")
    base = datetime.datetime.fromisoformat(m.group(1) + (m.group(3) if m.group(3) != "Z" else "+00:00"))
    return base.timestamp() + (float("0." + m.group(2)) if m.group(2) else 0.0)


def rules():
    _, body = http_get(f"{STATE['prom_url']}/api/v1/rules")
    return [r for g in json.loads(body)["data"]["groups"] for r in g["rules"]]


def wait_rules_evaluated_after(t):
    """Waits until every rule has been evaluated after time t (so recorded series include the data of
    the scrape at t)."""
    def done():
        rs = rules()
        return rs and all(r.get("lastEvaluation") and rfc3339(r["lastEvaluation"]) > t for r in rs)

    wait_for("every rule evaluated after the last scrape", done, timeout=20)


def setUpModule():
    global WORK
    if ARGS is None:
        parse_args([])
    WORK = tempfile.mkdtemp(prefix="deltaserve-metrics-e2e-")
    unittest.addModuleCleanup(cleanup)


def ensure_workload():
    """Server, Prometheus and the two bench rounds, once, for the tests that need them (the rule
    tests run without). A failure is remembered and raised again for every later caller."""
    if "setup_error" in STATE:
        raise RuntimeError(f"setup failed earlier: {STATE['setup_error']}")
    if "scrape" in STATE:
        return
    try:
        start_workload()
    except Exception as e:
        STATE["setup_error"] = f"{type(e).__name__}: {str(e)[:300]}"
        raise


def start_workload():
    t0 = time.monotonic()
    model_dir = pathlib.Path(WORK) / "small"
    make_checkpoint(model_dir)
    STATE["t_checkpoint"] = time.monotonic() - t0
    server, STATE["address"], STATE["metrics_port"] = start_server(model_dir)
    _, STATE["prom_url"] = start_prometheus(STATE["metrics_port"])
    # Two rounds with a scrape between them: every series then has a sample before the second round
    # and one after it, so rate() over them is positive and quantiles are finite.
    wait_scraped_after(bench("1"), "the first bench round")
    wait_rules_evaluated_after(wait_scraped_after(bench("2"), "the second bench round"))
    status, text = http_get(f"http://127.0.0.1:{STATE['metrics_port']}/metrics")
    assert status == 200, status
    STATE["scrape"] = text
    STATE["scrape_path"] = pathlib.Path(WORK) / "scrape.txt"
    STATE["scrape_path"].write_text(text)
    STATE["t_setup"] = time.monotonic() - t0


def cleanup():
    for p in PROCS.values():
        p.stop()
    if WORK and ARGS and not ARGS.keep:
        shutil.rmtree(WORK, ignore_errors=True)


# ---------------------------------------------------------------------------------------------------


def finite_values(result):
    out = []
    for r in result:
        v = float(r["value"][1])
        out.append(v)
    return out


def parse_samples(text):
    """[(name, {label: value}, value)] of a text-format scrape."""
    out = []
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        m = check_dashboard.NAME_RE.match(line)
        rest = line[m.end():]
        labels = {}
        if rest.startswith("{"):
            end = check_dashboard._close_brace(rest)
            for k, v in re.findall(r'([a-zA-Z_][a-zA-Z0-9_]*)\s*=\s*"((?:[^"\\]|\\.)*)"', rest[:end]):
                labels[k] = v
            rest = rest[end + 1:]
        out.append((m.group(0), labels, float(rest.split()[0])))
    return out


class ScrapeTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        ensure_workload()

    def test_promtool_check_metrics(self):
        done = run([ARGS.promtool, "check", "metrics"], input=STATE["scrape"], timeout=30)
        report = (done.stdout + done.stderr).strip()
        # promtool: 0 clean, 3 lint problems only (reported, not failed), 1 a parse error.
        if done.returncode == 3:
            print(f"\npromtool check metrics: lint warnings:\n{report}", file=sys.stderr)
        self.assertIn(done.returncode, (0, 3), f"promtool check metrics failed:\n{report}")

    def test_names_against_docs_and_dashboard(self):
        done = run([sys.executable, HERE / "check_dashboard.py", "--repo", ARGS.repo,
                    "--scrape", STATE["scrape_path"], "--require-documented"], timeout=60)
        self.assertEqual(done.returncode, 0, f"check_dashboard.py --scrape:\n{done.stdout}{done.stderr}")

    def test_layer_counts_equal_engine_steps(self):
        samples = parse_samples(STATE["scrape"])
        steps = {(l["model"], l["phase"]): v for n, l, v in samples if n == "deltaserve_engine_steps_total"}
        timed = {(l["model"], l["phase"]): v for n, l, v in samples if n == "deltaserve_layer_timed_steps_total"}
        counts = [(l, v) for n, l, v in samples if n == "deltaserve_layer_duration_seconds_count"]
        self.assertTrue(steps.get((MODEL, "prefill"), 0) > 0 and steps.get((MODEL, "decode"), 0) > 0, steps)
        self.assertEqual(timed, steps, "--layer-metrics all times every step")
        self.assertTrue(counts, "no deltaserve_layer_duration_seconds_count series")
        kinds = {l["kind"] for l, _ in counts}
        for k in ("mlp", "embedding", "lm_head"):
            self.assertIn(k, kinds)
        self.assertTrue(kinds & {"linear_attention", "full_attention"}, kinds)
        for l, v in counts:
            self.assertEqual(v, steps[(l["model"], l["phase"])],
                             f"layer {l['layer']} {l['kind']} {l['phase']}: count {v} != engine steps")


    def test_label_values_as_documented(self):
        """Label values docs/metrics.md names: status code names, finish reasons, phases, kinds, layers."""
        samples = parse_samples(STATE["scrape"])
        codes = {l["code"] for n, l, _ in samples if n == "deltaserve_requests_total"}
        self.assertTrue(codes, "no deltaserve_requests_total series after the bench")
        self.assertLessEqual(codes, GRPC_CODES, "deltaserve_requests_total's code must be a status code name "
                                                "(docs/metrics.md; the alert DeltaserveGrpcErrors selects code!=\"OK\")")
        self.assertIn("OK", codes)
        methods = {l["method"] for n, l, _ in samples if n == "deltaserve_requests_total"}
        self.assertIn("Generate", methods)
        reasons = {l["finished_reason"] for n, l, _ in samples if n == "deltaserve_request_finished_total"}
        self.assertLessEqual(reasons, {"stop", "length", "cancelled", "error"})
        self.assertIn("length", reasons)  # the bench ignores end-of-sequence
        per_phase = ("deltaserve_engine_steps_total", "deltaserve_layer_timed_steps_total",
                     "deltaserve_layer_duration_seconds_bucket")
        self.assertEqual({l["phase"] for n, l, _ in samples if n in per_phase}, {"prefill", "decode"})
        layers = {(l["layer"], l["kind"]) for n, l, _ in samples if n == "deltaserve_layer_duration_seconds_count"}
        kinds = {k for _, k in layers}
        self.assertLessEqual(kinds, {"linear_attention", "full_attention", "mlp", "embedding", "lm_head"})
        self.assertIn(("embedding", "embedding"), layers)
        self.assertIn(("lm_head", "lm_head"), layers)
        decoder = sorted({int(x) for x, _ in layers if x.isdigit()})
        self.assertEqual(decoder, list(range(SMALL_LAYERS)), "decoder layers 0..N-1")
        for i in decoder:
            mixers = {k for x, k in layers if x == str(i) and k != "mlp"}
            self.assertEqual(len(mixers), 1, f"layer {i}: one token mixer kind, got {mixers}")
            self.assertIn((str(i), "mlp"), layers)
        self.assertLessEqual({x for x, _ in layers if not x.isdigit()}, {"embedding", "lm_head"})
        engine = [l for n, l, _ in samples if n.startswith("deltaserve_") and n != "deltaserve_requests_total"]
        self.assertEqual({l.get("model") for l in engine}, {MODEL}, "every engine metric carries model=<served name>")


class PrometheusTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        ensure_workload()

    def assert_finite_result(self, expr, wait=15):
        """Polls until expr gives a non-empty vector of finite values (rules evaluate every second)."""
        seen = {}

        def ok():
            kind, result = query(expr)
            seen["result"] = result
            vals = finite_values(result)
            return kind == "vector" and vals and all(math.isfinite(v) for v in vals)

        try:
            wait_for(f"{expr} to be non-empty and finite", ok, timeout=wait, interval=0.5)
        except AssertionError as e:
            self.fail(f"{e}; last result: {seen.get('result')}")
        return finite_values(seen["result"])

    def test_layer_quantile(self):
        vals = self.assert_finite_result('histogram_quantile(0.99, sum by (le) (rate('
                                         'deltaserve_layer_duration_seconds_bucket{kind="mlp",phase="decode"}[1m])))')
        self.assertTrue(0 < vals[0] <= 10, vals)

    def test_ttft_quantile(self):
        vals = self.assert_finite_result('histogram_quantile(0.99, sum by (le) (rate('
                                         'deltaserve_time_to_first_token_seconds_bucket[1m])))')
        self.assertGreater(vals[0], 0)

    def test_recording_rules(self):
        vals = self.assert_finite_result('model_layer_kind_phase:deltaserve_layer_duration_seconds:p99_5m'
                                         f'{{model="{MODEL}",kind="mlp",phase="decode"}}')
        self.assertTrue(all(0 < v <= 10 for v in vals), vals)
        vals = self.assert_finite_result(f'model:deltaserve_generation_tokens:rate5m{{model="{MODEL}"}}')
        self.assertGreater(vals[0], 0)

    def test_every_dashboard_and_rule_expression_evaluates(self):
        probs = check_dashboard.Problems()
        src = check_dashboard.Sources(ARGS.repo, probs)
        self.assertFalse(probs.errors, probs.errors)
        exprs = src.queryable()
        self.assertGreater(len(exprs), 50)
        errors, empty = [], []
        for where, expr in exprs:
            try:
                _, result = query(expr)
                if not result and " rule Deltaserve" not in where:  # an alert's normal state is no data
                    empty.append(where)
            except AssertionError as e:
                errors.append(f"{where}: {e}")
        if empty:
            print(f"\n{len(empty)} of {len(exprs)} expressions gave no data: " + "; ".join(empty), file=sys.stderr)
        self.assertFalse(errors, "\n".join(errors))

    def test_rules_loaded_and_healthy(self):
        loaded = rules()
        probs = check_dashboard.Problems()
        expected = len(check_dashboard.Sources(ARGS.repo, probs).rule_exprs)
        self.assertEqual(len(loaded), expected, [r["name"] for r in loaded])
        bad = [f"{r['name']}: {r.get('health')} {r.get('lastError', '')}" for r in loaded if r.get("health") != "ok"]
        self.assertFalse(bad, bad)
        # The server is healthy and every request succeeded: no alert is pending or firing.
        active = [f"{r['name']} ({r['state']}, value {[a.get('value') for a in r.get('alerts', [])]})"
                  for r in loaded if r.get("type") == "alerting" and r.get("state") != "inactive"]
        self.assertFalse(active, active)


class RulesTest(unittest.TestCase):
    def test_promtool_check_rules(self):
        prom = pathlib.Path(ARGS.repo) / "deploy" / "prometheus"
        done = run([ARGS.promtool, "check", "rules", prom / "recording_rules.yml", prom / "alert_rules.yml"])
        self.assertEqual(done.returncode, 0, done.stdout + done.stderr)

    def test_promtool_test_rules(self):
        prom = pathlib.Path(ARGS.repo) / "deploy" / "prometheus"
        done = run([ARGS.promtool, "test", "rules", "rules_test.yml"], cwd=prom)
        self.assertEqual(done.returncode, 0, done.stdout + done.stderr)


# ---------------------------------------------------------------------------------------------------


def parse_args(argv):
    global ARGS
    repo_default = os.environ.get("DELTASERVE_REPO", str(HERE.parent.parent))
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--server", default=os.environ.get("DELTASERVE_SERVER"),
                    help="the deltaserve binary (default: REPO/build/server/deltaserve)")
    ap.add_argument("--cli", default=os.environ.get("DELTASERVE_CLI"),
                    help="the deltaserve-cli binary (default: REPO/build/client/deltaserve-cli)")
    ap.add_argument("--repo", default=repo_default, help="the repository root")
    ap.add_argument("--prometheus", default="prometheus", help="path or name on PATH (default: prometheus)")
    ap.add_argument("--promtool", default="promtool", help="path or name on PATH (default: promtool)")
    ap.add_argument("--keep", action="store_true", help="keep the temporary folder")
    ARGS, rest = ap.parse_known_args(argv)
    ARGS.repo = str(pathlib.Path(ARGS.repo).resolve())
    ARGS.server = str(pathlib.Path(ARGS.server or pathlib.Path(ARGS.repo) / "build/server/deltaserve").resolve())
    ARGS.cli = str(pathlib.Path(ARGS.cli or pathlib.Path(ARGS.repo) / "build/client/deltaserve-cli").resolve())
    return rest


def main():
    rest = parse_args(sys.argv[1:])
    prometheus = resolve_tool(ARGS.prometheus)
    if prometheus is None:
        print(f"skipped: no prometheus binary ({ARGS.prometheus!r} not found; on Debian: apt-get install "
              f"prometheus, which also provides promtool)")
        return SKIP
    ARGS.prometheus = prometheus
    promtool = resolve_tool(ARGS.promtool)
    if promtool is None:
        print(f"test_prometheus_e2e: promtool ({ARGS.promtool!r}) not found although prometheus is "
              f"({prometheus})", file=sys.stderr)
        return 1
    ARGS.promtool = promtool
    for what in ("server", "cli"):
        path = getattr(ARGS, what)
        if not (os.path.isfile(path) and os.access(path, os.X_OK)):
            print(f"test_prometheus_e2e: --{what} {path} is not an executable", file=sys.stderr)
            return 1
    version = run([prometheus, "--version"]).stdout.splitlines()[:1]
    print(f"test_prometheus_e2e: {version[0] if version else prometheus}; promtool {promtool}", file=sys.stderr)
    t0 = time.monotonic()
    program = unittest.main(argv=[sys.argv[0], *rest], exit=False)
    ok = program.result.wasSuccessful()
    if not ok:
        for p in PROCS.values():
            text = p.log()
            keep = 20000 if p.label.startswith("deltaserve") else 4000  # Prometheus' log is chatty
            cut = f"[... {len(text) - keep} characters]\n" if len(text) > keep else ""
            print(f"\n===== {p.label} log ({p.log_path}) =====\n{cut}{text[-keep:]}", file=sys.stderr)
    extra = f" (setup {STATE['t_setup']:.1f} s)" if "t_setup" in STATE else ""
    print(f"test_prometheus_e2e: {time.monotonic() - t0:.1f} s{extra}", file=sys.stderr)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
