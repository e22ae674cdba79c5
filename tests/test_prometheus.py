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
from tests.metrics_series import dom0_status, exported_series, hostnuma_status, job_statuses
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
                "without", "label_values", "sum", "max", "min", "avg", "ignoring", "offset",
                "group_left", "group_right", "bool"}


def need(tool: str) -> str:
    path = shutil.which(tool)
    if path is None:
        pytest.skip(f"{tool} not installed (Debian: apt-get install prometheus)")
    return path


def dashboard_queries() -> list[str]:
    dashboard = json.loads(DASHBOARD.read_text())
    return [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]


def rule_expressions(kind: str = "") -> list[str]:
    """Every rule's ``expr`` (inline, or a ``>-`` block: the lines indented deeper than the
    key), one line each; ``kind`` "alert" or "record" keeps only those rules."""
    exprs: list[str] = []
    rule_kind = ""
    lines = RULES.read_text().splitlines()
    for i, line in enumerate(lines):
        started = re.match(r"\s+- (alert|record): ", line)
        if started:
            rule_kind = started.group(1)
        match = re.match(r"(\s+)expr: (.*)$", line)
        if match is None or kind not in ("", rule_kind):
            continue
        indent, value = len(match.group(1)), match.group(2)
        if value == ">-":
            block = []
            for follow in lines[i + 1:]:
                if len(follow) - len(follow.lstrip()) <= indent:
                    break
                block.append(follow)
            value = " ".join(block)
        exprs.append(" ".join(value.split()))
    return exprs


def recorded_names() -> set[str]:
    return set(re.findall(r"^\s+- record: (\S+)$", RULES.read_text(), flags=re.MULTILINE))


def rule_unit_tests() -> dict[str, set[bool]]:
    """alertname -> the kinds of cases ``guestagent.rules.test.yml`` has for it: True for a case
    that expects the alert to fire, False for one that expects none."""
    cases: dict[str, set[bool]] = {}
    for block in RULES_TEST.read_text().split("- eval_time:")[1:]:
        name = re.search(r"alertname: (\S+)", block)
        if name is None:
            continue
        fires = re.search(r"exp_alerts: \[\]", block) is None
        cases.setdefault(name.group(1), set()).add(fires)
    return cases


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
    "dom0": ("guestagent_dom0_guest_devices", "guestagent_dom0_guest_remote_devices"),
    "hostnuma": ("guestagent_hostnuma_guest_locality_pct", "guestagent_hostnuma_bad_guests",
                 "guestagent_hostnuma_guest_vnode_local_pct", "guestagent_hostnuma_node_free_bytes",
                 "guestagent_hostnuma_node_vnode_memory_bytes",
                 "guestagent_hostnuma_guest_node_cpu_seconds"),
}
#: The rules' counts (promtool's "N rules found" is both kinds).
ALERTS, RECORDS = 11, 4


def test_the_harness_sees_every_job_export(exported: set[str]) -> None:
    """The derivation itself: each job contributes its own series, labelled ones included."""
    for job in DASHBOARD_MUST_CHART:
        assert any(name.startswith(f"guestagent_{job}_") for name in exported), job
    assert {"guestagent_numa_vnode_local_pct", "guestagent_devices_device_irqs",
            "guestagent_dom0_guests", "guestagent_xenstore_connected"} <= exported
    assert "guestagent_balloon_policy" not in exported, "a string is no series"


def test_dashboard_and_rules_use_only_series_that_exist(exported: set[str]) -> None:
    """The dashboard asks only for the agent's and node_exporter's series (it must work without
    the rules loaded); a rule may also use a series another rule records."""
    known = exported | NODE_EXPORTER
    queries = dashboard_queries()
    rules = rule_expressions()
    assert len(queries) >= 30 and len(rules) == ALERTS + RECORDS
    assert len(recorded_names()) == RECORDS
    for expr in queries:
        unknown = series_names(expr) - known
        assert not unknown, f"{expr}: no such series {unknown}"
    for expr in rules:
        unknown = series_names(expr) - known - recorded_names()
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
    assert f"SUCCESS: {ALERTS + RECORDS} rules found" in check.stdout
    unit = subprocess.run([promtool, "test", "rules", RULES_TEST.name], cwd=RULES_TEST.parent,
                          capture_output=True, text=True, timeout=120)
    assert unit.returncode == 0 and "SUCCESS" in unit.stdout, unit.stdout + unit.stderr


