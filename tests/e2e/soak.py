#!/usr/bin/env python3
"""Soak: a running deltaserve under mixed streaming load for MINUTES, then SIGTERM under load.

Load: 2x the slots of concurrent clients, each looping over fixed prompts (greedy, fixed lengths) with a
mix of full streams (60%), cancellations after a few tokens (20%) and short deadlines (20%). Every token
received is checked against that prompt's solo run (made first, one at a time): a full stream must be
exactly it, a cut one a prefix of it. So a lost, duplicated, reordered or foreign token is counted. The
server's resident memory is sampled every second. At the end, one long stream per slot runs and the server
gets SIGTERM: each must finish within --shutdown-grace with its exact tokens, and the process must exit 0.

Prints requests by outcome, tokens checked, mismatches, RSS after warm-up / peak / end, and the drain;
exits 1 on any mismatch, an unexpected status, a crash, an unclean exit, or resident memory growing by
more than --max-rss-growth-mb between the end of the first minute (or quarter) and the end.

Usage: soak.py --server BUILD/server/deltaserve --repo REPO [--minutes 2] [--slots 4] [--seed 1]
(scripts/soak.sh wraps it with the build's binary.)
"""
import argparse
import os
import pathlib
import random
import signal
import subprocess
import sys
import tempfile
import threading
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
import test_server_e2e as base  # noqa: E402  (proto compilation, free ports)

PROMPTS = ["The history of", "def fibonacci(n):", "Once upon a time, in a", "一二三四五", "Q: what is 2+2?\nA:",
           "Lorem ipsum dolor sit amet", "<think>", "The quick brown fox", "import numpy as np\n", "Dear team,",
           "🙂 emoji test", "1, 2, 3, 4,"]


def rss_mb(pid):
    try:
        for line in open(f"/proc/{pid}/status"):
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


