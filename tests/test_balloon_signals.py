"""Balloon signal readers: PSI, PSI triggers, meminfo, vmstat, zoneinfo, driver, xenstore."""

from __future__ import annotations

import os
import select
import shutil
from pathlib import Path
from typing import Any

import pytest

from guestagent.balloon.signals import (
    BALLOON_CURRENT,
    BALLOON_TARGET,
    DirectoryXenstore,
    MemorySignals,
    PsiTrigger,
    balloon_unavailable_reason,
    parse_psi,
    parse_vmstat,
    parse_xenstore_kb,
    parse_zoneinfo_totalreserve,
    read_balloon,
    read_meminfo,
    read_psi,
    read_signals,
    read_totalreserve_kb,
    read_vmstat,
    read_xenstore_kb,
)
from guestagent.errors import InputError, MissingInputError
from guestagent.hostfs import HostFS

FIXTURES = Path(__file__).resolve().parent / "fixtures"
PV = FIXTURES / "balloon-pv-1g"
LEGACY = FIXTURES / "balloon-legacy-4.19"


def copy(name: str, tmp_path: Path) -> Path:
    dest = tmp_path / name
    shutil.copytree(FIXTURES / name, dest)
    return dest


def one_line(e: pytest.ExceptionInfo[Any]) -> str:
    text = str(e.value)
    assert "\n" not in text
    return text


# --- PSI -----------------------------------------------------------------------------------------


def test_psi_parses_both_lines() -> None:
    psi = read_psi(HostFS(str(PV)))
    assert psi.some.avg10 == 0.31 and psi.some.avg300 == 0.04 and psi.some.total_us == 1843201
    assert psi.full.avg60 == 0.03 and psi.full.total_us == 912040


@pytest.mark.parametrize(
    "text, needle",
    [
        ("some avg10=0.00 avg60=0.00 avg300=0.00 total=0\nfull junk\n", "line 2"),
        ("some avg10=0.00 avg60=0.00 avg300=0.00 total=0\n", "no 'full' line"),
        (
            "some avg10=0.00 avg60=0.00 avg300=0.00 total=0\n" * 2
            + "full avg10=0.00 avg60=0.00 avg300=0.00 total=0\n",
            "second 'some' line",
        ),
        (
            "some avg10=100.50 avg60=0.00 avg300=0.00 total=0\n"
            "full avg10=0.00 avg60=0.00 avg300=0.00 total=0\n",
            "above 100",
        ),
        (
            "some avg10=0.00 avg60=0.00 avg300=0.00 total=-5\n"
            "full avg10=0.00 avg60=0.00 avg300=0.00 total=0\n",
            "line 1",
        ),
        ("\x00\x01garbage", "line 1"),
    ],
)
def test_psi_garbage_is_one_clear_line(text: str, needle: str) -> None:
    with pytest.raises(InputError) as e:
        parse_psi(text, "/proc/pressure/memory")
    msg = one_line(e)
    assert msg.startswith("/proc/pressure/memory") and needle in msg


def test_psi_missing_says_psi_unavailable(tmp_path: Path) -> None:
    with pytest.raises(MissingInputError) as e:
        read_psi(HostFS(str(tmp_path)))
    assert "PSI unavailable" in one_line(e)


def test_psi_junk_file_in_tree(tmp_path: Path) -> None:
    root = copy("balloon-pv-1g", tmp_path)
    (root / "proc/pressure/memory").write_text("some avg10=abc\n")
    with pytest.raises(InputError) as e:
        read_signals(HostFS(str(root)), None, 0.0)
    assert "/proc/pressure/memory line 1" in one_line(e)


# --- PSI trigger ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kind, stall, window, needle",
    [
        ("most", 1000, 1_000_000, "kind"),
        ("some", 1000, 100_000, "window"),
        ("some", 1000, 20_000_000, "window"),
        ("some", 2_000_000, 1_000_000, "stall"),
        ("some", 0, 1_000_000, "stall"),
    ],
)
def test_trigger_rejects_bad_parameters(kind: str, stall: int, window: int, needle: str) -> None:
    with pytest.raises(InputError) as e:
        PsiTrigger(HostFS(str(PV)), kind, stall, window)
    assert needle in one_line(e)


def test_trigger_without_psi(tmp_path: Path) -> None:
    with pytest.raises(MissingInputError) as e:
        PsiTrigger(HostFS(str(tmp_path)))
    assert "PSI unavailable" in one_line(e)