def test_every_alert_has_cases_that_fire_and_cases_that_do_not() -> None:
    alerts = set(re.findall(r"^\s+- alert: (\S+)$", RULES.read_text(), flags=re.MULTILINE))
    assert len(alerts) == ALERTS
    cases = rule_unit_tests()
    for alert in sorted(alerts):
        assert cases.get(alert) == {True, False}, f"{alert}: cases {cases.get(alert)}"
    records = recorded_names()
    tested = set(re.findall(r"^\s+- expr: (\S+)$", RULES_TEST.read_text(), flags=re.MULTILINE))
    assert records - {"guestagent:hostnuma_node_free:ratio"} <= tested  # that one through the next


#: The remote-device alerts and the one series each watches: Dom0's count per guest, and the
#: guest's own (issue 16 item 6).
REMOTE_DEVICE_ALERTS = {
    "GuestagentDeviceOnRemoteNode": "guestagent_dom0_guest_remote_devices",
    "GuestagentGuestDeviceOnRemoteNode": "guestagent_devices_remote_devices",
}


def test_remote_device_alerts_watch_what_the_jobs_export(exported: set[str]) -> None:
    """Each remote-device alert parses (the rules file is YAML Prometheus loads; promtool checks
    it above) and asks for exactly the series its job exports, the guest's from the devices
    job's own status."""
    yaml = pytest.importorskip("yaml")
    rules = [r for g in yaml.safe_load(RULES.read_text())["groups"] for r in g["rules"]]
    exprs = {r["alert"]: r["expr"] for r in rules if "alert" in r}
    for alert, series in REMOTE_DEVICE_ALERTS.items():
        assert series_names(exprs[alert]) == {series}, (alert, exprs[alert])
        assert series in exported, series


