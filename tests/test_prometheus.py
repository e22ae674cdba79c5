"""The operator's view of the metrics: the alerting rules pass promtool and their unit tests, the
Grafana dashboard and the rules ask only for series that exist, and a real Prometheus (Debian's
``prometheus``) on loopback scrapes ``guestagent run``'s metrics endpoint and gives the daemon's
own figures back through its HTTP API, with every dashboard query and rule evaluating cleanly.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any, Callable

import pytest

from guestagent.daemon.service import read_status
from guestagent.errors import GuestAgentError
from tests.metrics_series import exported_series, job_statuses
from tests.xenstore_server import XenstoreServer

REPO = Path(__file__).resolve().parents[1]
RULES = REPO / "packaging" / "prometheus" / "guestagent.rules.yml"
RULES_TEST = REPO / "packaging" / "prometheus" / "guestagent.rules.test.yml"
DASHBOARD = REPO / "packaging" / "grafana" / "guestagent.json"
FIXTURES = Path(__file__).parent / "fixtures"
TARGET = "sys/devices/system/xen_memory/xen_memory0/target_kb"

#: node_exporter's series the dashboard and rules use (its textfile and pressure collectors).
NODE_EXPORTER = {"node_textfile_mtime_seconds", "node_pressure_memory_waiting_seconds_total",
                 "node_pressure_memory_stalled_seconds_total"}
PROMQL_WORDS = {"rate", "increase", "delta", "changes", "time", "on", "and", "or", "unless", "by",
                "without", "label_values", "sum", "max", "min", "avg", "ignoring", "offset"}


def need(tool: str) -> str:
    path = shutil.which(tool)
    if path is None:
        pytest.skip(f"{tool} not installed (Debian: apt-get install prometheus)")
    return path


def dashboard_queries() -> list[str]:
    dashboard = json.loads(DASHBOARD.read_text())
    return [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]


def rule_expressions() -> list[str]:
    exprs = re.findall(r"^\s+expr: (?:>-\n)?(.*?)(?=^\s+(?:for|labels):)", RULES.read_text(),
                       flags=re.MULTILINE | re.DOTALL)
    return [" ".join(e.split()) for e in exprs]


def series_names(expr: str) -> set[str]:
    without_strings = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)
    without_ranges = re.sub(r"\[[^\]]*\]", "", without_strings)
    without_labels = re.sub(r"\{[^}]*\}", " ", without_ranges)
    without_groups = re.sub(r"\b(?:on|by|without|ignoring)\s*\([^)]*\)", " ", without_labels)
    names = set(re.findall(r"\b([a-zA-Z_:][a-zA-Z0-9_:]*)\b(?!\s*\()", without_groups))
    return {n for n in names if n not in PROMQL_WORDS and not n.startswith("$")}


@pytest.fixture
def exported(tmp_path: Path, xs_server: XenstoreServer, xs_connect: Callable[[int], Any],
             monkeypatch: pytest.MonkeyPatch) -> set[str]:
    """The series names the agent writes, from every job's own status() on fixture hosts
    (tests/metrics_series.py), not from a list kept here."""
    return exported_series(job_statuses(tmp_path, xs_server, xs_connect, monkeypatch))


#: Each job, and a series of it the dashboard must chart (the operator's questions of issue 17).
DASHBOARD_MUST_CHART = {
    "balloon": ("guestagent_balloon_target_kb", "guestagent_balloon_ceiling_kb"),
    "tiering": ("guestagent_tiering_pages_moved",),
    "topology": ("guestagent_topology_published_at",),
    "numa": ("guestagent_numa_vnode_local_pct",),
    "devices": ("guestagent_devices_device_node", "guestagent_devices_device_kernel_node"),
    "dom0": ("guestagent_dom0_guest_devices",),
}


def test_the_harness_sees_every_job_export(exported: set[str]) -> None:
    """The derivation itself: each job contributes its own series, labelled ones included."""
    for job in DASHBOARD_MUST_CHART:
        assert any(name.startswith(f"guestagent_{job}_") for name in exported), job
    assert {"guestagent_numa_vnode_local_pct", "guestagent_devices_device_irqs",
            "guestagent_dom0_guests", "guestagent_xenstore_connected"} <= exported
    assert "guestagent_balloon_policy" not in exported, "a string is no series"


def test_dashboard_and_rules_use_only_series_that_exist(exported: set[str]) -> None:
    known = exported | NODE_EXPORTER
    queries = dashboard_queries()
    rules = rule_expressions()
    assert len(queries) >= 30 and len(rules) == 6
    for expr in [*queries, *rules]:
        unknown = series_names(expr) - known
        assert not unknown, f"{expr}: no such series {unknown}"
    used = set().union(*(series_names(e) for e in queries))
    for job, wanted in DASHBOARD_MUST_CHART.items():
        for name in wanted:
            assert name in used, f"the dashboard has no panel for {name} ({job})"
    assert "node_pressure_memory_waiting_seconds_total" in used


def test_dashboard_is_grafana_json() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    assert dashboard["uid"] == "guestagent" and dashboard["schemaVersion"] >= 36
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    variables = {v["name"] for v in dashboard["templating"]["list"]}
    assert variables == {"datasource", "instance"}
    for panel in dashboard["panels"]:
        assert {"x", "y", "w", "h"} <= set(panel["gridPos"])
        for target in panel.get("targets", []):
            assert target["datasource"]["uid"] == "${datasource}"
            assert 'instance=~"$instance"' in target["expr"], target["expr"]


def test_rules_pass_promtool_and_their_unit_tests() -> None:
    promtool = need("promtool")
    check = subprocess.run([promtool, "check", "rules", str(RULES)], capture_output=True,
                           text=True, timeout=60)
    assert check.returncode == 0, check.stdout + check.stderr
    assert "SUCCESS: 6 rules found" in check.stdout
    unit = subprocess.run([promtool, "test", "rules", RULES_TEST.name], cwd=RULES_TEST.parent,
                          capture_output=True, text=True, timeout=120)
    assert unit.returncode == 0 and "SUCCESS" in unit.stdout, unit.stdout + unit.stderr


# --- a real Prometheus scraping the daemon -------------------------------------------------------

def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def api(port: int, path: str, **params: str) -> Any:
    url = f"http://127.0.0.1:{port}/api/v1/{path}"
    if params:
        url += "?" + urllib.parse.urlencode(params)
    with urllib.request.urlopen(url, timeout=10) as reply:
        body = json.loads(reply.read())
    assert body["status"] == "success", body
    return body["data"]


def query(port: int, expr: str) -> list[dict[str, Any]]:
    data = api(port, "query", query=expr)
    assert data["resultType"] == "vector", data
    return list(data["result"])


def wait_for(what: str, probe: Any, timeout: float = 60.0) -> Any:
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        try:
            last = probe()
            if last:
                return last
        except (OSError, GuestAgentError) as e:  # not listening yet
            last = e
        time.sleep(0.5)
    raise AssertionError(f"{what}: gave {last!r} for {timeout:.0f} s")


def guest_root(tmp_path: Path) -> Path:
    root = tmp_path / "root"
    shutil.copytree(FIXTURES / "hvm-3vnode", root, symlinks=True)
    balloon = FIXTURES / "balloon-pv-1g"
    shutil.copytree(balloon / "proc", root / "proc", dirs_exist_ok=True)
    shutil.copytree(balloon / "sys/devices/system/xen_memory",
                    root / "sys/devices/system/xen_memory")
    (root / TARGET).write_text("1048576\n")
    return root


def _write_configs(tmp_path: Path, agent_port: int) -> tuple[Path, Path, Path]:
    """The agent's configuration (balloon classic, metrics on), its conf.d, Prometheus's."""
    config = tmp_path / "guestagent.toml"
    config.write_text(
        '[balloon]\nenabled = true\npolicy = "classic"\n\n[devices]\nenabled = false\n\n'
        f'[metrics]\nenabled = true\nlisten = "127.0.0.1:{agent_port}"\n')
    conf_dir = tmp_path / "conf.d"
    conf_dir.mkdir()
    prom_config = tmp_path / "prometheus.yml"
    prom_config.write_text(
        "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n"
        f"rule_files:\n  - {RULES}\n"
        "scrape_configs:\n  - job_name: guestagent\n    static_configs:\n"
        f"      - targets: ['127.0.0.1:{agent_port}']\n")
    return config, conf_dir, prom_config


def _check_job_metrics(prom_port: int, agent_port: int, state_dir: str) -> None:
    """The balloon and topology figures Prometheus scraped equal what ``status`` says."""
    target = wait_for("guestagent_balloon_target_kb through Prometheus",
                      lambda: query(prom_port, "guestagent_balloon_target_kb"))
    status = read_status(state_dir)
    balloon = status["jobs"]["balloon"]
    assert target[0]["metric"]["job"] == "guestagent"
    assert target[0]["metric"]["instance"] == f"127.0.0.1:{agent_port}"
    # The classic policy holds its target once it has shrunk the idle guest: read both after
    # a scrape that follows the status read.
    wait_for("a scrape with the status's target", lambda: [
        s for s in query(prom_port, "guestagent_balloon_target_kb")
        if int(float(s["value"][1])) == read_status(state_dir)["jobs"]["balloon"]["target_kb"]
    ])
    ceiling = query(prom_port, "guestagent_balloon_ceiling_kb")
    assert int(float(ceiling[0]["value"][1])) == balloon["ceiling_kb"] == 524288
    floor = query(prom_port, "guestagent_balloon_floor_kb")
    assert int(float(floor[0]["value"][1])) == balloon["floor_kb"]
    nodes = query(prom_port, "guestagent_topology_nodes")
    assert float(nodes[0]["value"][1]) == status["jobs"]["topology"]["nodes"] == 3
    running = {s["metric"]["name"]: s["value"][1]
               for s in query(prom_port, "guestagent_job_running")}
    assert running == {"topology": "1", "balloon": "1"}
    assert query(prom_port, "guestagent_up")[0]["value"][1] == "1"


def _check_dashboard_and_rules(prom_port: int) -> None:
    """Every dashboard query parses and evaluates; the alert rules evaluate healthy."""
    for expr in dashboard_queries():
        concrete = expr.replace("$instance", ".*").replace("$__rate_interval", "1m") \
            .replace("$__range", "5m")
        query(prom_port, concrete)  # status "success": it parses and evaluates
    for expr in ("guestagent_balloon_target_kb{instance=~\".*\"} * 1024",
                 "time() - guestagent_topology_published_at{instance=~\".*\"}"):
        assert query(prom_port, expr), f"{expr}: no data"
    groups = wait_for("the rules evaluated", lambda: [
        g for g in api(prom_port, "rules")["groups"]
        if all(r.get("lastEvaluation", "").startswith("2") and
               not r["lastEvaluation"].startswith("0001") for r in g["rules"])])
    rules = [r for g in groups for r in g["rules"]]
    assert len(rules) == 6
    for rule in rules:
        assert rule["health"] == "ok", rule


@pytest.mark.timeout(240)
def test_prometheus_scrapes_the_daemon(tmp_path: Path, xs_server: XenstoreServer) -> None:
    prometheus = need("prometheus")
    root = guest_root(tmp_path)
    agent_port, prom_port = free_port(), free_port()
    config, conf_dir, prom_config = _write_configs(tmp_path, agent_port)
    xs_server.next_domids.append(5)
    env = dict(os.environ, XENSTORED_PATH=xs_server.path)
    env.pop("NOTIFY_SOCKET", None)
    daemon = subprocess.Popen(
        [sys.executable, "-m", "guestagent", "--root", str(root), "run", "--config", str(config),
         "--conf-dir", str(conf_dir), "--role", "guest"],
        cwd=REPO, env=env, stderr=subprocess.PIPE, text=True)
    server = subprocess.Popen(
        [prometheus, f"--config.file={prom_config}", f"--storage.tsdb.path={tmp_path / 'tsdb'}",
         f"--web.listen-address=127.0.0.1:{prom_port}", "--log.level=warn"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        state_dir = str(root / "run/guestagent")
        wait_for("the daemon's status socket", lambda: read_status(state_dir))
        _check_job_metrics(prom_port, agent_port, state_dir)
        _check_dashboard_and_rules(prom_port)
    finally:
        server.send_signal(signal.SIGTERM)
        daemon.send_signal(signal.SIGTERM)
        daemon_status = daemon.wait(timeout=30)
        server.wait(timeout=30)
        daemon_log = daemon.stderr.read() if daemon.stderr else ""
        server_log = server.stderr.read() if server.stderr else ""
    assert daemon_status == 0, daemon_log[-3000:]
    assert "level=error" not in server_log, server_log[-3000:]
