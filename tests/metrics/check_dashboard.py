#!/usr/bin/env python3
"""Checks the Grafana dashboard and the Prometheus rules against deltaserve's metric names contract.

1. The dashboard (deploy/grafana/deltaserve.json) is valid JSON that Grafana can import: unique integer
   panel ids, a grid position for every panel, a datasource (a variable, never a fixed uid) and
   non-empty PromQL targets with unique refIds on every panel but rows, the ${DS_PROMETHEUS} input and
   the `model` variable (label_values(deltaserve_build_info, model)), only known template variables.
2. Every PromQL expression (dashboard targets and variables, recording and alert rules, the rule unit
   tests' expressions and input series) is tokenised; every metric name in it (functions, keywords,
   labels, strings, ranges and Grafana variables left out) must be
     - a metric of docs/metrics.md: histograms only as NAME_bucket / NAME_sum / NAME_count (a classic
       histogram has no series under its bare name), other types under their own name;
     - or a recording rule's output (recording_rules.yml), or a series Prometheus makes itself (up, ...).
   Label names in selectors must be the metric's documented labels or target labels (job, instance and
   the target_label names of deploy/prometheus/prometheus.yml), `le` on _bucket; grouping labels
   (by, without, on, ignoring, group_left/right) must be one of those anywhere.
3. With --scrape FILE (the server's /metrics text): every name used must be exported; each documented
   family the scrape has must have the documented type and label names. --require-documented also
   fails on documented families missing from the scrape and on undocumented deltaserve_* families.

Usage: check_dashboard.py [--repo DIR] [--scrape FILE [--require-documented]] [-v]
Exit codes: 0 all good, 1 problems (listed), 2 bad usage or unreadable input.
Stdlib only; imported by test_prometheus_e2e.py for the expressions it sends to a real Prometheus.
"""

import argparse
import json
import pathlib
import re
import sys

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
import mini_yaml  # noqa: E402

# Prometheus 2.x PromQL functions and aggregation operators (what may stand before "(").
FUNCTIONS = set("""
abs absent absent_over_time acos acosh asin asinh atan atanh avg_over_time ceil changes clamp clamp_max
clamp_min cos cosh count_over_time day_of_month day_of_week day_of_year days_in_month deg delta deriv exp
floor histogram_count histogram_fraction histogram_quantile histogram_stddev histogram_stdvar
histogram_sum holt_winters hour idelta increase irate label_join label_replace last_over_time ln log10
log2 mad_over_time max_over_time min_over_time minute month pi predict_linear present_over_time
quantile_over_time rad rate resets round scalar sgn sin sinh sort sort_desc sqrt stddev_over_time
stdvar_over_time sum_over_time tan tanh time timestamp vector year start end
""".split())
AGGREGATORS = set("sum min max avg group stddev stdvar count count_values bottomk topk quantile limitk "
                  "limit_ratio".split())
GROUPING = {"by", "without", "on", "ignoring", "group_left", "group_right"}
KEYWORDS = {"bool", "offset", "and", "or", "unless", "atan2", "inf", "nan"}
# Series Prometheus writes itself (per target, and for alerts), with their labels.
BUILTIN_SERIES = {
    "up": set(), "scrape_duration_seconds": set(), "scrape_samples_scraped": set(),
    "scrape_samples_post_metric_relabeling": set(), "scrape_series_added": set(),
    "ALERTS": {"alertname", "alertstate", "severity"}, "ALERTS_FOR_STATE": {"alertname", "severity"},
}
HISTOGRAM_SUFFIXES = ("_bucket", "_sum", "_count")
HEATMAP_LAYOUTS = {"le", "ge", "unknown", "auto"}  # Grafana's HeatmapCellLayout
# Grafana's built-in variables and the values used when an expression is parsed or sent to Prometheus.
GRAFANA_BUILTINS = {"__rate_interval": "1m", "__interval": "15s", "__range": "1m", "__range_s": "60",
                    "__range_ms": "60000", "__interval_ms": "15000"}
