"""deploy/: the alerts, the dashboard and the Kubernetes example refer only to what the service exports and serves.

The metric names and labels are those a real app's ``/metrics`` answers (memory store, a few plugins, one of them
failing), so a renamed metric or label fails here, not silently in Prometheus or Grafana.
"""

from __future__ import annotations

import ast
import inspect
import json
import os
import re
import shutil
import subprocess
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from flask import Flask
from prometheus_client.parser import text_string_to_metric_families

from plugin_health import create_app
from plugin_health.app import EXTENSION
from plugin_health.config import load_settings
from plugin_health.runtime.host_process import HostProcess

ROOT = Path(__file__).resolve().parent.parent
RULES = ROOT / "deploy" / "prometheus" / "plugin-health.rules.yml"
RULE_TESTS = ROOT / "deploy" / "prometheus" / "plugin-health.rules.test.yml"
DASHBOARD = ROOT / "deploy" / "grafana" / "plugin-health.json"
KUBERNETES = ROOT / "deploy" / "kubernetes" / "plugin-health.yaml"

#: Labels Prometheus gives every series of a target.
TARGET_LABELS = frozenset({"job", "instance"})
#: The words of PromQL (functions, aggregations, operators, modifiers) that look like metric names.
PROMQL_WORDS = frozenset({
    "abs", "absent", "absent_over_time", "and", "avg", "avg_over_time", "bool", "ceil", "changes", "clamp_max",
    "clamp_min", "count", "count_over_time", "count_values", "delta", "deriv", "floor", "group", "histogram_quantile",
    "idelta", "increase", "irate", "label_replace", "last_over_time", "max", "max_over_time", "min",
    "min_over_time", "offset", "or", "quantile", "quantile_over_time", "rate", "resets", "round", "scalar", "sort",
    "sort_desc", "stddev", "sum", "sum_over_time", "time", "timestamp", "topk", "bottomk", "unless", "vector",
})
GROUPING = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\(([^)]*)\)")
SELECTOR = re.compile(r"([A-Za-z_:][A-Za-z0-9_:]*)\s*\{([^}]*)\}")
MATCHER = re.compile(r"([A-Za-z_][A-Za-z0-9_]*)\s*(?:=~|!~|!=|=)")


@pytest.fixture(scope="module")
def app(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Flask]:
    directory = tmp_path_factory.mktemp("plugins")
    plugins = {
        "alpha": "critical = True\n",
        "beta": "requires = ('gone',)\n",
        "gamma": "def start(self):\n    raise OSError('port taken')\n",
    }
    for name, body in plugins.items():
        (directory / f"{name}.py").write_text(
            "from plugin_health import Plugin\n\nclass P(Plugin):\n" + textwrap.indent(body, "    "))
    app = create_app({"plugin_path": str(directory), "store_url": "memory://", "health_interval": 3600,
                      "max_restarts": 0})
    yield app
    app.extensions[EXTENSION].shutdown()


