#!/usr/bin/env python3
"""Checks deploy/prometheus/ with promtool, and that the rule unit tests cover every alert both ways.

  promtool check rules recording_rules.yml alert_rules.yml
  promtool test rules rules_test.yml
  promtool check config prometheus.yml   (Debian's Prometheus is built without Kubernetes service
      discovery: if this promtool rejects kubernetes_sd_configs, the file is checked again with those
      blocks swapped for a static target, which still checks the relabelling, and a note says so)
and, read from the files themselves:
  - every alert has a `severity` label (critical, warning or info) and summary and description
    annotations;
  - rules_test.yml has, for every alert, an alert_rule_test where it fires (exp_alerts not empty) and
    one where it does not (exp_alerts empty);
  - every recording rule name follows level:metric:operations and is unique.

Usage: check_rules.py [--repo DIR] [--promtool PATH_OR_NAME]
Exit codes: 0 passed, 1 failed, 77 skipped (no promtool: Debian package `prometheus`).
"""

import argparse
import os
import pathlib
import re
import shutil
import subprocess
import sys
import tempfile

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
import mini_yaml  # noqa: E402

SKIP = 77
SEVERITIES = {"critical", "warning", "info"}


def resolve_tool(name_or_path):
    if os.sep in name_or_path:
        p = pathlib.Path(name_or_path)
        return str(p.resolve()) if p.is_file() and os.access(p, os.X_OK) else None
    return shutil.which(name_or_path)


def promtool(tool, *args, cwd):
    done = subprocess.run([tool, *map(str, args)], cwd=cwd, capture_output=True, text=True, timeout=120,
                          stdin=subprocess.DEVNULL)
    return done.returncode, (done.stdout + done.stderr).strip()


def without_kubernetes_sd(text):
    """prometheus.yml with each kubernetes_sd_configs block replaced by a static target."""
    out, lines, i = [], text.split("\n"), 0
    while i < len(lines):
        line = lines[i]
        m = re.match(r"^(\s*)kubernetes_sd_configs:\s*$", line)
        if not m:
            out.append(line)
            i += 1
            continue
        indent = len(m.group(1))
        out.append(f"{m.group(1)}static_configs:")
        out.append(f"{m.group(1)}  - targets: [\"127.0.0.1:9090\"]")
        i += 1
        while i < len(lines) and (not lines[i].strip() or lines[i].lstrip().startswith("#")
                                  or len(lines[i]) - len(lines[i].lstrip()) > indent
                                  or lines[i].lstrip().startswith("- ") and len(lines[i]) - len(lines[i].lstrip()) == indent):
            i += 1
    return "\n".join(out)


def check_config(tool, prom_dir, failures):
    rc, out = promtool(tool, "check", "config", "prometheus.yml", cwd=prom_dir)
    if rc == 0:
        print("promtool check config prometheus.yml: OK")
        return
    if "kubernetes_sd_configs" not in out or "not found" not in out:
        failures.append(f"promtool check config prometheus.yml:\n{out}")
        return
    with tempfile.TemporaryDirectory(prefix="deltaserve-promcfg-") as tmp:
        for f in ("recording_rules.yml", "alert_rules.yml"):
            shutil.copy(prom_dir / f, tmp)
        (pathlib.Path(tmp) / "prometheus.yml").write_text(without_kubernetes_sd((prom_dir / "prometheus.yml").read_text()))
        rc, out2 = promtool(tool, "check", "config", "prometheus.yml", cwd=tmp)
    if rc != 0:
        failures.append(f"promtool check config prometheus.yml (kubernetes_sd_configs swapped for static "
                        f"targets, as this promtool lacks Kubernetes discovery):\n{out2}")
        return
    print("promtool check config prometheus.yml: OK with kubernetes_sd_configs swapped for a static target "
          "(this promtool is built without Kubernetes service discovery, as Debian's is)")


def check_structure(prom_dir, failures):
    alerts, records = {}, []
    for f in ("recording_rules.yml", "alert_rules.yml"):
        doc = mini_yaml.load_file(prom_dir / f)
        for g in doc.get("groups") or []:
            for r in g.get("rules") or []:
                if "alert" in r:
                    name = r["alert"]
                    if name in alerts:
                        failures.append(f"{f}: alert {name} defined twice")
                    alerts[name] = r
                    sev = (r.get("labels") or {}).get("severity")
                    if sev not in SEVERITIES:
                        failures.append(f"{f}: alert {name}: severity {sev!r}, want one of {sorted(SEVERITIES)}")
                    ann = r.get("annotations") or {}
                    for key in ("summary", "description"):
                        if not str(ann.get(key, "")).strip():
                            failures.append(f"{f}: alert {name}: no {key} annotation")
                elif "record" in r:
                    name = r["record"]
                    if name in records:
                        failures.append(f"{f}: recording rule {name} defined twice")
                    records.append(name)
                    if not re.fullmatch(r"[a-z_]+:[a-z0-9_]+:[a-z0-9_]+", name):
                        failures.append(f"{f}: recording rule {name} is not level:metric:operations")
    tests = mini_yaml.load_file(prom_dir / "rules_test.yml")
    fires, quiet = set(), set()
    for t in tests.get("tests") or []:
        for a in t.get("alert_rule_test") or []:
            (fires if a.get("exp_alerts") else quiet).add(a.get("alertname"))
    for name in sorted(alerts):
        if name not in fires:
            failures.append(f"rules_test.yml: no alert_rule_test where {name} fires")
        if name not in quiet:
            failures.append(f"rules_test.yml: no alert_rule_test where {name} does not fire")
    for name in sorted((fires | quiet) - set(alerts)):
        failures.append(f"rules_test.yml: tests unknown alert {name}")
    print(f"rules: {len(records)} recording rules, {len(alerts)} alerts, each alert tested firing and not firing"
          if not failures else f"rules: {len(records)} recording rules, {len(alerts)} alerts")


def main(argv=None):
    here = pathlib.Path(__file__).resolve().parent
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repo", default=str(here.parent.parent), help="repository root (default: this file's)")
    ap.add_argument("--promtool", default="promtool", help="path or name on PATH (default: promtool)")
    args = ap.parse_args(argv)
    prom_dir = pathlib.Path(args.repo).resolve() / "deploy" / "prometheus"
    failures = []
    try:
        check_structure(prom_dir, failures)
    except (OSError, mini_yaml.YamlError, AttributeError) as e:
        failures.append(f"reading {prom_dir}: {e}")
    tool = resolve_tool(args.promtool)
    if tool is None:
        for f in failures:
            print(f"FAIL: {f}")
        if failures:
            return 1
        print(f"skipped: promtool ({args.promtool!r}) not found; on Debian: apt-get install prometheus")
        return SKIP
    version = promtool(tool, "--version", cwd=prom_dir)[1].splitlines()
    print(f"check_rules: {version[0] if version else tool} ({tool})")
    rc, out = promtool(tool, "check", "rules", "recording_rules.yml", "alert_rules.yml", cwd=prom_dir)
    print(out)
    if rc != 0:
        failures.append(f"promtool check rules failed ({rc})")
    rc, out = promtool(tool, "test", "rules", "rules_test.yml", cwd=prom_dir)
    print(out)
    if rc != 0:
        failures.append(f"promtool test rules failed ({rc})")
    check_config(tool, prom_dir, failures)
    for f in failures:
        print(f"FAIL: {f}")
    print("check_rules: " + ("FAILED" if failures else "OK"))
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