VAR_RE = re.compile(r"\$\{(\w+)(?::[^}]*)?\}|\$(\w+)|\[\[(\w+)(?::[^\]]*)?\]\]")
NAME_RE = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*")
NUMBER_RE = re.compile(r"0[xX][0-9a-fA-F]+|(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?[a-zA-Z0-9_]*")


class Problems:
    def __init__(self):
        self.errors = []
        self.warnings = []

    def error(self, msg):
        self.errors.append(msg)

    def warn(self, msg):
        self.warnings.append(msg)


# ---------------------------------------------------------------------------------------------------
# The contract: docs/metrics.md's tables.


def parse_docs(path):
    """{name: (type, labels)} from the markdown tables whose first column is a `metric` name."""
    metrics = {}
    for lineno, line in enumerate(pathlib.Path(path).read_text(encoding="utf-8").splitlines(), 1):
        if not line.startswith("|"):
            continue
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        m = re.fullmatch(r"`([a-zA-Z_:][a-zA-Z0-9_:]*)`", cells[0]) if cells else None
        if not m or len(cells) < 3:
            continue
        name = m.group(1)
        kind = cells[1].split()[0].lower() if cells[1] else ""
        if kind not in ("counter", "gauge", "histogram", "summary", "untyped"):
            raise ValueError(f"{path}:{lineno}: {name}: unknown type {cells[1]!r}")
        labels = {x.strip().strip("`") for x in cells[2].split(",") if x.strip()}
        if name in metrics:
            raise ValueError(f"{path}:{lineno}: {name} documented twice")
        metrics[name] = (kind, labels)
    if not metrics:
        raise ValueError(f"{path}: no metric tables found")
    return metrics


# ---------------------------------------------------------------------------------------------------
# The server's exposition (text format 0.0.4, or OpenMetrics' counter naming).


class Scrape:
    def __init__(self, text):
        self.types = {}  # family -> type
        self.samples = {}  # sample name -> set of label names
        for line in text.splitlines():
            if line.startswith("# TYPE "):
                parts = line.split()
                if len(parts) >= 4:
                    self.types[parts[2]] = parts[3]
                continue
            if not line.strip() or line.startswith("#"):
                continue
            m = NAME_RE.match(line)
            if not m:
                continue
            labels = set()
            rest = line[m.end():]
            if rest.startswith("{"):
                labels = set(re.findall(r'([a-zA-Z_][a-zA-Z0-9_]*)\s*=\s*"(?:[^"\\]|\\.)*"', rest[:_close_brace(rest)]))
            self.samples.setdefault(m.group(0), set()).update(labels)

    def family_of(self, sample):
        if sample in self.types and self.types[sample] != "histogram":
            return sample
        for suffix in HISTOGRAM_SUFFIXES + ("_total", "_created"):
            base = sample[: -len(suffix)] if sample.endswith(suffix) else None
            if base and base in self.types:
                t = self.types[base]
                if t in ("histogram", "summary", "gaugehistogram") or (t == "counter" and suffix != "_bucket"):
                    return base
        return sample if sample in self.types else None

    def family_labels(self, family):
        out = set()
        for sample, labels in self.samples.items():
            if self.family_of(sample) == family:
                out |= labels
        return out - {"le", "quantile"}

    def families(self):
        return set(self.types) | {self.family_of(s) or s for s in self.samples}

    def exports(self, name):
        if name in self.samples:
            return True
        return False


def _close_brace(text):
    """Index of the "}" closing the label set that opens text (quotes respected)."""
    i, quoted = 1, False
    while i < len(text):
        c = text[i]
        if quoted:
            if c == "\\":
                i += 1
            elif c == '"':
                quoted = False
        elif c == '"':
            quoted = True
        elif c == "}":
            return i
        i += 1
    return len(text)


# ---------------------------------------------------------------------------------------------------
# PromQL: a tokeniser good enough to tell metric names from functions, keywords and labels.


class Refs:
    """What one expression refers to."""

    def __init__(self):
        self.metrics = []  # (name, set of matcher label names)
        self.grouping = set()  # labels in by/without/on/ignoring/group_left/group_right
        self.functions = set()
        self.unknown_functions = set()
        self.errors = []


