#!/usr/bin/env python3
"""Unit tests of the metrics checkers: the PromQL name extraction, the YAML-subset reader, and that
check_dashboard.py and check_rules.py catch each kind of mistake they are meant to (each case breaks a
temporary copy of deploy/ and docs/metrics.md one way and expects the matching complaint).

Usage: test_checkers.py [--repo DIR] [unittest args]      (stdlib only; no promtool needed)
"""

import argparse
import contextlib
import io
import json
import pathlib
import shutil
import sys
import tempfile
import unittest

HERE = pathlib.Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import check_dashboard as cd  # noqa: E402
import check_rules  # noqa: E402
import mini_yaml  # noqa: E402

REPO = HERE.parent.parent


def names(expr):
    return [n for n, _ in cd.extract(expr).metrics]


class PromQLTest(unittest.TestCase):
    def test_names_functions_and_labels(self):
        r = cd.extract('histogram_quantile(0.99, sum by (le, model) (rate(foo_bucket{model=~"a|b", le!=""}[5m])))')
        self.assertEqual(r.metrics, [("foo_bucket", {"model", "le"})])
        self.assertEqual(r.grouping, {"le", "model"})
        self.assertEqual(r.functions, {"histogram_quantile", "sum", "rate"})
        self.assertFalse(r.unknown_functions)

    def test_operators_and_modifiers(self):
        self.assertEqual(names('a / on (x) group_left (y) b and ignoring(z) c unless d or e > bool 1'),
                         ["a", "b", "c", "d", "e"])
        self.assertEqual(names("rate(a[5m] offset 1h) - rate(b[5m:30s])"), ["a", "b"])
        self.assertEqual(names("sum without (instance) (a) * on() group_right vector(1)"), ["a"])
        self.assertEqual(names("topk(10, a) and bottomk(5, b) + count_values(\"v\", c)"), ["a", "b", "c"])
        self.assertEqual(names('sum(a) by (job)'), ["a"])
        self.assertEqual(cd.extract('sum(a) by (job)').grouping, {"job"})
        self.assertEqual(names("time() - process_start_time_seconds"), ["process_start_time_seconds"])
        self.assertEqual(names("a > 1e-3 and b < Inf and c != NaN"), ["a", "b", "c"])
        self.assertEqual(names("absent(up{job=~\"x.*\"})"), ["up"])

    def test_strings_comments_and_name_selectors(self):
        self.assertEqual(names('label_replace(a, "dst", "$1", "src", "not_a_metric(.*)") # comment b'), ["a"])
        self.assertEqual(cd.extract('{__name__="a", job="j"}').metrics, [("a", {"job"})])
        self.assertTrue(cd.extract('{job="j"}').errors)
        self.assertEqual(names("ns:rec_metric:rate5m"), ["ns:rec_metric:rate5m"])

    def test_unknown_function(self):
        self.assertEqual(cd.extract("rat(a[5m])").unknown_functions, {"rat"})

    def test_grafana_variables(self):
        values = {"model": ".+", "topn": "10", **cd.GRAFANA_BUILTINS}
        text, unknown = cd.substitute('topk($topn, rate(a{model=~"$model"}[$__rate_interval])) + b{x="${model:regex}"}'
                                      ' + c{y="[[model]]"}', values)
        self.assertEqual(text, 'topk(10, rate(a{model=~".+"}[1m])) + b{x=".+"} + c{y=".+"}')
        self.assertFalse(unknown)
        self.assertEqual(cd.substitute("a{m=\"$modle\"}", values)[1], {"modle"})

    def test_normalise(self):
        docs = {"h": ("histogram", {"model"}), "c_total": ("counter", set()), "s": ("summary", set())}
        self.assertEqual(cd.normalise("h_bucket", docs)[:2], ("h", "_bucket"))
        self.assertEqual(cd.normalise("h_count", docs)[:2], ("h", "_count"))
        self.assertIn("histogram", cd.normalise("h", docs)[2])
        self.assertIsNone(cd.normalise("c_total", docs)[2])
        self.assertIsNotNone(cd.normalise("c_total_count", docs)[2])
        self.assertIsNotNone(cd.normalise("c_bucket", docs)[2])
        self.assertIsNone(cd.normalise("s", docs)[2])
        self.assertIsNotNone(cd.normalise("s_bucket", docs)[2])