def test_trigger_writes_its_spec(tmp_path: Path) -> None:
    # On a fixture tree the "PSI file" is a plain file: the spec lands in it, NUL-terminated.
    root = copy("balloon-pv-1g", tmp_path)
    with PsiTrigger(HostFS(str(root)), "some", 150000, 1000000) as trig:
        assert trig.fileno() >= 0
        assert trig.spec == "some 150000 1000000"
    assert (root / "proc/pressure/memory").read_bytes().startswith(b"some 150000 1000000\0")
    with pytest.raises(ValueError):
        trig.fileno()


def test_trigger_on_this_kernel() -> None:
    """A real trigger on the machine running the tests, when it allows one."""
    if not os.path.exists("/proc/pressure/memory") or not os.access(
        "/proc/pressure/memory", os.W_OK
    ):
        pytest.skip("no writable /proc/pressure/memory here")
    try:
        trig = PsiTrigger(HostFS("/"), "some", 150000, 1000000)
    except InputError as e:
        pytest.skip(f"kernel refuses triggers here: {e}")
    with trig:
        poller = select.poll()  # as the daemon's event loop polls it
        poller.register(trig.fileno(), select.POLLPRI)
        assert all(not event & select.POLLERR for _, event in poller.poll(0))
        # Without CAP_SYS_RESOURCE the window is widened to 2 s with the same stall ratio.
        assert trig.spec in ("some 150000 1000000", "some 300000 2000000")
        assert trig.widened == (trig.spec == "some 300000 2000000")


# --- meminfo, vmstat, zoneinfo --------------------------------------------------------------------


def test_meminfo_fields_in_kib() -> None:
    mem = read_meminfo(HostFS(str(PV)))
    assert mem.mem_total_kb == 998576
    assert mem.mem_available_kb == 771204
    assert mem.committed_as_kb == 412656
    assert mem.swap_total_kb == mem.swap_free_kb == 524284


def test_meminfo_without_memavailable(tmp_path: Path) -> None:
    root = copy("balloon-pv-1g", tmp_path)
    text = (root / "proc/meminfo").read_text().replace("MemAvailable:     771204 kB\n", "")
    (root / "proc/meminfo").write_text(text)
    with pytest.raises(InputError) as e:
        read_meminfo(HostFS(str(root)))
    assert "no MemAvailable line" in one_line(e)


def test_vmstat_modern_and_legacy() -> None:
    vm = read_vmstat(HostFS(str(PV)))
    assert (vm.refaults, vm.refault_anon, vm.refault_file) == (48331, 120, 48211)
    assert vm.pswpin == 0 and vm.oom_kill == 0
    old = read_vmstat(HostFS(str(LEGACY)))
    assert (old.refaults, old.refault_anon, old.refault_file) == (48331, None, None)


@pytest.mark.parametrize(
    "text, needle",
    [
        ("pswpin -3\nworkingset_refault 1\n", "negative counter"),
        ("pswpin 3\n", "no workingset_refault"),
        ("nr_free_pages 3\n", "no workingset_refault"),  # as the kernel prints it, no counters
        ("workingset_refault 1\n", "no pswpin"),
        ("pswpin 3 4\n", "expected 'name number'"),
        ("pswpin 1e5\nworkingset_refault 1\n", "expected 'name number'"),
        ("pswpin \u00b3\nworkingset_refault 1\n", "expected 'name number'"),
        ("pswpin " + "9" * 21 + "\nworkingset_refault 1\n", "expected 'name number'"),
        ("", "no vmstat lines"),
    ],
)
def test_vmstat_garbage(text: str, needle: str) -> None:
    with pytest.raises(InputError) as e:
        parse_vmstat(text, "/proc/vmstat")
    assert needle in one_line(e)


@pytest.mark.parametrize("name", ["balloon-pv-1g", "balloon-legacy-4.19", "numa-2node",
                                  "tiering-2node"])
def test_vmstat_as_the_kernel_prints_it_takes_one_pattern_and_reads_the_same(name: str) -> None:
    """The fast path (one pattern over the whole text, then ``str.split``) is taken for a
    kernel's ``/proc/vmstat`` and keeps what the line-by-line parse keeps of it."""
    from guestagent.balloon.signals import _VMSTAT_COUNTERS, _vmstat_lines, _vmstat_plain
    from tests.fixtures.loader import tree

    text = (tree(name) / "proc/vmstat").read_text()
    fast = _vmstat_plain(text)
    assert fast is not None, "the fixture no longer takes the fast path"
    slow = _vmstat_lines(text, "/proc/vmstat")
    assert fast == {k: v for k, v in slow.items() if k in _VMSTAT_COUNTERS} and fast


