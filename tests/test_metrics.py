"""Prometheus text from the daemon's status, over loopback HTTP and as a textfile."""

from __future__ import annotations

import socket
from pathlib import Path

from guestagent.daemon.metrics import MetricsServer, render, write_textfile

STATUS = {
    "resumes": 2,
    "loop_errors": 0,
    "jobs": {
        "balloon": {"running": True, "target_kb": 786432, "psi_trigger": True, "policy": "x"},
        "devices": {"running": False, "error": "no PCI"},
    },
}


def test_render_exposes_numbers_and_job_states() -> None:
    text = render(STATUS)
    lines = text.splitlines()
    assert "guestagent_up 1" in lines
    assert "guestagent_resumes_total 2" in lines
    assert 'guestagent_job_running{name="balloon"} 1' in lines
    assert 'guestagent_job_running{name="devices"} 0' in lines
    assert "guestagent_balloon_target_kb 786432" in lines
    assert "guestagent_balloon_psi_trigger 1" in lines
    assert not any("policy" in line for line in lines), "strings are not metrics"
    samples = [ln for ln in lines if not ln.startswith("#")]
    big = render({"jobs": {"balloon": {"running": True, "target_kb": 16777216,
                                        "published_at": 1796338417.456}}}).splitlines()
    assert "guestagent_balloon_target_kb 16777216" in big, "no rounding to 6 digits"
    assert "guestagent_balloon_published_at 1796338417.456" in big
    assert all(len(s.rsplit(" ", 1)) == 2 for s in samples)


def test_item_lists_become_labelled_gauges() -> None:
    """The devices job's ``devices`` and the Dom0 job's ``guests`` (metrics.ITEM_LISTS): a count,
    then per item its numbers and the length of its lists, labelled with its name; strings and
    None are no samples. A BDF is a label value as it is (escaped, not rewritten)."""
    status = {"jobs": {
        "devices": {"running": True, "hotplug": "following udev", "devices": [
            {"bdf": "0000:00:05.0", "node": 1, "kernel_node": -1, "irqs": [29, 30],
             "failed": [], "vendor": "0x8086", "driver": None},
            {"bdf": 'odd"\\name', "node": None, "kernel_node": 0, "irqs": []},
        ]},
        "dom0": {"running": True, "guests": [{"domid": 5, "devices": 2, "error": None},
                                             {"domid": 7, "devices": 0, "error": "gone"}]},
    }}
    lines = render(status).splitlines()
    for line in ("guestagent_devices_devices 2",
                 'guestagent_devices_device_node{device="0000:00:05.0"} 1',
                 'guestagent_devices_device_kernel_node{device="0000:00:05.0"} -1',
                 'guestagent_devices_device_irqs{device="0000:00:05.0"} 2',
                 'guestagent_devices_device_failed{device="0000:00:05.0"} 0',
                 'guestagent_devices_device_kernel_node{device="odd\\"\\\\name"} 0',
                 "# TYPE guestagent_devices_device_irqs gauge",
                 "guestagent_dom0_guests 2",
                 'guestagent_dom0_guest_devices{guest="5"} 2',
                 'guestagent_dom0_guest_devices{guest="7"} 0'):
        assert line in lines, line
    jobs = [ln for ln in lines if ln.startswith(("guestagent_devices", "guestagent_dom0"))]
    assert not any(w in line for line in jobs for w in ("vendor", "driver", "hotplug", "error",
                                                        "_domid", "_bdf"))
    assert not any(line.startswith("guestagent_devices_device_node{device=\"odd") for line in lines)
    assert len([ln for ln in lines if ln.startswith("# TYPE guestagent_devices_device_irqs")]) == 1


def test_textfile_is_replaced_whole(tmp_path: Path) -> None:
    path = tmp_path / "guestagent.prom"
    write_textfile(str(path), "a 1\n")
    write_textfile(str(path), render(STATUS))
    assert path.read_text() == render(STATUS)
    assert [p.name for p in tmp_path.iterdir()] == ["guestagent.prom"]


def test_server_answers_get_on_loopback() -> None:
    server = MetricsServer("127.0.0.1:0", lambda: "guestagent_up 1\n")
    port = server.sock.getsockname()[1]
    with socket.create_connection(("127.0.0.1", port), timeout=5) as client:
        client.sendall(b"GET /metrics HTTP/1.0\r\n\r\n")
        server.on_readable()
        reply = client.recv(4096)
    assert reply.startswith(b"HTTP/1.0 200 OK")
    assert reply.endswith(b"\r\n\r\nguestagent_up 1\n")
    with socket.create_connection(("127.0.0.1", port), timeout=5) as client:
        client.sendall(b"POST / HTTP/1.0\r\n\r\n")
        server.on_readable()
        assert client.recv(4096).startswith(b"HTTP/1.0 405")
    server.close()