class MiniYamlTest(unittest.TestCase):
    def test_subset(self):
        text = """
# comment
groups:
  - name: g   # trailing comment
    rules:
    - record: a:b:c
      expr: sum by (x) (rate(y[5m]))
    - alert: A
      expr: |
        foo
          > 1

      labels: {}
      annotations:
        summary: "quoted: \\"x\\" {{ $labels.m }}"
        description: >-
          folded
          text
        other: 'it''s'
empty: []
list: [a, "b c", 'd']
"""
        self.assertEqual(mini_yaml.load(text), {
            "groups": [{"name": "g", "rules": [
                {"record": "a:b:c", "expr": "sum by (x) (rate(y[5m]))"},
                {"alert": "A", "expr": "foo\n  > 1\n", "labels": {},
                 "annotations": {"summary": 'quoted: "x" {{ $labels.m }}', "description": "folded text",
                                 "other": "it's"}}]}],
            "empty": [], "list": ["a", "b c", "d"]})

    def test_rejects_what_it_does_not_know(self):
        for bad in ["a: &x 1\nb: *x\n", "a: b: c\n", "a: 1\na: 2\n", "a:\n  b: 1\n   c: 2\n", "a: {b: 1}\n",
                    "a: foo\n  bar\n", "a: 'x\n  y'\n"]:
            with self.assertRaises(mini_yaml.YamlError, msg=bad):
                mini_yaml.load(bad)

    def test_same_as_pyyaml_on_the_repository_files(self):
        try:
            import yaml
        except ImportError:
            self.skipTest("PyYAML not installed (optional cross-check)")

        def strs(x):  # PyYAML converts scalars; this reader keeps text
            if isinstance(x, dict):
                return {str(k): strs(v) for k, v in x.items()}
            if isinstance(x, list):
                return [strs(v) for v in x]
            return None if x is None else str(x)

        for f in sorted((REPO / "deploy" / "prometheus").glob("*.yml")):
            with self.subTest(f.name):
                self.assertEqual(mini_yaml.load_file(f), strs(yaml.safe_load(f.read_text())))


class RepoCopy:
    """deploy/ and docs/metrics.md copied into a temporary folder, to be broken by a test."""

    def __init__(self):
        self.tmp = tempfile.TemporaryDirectory(prefix="deltaserve-checkers-")
        self.root = pathlib.Path(self.tmp.name)
        shutil.copytree(REPO / "deploy", self.root / "deploy")
        (self.root / "docs").mkdir()
        shutil.copy(REPO / "docs" / "metrics.md", self.root / "docs" / "metrics.md")

    def path(self, rel):
        return self.root / rel

    def replace(self, rel, old, new, count=1):
        p = self.path(rel)
        text = p.read_text()
        if old not in text:
            raise AssertionError(f"{old!r} not in {rel}")
        p.write_text(text.replace(old, new, count))

    def dashboard(self):
        return json.loads(self.path("deploy/grafana/deltaserve.json").read_text())

    def set_dashboard(self, d):
        self.path("deploy/grafana/deltaserve.json").write_text(json.dumps(d, indent=1))

    def check(self, scrape=None, require=False):
        probs, _, _ = cd.check(self.root, self.root / "docs" / "metrics.md", scrape, require)
        return probs

    def close(self):
        self.tmp.cleanup()


def first_target(d, title_part):
    for p in cd.iter_panels(d["panels"]):
        if title_part in p.get("title", "") and p.get("targets"):
            return p, p["targets"][0]
    raise AssertionError(f"no panel titled *{title_part}*")


def synthetic_scrape(docs, drop=(), retype=None, extra_label=None, extra_family=None):
    """A scrape exporting every documented family with its documented labels."""
    lines = []
    for name, (kind, labels) in sorted(docs.items()):
        if name in drop:
            continue
        kind = (retype or {}).get(name, kind)
        lab = sorted(labels | ({extra_label[1]} if extra_label and extra_label[0] == name else set()))
        ls = ",".join(f'{l}="v"' for l in lab)
        lines += [f"# HELP {name} x", f"# TYPE {name} {kind}"]
        if kind == "histogram":
            lines += [f'{name}_bucket{{{ls + "," if ls else ""}le="+Inf"}} 1', f"{name}_sum{{{ls}}} 1",
                      f"{name}_count{{{ls}}} 1"]
        else:
            lines.append(f"{name}{{{ls}}} 1" if ls else f"{name} 1")
    if extra_family:
        lines += [f"# TYPE {extra_family} gauge", f"{extra_family} 1"]
    return "\n".join(lines) + "\n"