def substitute(expr, values):
    """Replaces Grafana variables; returns (text, set of unknown variable names)."""
    unknown = set()

    def repl(m):
        name = m.group(1) or m.group(2) or m.group(3)
        if name in values:
            return values[name]
        unknown.add(name)
        return "1"

    return VAR_RE.sub(repl, expr), unknown


def _skip_string(s, i):
    q = s[i]
    i += 1
    while i < len(s):
        if s[i] == "\\" and q != "`":
            i += 2
            continue
        if s[i] == q:
            return i + 1
        i += 1
    raise ValueError("unterminated string")


def tokenize(s):
    toks = []
    i = 0
    while i < len(s):
        c = s[i]
        if c.isspace():
            i += 1
        elif c == "#":
            j = s.find("\n", i)
            i = len(s) if j < 0 else j
        elif c in "\"'`":
            i = _skip_string(s, i)
            toks.append(("string", None))
        elif c == "{":
            j = i + 1
            labels = []
            expect_label = True
            while True:
                while j < len(s) and s[j].isspace():
                    j += 1
                if j >= len(s):
                    raise ValueError("unterminated {")
                if s[j] == "}":
                    j += 1
                    break
                if s[j] in "\"'`":
                    j = _skip_string(s, j)
                    expect_label = False
                    continue
                if s[j] == ",":
                    expect_label = True
                    j += 1
                    continue
                m = NAME_RE.match(s, j)
                if m and expect_label:
                    labels.append(m.group(0))
                    expect_label = False
                    j = m.end()
                    continue
                j += 1  # operators =, !=, =~, !~
            toks.append(("selector", labels, s[i:j]))
            i = j
        elif c == "[":
            j = s.find("]", i)
            if j < 0:
                raise ValueError("unterminated [")
            toks.append(("range", None))
            i = j + 1
        elif c.isdigit() or (c == "." and i + 1 < len(s) and s[i + 1].isdigit()):
            m = NUMBER_RE.match(s, i)
            toks.append(("number", m.group(0)))
            i = m.end()
        elif c.isalpha() or c in "_:":
            m = NAME_RE.match(s, i)
            toks.append(("ident", m.group(0)))
            i = m.end()
        elif c in "(),":
            toks.append((c, None))
            i += 1
        else:
            toks.append(("op", c))
            i += 1
    return toks


def extract(expr):
    """Refs of a PromQL expression (Grafana variables already substituted)."""
    refs = Refs()
    try:
        toks = tokenize(expr)
    except ValueError as e:
        refs.errors.append(f"cannot tokenise: {e}")
        return refs
    k = 0
    while k < len(toks):
        tok = toks[k]
        nxt = toks[k + 1] if k + 1 < len(toks) else (None, None)
        if tok[0] == "ident":
            name = tok[1]
            low = name.lower()
            if low in GROUPING and nxt[0] == "(":
                j = k + 2
                while j < len(toks) and toks[j][0] != ")":
                    if toks[j][0] == "ident":
                        refs.grouping.add(toks[j][1])
                    j += 1
                k = j + 1
                continue
            if low in GROUPING or low in KEYWORDS:
                k += 1
                continue
            if name in AGGREGATORS and (nxt[0] == "(" or (nxt[0] == "ident" and nxt[1].lower() in GROUPING)):
                refs.functions.add(name)
                k += 1
                continue
            if nxt[0] == "(":
                refs.functions.add(name)
                if name not in FUNCTIONS:
                    refs.unknown_functions.add(name)
                k += 1
                continue
            labels = set(nxt[1]) if nxt[0] == "selector" else set()
            refs.metrics.append((name, labels))
            k += 2 if nxt[0] == "selector" else 1
            continue
        if tok[0] == "selector":
            # A selector without a name: {__name__="x"}.
            m = re.search(r'__name__\s*=\s*"([a-zA-Z_:][a-zA-Z0-9_:]*)"', tok[2])
            if m:
                refs.metrics.append((m.group(1), set(tok[1]) - {"__name__"}))
            else:
                refs.errors.append(f"selector without a metric name: {tok[2]}")
        k += 1
    return refs


# ---------------------------------------------------------------------------------------------------
# Where the expressions are.


