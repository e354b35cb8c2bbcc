"""Policy checks over rendered Kubernetes objects of deploy/k8s (used by test_k8s_manifests.py).

Each check returns a list of problems (strings naming the object and the rule); an empty list passes.
The rules are the ones an operator relies on: the pods are probed on their gRPC port through the health
service, run non-root on a read-only root file system with no capabilities, have requests and limits,
get more time to stop than the server takes to drain, and every selector finds the pods it is meant to.
"""
import re

POD_LABELS_REQUIRED = ("app.kubernetes.io/name", "app.kubernetes.io/component")


def by_kind(objects, kind):
    return [o for o in objects if o.get("kind") == kind]


def one(objects, kind, name=None):
    found = [o for o in by_kind(objects, kind) if name is None or o["metadata"]["name"] == name]
    if len(found) != 1:
        raise AssertionError(f"expected one {kind}{' ' + name if name else ''}, found {len(found)}")
    return found[0]


def selects(selector, labels):
    """A label selector (matchLabels / matchExpressions, or a Service's plain map) matches the labels."""
    if not selector:
        return False
    if "matchLabels" in selector or "matchExpressions" in selector:
        match, exprs = selector.get("matchLabels", {}), selector.get("matchExpressions", [])
    else:
        match, exprs = selector, []  # a Service's selector is a plain map
    if not match and not exprs:
        return False  # an empty selector selects everything: never what we mean
    for k, v in match.items():
        if labels.get(k) != v:
            return False
    for e in exprs:
        op, key, values = e["operator"], e["key"], e.get("values", [])
        if op == "In" and labels.get(key) not in values:
            return False
        if op == "NotIn" and labels.get(key) in values:
            return False
        if op == "Exists" and key not in labels:
            return False
        if op == "DoesNotExist" and key in labels:
            return False
    return True