def test_vmstat_of_this_machine_reads_the_same_both_ways() -> None:
    from guestagent.balloon.signals import _VMSTAT_COUNTERS, _vmstat_lines, _vmstat_plain

    text = Path("/proc/vmstat").read_text()
    slow = _vmstat_lines(text, "/proc/vmstat")
    assert _vmstat_plain(text) == {k: v for k, v in slow.items() if k in _VMSTAT_COUNTERS}


@pytest.mark.parametrize("text", [
    "pswpin 1\n\nworkingset_refault 2\n",  # a blank line
    "pswpin\t1\nworkingset_refault 2\n",  # a tab
    "pswpin 1\nworkingset_refault 2",  # no final newline
])
def test_vmstat_not_as_the_kernel_prints_it_is_read_line_by_line(text: str) -> None:
    from guestagent.balloon.signals import _vmstat_plain

    assert _vmstat_plain(text) is None
    vm = parse_vmstat(text, "/proc/vmstat")
    assert (vm.pswpin, vm.refaults) == (1, 2)


def test_totalreserve_from_zoneinfo() -> None:
    # DMA: min(3977 managed, max(protection[0:]) 957 + high 21) = 978
    # DMA32: min(245000, max(protection[1:]) 0 + high 1477) = 1477; empty zones give 0.
    assert read_totalreserve_kb(HostFS(str(PV))) == (978 + 1477) * 4


def test_totalreserve_caps_at_managed_and_uses_higher_zones_only() -> None:
    text = (
        "Node 0, zone      DMA\n  pages free 1\n        high     10\n        managed  50\n"
        "        protection: (0, 100, 200)\n"
        "Node 0, zone    DMA32\n  pages free 1\n        high     5\n        managed  1000\n"
        "        protection: (999, 0, 30)\n"
        "Node 1, zone      DMA\n  pages free 1\n        high     7\n        managed  1000\n"
        "        protection: (0, 0, 0)\n"
    )
    # node 0 DMA: min(50, 200 + 10) = 50; DMA32 (index 1): max(0, 30) + 5 = 35; node 1 DMA: 7
    assert parse_zoneinfo_totalreserve(text, "zoneinfo") == 50 + 35 + 7


def test_zoneinfo_garbage() -> None:
    with pytest.raises(InputError) as e:
        parse_zoneinfo_totalreserve("Node 0, zone DMA\n  managed 5\n", "/proc/zoneinfo")
    assert "has no 'high' line" in one_line(e)
    with pytest.raises(InputError):
        parse_zoneinfo_totalreserve("nothing here\n", "/proc/zoneinfo")


def test_totalreserve_on_this_kernel() -> None:
    if not os.path.exists("/proc/zoneinfo"):
        pytest.skip("no /proc/zoneinfo")
    assert read_totalreserve_kb(HostFS("/")) > 0


# --- balloon driver ------------------------------------------------------------------------------


def test_balloon_driver_state() -> None:
    state = read_balloon(HostFS(str(PV)))
    assert state is not None
    assert (state.target_kb, state.current_kb) == (1048576, 1048576)
    assert balloon_unavailable_reason(HostFS(str(PV))) is None


def test_no_balloon_driver() -> None:
    fs = HostFS(str(LEGACY))
    assert read_balloon(fs) is None
    reason = balloon_unavailable_reason(fs)
    assert reason is not None and reason.startswith("not running on Xen")


def test_xen_without_balloon_driver(tmp_path: Path) -> None:
    root = copy("balloon-pv-1g", tmp_path)
    shutil.rmtree(root / "sys/devices/system/xen_memory")
    reason = balloon_unavailable_reason(HostFS(str(root)))
    assert reason is not None and reason.startswith("no balloon driver")


def test_missing_current_kb_is_one_line(tmp_path: Path) -> None:
    root = copy("balloon-pv-1g", tmp_path)
    (root / BALLOON_CURRENT.lstrip("/")).unlink()
    with pytest.raises(MissingInputError) as e:
        read_balloon(HostFS(str(root)))
    assert one_line(e) == f"{root}{BALLOON_CURRENT}: does not exist"


@pytest.mark.parametrize("value", ["-4096\n", "lots\n", "99999999999999999999\n"])
def test_bad_target_kb(tmp_path: Path, value: str) -> None:
    root = copy("balloon-pv-1g", tmp_path)
    (root / BALLOON_TARGET.lstrip("/")).write_text(value)
    with pytest.raises(InputError) as e:
        read_balloon(HostFS(str(root)))
    assert one_line(e).startswith(BALLOON_TARGET)


# --- xenstore ------------------------------------------------------------------------------------


