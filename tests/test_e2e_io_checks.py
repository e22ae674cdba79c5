"""The pure pieces of the real-Xen hotplug and remote-device checks (tests/e2e/io_hotplug.py,
tests/e2e/io_remote.py, from tests/e2e/passthrough.py), checked without a bed: the guest specs'
xl lines, the hint's path and the nearest vnode (against the Dom0 agent's own code), the log and
metrics readers (against the agent's own renderers) and the guest-side shell scripts (run here
with a stand-in daemon)."""

from __future__ import annotations

import http.server
import os
import re
import signal
import subprocess
import threading
import time
from pathlib import Path

import pytest

from guestagent.config import load
from guestagent.daemon.metrics import render
from guestagent.dom0.hints import choose_vnode
from guestagent.dom0.schema import base_path, device_key
from guestagent.dom0.topology import HostNode, HostTopology
from guestagent.log import logfmt
from guestagent.xen.hostids import PciAddress
from tests.e2e.io_remote import REMOTE_HINT
from tests.e2e.passthrough import (
    BOTH_ON_NODE0,
    DAEMON_RC,
    DAEMON_START,
    METRICS_CONF,
    METRICS_GET,
    METRICS_ON,
    PNODE_MAPPED,
    XL_PASSTHROUGH_ENABLED,
    error_lines,
    hint_path,
    log_events,
    logfmt_fields,
    metric_samples,
    passthrough_guest,
)

HOST_BDF = "0000:0a:00.0"
#: The 2-node layout's distances (test_dom0_devices.py checks them on the bed).
TWO_NODES = HostTopology(
    nodes=[HostNode(0, 1 << 30, 1 << 29, [10, 20]), HostNode(1, 1 << 30, 1 << 29, [20, 10])],
    cpus=[], devices=[])


def xl_lines(text: str) -> list[str]:
    return text.splitlines()


def test_the_guest_with_the_device_from_boot_names_it_and_nothing_else() -> None:
    spec = passthrough_guest("rm", BOTH_ON_NODE0, HOST_BDF)
    lines = xl_lines(spec.xl_config())
    assert f'pci = [ "{HOST_BDF}" ]' in lines
    assert XL_PASSTHROUGH_ENABLED not in lines
    assert (spec.type, spec.memory, spec.vcpus) == ("hvm", 1024, 2)
    vnuma = [ln for ln in lines if ln.startswith("vnuma = ")]
    assert vnuma == ['vnuma = [ ["pnode=0","size=512","vcpus=0","vdistances=10,20"], '
                     '["pnode=0","size=512","vcpus=1","vdistances=20,10"] ]']


def test_the_hotplug_guest_has_no_device_but_passthrough_enabled() -> None:
    """libxl enables passthrough by default only for a guest created with a device; xl
    pci-attach to one without would be refused."""
    spec = passthrough_guest("hp", PNODE_MAPPED, None)
    lines = xl_lines(spec.xl_config())
    assert XL_PASSTHROUGH_ENABLED in lines
    assert not [ln for ln in lines if ln.startswith("pci ")]
    assert 'vnuma = [ ["pnode=0"' in spec.xl_config() and '["pnode=1"' in spec.xl_config()


def test_hint_path_is_where_the_dom0_agent_publishes() -> None:
    address = PciAddress.parse(HOST_BDF)
    assert hint_path(7, HOST_BDF) == f"{base_path(7)}/devices/{device_key(address)}"


def test_the_remote_layout_gets_the_hint_the_check_expects() -> None:
    """Dom0's own choice for the e1000e on host node 1: the remote guest's vnodes give vnode 0,
    nearest (what io_remote.py asserts); the local guest's give vnode 1 by its pnode."""
    remote = choose_vnode(1, [v.pnode for v in BOTH_ON_NODE0], TWO_NODES)
    assert remote == (int(REMOTE_HINT["vnode"]), REMOTE_HINT["vnode-source"])
    assert choose_vnode(1, [v.pnode for v in PNODE_MAPPED], TWO_NODES) == (1, "pnode")


# --- the daemon's log ----------------------------------------------------------------------------

RENDERED = [
    {"timestamp": "2026-12-05T08:40:00Z", "level": "info", "event": "hotplug_event",
     "component": "devices", "action": "add", "bdf": "0000:00:05.0"},
    {"timestamp": "2026-12-05T08:40:01Z", "level": "warning", "event": "device_remote",
     "component": "devices", "bdf": "0000:00:05.0", "host_node": 1, "vnode": 0},
    {"timestamp": "2026-12-05T08:40:02Z", "level": "error", "event": "devices_state_entry_skipped",
     "problem": 'devices.json: "kind" = x=1 \\ not known\nnext'},
    {"timestamp": "2026-12-05T08:40:03Z", "level": "info", "event": "devices_rescan",
     "reason": "dom0 hints changed", "vectors": ["0000:00:05.0 IRQ 30", "0000:00:05.0 IRQ 31"]},
]


def rendered_log() -> str:
    return "\n".join(logfmt(e) for e in RENDERED) + "\nTraceback (most recent call last):\n"


def test_logfmt_fields_read_back_what_the_agent_writes() -> None:
    lines = rendered_log().splitlines()
    assert logfmt_fields(lines[1])["host_node"] == "1"
    assert logfmt_fields(lines[2])["problem"] == RENDERED[2]["problem"]
    assert logfmt_fields(lines[3])["reason"] == "dom0 hints changed"
    assert logfmt_fields(lines[3])["vectors"] == "0000:00:05.0 IRQ 30,0000:00:05.0 IRQ 31"
    assert logfmt_fields("Traceback (most recent call last):") == {}
    assert logfmt_fields('x="\\q"') == {"x": '"\\q"'}  # not JSON's escape: kept as written