class Expr:
    def __init__(self, where, text, kind="promql"):
        self.where = where  # human-readable location
        self.text = text  # as written (Grafana variables included)
        self.kind = kind  # promql, or label_values (a Grafana variable query)


def dashboard_variables(dash):
    """{name: value used for checking and test queries} of the dashboard's template variables."""
    values = dict(GRAFANA_BUILTINS)
    for v in dash.get("templating", {}).get("list", []):
        name = v.get("name")
        if v.get("type") == "custom":
            cur = (v.get("current") or {}).get("value")
            opts = [o.strip() for o in str(v.get("query", "")).split(",") if o.strip()]
            values[name] = str(cur if cur not in (None, "", []) else (opts[0] if opts else "1"))
        elif v.get("type") == "datasource":
            values[name] = "datasource"
        else:
            values[name] = ".+"  # regex matchers of query variables
    return values


def iter_panels(panels):
    for p in panels:
        yield p
        yield from iter_panels(p.get("panels", []) or [])


def check_dashboard_json(path, probs):
    """Structural checks; returns (dashboard dict, list of Expr)."""
    rel = path.name
    try:
        dash = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        probs.error(f"{rel}: not readable JSON: {e}")
        return None, []
    exprs = []
    if not isinstance(dash.get("schemaVersion"), int) or dash["schemaVersion"] < 36:
        probs.error(f"{rel}: schemaVersion {dash.get('schemaVersion')!r} (want an integer >= 36)")
    for key in ("title", "uid"):
        if not dash.get(key):
            probs.error(f"{rel}: no {key}")
    if dash.get("id") not in (None,):
        probs.error(f"{rel}: top-level id must be null in an importable dashboard (got {dash.get('id')!r})")
    inputs = {i.get("name"): i for i in dash.get("__inputs", [])}
    ds_input = inputs.get("DS_PROMETHEUS")
    if not ds_input or ds_input.get("type") != "datasource" or ds_input.get("pluginId") != "prometheus":
        probs.error(f"{rel}: __inputs lacks DS_PROMETHEUS (type datasource, pluginId prometheus)")
    variables = {v.get("name"): v for v in dash.get("templating", {}).get("list", [])}
    ds_vars = {n for n, v in variables.items() if v.get("type") == "datasource"}
    for n in ds_vars:
        if variables[n].get("query") != "prometheus":
            probs.error(f"{rel}: datasource variable {n} is not of type prometheus")
    model = variables.get("model")
    if not model:
        probs.error(f"{rel}: no `model` template variable")
    else:
        q = model.get("query")
        q = q.get("query") if isinstance(q, dict) else q
        if not re.fullmatch(r"label_values\(\s*deltaserve_build_info\s*,\s*model\s*\)", str(q or "").strip()):
            probs.error(f"{rel}: variable model's query is {q!r}, want label_values(deltaserve_build_info, model)")
    values = dashboard_variables(dash)

    def ds_ok(ds, where):
        """A datasource reference must be a variable (${DS_PROMETHEUS} or a datasource variable)."""
        uid = ds.get("uid") if isinstance(ds, dict) else ds
        if isinstance(ds, dict) and ds.get("type") not in (None, "prometheus"):
            probs.error(f"{rel}: {where}: datasource type {ds.get('type')!r}, want prometheus")
        m = VAR_RE.fullmatch(str(uid or ""))
        name = m and (m.group(1) or m.group(2) or m.group(3))
        if not name or (name != "DS_PROMETHEUS" and name not in ds_vars):
            probs.error(f"{rel}: {where}: datasource {uid!r} is not ${{DS_PROMETHEUS}} or a datasource variable")

    for n, v in variables.items():
        if v.get("type") == "query":
            where = f"variable {n}"
            ds_ok(v.get("datasource"), where)
            q = v.get("query")
            q = q.get("query") if isinstance(q, dict) else q
            if not q:
                probs.error(f"{rel}: {where}: empty query")
                continue
            exprs.append(Expr(f"{rel}: {where}", q, kind="variable"))

    ids = {}
    for p in iter_panels(dash.get("panels", [])):
        title = p.get("title", "")
        pid = p.get("id")
        where = f"panel {pid} {title!r}"
        if not isinstance(pid, int) or isinstance(pid, bool):
            probs.error(f"{rel}: {where}: id is not an integer")
        elif pid in ids:
            probs.error(f"{rel}: {where}: id {pid} also used by panel {ids[pid]!r}")
        else:
            ids[pid] = title
        gp = p.get("gridPos") or {}
        if not all(isinstance(gp.get(k), int) for k in ("h", "w", "x", "y")):
            probs.error(f"{rel}: {where}: gridPos needs integer h, w, x, y")
        elif gp["x"] < 0 or gp["w"] <= 0 or gp["x"] + gp["w"] > 24:
            probs.error(f"{rel}: {where}: gridPos x {gp['x']} + w {gp['w']} outside the 24 columns")
        if not p.get("type"):
            probs.error(f"{rel}: {where}: no type")
        if p.get("type") in ("row", "text", "news", "dashlist"):
            continue
        if p.get("type") == "heatmap":
            opts = p.get("options") or {}
            layout = (opts.get("rowsFrame") or {}).get("layout", "auto")
            if layout not in HEATMAP_LAYOUTS:
                probs.error(f"{rel}: {where}: heatmap rowsFrame.layout {layout!r}, want one of {sorted(HEATMAP_LAYOUTS)}")
            bucket_targets = [t for t in p.get("targets") or [] if t.get("format") == "heatmap"]
            if bucket_targets and opts.get("calculate") is not False:
                probs.error(f"{rel}: {where}: heatmap of Prometheus buckets (format heatmap) needs calculate: false")
        if "datasource" not in p:
            probs.error(f"{rel}: {where}: no datasource")
        else:
            ds_ok(p["datasource"], where)
        targets = p.get("targets") or []
        if not targets:
            probs.error(f"{rel}: {where}: no targets")
        refids = set()
        for t in targets:
            ref = t.get("refId")
            twhere = f"{where} target {ref}"
            if not ref or ref in refids:
                probs.error(f"{rel}: {twhere}: missing or repeated refId")
            refids.add(ref)
            if "datasource" in t:
                ds_ok(t["datasource"], twhere)
            if not str(t.get("expr", "")).strip():
                probs.error(f"{rel}: {twhere}: empty expr")
                continue
            exprs.append(Expr(f"{rel}: {twhere}", t["expr"]))
    if not ids:
        probs.error(f"{rel}: no panels")
    dash["_values"] = values
    return dash, exprs


