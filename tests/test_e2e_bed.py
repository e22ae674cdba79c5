"""The e2e testbed's guest configs (tests/e2e/bed.py), checked without a bed."""

from __future__ import annotations

from pathlib import Path
from unittest.mock import patch

from tests.e2e.bed import BedConfig, GuestSpec


def test_hvm_guests_are_pinned_off_pcpu0_by_default() -> None:
    assert BedConfig().pin_hvm_off_cpu0
    assert BedConfig(cpus=4).hvm_cpus() == "1-3"
    assert BedConfig(cpus=2).hvm_cpus() == "1"
    cfg = GuestSpec.hvm(memory=1024, vcpus=4).xl_config(BedConfig().hvm_cpus())
    assert 'cpus = "1-3"' in cfg.splitlines()


def test_the_pin_follows_the_pcpus_xen_runs_not_qemus_smp() -> None:
    """Under TCG a CPU QEMU was given may not come up: the pin follows Xen's count."""
    assert BedConfig(cpus=4).hvm_cpus(pcpus=3) == "1-2"
    assert BedConfig(cpus=4).hvm_cpus(pcpus=2) == "1"
    assert BedConfig(cpus=4).hvm_cpus(pcpus=1) is None


def test_no_pin_with_one_pcpu_or_when_turned_off() -> None:
    assert BedConfig(cpus=1).hvm_cpus() is None
    assert BedConfig(pin_hvm_off_cpu0=False).hvm_cpus() is None
    cfg = GuestSpec.hvm(memory=1024, vcpus=4).xl_config(None)
    assert not any(line.startswith("cpus") for line in cfg.splitlines())


def test_a_guests_own_cpus_line_wins() -> None:
    spec = GuestSpec.hvm(memory=1024, vcpus=2)
    spec.extra.append('cpus = "2"')
    lines = spec.xl_config("1-3").splitlines()
    assert [ln for ln in lines if ln.startswith("cpus")] == ['cpus = "2"']


def test_a_guest_has_only_its_root_disk_unless_given_more() -> None:
    spec = GuestSpec.pv()
    disks = [ln for ln in spec.xl_config().splitlines() if ln.startswith("disk")]
    assert disks == ["disk = [ 'format=raw,vdev=xvda,access=rw,backendtype=qdisk,"
                     "target=/dev/vda' ]"]
    spec.extra_disks.append("format=raw,vdev=xvdb,access=rw,backendtype=phy,target=/dev/loop0")
    (line,) = [ln for ln in spec.xl_config().splitlines() if ln.startswith("disk")]
    assert line == ("disk = [ 'format=raw,vdev=xvda,access=rw,backendtype=qdisk,target=/dev/vda', "
                    "'format=raw,vdev=xvdb,access=rw,backendtype=phy,target=/dev/loop0' ]")


def test_a_fetched_file_is_checked_against_its_md5_and_stray_lines_are_ignored() -> None:
    import base64
    import hashlib

    from tests.e2e.bed import decode_fetched

    data = bytes(range(256)) * 40
    b64 = base64.encodebytes(data).decode()
    md5 = hashlib.md5(data).hexdigest()
    # A line of stderr before the marker (what broke benchmarks/balloon_testbed.py's collect)
    # and a kernel message among the base64 lines change nothing.
    out = f"tar: Removing leading `/'\n__MD5__ {md5}\n{b64[:76]}\n[ 12.3] xen: note\n{b64[77:]}"
    assert decode_fetched(out) == data
    assert decode_fetched(f"__MD5__ {md5}\n{b64[:-10]}\n") is None  # cut short
    assert decode_fetched(b64) is None  # no marker