def test_log_events_match_the_event_and_every_field_asked() -> None:
    log = rendered_log()
    assert [e["level"] for e in log_events(log, "hotplug_event", action="add",
                                           bdf="0000:00:05.0")] == ["info"]
    assert log_events(log, "hotplug_event", action="remove") == []
    assert log_events(log, "device_remote", bdf="0000:00:05.0", host_node="1", vnode="0")
    assert log_events(log, "device_remote", vnode="1") == []
    # A field's text elsewhere on the line is not the event.
    assert log_events('level=info event=x detail="event=hotplug_event"', "hotplug_event") == []


def test_error_lines_are_the_error_level_lines_and_tracebacks() -> None:
    log = rendered_log()
    assert error_lines(log) == [log.splitlines()[2], "Traceback (most recent call last):"]
    assert error_lines("\n".join(logfmt(e) for e in RENDERED if e["level"] != "error")) == []
    assert error_lines('level=info event=x detail="level=error"') == []


# --- the daemon's metrics ----------------------------------------------------------------------


def test_metric_samples_read_the_devices_gauges_the_daemon_renders() -> None:
    status = {"jobs": {"devices": {
        "running": True, "hotplug": "following udev", "remote_devices": 1,
        "devices": [{"bdf": "0000:00:05.0", "remote": True, "host_node": 1, "irqs": [29, 30]},
                    {"bdf": "0000:00:01.1", "remote": False, "host_node": None, "irqs": []}]}}}
    text = render(status)
    assert metric_samples(text, "guestagent_devices_remote_devices") == {"": 1.0}
    assert metric_samples(text, "guestagent_devices_device_remote") == {
        'device="0000:00:05.0"': 1.0, 'device="0000:00:01.1"': 0.0}
    assert metric_samples(text, "guestagent_devices_device_host_node") == {
        'device="0000:00:05.0"': 1.0}
    assert metric_samples(text, "guestagent_devices_device") == {}  # a prefix is not the name


# --- the guest-side scripts, with a stand-in daemon -----------------------------------------


def in_dir(script: str, where: Path) -> str:
    """A script's /tmp and /etc/guestagent paths moved into ``where``."""
    moved = {"/etc/guestagent": f"{where}/etc", "/tmp/": f"{where}/"}
    return re.sub("|".join(map(re.escape, moved)), lambda m: moved[m[0]], script)


def test_metrics_on_writes_a_conf_d_file_the_agent_loads(tmp_path: Path) -> None:
    subprocess.run(["sh", "-c", in_dir(METRICS_ON, tmp_path)], check=True, timeout=30)
    conf_dir = Path(in_dir(METRICS_CONF, tmp_path)).parent
    assert conf_dir == tmp_path / "etc/conf.d"
    config = load(str(tmp_path / "none.toml"), str(conf_dir))
    assert config.get("metrics", "enabled") is True
    assert config.get("metrics", "listen") == "127.0.0.1:9731"  # what METRICS_GET asks


@pytest.mark.parametrize(("on_term", "status"), [("exit 0", "0"), ("exit 3", "3")])
def test_daemon_start_records_the_pid_and_the_exit_status(
    tmp_path: Path, on_term: str, status: str
) -> None:
    """DAEMON_START returns once the PID is there; after SIGTERM to that PID, DAEMON_RC gives
    the daemon's own exit status (the stand-in exits as ``on_term`` says)."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    fake = bin_dir / "guestagent"
    fake.write_text(f"#!/bin/sh\necho \"args: $*\" >&2\ntrap '{on_term}' TERM\n"
                    "while :; do sleep 0.1; done\n")
    fake.chmod(0o755)
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}"}
    subprocess.run(["sh", "-c", in_dir(DAEMON_START, tmp_path)], env=env, check=True, timeout=30)
    pid = int((tmp_path / "daemon.pid").read_text())
    try:
        deadline = time.monotonic() + 10
        while "args:" not in (tmp_path / "daemon.log").read_text():
            assert time.monotonic() < deadline, "the stand-in daemon did not start"
            time.sleep(0.05)
        assert (tmp_path / "daemon.log").read_text().strip() == "args: --log-level info run"
        assert not (tmp_path / "daemon.rc").exists()
    finally:
        os.kill(pid, signal.SIGTERM)
    rc = subprocess.run(["sh", "-c", in_dir(DAEMON_RC, tmp_path)], capture_output=True,
                        text=True, check=True, timeout=60)
    assert rc.stdout.strip() == status


def test_metrics_get_prints_what_the_server_answers(tmp_path: Path) -> None:
    """METRICS_GET (Python's urllib: the image has no curl) against a stand-in server on a free
    port instead of the default one."""
    body = render({"jobs": {"devices": {"running": True, "remote_devices": 1}}})

    class Metrics(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200)
            self.end_headers()
            self.wfile.write(body.encode())

        def log_message(self, format: str, *args: object) -> None:
            pass

    server = http.server.HTTPServer(("127.0.0.1", 0), Metrics)
    thread = threading.Thread(target=server.handle_request, daemon=True)
    thread.start()
    try:
        script = METRICS_GET.replace("127.0.0.1:9731", f"127.0.0.1:{server.server_port}")
        assert script != METRICS_GET
        out = subprocess.run(["sh", "-c", script], capture_output=True, text=True, check=True,
                             timeout=60).stdout
    finally:
        thread.join(30)
        server.server_close()
    assert metric_samples(out, "guestagent_devices_remote_devices") == {"": 1.0}