class Stats:
    def __init__(self):
        self.lock = threading.Lock()
        self.counts = {}
        self.tokens = 0
        self.mismatches = []

    def add(self, outcome, tokens=0):
        with self.lock:
            self.counts[outcome] = self.counts.get(outcome, 0) + 1
            self.tokens += tokens

    def mismatch(self, what):
        with self.lock:
            self.mismatches.append(what)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--server", required=True)
    ap.add_argument("--repo", required=True)
    ap.add_argument("--minutes", type=float, default=2)
    ap.add_argument("--slots", type=int, default=4)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--max-rss-growth-mb", type=float, default=150)
    args = ap.parse_args()
    import grpc

    work = tempfile.mkdtemp(prefix="deltaserve-soak-")
    base.parse_args(["--server", args.server, "--repo", args.repo])
    base.compile_protos(pathlib.Path(work) / "gen")
    tg, tg_grpc = base.GEN["tg"], base.GEN["tg_grpc"]
    port = base.free_ports(1)[0]
    grace = 30
    log = open(pathlib.Path(work) / "server.log", "wb")
    proc = subprocess.Popen([args.server, "--model", str(pathlib.Path(args.repo) / "models" / "qwen35-small"),
                             "--host", "127.0.0.1", "--port", str(port), "--metrics-port", "0",
                             "--max-num-seqs", str(args.slots), "--max-queue", str(4 * args.slots),
                             "--shutdown-grace", str(grace)], stdout=log, stderr=subprocess.STDOUT,
                            env=dict(os.environ, OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "1")))
    channel = grpc.insecure_channel(f"127.0.0.1:{port}")
    grpc.channel_ready_future(channel).result(timeout=120)
    stub = tg_grpc.TextGenerationStub(channel)
    rng = random.Random(args.seed)
    lengths = [rng.randint(16, 80) for _ in PROMPTS]

    def request(i, max_tokens=None):
        return tg.GenerateRequest(prompt=PROMPTS[i], sampling=tg.SamplingParams(
            temperature=0, ignore_eos=True, max_tokens=max_tokens or lengths[i]))

    def ids_of(messages):
        return [t for m in messages for t in m.token_ids]

    refs = [ids_of(list(stub.Generate(request(i), timeout=120))) for i in range(len(PROMPTS))]
    stats = Stats()
    deadline = time.monotonic() + args.minutes * 60
    rss = []  # (seconds since start, MB)
    t_start = time.monotonic()
    stop_sampling = threading.Event()

    def sample():
        while not stop_sampling.is_set():
            r = rss_mb(proc.pid)
            if r is not None:
                rss.append((time.monotonic() - t_start, r))
            stop_sampling.wait(1.0)

    def client(seed):
        r = random.Random(seed)
        while time.monotonic() < deadline and proc.poll() is None:
            i = r.randrange(len(PROMPTS))
            kind = r.choices(["full", "cancel", "deadline"], weights=[6, 2, 2])[0]
            timeout = r.uniform(0.05, 0.6) if kind == "deadline" else 120
            cut = r.randint(1, max(1, lengths[i] - 1))
            call = stub.Generate(request(i), timeout=timeout)
            got = []
            try:
                for m in call:
                    got.extend(m.token_ids)
                    if kind == "cancel" and len(got) >= cut:
                        call.cancel()
                        break
                code = grpc.StatusCode.OK if kind != "cancel" or len(got) < cut else grpc.StatusCode.CANCELLED
            except grpc.RpcError as e:
                code = e.code()
            if got != refs[i][:len(got)]:
                stats.mismatch(f"prompt {i} ({kind}): got {got} want a prefix of {refs[i]}")
            if code == grpc.StatusCode.OK:
                if got != refs[i]:
                    stats.mismatch(f"prompt {i}: finished with {len(got)} tokens, solo run has {len(refs[i])}")
                stats.add("full", len(got))
            elif code in (grpc.StatusCode.CANCELLED, grpc.StatusCode.DEADLINE_EXCEEDED):
                stats.add("cancelled" if code == grpc.StatusCode.CANCELLED else "deadline", len(got))
            elif code == grpc.StatusCode.RESOURCE_EXHAUSTED:
                stats.add("queue full")
            else:
                stats.mismatch(f"prompt {i} ({kind}): unexpected status {code.name}")

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    clients = [threading.Thread(target=client, args=(args.seed * 1000 + k,)) for k in range(2 * args.slots)]
    for c in clients:
        c.start()
    for c in clients:
        c.join()

    # SIGTERM under load: one long stream per slot, all running when the signal comes (a queued one would be
    # refused with UNAVAILABLE, also fine); each must end with its exact tokens well within the grace.
    drained = {"finished": 0, "unavailable": 0, "other": []}
    drained_lock = threading.Lock()
    long_len = 120
    long_ref = ids_of(list(stub.Generate(request(0, long_len), timeout=120)))

    def long_stream():
        got = []
        try:
            for m in stub.Generate(request(0, long_len), timeout=120):
                got.extend(m.token_ids)
            with drained_lock:
                if got == long_ref:
                    drained["finished"] += 1
                else:
                    drained["other"].append(f"finished with {len(got)} tokens, not the solo run's {len(long_ref)}")
        except grpc.RpcError as e:
            with drained_lock:
                if e.code() == grpc.StatusCode.UNAVAILABLE and not got:
                    drained["unavailable"] += 1  # still queued at the signal: refused, retry elsewhere
                else:
                    drained["other"].append(f"{e.code().name} after {len(got)} tokens: {e.details()}")

    longs = [threading.Thread(target=long_stream) for _ in range(args.slots)]
    for t in longs:
        t.start()
    time.sleep(1.0)
    t_term = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    for t in longs:
        t.join(grace + 30)
    try:
        rc = proc.wait(grace + 30)
    except subprocess.TimeoutExpired:
        proc.kill()
        rc = "killed (did not exit)"
    exit_s = time.monotonic() - t_term
    stop_sampling.set()
    channel.close()

    warm_at = min(60.0, args.minutes * 60 / 4)
    warm = next((m for s, m in rss if s >= warm_at), rss[0][1] if rss else 0)
    peak = max((m for _, m in rss), default=0)
    load_end = [m for s, m in rss if s <= args.minutes * 60]
    end = load_end[-1] if load_end else 0
    growth = end - warm
    print(f"soak: {args.minutes:g} min, {2 * args.slots} clients on {args.slots} slots, seed {args.seed}")
    print("requests: " + ", ".join(f"{k} {v}" for k, v in sorted(stats.counts.items())) +
          f"; tokens checked {stats.tokens}")
    print(f"mismatches (lost, duplicated or foreign tokens, unexpected statuses): {len(stats.mismatches)}")
    for m in stats.mismatches[:10]:
        print("  " + m)
    print(f"RSS MB: after {warm_at:.0f} s {warm:.0f}, peak {peak:.0f}, end of load {end:.0f} "
          f"(growth {growth:+.0f}, limit {args.max_rss_growth_mb:g})")
    print(f"SIGTERM under load: {drained['finished']} streams finished exactly, {drained['unavailable']} refused "
          f"while queued, {len(drained['other'])} other; exit {rc} after {exit_s:.1f} s (grace {grace} s)")
    for o in drained["other"][:10]:
        print("  " + o)
    ok = (not stats.mismatches and not drained["other"] and rc == 0 and growth <= args.max_rss_growth_mb
          and stats.counts.get("full", 0) > 0)
    if not ok:
        print(f"soak: FAILED (server log: {work}/server.log)")
        return 1
    print("soak: passed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