class CheckDashboardTest(unittest.TestCase):
    def setUp(self):
        self.repo = RepoCopy()
        self.addCleanup(self.repo.close)

    def assert_error(self, probs, *fragments):
        text = "\n".join(probs.errors)
        for f in fragments:
            self.assertIn(f, text)

    def break_expr(self, title, old, new):
        d = self.repo.dashboard()
        _, t = first_target(d, title)
        self.assertIn(old, t["expr"])
        t["expr"] = t["expr"].replace(old, new)
        self.repo.set_dashboard(d)

    def test_repository_passes(self):
        probs = self.repo.check()
        self.assertEqual(probs.errors, [])

    def test_unknown_metric(self):
        self.break_expr("Tokens / s", "deltaserve_prompt_tokens_total", "deltaserve_prompt_token_total")
        self.assert_error(self.repo.check(), "deltaserve_prompt_token_total is not in docs/metrics.md")

    def test_bare_histogram_and_wrong_suffix(self):
        self.break_expr("Time to first token", "deltaserve_time_to_first_token_seconds_bucket",
                        "deltaserve_time_to_first_token_seconds")
        self.break_expr("Tokens / s", "deltaserve_prompt_tokens_total", "deltaserve_prompt_tokens_total_count")
        self.assert_error(self.repo.check(), "deltaserve_time_to_first_token_seconds is a histogram",
                          "deltaserve_prompt_tokens_total_count is not in docs/metrics.md")

    def test_labels(self):
        self.break_expr("Request rate by finished reason", "sum by (finished_reason)", "sum by (finish_reason)")
        self.break_expr("Running and waiting", 'model=~"$model"', 'modle=~"$model"')
        self.assert_error(self.repo.check(), "grouping label 'finish_reason'",
                          "label 'modle' is not a label of deltaserve_num_requests_running")

    def test_unknown_function_and_variable(self):
        self.break_expr("Tokens / s", "rate(", "rat(")
        self.break_expr("Running and waiting", '"$model"', '"$modle"')
        self.assert_error(self.repo.check(), "unknown function rat()", "unknown Grafana variable $modle")

    def test_panel_structure(self):
        d = self.repo.dashboard()
        panels = [p for p in d["panels"] if p["type"] != "row"]
        panels[1]["id"] = panels[0]["id"]
        panels[2]["datasource"] = {"type": "prometheus", "uid": "P1809F7CD0C75ACF3"}
        panels[3]["targets"] = []
        del panels[4]["datasource"]
        panels[5]["targets"][0]["expr"] = " "
        panels[6]["gridPos"]["x"] = 20
        self.repo.set_dashboard(d)
        self.assert_error(self.repo.check(), f"id {panels[0]['id']} also used", "'P1809F7CD0C75ACF3' is not",
                          f"panel {panels[3]['id']} {panels[3]['title']!r}: no targets",
                          f"panel {panels[4]['id']} {panels[4]['title']!r}: no datasource", "empty expr",
                          "outside the 24 columns")

    def test_heatmap_options(self):
        d = self.repo.dashboard()
        heatmaps = [p for p in cd.iter_panels(d["panels"]) if p["type"] == "heatmap"]
        heatmaps[0]["options"]["calculate"] = True
        heatmaps[1]["options"]["rowsFrame"]["layout"] = "unordered"
        self.repo.set_dashboard(d)
        self.assert_error(self.repo.check(), "needs calculate: false", "rowsFrame.layout 'unordered'")

    def test_dashboard_inputs_and_model_variable(self):
        d = self.repo.dashboard()
        d["__inputs"] = []
        for v in d["templating"]["list"]:
            if v["name"] == "model":
                v["query"]["query"] = "label_values(up, model)"
        self.repo.set_dashboard(d)
        self.assert_error(self.repo.check(), "DS_PROMETHEUS", "variable model's query")

    def test_invalid_json(self):
        self.repo.path("deploy/grafana/deltaserve.json").write_text("{")
        self.assert_error(self.repo.check(), "not readable JSON")

    def test_rules(self):
        self.repo.replace("deploy/prometheus/alert_rules.yml", "deltaserve_num_requests_waiting > 0",
                          "deltaserve_requests_waiting > 0")
        self.repo.replace("deploy/prometheus/recording_rules.yml",
                          "histogram_quantile(0.5, model_le:deltaserve_time_to_first_token_seconds_bucket:rate5m)",
                          "histogram_quantile(0.5, model_le:deltaserve_time_to_first_token_bucket:rate5m)")
        self.assert_error(self.repo.check(), "deltaserve_requests_waiting is not in docs/metrics.md",
                          "model_le:deltaserve_time_to_first_token_bucket:rate5m looks like a recording rule")

    def test_docs_drift(self):
        self.repo.replace("docs/metrics.md", "`deltaserve_batch_size`", "`deltaserve_batch_sizes`")
        self.assert_error(self.repo.check(), "deltaserve_batch_size_bucket is not in docs/metrics.md")

    def test_scrape(self):
        docs = cd.parse_docs(self.repo.path("docs/metrics.md"))
        self.assertEqual(self.repo.check(synthetic_scrape(docs), require=True).errors, [])
        probs = self.repo.check(synthetic_scrape(docs, drop=["deltaserve_kv_cache_usage_perc"]))
        self.assert_error(probs, "deltaserve_kv_cache_usage_perc is not exported by the server")
        self.assertIn("documented gauge deltaserve_kv_cache_usage_perc is not in the scrape", "\n".join(probs.warnings))
        probs = self.repo.check(synthetic_scrape(docs, drop=["deltaserve_kv_cache_usage_perc"]), require=True)
        self.assert_error(probs, "documented gauge deltaserve_kv_cache_usage_perc is not in the scrape")
        self.assert_error(self.repo.check(synthetic_scrape(docs, retype={"deltaserve_engine_steps_total": "gauge"})),
                          "deltaserve_engine_steps_total: scrape TYPE gauge, docs/metrics.md says counter")
        self.assert_error(self.repo.check(synthetic_scrape(docs, extra_label=("deltaserve_batch_size", "slot"))),
                          "deltaserve_batch_size: scrape labels {model, slot}")
        probs = self.repo.check(synthetic_scrape(docs, extra_family="deltaserve_new_thing"), require=True)
        self.assert_error(probs, "deltaserve_new_thing, which docs/metrics.md does not list")

    def test_main_exit_codes(self):
        docs = str(self.repo.path("docs/metrics.md"))

        def run(*args):
            with contextlib.redirect_stdout(io.StringIO()) as out, contextlib.redirect_stderr(out):
                rc = cd.main(["--repo", str(self.repo.root), *args])
            return rc, out.getvalue()

        self.assertEqual(run("--docs", docs)[0], 0)
        self.assertEqual(run("--docs", "/nonexistent/metrics.md")[0], 2)
        self.break_expr("Tokens / s", "deltaserve_prompt_tokens_total", "deltaserve_nope_total")
        rc, out = run("--docs", docs)
        self.assertEqual(rc, 1)
        self.assertIn("ERROR: deltaserve.json: panel", out)