def flags_from_configmap(objects, deployment):
    """(flags dict, problems): the --flagfile the container reads, found through its volume mount."""
    problems = []
    c = deployment["spec"]["template"]["spec"]["containers"][0]
    flagfile = None
    for a in c.get("args", []) + c.get("command", []):
        if a.startswith("--flagfile="):
            flagfile = a.split("=", 1)[1]
    if flagfile is None:
        return {}, ["Deployment: the container's args name no --flagfile"]
    mount = next((m for m in c.get("volumeMounts", []) if flagfile.startswith(m["mountPath"].rstrip("/") + "/")), None)
    if mount is None:
        return {}, [f"Deployment: --flagfile {flagfile} is on no volume mount"]
    volumes = {v["name"]: v for v in deployment["spec"]["template"]["spec"].get("volumes", [])}
    cm_name = volumes.get(mount["name"], {}).get("configMap", {}).get("name")
    key = flagfile[len(mount["mountPath"].rstrip("/")) + 1:]
    cms = [o for o in by_kind(objects, "ConfigMap") if o["metadata"]["name"] == cm_name]
    if not cms or key not in cms[0].get("data", {}):
        return {}, [f"Deployment: --flagfile {flagfile} needs ConfigMap {cm_name} key {key}, which is not rendered"]
    flags = {}
    for lineno, line in enumerate(cms[0]["data"][key].splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        m = re.fullmatch(r"--([a-z0-9_]+)=(.*)", line)
        if not m:
            problems.append(f"ConfigMap {cm_name} {key}:{lineno}: not --name=value with underscores: {line!r}")
            continue
        flags[m.group(1)] = m.group(2)
    return flags, problems


def check_workload(objects, known_flags=None):
    """Probes, security, resources, shutdown, labels and selectors of one rendered overlay."""
    p = []
    dep = one(objects, "Deployment")
    name = dep["metadata"]["name"]
    pod = dep["spec"]["template"]
    pod_labels = pod["metadata"].get("labels", {})
    spec = pod["spec"]
    for k in POD_LABELS_REQUIRED:
        if k not in pod_labels:
            p.append(f"Deployment {name}: pod template lacks label {k}")
    if not selects(dep["spec"].get("selector"), pod_labels):
        p.append(f"Deployment {name}: spec.selector does not match its pod template's labels")

    containers = spec.get("containers", [])
    if len(containers) != 1:
        p.append(f"Deployment {name}: expected one container, found {len(containers)}")
        return p
    c = containers[0]
    ports = {pt.get("name"): pt["containerPort"] for pt in c.get("ports", [])}
    if "grpc" not in ports or "metrics" not in ports:
        p.append(f"Deployment {name}: container ports must be named grpc and metrics, found {sorted(ports)}")
    flags, fp = flags_from_configmap(objects, dep)
    p += fp
    if known_flags is not None:
        for f in sorted(set(flags) - set(known_flags)):
            p.append(f"ConfigMap flags: --{f} is not a deltaserve flag (deltaserve --help)")
    if "grpc" in ports and flags.get("port") not in (None, str(ports["grpc"])):
        p.append(f"Deployment {name}: grpc containerPort {ports['grpc']} but --port={flags['port']}")
    if "metrics" in ports and flags.get("metrics_host", "127.0.0.1") in ("127.0.0.1", "localhost", "::1"):
        p.append(f"Deployment {name}: /metrics listens on loopback only (--metrics_host); Prometheus cannot scrape it")
    if "metrics" in ports and flags.get("metrics_port") not in (None, str(ports["metrics"])):
        p.append(f"Deployment {name}: metrics containerPort {ports['metrics']} but --metrics_port={flags['metrics_port']}")

    ann = pod["metadata"].get("annotations", {})
    if "metrics" in ports and ann.get("prometheus.io/port") != str(ports["metrics"]):
        p.append(f"Deployment {name}: annotation prometheus.io/port {ann.get('prometheus.io/port')} is not the "
                 f"metrics port {ports['metrics']}")

    # Probes: all three, native gRPC, on the gRPC port (the health service answers there).
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        pr = c.get(probe)
        if pr is None:
            p.append(f"Deployment {name}: no {probe}")
        elif "grpc" not in pr:
            p.append(f"Deployment {name}: {probe} is not a gRPC probe")
        elif pr["grpc"].get("port") != ports.get("grpc"):
            p.append(f"Deployment {name}: {probe} probes port {pr['grpc'].get('port')}, the gRPC port is {ports.get('grpc')}")
    st = c.get("startupProbe", {})
    if st and st.get("periodSeconds", 10) * st.get("failureThreshold", 3) < 300:
        p.append(f"Deployment {name}: startupProbe allows under 5 minutes for loading a model")

    # Security.
    psc, csc = spec.get("securityContext", {}), c.get("securityContext", {})
    if not (psc.get("runAsNonRoot") or csc.get("runAsNonRoot")):
        p.append(f"Deployment {name}: runAsNonRoot is not set")
    uid = csc.get("runAsUser", psc.get("runAsUser"))
    if uid in (None, 0):
        p.append(f"Deployment {name}: runAsUser must be a non-zero uid, got {uid}")
    if csc.get("readOnlyRootFilesystem") is not True:
        p.append(f"Deployment {name}: readOnlyRootFilesystem is not true")
    if csc.get("allowPrivilegeEscalation") is not False:
        p.append(f"Deployment {name}: allowPrivilegeEscalation is not false")
    if csc.get("capabilities", {}).get("drop") != ["ALL"] or csc.get("capabilities", {}).get("add"):
        p.append(f"Deployment {name}: capabilities must drop ALL and add none")
    seccomp = csc.get("seccompProfile", psc.get("seccompProfile", {})).get("type")
    if seccomp != "RuntimeDefault":
        p.append(f"Deployment {name}: seccompProfile is {seccomp}, want RuntimeDefault")
    if spec.get("automountServiceAccountToken") is not False:
        p.append(f"Deployment {name}: the service account token is mounted (the server needs no API access)")

    # Resources.
    res = c.get("resources", {})
    for kind in ("requests", "limits"):
        for r in ("cpu", "memory"):
            if r not in res.get(kind, {}):
                p.append(f"Deployment {name}: resources.{kind}.{r} is not set")

    # Shutdown: the kubelet kills at terminationGracePeriodSeconds; the preStop pause and the drain must fit.
    grace = spec.get("terminationGracePeriodSeconds", 30)
    drain = float(flags.get("shutdown_grace", 30))
    pause = 0.0
    pre = c.get("lifecycle", {}).get("preStop", {})
    if "sleep" in pre:
        pause = float(pre["sleep"]["seconds"])
    elif "exec" in pre:
        cmd = pre["exec"]["command"]
        if len(cmd) == 2 and cmd[0] == "sleep":
            pause = float(cmd[1])
    if grace <= pause + drain:
        p.append(f"Deployment {name}: terminationGracePeriodSeconds {grace} <= preStop {pause:g} s + "
                 f"--shutdown_grace {drain:g} s: streams would be killed while draining")

    # Rolling updates keep capacity.
    ru = dep["spec"].get("strategy", {}).get("rollingUpdate", {})
    if str(ru.get("maxUnavailable", "25%")) not in ("0", "0%"):
        p.append(f"Deployment {name}: rollingUpdate.maxUnavailable should be 0")

    # Every Service selects the pods and targets a named container port; the gRPC port says its protocol.
    services = by_kind(objects, "Service")
    if not services:
        p.append("no Service")
    for s in services:
        sn = s["metadata"]["name"]
        if not selects(s["spec"].get("selector"), pod_labels):
            p.append(f"Service {sn}: selector does not match the Deployment's pods")
        for sp in s["spec"].get("ports", []):
            if sp.get("targetPort") not in ports and sp.get("targetPort") not in ports.values():
                p.append(f"Service {sn}: port {sp.get('name')} targets {sp.get('targetPort')}, not a container port")
            if sp.get("name") == "grpc" and sp.get("appProtocol") not in ("kubernetes.io/h2c", "grpc"):
                p.append(f"Service {sn}: the grpc port has appProtocol {sp.get('appProtocol')}")
    if not any(s["spec"].get("clusterIP") == "None" for s in services):
        p.append("no headless Service for client-side gRPC balancing")

    for pdb in by_kind(objects, "PodDisruptionBudget"):
        if not selects(pdb["spec"].get("selector"), pod_labels):
            p.append(f"PodDisruptionBudget {pdb['metadata']['name']}: selector does not match the pods")
    if not by_kind(objects, "PodDisruptionBudget"):
        p.append("no PodDisruptionBudget")
    sa = spec.get("serviceAccountName")
    if sa not in [o["metadata"]["name"] for o in by_kind(objects, "ServiceAccount")]:
        p.append(f"Deployment {name}: serviceAccountName {sa} is not rendered")
    for hpa in by_kind(objects, "HorizontalPodAutoscaler"):
        ref = hpa["spec"]["scaleTargetRef"]
        if (ref.get("kind"), ref.get("name")) != ("Deployment", name):
            p.append(f"HorizontalPodAutoscaler {hpa['metadata']['name']}: targets {ref}, not Deployment {name}")
    return p


def check_podmonitor(podmonitor, deployment):
    """The PodMonitor selects the Deployment's pods and scrapes a port the container has."""
    p = []
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    if not selects(podmonitor["spec"].get("selector"), labels):
        p.append("PodMonitor: selector does not match the Deployment's pods")
    ports = {pt.get("name") for pt in deployment["spec"]["template"]["spec"]["containers"][0].get("ports", [])}
    for ep in podmonitor["spec"].get("podMetricsEndpoints", []):
        if ep.get("port") not in ports:
            p.append(f"PodMonitor: scrapes port {ep.get('port')}, which the container does not name")
    job = podmonitor["spec"].get("jobLabel")
    if job is None or not str(labels.get(job, "")).startswith("deltaserve"):
        p.append("PodMonitor: jobLabel must give job=deltaserve* (the alert rules select job=~\"deltaserve.*\")")
    return p


def check_autoscaling(hpa, adapter_values, scaled_object, metrics_contract):
    """The HPA's metric is served by the adapter rule and is a gauge of the contract; KEDA queries the same."""
    p = []
    names = [m["pods"]["metric"]["name"] for m in hpa["spec"]["metrics"] if m["type"] == "Pods"]
    if not names:
        p.append("HPA: no Pods metric")
    served = {}
    for rule in adapter_values.get("rules", {}).get("custom", []):
        series = re.match(r"\s*([a-zA-Z_:][a-zA-Z0-9_:]*)", rule["seriesQuery"]).group(1)
        served[rule["name"]["as"]] = series
    for n in names:
        if n not in served:
            p.append(f"HPA: metric {n} is not exposed by any prometheus-adapter rule")
            continue
        kind = metrics_contract.get(served[n], (None,))[0]
        if kind != "gauge":
            p.append(f"HPA: {n} reads {served[n]}, which docs/metrics.md lists as {kind}, not a gauge")
    for t in scaled_object["spec"]["triggers"]:
        for m in re.findall(r"deltaserve_[a-z_]+", t["metadata"]["query"]):
            if m not in metrics_contract:
                p.append(f"ScaledObject: query reads {m}, which docs/metrics.md does not list")
        if t["metadata"].get("threshold") != str(hpa["spec"]["metrics"][0]["pods"]["target"]["averageValue"]):
            p.append("ScaledObject: threshold differs from the HPA's target")
    return p


def help_flag_names(help_text):
    return set(re.findall(r"^\s+--([a-z0-9_]+) \(", help_text, flags=re.M))