def test_fetch_asks_again_when_the_answer_is_damaged() -> None:
    import base64
    import hashlib

    from tests.e2e.bed import Guest

    data = b"trace\n" * 100
    good = f"__MD5__ {hashlib.md5(data).hexdigest()}\n{base64.encodebytes(data).decode()}"
    answers = [good[:-20], good, ""]
    scripts: list[str] = []

    class FakeGuest(Guest):
        def __init__(self) -> None:
            self.name = "pv1"

        def run_ok(self, script: str, timeout: float = 120) -> str:
            scripts.append(script)
            return answers.pop(0)

    assert FakeGuest().fetch("tar czf - -C /tmp/bench run1") == data
    assert scripts[0].startswith("(tar czf - -C /tmp/bench run1) >/tmp/e2e-fetch.bin")
    assert scripts[1].startswith("echo __MD5__")  # the file is sent again, not made again
    assert scripts[2] == "rm -f /tmp/e2e-fetch.bin /tmp/e2e-fetch.err"  # then removed
    assert not answers


def test_a_failed_symbol_lookup_leaves_the_bare_rips() -> None:
    """GuestDied is rerun; a Dom0 that cannot answer the kallsyms lookup must not turn it into
    another error."""
    from tests.e2e.bed import Guest
    from tests.e2e.util import BedError

    class FakeBed:
        def dom0(self, script: str, timeout: float = 120) -> tuple[str, int]:
            raise BedError("Dom0 did not answer")

    g = Guest(FakeBed(), GuestSpec.hvm(memory=1024, vcpus=2), "hvm3")  # type: ignore[arg-type]
    g.domid = 3
    dump = "(XEN) *** Dumping Dom3 vcpu#1 state: ***\n(XEN) RIP:    0010:[<ffffffff8107ee05>]\n"
    assert g.dead_vcpus(dump) == ["d3v1 RIP ffffffff8107ee05"]


def test_a_guest_that_did_not_boot_is_probed_before_it_is_destroyed(tmp_path: Path) -> None:
    """``hang_probe`` runs on a guest that did not boot, for its domid, before ``xl destroy``; its
    output is kept in ``<guest>.hang``; without a probe, or when Dom0 fails, the boot goes on."""
    from tests.e2e.bed import BedConfig, Guest
    from tests.e2e.util import BedError

    scripts: list[str] = []

    class FakeBed:
        run_dir = tmp_path
        config = BedConfig(hang_probe="xl debug-keys q; xl dmesg | grep d{domid}")
        fail = False

        def dom0(self, script: str, timeout: float = 120) -> tuple[str, int]:
            scripts.append(script)
            if self.fail:
                raise BedError("Dom0 did not answer")
            return "(XEN) VCPU3: CPU1 upcall_pend=01 pause_flags=1\n", 0

    bed = FakeBed()
    g = Guest(bed, GuestSpec.hvm(memory=1024, vcpus=8), "hvm-2x4-1")  # type: ignore[arg-type]
    g.domid = 7
    g.probe_hang()
    assert scripts == ["xl debug-keys q; xl dmesg | grep d7"]
    assert (tmp_path / "hvm-2x4-1.hang").read_text().startswith("(XEN) VCPU3: CPU1 upcall_pend=01")
    bed.fail = True
    g.probe_hang()
    assert (tmp_path / "hvm-2x4-1.hang").read_text() == "(hang probe failed: Dom0 did not answer)"
    bed.config = BedConfig()  # no probe asked for: Dom0 is not asked
    g.probe_hang()
    assert len(scripts) == 2