@pytest.fixture(scope="module")
def exported(app: Flask) -> dict[str, set[str]]:
    """Every sample name the app's ``/metrics`` answers, with the label names it carries (``up`` and ``ALERTS``,
    which Prometheus makes itself, too)."""
    client = app.test_client()
    assert client.get("/livez").status_code == 200  # so that the HTTP metrics have samples
    text = client.get("/metrics").get_data(as_text=True)
    names: dict[str, set[str]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name.startswith("plugin_health_"):  # not process_* and python_*, absent under gunicorn
                names.setdefault(sample.name, set()).update(sample.labels)
    every_label = set().union(*names.values())
    return {**names, "up": set(), "ALERTS": {"alertname", "alertstate", "severity", *every_label}}


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression (with Grafana's ``$variables``) selects."""
    text = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)  # label values hold no names
    text = re.sub(r"\$\{?\w+\}?", "", text)
    text = re.sub(r"\[[^\]]*\]", "", text)  # ranges
    text = GROUPING.sub("", text)
    text = re.sub(r"\{[^}]*\}", "", text)  # matchers
    return set(re.findall(r"(?<![\w.])[A-Za-z_:][A-Za-z0-9_:]*", text)) - PROMQL_WORDS


def check_expression(expr: str, exported: dict[str, set[str]]) -> None:
    """Every metric ``expr`` names is exported, and every label it matches or groups by is one they carry."""
    names = metric_names(expr)
    assert names, f"no metric in {expr!r}"
    unknown = names - set(exported)
    assert not unknown, f"{expr!r} names metrics the service does not export: {sorted(unknown)}"
    blanked = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)
    for name, matchers in SELECTOR.findall(blanked):
        labels = set(MATCHER.findall(matchers)) - TARGET_LABELS
        assert labels <= exported[name], f"{expr!r}: {name} has no label {sorted(labels - exported[name])}"
    carried = set(TARGET_LABELS).union(*(exported[name] for name in names))
    for group in GROUPING.findall(blanked):
        labels = {label.strip() for label in group.split(",") if label.strip()}
        assert labels <= carried, f"{expr!r} groups by labels no metric of it has: {sorted(labels - carried)}"


def alerting_rules() -> list[dict[str, Any]]:
    document = yaml.safe_load(RULES.read_text())
    return [rule for group in document["groups"] for rule in group["rules"]]


def dashboard() -> dict[str, Any]:
    document: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return document


def panels() -> list[dict[str, Any]]:
    found = []
    for panel in dashboard()["panels"]:
        found.extend([panel, *panel.get("panels", [])])  # a collapsed row holds its panels
    return found


def test_the_metric_name_finder_skips_functions_labels_and_variables() -> None:
    expr = ('histogram_quantile(0.99, sum by (le, route) (rate(x_seconds_bucket{job=~"$job", a="b{c}"}[$__rate_'
            'interval]))) or vector(0) unless on (job, instance) y == 0')
    assert metric_names(expr) == {"x_seconds_bucket", "y"}


def test_the_app_exports_what_the_assets_rely_on(exported: dict[str, set[str]]) -> None:
    assert exported["plugin_health_plugin_unhealthy"] == {"plugin", "state", "critical", "problem"}
    assert exported["plugin_health_runners_lost_total"] == {"cause"}
    assert exported["plugin_health_sandbox_calls_total"] == {"call", "outcome"}
    assert exported["plugin_health_plugin_failed_calls_total"] == {"plugin"}  # gamma's start failed
    assert "plugin_health_host_starts_total" in exported
    assert exported["plugin_health_http_request_duration_seconds_bucket"] == {"route", "le"}


@pytest.mark.parametrize("rule", alerting_rules(), ids=lambda rule: rule["alert"])
def test_every_alert_uses_exported_metrics_and_says_what_to_do(rule: dict[str, Any],
                                                               exported: dict[str, set[str]]) -> None:
    check_expression(rule["expr"], exported)
    assert rule["alert"].startswith("PluginHealth")
    assert re.fullmatch(r"\d+[smh]", rule["for"])
    assert rule["labels"]["severity"] in {"critical", "warning"}
    assert set(rule["annotations"]) == {"summary", "description", "runbook"}


def test_every_alert_has_a_unit_test_that_fires_it() -> None:
    tests = yaml.safe_load(RULE_TESTS.read_text())["tests"]
    fired = {case["alertname"] for test in tests for case in test["alert_rule_test"] if case["exp_alerts"]}
    quiet = {case["alertname"] for test in tests for case in test["alert_rule_test"] if not case["exp_alerts"]}
    alerts = {rule["alert"] for rule in alerting_rules()}
    assert fired == alerts
    assert quiet == alerts  # and a case where it must not fire


