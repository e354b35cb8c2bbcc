#!/usr/bin/env python3
"""The runtime tree of scripts/stage_runtime.sh (what the container images hold) serves on its own: run
from / with an empty environment but its own lib/ on the loader path, the server finds its default model
under <prefix>/share/deltaserve/models (not in the source tree), answers health and generates with the
client of the same tree; DELTASERVE_MODEL_DIR overrides the default, and a wrong one is a clear error.

Usage: test_install_tree.py --build BUILD_DIR --repo SOURCE_DIR
"""
import argparse
import os
import pathlib
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import unittest

ARGS = None


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class InstallTree(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.tmp = tempfile.mkdtemp(prefix="deltaserve-install-", dir=ARGS.build)
        cls.prefix = pathlib.Path(cls.tmp) / "opt"
        out = subprocess.run([str(pathlib.Path(ARGS.repo) / "scripts" / "stage_runtime.sh"), ARGS.build, str(cls.prefix)],
                             capture_output=True, text=True)
        if out.returncode != 0:
            raise AssertionError(f"stage_runtime.sh failed:\n{out.stdout}\n{out.stderr}")
        # An empty environment: nothing of the build machine (no venv, no LD_LIBRARY_PATH of the build).
        cls.env = {"LD_LIBRARY_PATH": str(cls.prefix / "lib"), "OMP_NUM_THREADS": "1"}

    @classmethod
    def tearDownClass(cls):
        shutil.rmtree(cls.tmp, ignore_errors=True)

    def cli(self, port, *args):
        return subprocess.run([str(self.prefix / "bin" / "deltaserve-cli"), "--server", f"127.0.0.1:{port}", *args],
                              capture_output=True, text=True, env=self.env, cwd="/", timeout=120)

    def test_tree_holds_the_binaries_models_and_libraries(self):
        for b in ("deltaserve", "deltaserve-cli", "deltaserve-generate"):
            self.assertTrue(os.access(self.prefix / "bin" / b, os.X_OK), b)
        for m in ("qwen35-small", "padre-detector", "padre-softmax"):
            self.assertTrue((self.prefix / "share" / "deltaserve" / "models" / m / "config.json").exists(), m)
        libs = {p.name for p in (self.prefix / "lib").iterdir()}
        self.assertIn("libtorch_cpu.so", libs)
        self.assertTrue(any(n.startswith("libgrpc++.so") for n in libs), sorted(libs))
        # Every library every binary loads resolves inside the tree or the C runtime of any base image.
        for b in (self.prefix / "bin").iterdir():
            ldd = subprocess.run(["ldd", str(b)], capture_output=True, text=True, env=self.env).stdout
            self.assertNotIn("not found", ldd, f"{b.name}:\n{ldd}")
            for line in ldd.splitlines():
                if "=>" in line and "/lib/x86_64-linux-gnu/" in line.split("=>")[1]:
                    name = line.split()[0]
                    self.assertRegex(name, r"^(libc|libm|libdl|libpthread|librt|libutil|libresolv|libanl|libstdc\+\+|"
                                     r"libgcc_s)\.so", f"{b.name} loads {name} from the system, not the tree")

    def test_serves_its_default_model_from_outside_the_source_tree(self):
        port = free_port()
        log = open(pathlib.Path(self.tmp) / "server.log", "w+")
        proc = subprocess.Popen([str(self.prefix / "bin" / "deltaserve"), "--port", str(port), "--metrics-port", "0",
                                 "--host", "127.0.0.1"], stdout=log, stderr=subprocess.STDOUT, env=self.env, cwd="/")
        try:
            deadline = time.monotonic() + 120
            while True:
                health = self.cli(port, "health")
                if health.returncode == 0 or proc.poll() is not None or time.monotonic() > deadline:
                    break
                time.sleep(0.5)
            log.seek(0)
            text = log.read()
            self.assertEqual(health.returncode, 0, health.stdout + health.stderr + text)
            self.assertIn(str(self.prefix / "share" / "deltaserve" / "models" / "qwen35-small"), text)
            self.assertNotIn(str(pathlib.Path(ARGS.repo).resolve() / "models"), text)
            gen = self.cli(port, "generate", "Hello", "--max-tokens", "4", "--temperature", "0", "--show-tokens")
            self.assertEqual(gen.returncode, 0, gen.stderr)
            self.assertIn("4 generated tokens", gen.stderr)
        finally:
            proc.terminate()
            proc.wait(timeout=60)

    def test_model_dir_environment_variable(self):
        env = dict(self.env, DELTASERVE_MODEL_DIR=str(pathlib.Path(self.tmp) / "no-such-model"))
        out = subprocess.run([str(self.prefix / "bin" / "deltaserve"), "--port", str(free_port()), "--metrics-port", "0"],
                             capture_output=True, text=True, env=env, cwd="/", timeout=60)
        self.assertEqual(out.returncode, 1, out.stderr)
        self.assertIn("DELTASERVE_MODEL_DIR=", out.stderr)
        self.assertIn("no-such-model", out.stderr)


def main():
    global ARGS
    ap = argparse.ArgumentParser()
    ap.add_argument("--build", required=True)
    ap.add_argument("--repo", required=True)
    ARGS, rest = ap.parse_known_args()
    prog = unittest.main(argv=[sys.argv[0]] + rest, exit=False, verbosity=2)
    return 0 if prog.result.wasSuccessful() else 1


if __name__ == "__main__":
    sys.exit(main())