def test_the_numa_rules_series_carry_what_the_rules_join_on(
    tmp_path: Path, xs_server: XenstoreServer, xs_connect: Callable[[int], Any],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The labels the rules join on, as the jobs really render them: each vnode's placement
    carries its node (matching the node series' label), a remote device is counted."""
    from guestagent.daemon.metrics import render

    statuses = job_statuses(tmp_path, xs_server, xs_connect, monkeypatch)
    text = render({"jobs": {name: {"running": True, **st} for name, st in statuses.items()}})
    lines = set(text.splitlines())
    # Domain 9's vnode 1 has its memory on pnode 2 (the fixture's libxl-json), 512 MiB, 2 vCPUs.
    assert ('guestagent_hostnuma_node_vnode_vcpus{node="2",guest="hvm-far-vnodes",vnode="1"} 2'
            in lines)
    assert ('guestagent_hostnuma_node_vnode_memory_bytes{node="2",guest="hvm-far-vnodes",'
            'vnode="1"} 536870912' in lines)
    assert 'guestagent_hostnuma_node_free_bytes{node="2"} 3221225472' in lines
    placed = [ln for ln in lines if ln.startswith("guestagent_hostnuma_node_vnode_vcpus{")]
    assert len(placed) == 4  # 2 guests with 2 vnodes each; the guest without vNUMA has none
    assert 'guestagent_hostnuma_guest_bad{guest="hvm-two-vnodes"} 1' in lines
    # Domain 5: 0000:3b:00.0 on node 1 (its vnode 1 is there), 0000:5e:00.0 on node 2 (none).
    assert 'guestagent_dom0_guest_devices{guest="5"} 2' in lines
    assert 'guestagent_dom0_guest_remote_devices{guest="5"} 1' in lines


@pytest.mark.parametrize("host_node,source,remote", [
    (1, "pnode", False), (2, "nearest", True), (2, "none", True), (None, "none", False),
    (2, "single", False),
])
def test_a_device_is_remote_when_no_vnode_sits_on_its_node(
    host_node: int | None, source: str, remote: bool
) -> None:
    from guestagent.dom0.hints import on_remote_node
    from guestagent.dom0.schema import DeviceHint
    from guestagent.xen.sysctl import PciAddress

    vnode = None if source == "none" else 0
    hint = DeviceHint(PciAddress.parse("0000:5e:00.0"), None, host_node, vnode, source)
    assert on_remote_node(hint) is remote


def _panel_query(title: str, ref: str = "A") -> str:
    dashboard = json.loads(DASHBOARD.read_text())
    (panel,) = [p for p in dashboard["panels"] if p["title"] == title]
    (expr,) = [t["expr"] for t in panel["targets"] if t["refId"] == ref]
    return str(expr).replace("$instance", ".*")


def test_dashboard_node_panels_join_vnodes_to_their_hosts_nodes(tmp_path: Path) -> None:
    """The dashboard's joins of each vnode's placement with its node's free memory, evaluated by
    promtool on two hosts: node 1 is nearly full on both, only h1 has a vnode there; and the
    share of a guest's vCPU time per node."""
    promtool = need("promtool")
    size, free = 16 << 30, {("h1", "0"): 12 << 30, ("h1", "1"): 512 << 20,
                            ("h2", "0"): 8 << 30, ("h2", "1"): 512 << 20}
    series = []
    for (host, node), value in free.items():
        labels = f'instance="{host}:9731",node="{node}"'
        series += [f"guestagent_hostnuma_node_size_bytes{{{labels}}}: '{size}x10'",
                   f"guestagent_hostnuma_node_free_bytes{{{labels}}}: '{value}x10'"]
    for host, node, guest, vnode in (("h1", "0", "web", "0"), ("h1", "1", "web", "1"),
                                     ("h2", "0", "vm2", "0")):
        series.append(f'guestagent_hostnuma_node_vnode_vcpus{{instance="{host}:9731",'
                      f'node="{node}",guest="{guest}",vnode="{vnode}"}}: \'2x10\'')
    for node, seconds in (("0", 7), ("1", 1), ("-1", 2)):
        series.append(f'guestagent_hostnuma_guest_node_cpu_seconds{{instance="h1:9731",'
                      f'guest="pv",node="{node}"}}: \'{seconds}x10\'')
    inputs = "".join(f"      - series: '{s.split(': ')[0]}'\n        values: {s.split(': ')[1]}\n"
                     for s in series)
    count = _panel_query("Guest vnodes on a node under 5 % free")
    per_vnode = _panel_query("Guest vnodes on each host node, and the node's free memory", "C")
    ran = _panel_query("Where each guest's vCPUs ran, by host node")
    vnode = '{{instance="{}:9731",node="{}",guest="{}",vnode="{}"}}'
    expected = {count: [('{instance="h1:9731"}', 1)],
                ran: [(f'{{instance="h1:9731",guest="pv",node="{n}"}}', share)
                      for n, share in (("0", 0.7), ("1", 0.1), ("-1", 0.2))],
                per_vnode: [(vnode.format("h1", "0", "web", "0"), 0.75),
                            (vnode.format("h1", "1", "web", "1"), 0.03125),
                            (vnode.format("h2", "0", "vm2", "0"), 0.5)]}
    checks = "".join(
        f"      - expr: '{expr}'\n        eval_time: 5m\n        exp_samples:\n"
        + "".join(f"          - labels: '{labels}'\n            value: {value}\n"
                  for labels, value in samples)
        for expr, samples in expected.items())
    test = tmp_path / "dashboard.test.yml"
    test.write_text("rule_files: []\nevaluation_interval: 1m\ntests:\n  - interval: 1m\n"
                    f"    input_series:\n{inputs}    promql_expr_test:\n{checks}")
    unit = subprocess.run([promtool, "test", "rules", test.name], cwd=tmp_path,
                          capture_output=True, text=True, timeout=120)
    assert unit.returncode == 0 and "SUCCESS" in unit.stdout, (
        test.read_text() + unit.stdout + unit.stderr)


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
    assert len(rules) == ALERTS + RECORDS
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


# --- a real Prometheus scraping two Dom0s ---------------------------------------------------------

def _serve(texts: list[str], stop: Any) -> tuple[list[int], Any]:
    """One agent metrics endpoint (guestagent.daemon.metrics.MetricsServer) per text, on
    loopback, answered by a thread until ``stop`` is set."""
    import select
    import threading

    from guestagent.daemon.metrics import MetricsServer

    ports = [free_port() for _ in texts]
    servers = [MetricsServer(f"127.0.0.1:{port}", lambda t=text: t)
               for port, text in zip(ports, texts)]

    def answer() -> None:
        while not stop.is_set():
            ready, _, _ = select.select(servers, [], [], 0.2)
            for server in ready:
                server.on_readable()
        for server in servers:
            server.close()

    thread = threading.Thread(target=answer, daemon=True)
    thread.start()
    return ports, thread


def _alerts(prom_port: int, hosts: dict[str, str]) -> set[tuple[str, ...]]:
    """(alert, host, guest, node) of every alert, pending or firing."""
    return {(a["labels"]["alertname"], hosts[a["labels"]["instance"]],
             a["labels"].get("guest", ""), a["labels"].get("node", ""))
            for a in api(prom_port, "alerts")["alerts"]}


@pytest.mark.timeout(240)
def test_prometheus_aggregates_two_dom0s(tmp_path: Path, xs_server: XenstoreServer,
                                         xs_connect: Callable[[int], Any]) -> None:
    """Issue 19 part 3 with the engine itself: two Dom0s (the hostnuma and dom0 jobs on the
    fixture host, rendered by the agent's own metrics code and served by its own endpoint) are
    scraped by a real Prometheus, the recording rules sum them, and the alerts go pending for
    exactly the guests, vnodes and devices they are about."""
    import threading

    from guestagent.daemon.metrics import render

    prometheus = need("prometheus")
    # Host a: the fixture (node 2 has 3 GiB of 16 free). Host b: node 2 has none left, where
    # guest hvm-far-vnodes has vnode 1. Both run hvm-two-vnodes with vnode 1 away (bad).
    dom0 = dom0_status(xs_server, lambda: xs_connect(0))
    texts = [render({"jobs": {"hostnuma": {"running": True, **hostnuma_status(
                 xs_server, lambda: xs_connect(0), free)}, "dom0": {"running": True, **dom0}}})
             for free in ((12, 15, 3), (12, 15, 0))]
    stop = threading.Event()
    (port_a, port_b), thread = _serve(texts, stop)
    prom_port = free_port()
    prom_config = tmp_path / "prometheus.yml"
    prom_config.write_text(
        "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n"
        f"rule_files:\n  - {RULES}\n"
        "scrape_configs:\n  - job_name: guestagent-dom0\n    static_configs:\n"
        f"      - targets: ['127.0.0.1:{port_a}', '127.0.0.1:{port_b}']\n")
    server = subprocess.Popen(
        [prometheus, f"--config.file={prom_config}", f"--storage.tsdb.path={tmp_path / 'tsdb'}",
         f"--web.listen-address=127.0.0.1:{prom_port}", "--log.level=warn"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        total = wait_for("the fleet's bad guests", lambda: [
            s for s in query(prom_port, "job:guestagent_hostnuma_bad_guests:sum")
            if s["value"][1] == "2"])
        assert total[0]["metric"] == {"__name__": "job:guestagent_hostnuma_bad_guests:sum",
                                      "job": "guestagent-dom0"}
        ratios = wait_for("each vnode's node free", lambda: query(
            prom_port, "guestagent:hostnuma_vnode_node_free:ratio") or None)
        hosts = {f"127.0.0.1:{port_a}": "a", f"127.0.0.1:{port_b}": "b"}
        by_vnode = {(hosts[s["metric"]["instance"]], s["metric"]["guest"], s["metric"]["vnode"]):
                    float(s["value"][1]) for s in ratios}
        assert by_vnode[("a", "hvm-far-vnodes", "1")] == 3 / 16
        assert by_vnode[("b", "hvm-far-vnodes", "1")] == 0.0
        assert by_vnode[("b", "hvm-two-vnodes", "1")] == 15 / 16 and len(by_vnode) == 8
        expected = {("GuestagentGuestPoorLocality", host, "hvm-two-vnodes", "")
                    for host in "ab"}
        expected |= {("GuestagentDeviceOnRemoteNode", host, "5", "") for host in "ab"}
        expected.add(("GuestagentNodeLowUnderVnode", "b", "hvm-far-vnodes", "2"))
        wait_for("the alerts pending", lambda: _alerts(prom_port, hosts) == expected)
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(timeout=30)
        stop.set()
        thread.join(timeout=10)
        server_log = server.stderr.read() if server.stderr else ""
    assert "level=error" not in server_log, server_log[-3000:]