def test_xen_debug_keys_go_to_xens_serial_console_without_dom0(tmp_path: Path) -> None:
    """Xen's console is a socket the bed holds: what Xen says is appended to serial.log; the keys
    are typed on it (three Ctrl-A to Xen, each key, three Ctrl-A back to Dom0) and what Xen
    printed since is returned; a guest that did not boot gets them in ``<guest>.xenkeys`` before
    the Dom0 probe, even when Dom0 is dead."""
    import socket
    import threading
    import time

    from tests.e2e.bed import Guest, SerialTap, XenBed
    from tests.e2e.util import BedError

    log_path = tmp_path / "serial.log"
    ours, qemus = socket.socketpair()
    tap = SerialTap(tmp_path / "serial.sock", log_path)
    tap.sock = ours
    threading.Thread(target=tap._copy, daemon=True).start()
    typed: list[bytes] = []

    def xen() -> None:  # QEMU's side: Xen boots, then answers a 'q' typed on its console
        qemus.sendall(b"(XEN) boot\r\n")
        while data := qemus.recv(64):
            typed.append(data)
            if data == b"q":
                qemus.sendall(b"(XEN) 'q' pressed -> dumping domain info\r\n")

    threading.Thread(target=xen, daemon=True).start()
    real_sleep = time.sleep
    bed = XenBed.__new__(XenBed)
    bed.run_dir, bed.serial = tmp_path, tap
    bed.config = BedConfig(xen_keys="q r")
    with patch("tests.e2e.bed.time.sleep", side_effect=lambda _s: real_sleep(0.05)):
        while not log_path.exists() or not log_path.read_text():
            real_sleep(0.01)
        out = bed.xen_debug_keys("q r")
        assert out == "(XEN) 'q' pressed -> dumping domain info\n"

        def dead_dom0(script: str, timeout: float = 120) -> tuple[str, int]:
            raise BedError("Dom0 did not answer")

        bed.dom0 = dead_dom0  # type: ignore[method-assign]
        g = Guest(bed, GuestSpec.hvm(memory=1024, vcpus=2), "hvm-pt-2")
        g.domid = 2
        g.probe_hang()
    assert (tmp_path / "hvm-pt-2.xenkeys").read_text().startswith("(XEN) 'q' pressed")
    assert b"".join(typed) == b"\x01\x01\x01qr\x01\x01\x01" * 2
    assert log_path.read_bytes().startswith(b"(XEN) boot\r\n(XEN) 'q' pressed")  # the raw log
    tap.close()
    qemus.close()
    assert "not reached" in bed.xen_debug_keys("q")
    bed.serial = None
    assert "not reached" in bed.xen_debug_keys("q")


def test_xen_runs_the_credit_scheduler_on_the_bed() -> None:
    """sched=credit on Xen's command line, on both host layouts (the loaded 8-vCPU hang under
    credit2); iommu=1 still only on the 2-node layout."""
    one, two = BedConfig().xen_cmdline(), BedConfig(host_numa2=True).xen_cmdline()
    assert "sched=credit" in one.split() and "sched=credit" in two.split()
    assert "iommu=1" in two.split() and "iommu=1" not in one.split()


def _runner_on_a_socket(tmp_path: Path, answer: bool):  # type: ignore[no-untyped-def]
    """A Console connected to a fake Dom0 runner that answers PING (or stays silent)."""
    import socket
    import threading

    from tests.e2e.bed import Console

    ours, runners = socket.socketpair()
    c = Console(tmp_path / "cmd.sock", tmp_path / "transcript.log")
    c.sock = ours
    threading.Thread(target=c._reader, daemon=True).start()

    def runner() -> None:
        while data := runners.recv(256):
            for line in data.decode().splitlines():
                tag, rid = line.split()[:2]
                if tag == "PING" and answer:
                    runners.sendall(f"__PONG_{rid}__\n".encode())

    threading.Thread(target=runner, daemon=True).start()
    return c, runners


class _Running:
    def poll(self) -> None:
        return None


def test_dom0_answers_a_ping_or_is_lost(tmp_path: Path) -> None:
    """The liveness check is the runner's PING: answered at once between commands; silence
    within the timeout (or no QEMU) means Dom0 is lost."""
    from tests.e2e.bed import XenBed

    bed = XenBed(BedConfig())
    bed.console, runner = _runner_on_a_socket(tmp_path, answer=True)
    assert not bed.dom0_answers(timeout=0.5)  # no QEMU process
    bed.proc = _Running()  # type: ignore[assignment]
    assert bed.dom0_answers(timeout=5)
    bed.console, silent = _runner_on_a_socket(tmp_path, answer=False)
    assert not bed.dom0_answers(timeout=0.3)
    runner.close()
    silent.close()


