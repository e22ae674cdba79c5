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