class DictXenstore:
    def __init__(self, nodes: dict[str, bytes]) -> None:
        self.nodes = nodes

    def read(self, path: str) -> bytes:
        if path not in self.nodes:
            raise MissingInputError(f"xenstore {path}")
        return self.nodes[path]


def test_xenstore_values() -> None:
    xs = DictXenstore({"memory/target": b"524288", "memory/static-max": b"1048576\0"})
    assert read_xenstore_kb(xs, "memory/target") == 524288
    assert read_xenstore_kb(xs, "memory/static-max") == 1048576
    assert read_xenstore_kb(DictXenstore({}), "memory/target") is None


@pytest.mark.parametrize("data", [b"12a", b"-5", b"0", b"\xff\xfe", b""])
def test_xenstore_garbage(data: bytes) -> None:
    with pytest.raises(InputError) as e:
        parse_xenstore_kb(data, "memory/target")
    assert one_line(e).startswith("xenstore memory/target")


def test_xenstore_errors_other_than_enoent() -> None:
    class Failing:
        def read(self, path: str) -> bytes:
            raise PermissionError(13, "Permission denied")

    with pytest.raises(InputError) as e:
        read_xenstore_kb(Failing(), "memory/target")
    assert "read failed" in one_line(e)


def test_fixture_directory_xenstore() -> None:
    xs = DirectoryXenstore(HostFS(str(PV)), "/xenstore")
    assert read_xenstore_kb(xs, "memory/target") == 1048576
    assert read_xenstore_kb(xs, "memory/videoram") is None
    with pytest.raises(InputError):
        xs.read("../etc/passwd")


def test_real_xenstore_client(xs_connect: Any) -> None:
    """Through the real client and C framing against the test xenstored (domain 5)."""
    client = xs_connect(5)
    assert read_xenstore_kb(client, "memory/target") == 524288
    assert read_xenstore_kb(client, "memory/static-max") == 1048576
    assert read_xenstore_kb(client, "memory/no-such-node") is None


# --- the snapshot --------------------------------------------------------------------------------


def test_read_signals_from_fixture() -> None:
    fs = HostFS(str(PV))
    snap = read_signals(fs, DirectoryXenstore(fs, "/xenstore"), 12.5, psi_trigger_fired=True)
    assert snap.timestamp == 12.5 and snap.psi_trigger_fired
    assert snap.mem_total_kb == 998576 and snap.some_total_us == 1843201
    assert snap.balloon_current_kb == 1048576 and snap.xs_static_max_kb == 1048576
    assert snap.totalreserve_kb == 9820
    assert MemorySignals.from_dict(snap.to_dict(), "x") == snap


def test_read_signals_legacy_kernel_without_psi() -> None:
    snap = read_signals(HostFS(str(LEGACY)), None, 0.0)
    assert snap.psi_available is False and snap.some_avg10 == 0.0 and snap.some_total_us == 0
    assert snap.refaults == 48331 and snap.refault_anon is None
    assert snap.balloon_target_kb is None
    data = snap.to_dict()
    del data["psi_available"]  # traces written before the field existed
    assert MemorySignals.from_dict(data, "t").psi_available is True


@pytest.mark.parametrize(
    "field, value, needle",
    [
        ("mem_total_kb", -1, "must not be negative"),
        ("mem_total_kb", "1", "expected an integer"),
        ("mem_total_kb", None, "must not be null"),
        ("some_avg10", 101.0, "percentage"),
        ("some_avg10", True, "expected a number"),
        ("psi_trigger_fired", 1, "true or false"),
        ("timestamp", float("nan"), "finite"),
    ],
)
def test_snapshot_validation(field: str, value: object, needle: str) -> None:
    data = read_signals(HostFS(str(PV)), None, 0.0).to_dict()
    data[field] = value
    with pytest.raises(InputError) as e:
        MemorySignals.from_dict(data, "trace line 2")
    msg = one_line(e)
    assert f"field '{field}'" in msg and needle in msg


def test_snapshot_missing_and_unknown_fields() -> None:
    data = read_signals(HostFS(str(PV)), None, 0.0).to_dict()
    del data["pswpin"]
    with pytest.raises(InputError, match="missing field 'pswpin'"):
        MemorySignals.from_dict(data, "t")
    data["pswpin"] = 0
    data["bogus"] = 1
    with pytest.raises(InputError, match="unknown field 'bogus'"):
        MemorySignals.from_dict(data, "t")
    del data["bogus"]
    del data["psi_trigger_fired"]
    assert MemorySignals.from_dict(data, "t").psi_trigger_fired is False