def rule_file_exprs(path, probs):
    """(list of Expr, set of recording rule names) of a rule file."""
    rel = path.name
    try:
        doc = mini_yaml.load_file(path)
    except (OSError, mini_yaml.YamlError) as e:
        probs.error(f"{rel}: {e}")
        return [], set()
    exprs, records = [], set()
    for g in (doc or {}).get("groups") or []:
        for r in g.get("rules") or []:
            name = r.get("record") or r.get("alert")
            if r.get("record"):
                records.add(r["record"])
            if not r.get("expr"):
                probs.error(f"{rel}: rule {name!r} has no expr")
                continue
            exprs.append(Expr(f"{rel}: group {g.get('name')} rule {name}", r["expr"]))
    return exprs, records


def rule_test_exprs(path, probs):
    rel = path.name
    try:
        doc = mini_yaml.load_file(path)
    except (OSError, mini_yaml.YamlError) as e:
        probs.error(f"{rel}: {e}")
        return []
    exprs = []
    for n, t in enumerate((doc or {}).get("tests") or [], 1):
        for s in t.get("input_series") or []:
            exprs.append(Expr(f"{rel}: test {n} input series", s.get("series", "")))
        for q in t.get("promql_expr_test") or []:
            exprs.append(Expr(f"{rel}: test {n} promql_expr_test", q.get("expr", "")))
    return exprs