def test_the_dashboard_queries_only_exported_metrics(exported: dict[str, set[str]]) -> None:
    queries = [target["expr"] for panel in panels() for target in panel.get("targets", [])]
    assert len(queries) >= 15
    for expr in queries:
        check_expression(expr, exported)
    for variable in dashboard()["templating"]["list"]:
        if variable["type"] == "query":
            match = re.fullmatch(r"label_values\((.+),\s*(\w+)\)", variable["query"]["query"])
            assert match is not None, variable["query"]
            check_expression(match.group(1), exported)
            assert match.group(2) in TARGET_LABELS


def test_the_dashboard_reads_the_chosen_prometheus_and_shows_every_topic() -> None:
    document = dashboard()
    assert document["schemaVersion"] >= 41  # Grafana 12
    [source] = [v for v in document["templating"]["list"] if v["type"] == "datasource"]
    assert (source["name"], source["query"]) == ("datasource", "prometheus")
    every = panels()
    for panel in every:
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, panel["title"]
        for target in panel.get("targets", []):
            assert target["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, panel["title"]
        position = panel["gridPos"]
        assert position["x"] + position["w"] <= 24, panel["title"]
    assert len({panel["id"] for panel in every}) == len(every)
    queried = " ".join(target["expr"] for panel in every for target in panel.get("targets", []))
    for topic in ("plugin_health_plugins{", "plugin_health_plugin_unhealthy", "plugin_health_transitions_total",
                  "plugin_health_sandbox_calls_total", "plugin_health_plugin_failed_calls_total",
                  "plugin_health_sandbox_call_duration_seconds_bucket",
                  "plugin_health_http_requests_total", "plugin_health_http_request_duration_seconds_bucket",
                  "plugin_health_runners_lost_total", "plugin_health_host_starts_total"):
        assert topic in queried, topic


def kubernetes() -> dict[str, dict[str, Any]]:
    """The example's objects, by kind."""
    return {document["kind"]: document for document in yaml.safe_load_all(KUBERNETES.read_text())}


def container() -> dict[str, Any]:
    [only] = kubernetes()["Deployment"]["spec"]["template"]["spec"]["containers"]
    found: dict[str, Any] = only
    return found


def test_the_probes_ask_the_apps_routes_on_the_port_it_listens_on(app: Flask) -> None:
    routes = {rule.rule for rule in app.url_map.iter_rules()}
    spec = container()
    ports = {port["name"]: port["containerPort"] for port in spec["ports"]}
    env = {variable["name"]: variable for variable in spec["env"]}
    host, port = env["PLUGIN_HEALTH_BIND"]["value"].rsplit(":", 1)
    assert host == "0.0.0.0"  # the kubelet reaches the pod's IP, not its loopback
    assert int(port) in ports.values()
    expected = {"startupProbe": "/startupz", "livenessProbe": "/livez", "readinessProbe": "/readyz"}
    for probe, path in expected.items():
        check = spec[probe]
        assert check["httpGet"]["path"] == path
        assert path in routes
        assert ports.get(check["httpGet"]["port"], check["httpGet"]["port"]) == int(port)
        assert 0 < check["timeoutSeconds"] < check["periodSeconds"]

    def patience(probe: str) -> int:
        seconds: int = spec[probe]["periodSeconds"] * spec[probe]["failureThreshold"]
        return seconds

    # Loading many plugins may take minutes; a dead server is restarted within a minute; a failing critical
    # plugin takes the pod out of the Service sooner still.
    assert patience("startupProbe") >= 300
    assert patience("readinessProbe") < patience("livenessProbe") <= 60
    pod = kubernetes()["Deployment"]["spec"]["template"]["metadata"]["annotations"]
    assert int(pod["prometheus.io/port"]) == int(port)
    assert pod["prometheus.io/path"] in routes


def test_the_service_reaches_the_pods_port() -> None:
    objects = kubernetes()
    service, deployment = objects["Service"]["spec"], objects["Deployment"]["spec"]
    assert service["selector"].items() <= deployment["template"]["metadata"]["labels"].items()
    assert deployment["selector"]["matchLabels"].items() <= deployment["template"]["metadata"]["labels"].items()
    names = {port["name"] for port in container()["ports"]}
    assert {port["targetPort"] for port in service["ports"]} <= names


def test_the_settings_of_the_example_are_valid(tmp_path: Path) -> None:
    env = {}
    for variable in container()["env"]:
        source = variable.get("valueFrom", {})
        if "fieldRef" in source:
            assert source["fieldRef"]["fieldPath"] == "metadata.name"
            env[variable["name"]] = "plugin-health-7d9f8c6b5-x2k4q"
        elif "secretKeyRef" in source:
            env[variable["name"]] = "a-token-from-the-secret"
        else:
            env[variable["name"]] = variable["value"]
    assert set(env) >= {"PLUGIN_HEALTH_STORE_URL", "PLUGIN_HEALTH_INSTANCE", "PLUGIN_HEALTH_ADMIN_TOKEN"}
    assert "valueFrom" in next(v for v in container()["env"] if v["name"] == "PLUGIN_HEALTH_ADMIN_TOKEN")
    # Read by gunicorn.conf.py, not settings; the plugin directory is the image's.
    settings_env = {k: v for k, v in env.items() if k not in {"PLUGIN_HEALTH_BIND", "WEB_CONCURRENCY"}}
    settings_env["PLUGIN_HEALTH_PLUGIN_PATH"] = str(tmp_path)
    settings = load_settings(environ=settings_env)
    assert settings.store_url is not None
    assert settings.store_url.startswith("redis://")
    assert settings.instance_id == "plugin-health-7d9f8c6b5-x2k4q"
    mounts = {mount["mountPath"] for mount in container()["volumeMounts"]}
    assert env["PLUGIN_HEALTH_RUN_DIR"] in mounts  # writable under a read-only root file system


def test_the_pod_has_time_to_stop_its_plugins() -> None:
    pod = kubernetes()["Deployment"]["spec"]["template"]["spec"]
    sleep = container()["lifecycle"]["preStop"]["exec"]["command"]
    assert sleep[0] == "sleep"
    config = ast.parse((ROOT / "plugin_health" / "serving" / "gunicorn_conf.py").read_text())
    [graceful] = [node.value.value for node in config.body if isinstance(node, ast.Assign)
                  and any(getattr(t, "id", None) == "graceful_timeout" for t in node.targets)
                  and isinstance(node.value, ast.Constant)]
    core_stop = inspect.signature(HostProcess.stop).parameters["timeout"].default  # the gunicorn config's on_exit
    assert pod["terminationGracePeriodSeconds"] > int(sleep[1]) + graceful + core_stop


def promtool() -> str:
    """The ``promtool`` binary (Debian's ``prometheus`` package); skipped when absent, except in CI."""
    binary = shutil.which("promtool")
    if binary is None:
        if os.environ.get("CI"):
            pytest.fail("promtool is not installed (.ci/run installs the prometheus package with apt-get)")
        pytest.skip("promtool is not installed (apt-get install prometheus)")
    return binary


def run(*command: str | Path) -> None:
    done = subprocess.run([str(part) for part in command], capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stdout + done.stderr


def test_promtool_checks_the_rules_and_runs_their_unit_tests() -> None:
    binary = promtool()
    run(binary, "check", "rules", RULES)
    run(binary, "test", "rules", RULE_TESTS)


def test_promtool_parses_every_dashboard_query(tmp_path: Path) -> None:
    binary = promtool()
    rules = []
    for panel in panels():
        for target in panel.get("targets", []):
            expr = target["expr"].replace("$__rate_interval", "5m").replace("$job", ".*").replace("$instance", ".*")
            rules.append({"record": f"dashboard:panel_{panel['id']}:{target['refId'].lower()}", "expr": expr})
    path = tmp_path / "dashboard.rules.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    run(binary, "check", "rules", path)