def test_a_lost_dom0_starts_xen_again_and_keeps_xens_view(tmp_path: Path) -> None:
    """restart(): Xen's debug keys into dom0-lost-N.xenkeys, the reason in restarts.log, the old
    console logs kept beside the new ones, then the bed started again (same run directory)."""
    from tests.e2e.bed import XenBed

    bed = XenBed(BedConfig())
    bed.run_dir = tmp_path
    (tmp_path / "serial.log").write_text("(XEN) before\n")
    started: list[int] = []
    with patch.object(XenBed, "xen_debug_keys", return_value="(XEN) 'q' pressed\n"), \
            patch.object(XenBed, "_stop_qemu"), \
            patch.object(XenBed, "start", side_effect=lambda: started.append(1)):
        bed.restart("timed out after 270s waiting for '^__END_d41__'\nmore")
        bed.restart("again")
    assert started == [1, 1] and bed.restarts == 2
    assert (tmp_path / "dom0-lost-1.xenkeys").read_text() == "(XEN) 'q' pressed\n"
    log_lines = (tmp_path / "restarts.log").read_text().splitlines()
    assert [ln.split(" ", 1)[1] for ln in log_lines] == [
        "restart 1: timed out after 270s waiting for '^__END_d41__'", "restart 2: again"]
    assert (tmp_path / "serial.log.before-restart-1").read_text() == "(XEN) before\n"


def test_a_guest_that_loses_dom0_raises_dom0lost_after_the_restart(tmp_path: Path) -> None:
    """A guest whose boot or command fails with Dom0 silent: the bed is started again and the
    failure is Dom0Lost (rerun by pytest, counted apart by ``boots``), with no Dom0 command on
    the dead Dom0 (no probe, no report, no destroy); with Dom0 answering, the failure is the
    guest's own and its logs are collected as before."""
    import pytest

    from tests.e2e.bed import Guest, XenBed
    from tests.e2e.util import BedError, Dom0Lost

    bed = XenBed(BedConfig())
    bed.run_dir = tmp_path
    asked: list[str] = []

    def dom0(script: str, timeout: float = 120) -> tuple[str, int]:
        asked.append(script)
        return "", 0

    bed.dom0 = dom0  # type: ignore[method-assign]
    answers = [False]
    timeout = BedError("timed out after 270s waiting for '^__END_d9__'")
    with patch.object(XenBed, "dom0_answers", side_effect=lambda *a: answers[0]), \
            patch.object(XenBed, "restart") as restart, \
            patch.object(Guest, "create", side_effect=timeout):
        with pytest.raises(Dom0Lost, match="Dom0 stopped answering"), \
                bed.guest(GuestSpec.hvm(memory=1024, vcpus=2), retries=1):
            pass
        assert restart.call_count == 1 and asked == []
        answers[0] = True
        with pytest.raises(BedError, match="did not boot") as err, \
                bed.guest(GuestSpec.hvm(memory=1024, vcpus=2), retries=0):
            pass
        assert not isinstance(err.value, Dom0Lost) and restart.call_count == 1
        assert any(s.startswith("xl destroy") for s in asked)
    asked.clear()
    with patch.object(XenBed, "dom0_answers", return_value=False), \
            patch.object(XenBed, "restart") as restart, \
            patch.object(Guest, "create"):
        with pytest.raises(Dom0Lost), bed.guest(GuestSpec.hvm(memory=1024, vcpus=2)) as g:
            g.domid = 4
            raise timeout
        assert restart.call_count == 1
        assert not any("xl destroy" in s or "e2e-guest log 4" in s for s in asked)