def target_labels(config_path):
    """job, instance and the non-internal target_label names of the scrape configuration."""
    labels = {"job", "instance"}
    try:
        doc = mini_yaml.load_file(config_path)
    except (OSError, mini_yaml.YamlError):
        return labels
    for sc in (doc or {}).get("scrape_configs") or []:
        for rc in (sc.get("relabel_configs") or []) + (sc.get("metric_relabel_configs") or []):
            t = rc.get("target_label")
            if t and not t.startswith("__"):
                labels.add(t)
    return labels


# ---------------------------------------------------------------------------------------------------


class Sources:
    """Every expression of the repository's dashboard, rules and rule tests."""

    def __init__(self, repo, probs):
        repo = pathlib.Path(repo)
        prom = repo / "deploy" / "prometheus"
        self.dashboard, dash_exprs = check_dashboard_json(repo / "deploy" / "grafana" / "deltaserve.json", probs)
        self.values = self.dashboard["_values"] if self.dashboard else dict(GRAFANA_BUILTINS)
        self.dashboard_exprs = dash_exprs
        self.rule_exprs, self.records = [], set()
        for f in ("recording_rules.yml", "alert_rules.yml"):
            e, r = rule_file_exprs(prom / f, probs)
            self.rule_exprs += e
            self.records |= r
        self.test_exprs = rule_test_exprs(prom / "rules_test.yml", probs)
        self.target_labels = target_labels(prom / "prometheus.yml")

    def all(self):
        return self.dashboard_exprs + self.rule_exprs + self.test_exprs

    def queryable(self):
        """(where, PromQL with variables substituted) of the dashboard panels and the rules."""
        out = []
        for e in self.dashboard_exprs + self.rule_exprs:
            if e.kind == "promql":
                text, _ = substitute(e.text, self.values)
                out.append((e.where, text))
        return out


def normalise(name, docs):
    """(family, suffix, problem) of a metric name used in PromQL against the documented names."""
    if name in docs:
        if docs[name][0] in ("histogram",):
            return name, "", f"{name} is a histogram: use {name}_bucket, _sum or _count"
        return name, "", None
    for suffix in HISTOGRAM_SUFFIXES:
        if name.endswith(suffix):
            base = name[: -len(suffix)]
            if base in docs and docs[base][0] in ("histogram", "summary"):
                if suffix == "_bucket" and docs[base][0] == "summary":
                    return base, suffix, f"{name}: {base} is a summary (no buckets)"
                return base, suffix, None
    return None, None, f"{name} is not in docs/metrics.md"