class CheckRulesTest(unittest.TestCase):
    def setUp(self):
        self.repo = RepoCopy()
        self.addCleanup(self.repo.close)
        self.prom = self.repo.path("deploy/prometheus")

    def failures(self):
        out = []
        with contextlib.redirect_stdout(io.StringIO()):
            check_rules.check_structure(self.prom, out)
        return "\n".join(out)

    def test_repository_passes(self):
        self.assertEqual(self.failures(), "")

    def test_alert_coverage(self):
        # Drop the firing case of DeltaserveDown.
        text = (self.prom / "rules_test.yml").read_text()
        start = text.index("      - alertname: DeltaserveDown\n        eval_time: 5m")
        end = text.index("      # deltaserve targets exist")
        (self.prom / "rules_test.yml").write_text(text[:start] + text[end:])
        self.assertIn("no alert_rule_test where DeltaserveDown fires", self.failures())

    def test_alert_labels_and_annotations(self):
        self.repo.replace("deploy/prometheus/alert_rules.yml", "severity: critical", "severity: page")
        self.repo.replace("deploy/prometheus/alert_rules.yml", "          summary: \"deltaserve target", "          note: \"x")
        f = self.failures()
        self.assertIn("severity 'page'", f)
        self.assertIn("DeltaserveDown: no summary annotation", f)

    def test_recording_names(self):
        self.repo.replace("deploy/prometheus/recording_rules.yml", "record: model:deltaserve_prompt_tokens:rate5m",
                          "record: deltaserve_prompt_tokens_rate5m")
        self.assertIn("deltaserve_prompt_tokens_rate5m is not level:metric:operations", self.failures())

    def test_kubernetes_sd_swap(self):
        swapped = check_rules.without_kubernetes_sd((self.prom / "prometheus.yml").read_text())
        self.assertNotIn("kubernetes_sd_configs", swapped)
        self.assertIn("relabel_configs", swapped)
        doc = mini_yaml.load(swapped)
        jobs = {j["job_name"]: j for j in doc["scrape_configs"]}
        self.assertEqual(jobs["deltaserve"]["static_configs"], [{"targets": ["127.0.0.1:9090"]}])
        self.assertEqual(set(jobs), {"deltaserve", "deltaserve-static"})


def main():
    global REPO
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repo", default=str(REPO))
    args, rest = ap.parse_known_args()
    REPO = pathlib.Path(args.repo).resolve()
    program = unittest.main(argv=[sys.argv[0], *rest], exit=False)
    return 0 if program.result.wasSuccessful() else 1


if __name__ == "__main__":
    sys.exit(main())
