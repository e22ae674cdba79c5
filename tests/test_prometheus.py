"""The operator's view of the metrics: the alerting rules pass promtool and their unit tests, the
Grafana dashboard and the rules ask only for series that exist, and a real Prometheus (Debian's
``prometheus``) on loopback scrapes ``guestagent run``'s metrics endpoint and gives the daemon's
own figures back through its HTTP API, with every dashboard query and rule evaluating cleanly.
"""

from __future__ import annotations

import ast
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
from typing import Any

import pytest

from guestagent.daemon.metrics import render
from guestagent.daemon.service import read_status
from guestagent.errors import GuestAgentError
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


def status_keys(module: str) -> set[str]:
    """The keys of the dict literals a job's ``status()`` returns (read from its source)."""
    tree = ast.parse((REPO / "guestagent" / module.replace(".", "/")).with_suffix(".py")
                     .read_text())
    keys: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.FunctionDef) and node.name == "status":
            for sub in ast.walk(node):
                if isinstance(sub, ast.Dict):
                    keys |= {k.value for k in sub.keys
                             if isinstance(k, ast.Constant) and isinstance(k.value, str)}
                elif (isinstance(sub, ast.Call) and isinstance(sub.func, ast.Attribute)
                      and sub.func.attr == "update"):
                    keys |= {k.arg for k in sub.keywords if k.arg}
    return keys


def agent_series() -> set[str]:
    """Every series name render() can produce from the jobs' status keys."""
    jobs = {job: {key: 1 for key in status_keys(f"{job}.job")}
            for job in ("topology", "balloon", "devices", "tiering", "numa", "dom0")}
    status = {"jobs": {name: {"running": True, **keys} for name, keys in jobs.items()}}
    return {line.split("{")[0].split()[0] for line in render(status).splitlines()
            if line and not line.startswith("#")}


def test_dashboard_and_rules_use_only_series_that_exist() -> None:
    known = agent_series() | NODE_EXPORTER
    assert "guestagent_balloon_target_kb" in known and "guestagent_tiering_pages_moved" in known
    queries = dashboard_queries()
    rules = rule_expressions()
    assert len(queries) >= 12 and len(rules) == 6
    for expr in [*queries, *rules]:
        unknown = series_names(expr) - known
        assert not unknown, f"{expr}: no such series {unknown}"
    used = set().union(*(series_names(e) for e in queries))
    for wanted in ("guestagent_balloon_target_kb", "guestagent_balloon_ceiling_kb",
                   "node_pressure_memory_waiting_seconds_total", "guestagent_tiering_pages_moved"):
        assert wanted in used, f"the dashboard has no panel for {wanted}"


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