def check(repo, docs_path, scrape_text=None, require_documented=False, verbose=False):
    probs = Problems()
    docs = parse_docs(docs_path)
    src = Sources(repo, probs)
    all_labels = set().union(*(labels for _, labels in docs.values())) | src.target_labels | {"le"}
    all_labels |= set().union(*BUILTIN_SERIES.values())
    scrape = Scrape(scrape_text) if scrape_text is not None else None
    used = {}  # raw name -> list of places

    for e in src.all():
        text, unknown_vars = substitute(e.text, src.values)
        for v in sorted(unknown_vars):
            probs.error(f"{e.where}: unknown Grafana variable ${v}")
        if e.kind == "variable":
            m = re.fullmatch(r"\s*label_values\((.*),\s*([a-zA-Z_][a-zA-Z0-9_]*)\s*\)\s*", text, re.S)
            if m:
                text, var_label = m.group(1), m.group(2)
            elif re.fullmatch(r"\s*query_result\((.*)\)\s*", text, re.S):
                text, var_label = re.fullmatch(r"\s*query_result\((.*)\)\s*", text, re.S).group(1), None
            else:
                probs.error(f"{e.where}: unsupported variable query {e.text!r}")
                continue
        else:
            var_label = None
        refs = extract(text)
        for err in refs.errors:
            probs.error(f"{e.where}: {err}: {e.text!r}")
        for f in sorted(refs.unknown_functions):
            probs.error(f"{e.where}: unknown function {f}()")
        for lbl in sorted(refs.grouping - all_labels):
            probs.error(f"{e.where}: grouping label {lbl!r} is no documented or target label")
        if not refs.metrics:
            probs.error(f"{e.where}: no metric name in {e.text!r}")
        for name, labels in refs.metrics:
            if name in src.records:
                continue  # a recording rule's output
            if ":" in name:
                probs.error(f"{e.where}: {name} looks like a recording rule but recording_rules.yml has none")
                continue
            if name in BUILTIN_SERIES:
                allowed = BUILTIN_SERIES[name] | src.target_labels
                for lbl in sorted(labels - allowed - {"__name__"}):
                    probs.error(f"{e.where}: label {lbl!r} on {name} (Prometheus' own series)")
                continue
            used.setdefault(name, []).append(e.where)
            family, suffix, problem = normalise(name, docs)
            if problem:
                probs.error(f"{e.where}: {problem}")
                continue
            allowed = docs[family][1] | src.target_labels | ({"le"} if suffix == "_bucket" else set())
            for lbl in sorted((labels | ({var_label} if var_label else set())) - allowed - {"__name__"}):
                probs.error(f"{e.where}: label {lbl!r} is not a label of {family} "
                            f"(documented: {', '.join(sorted(docs[family][1])) or 'none'})")

    if scrape is not None:
        for name in sorted(used):
            if not scrape.exports(name):
                probs.error(f"{name} is not exported by the server (--scrape); used at: {used[name][0]}"
                            + (f" and {len(used[name]) - 1} more" if len(used[name]) > 1 else ""))
        families = scrape.families()
        for name, (kind, labels) in sorted(docs.items()):
            if name not in scrape.types:
                (probs.error if require_documented else probs.warn)(
                    f"documented {kind} {name} is not in the scrape")
                continue
            got = scrape.types[name]
            if got != kind:
                probs.error(f"{name}: scrape TYPE {got}, docs/metrics.md says {kind}")
            got_labels = scrape.family_labels(name)
            if got_labels != labels:
                probs.error(f"{name}: scrape labels {{{', '.join(sorted(got_labels))}}}, docs/metrics.md says "
                            f"{{{', '.join(sorted(labels))}}}")
        for fam in sorted(families):
            if fam and fam.startswith("deltaserve_") and fam not in docs:
                (probs.error if require_documented else probs.warn)(
                    f"the scrape has {scrape.types.get(fam, 'untyped')} {fam}, which docs/metrics.md does not list")

    summary = (f"check_dashboard: {len(src.dashboard_exprs)} dashboard expressions, {len(src.rule_exprs)} rules, "
               f"{len(src.test_exprs)} rule-test expressions; {len(used)} metric names used, "
               f"{len(docs)} documented" + (f", {len(scrape.samples)} sample names in the scrape" if scrape else ""))
    return probs, summary, used


def main(argv=None):
    here = pathlib.Path(__file__).resolve().parent
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repo", default=str(here.parent.parent), help="repository root (default: this file's)")
    ap.add_argument("--docs", help="the metrics contract (default: REPO/docs/metrics.md)")
    ap.add_argument("--scrape", metavar="FILE", help="a /metrics scrape of the server to check the names against")
    ap.add_argument("--require-documented", action="store_true",
                    help="with --scrape: fail on documented families missing from it and undocumented deltaserve_* ones")
    ap.add_argument("-v", "--verbose", action="store_true", help="list every metric name used and where")
    args = ap.parse_args(argv)
    docs = args.docs or str(pathlib.Path(args.repo) / "docs" / "metrics.md")
    scrape_text = None
    try:
        if args.scrape:
            scrape_text = pathlib.Path(args.scrape).read_text(encoding="utf-8")
        probs, summary, used = check(args.repo, docs, scrape_text, args.require_documented, args.verbose)
    except (OSError, ValueError) as e:
        print(f"check_dashboard: {e}", file=sys.stderr)
        return 2
    if args.verbose:
        for name in sorted(used):
            print(f"  {name}: {len(used[name])} uses, e.g. {used[name][0]}")
    print(summary)
    for w in probs.warnings:
        print(f"warning: {w}")
    for e in probs.errors:
        print(f"ERROR: {e}")
    if probs.errors:
        print(f"check_dashboard: FAILED, {len(probs.errors)} problems")
        return 1
    print("check_dashboard: OK")
    return 0


if __name__ == "__main__":
    sys.exit(main())
