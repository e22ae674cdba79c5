"""Which build of a pinned Debian package the e2e testbed fetches (tests/e2e/pins.py and
artefacts.fetch), checked without a network: apt, the snapshot archive and downloads are faked."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.e2e import artefacts, pins, versions
from tests.e2e.util import BedError, key_of

XEN_PIN = "4.17.7+13-g2445b30a44-0+deb12u1"


@pytest.mark.parametrize(
    ("a", "b"),
    [
        ("1.0", "1.0-1"),
        ("1.0~rc1", "1.0"),
        ("6.12.117-1~deb12u1", "6.12.117-1"),
        ("2.36-9+deb12u7", "2.36-9+deb12u14"),
        ("4.17.5+72-g01140da4e8-1", XEN_PIN),
        ("1:7.2+dfsg-7+deb12u18", "2:0.1"),
        ("1:7.2+dfsg-7+deb12u15", "1:7.2+dfsg-7+deb12u18+b3"),
        ("6.1.192-2", "6.1.192-3"),
        ("1.9", "1.10"),
        ("1.0a", "1.0+"),
    ],
)
def test_debian_version_order(a: str, b: str) -> None:
    assert pins.debian_compare(a, b) < 0
    assert pins.debian_compare(b, a) > 0
    assert pins.debian_compare(a, a) == 0


def test_series_is_epoch_and_major_minor() -> None:
    assert pins.series(XEN_PIN) == "0:4.17"
    assert pins.series("1:7.2+dfsg-7+deb12u18+b3") == "1:7.2"
    assert pins.series("6.12.117-1~deb12u1") == "0:6.12"
    assert pins.series("252.39-1~deb12u2") == "0:252.39"


def test_the_newest_build_of_the_same_series_is_chosen() -> None:
    known = {"xen-utils-4.17": ["4.17.5+72-g01140da4e8-1", "4.17.8-0+deb12u1", "4.18.1-1"]}
    assert pins.choose_fallback("xen-utils-4.17", XEN_PIN, known) == (
        "xen-utils-4.17", "4.17.8-0+deb12u1"
    )


def test_no_fallback_outside_the_series_or_under_another_name() -> None:
    known = {"xen-utils-4.18": ["4.18.1-1"], "xen-utils-4.17": ["4.18.0-1"]}
    assert pins.choose_fallback("xen-utils-4.17", XEN_PIN, known) is None
    assert pins.choose_fallback("libc6", "2.36-9+deb12u14", {"libc6-dev": ["2.36-9+deb12u15"]}) \
        is None


def test_a_kernel_follows_a_new_abi_of_its_series_and_flavour() -> None:
    known = {
        "linux-image-6.1.0-56-amd64": [],
        "linux-image-6.1.0-57-amd64": ["6.1.192-3"],
        "linux-image-6.1.0-58-cloud-amd64": ["6.1.193-1"],
        "linux-image-6.1.0-57-amd64-dbg": ["6.1.192-3"],
        "linux-image-6.12.118+deb12-amd64": ["6.12.118-1~deb12u1"],
    }
    assert pins.choose_fallback("linux-image-6.1.0-56-amd64", "6.1.192-2", known) == (
        "linux-image-6.1.0-57-amd64", "6.1.192-3"
    )
    assert pins.choose_fallback("linux-image-6.12.117+deb12-amd64", "6.12.117-1~deb12u1",
                                known) == ("linux-image-6.12.118+deb12-amd64", "6.12.118-1~deb12u1")
    assert pins.name_prefix("linux-image-6.12.117+deb12-amd64") == "linux-image-6.12."


def test_madison_output_is_parsed() -> None:
    text = (
        "xen-utils-4.17 | 4.17.7+13-g2445b30a44-0+deb12u1 | http://x bookworm-security/main amd64\n"
        "xen-utils-4.17 | 4.17.5+72-g01140da4e8-1 | http://x bookworm/main amd64 Packages\n"
        "xen-utils-4.17 | 4.17.5+72-g01140da4e8-1 | http://y bookworm/main amd64 Packages\n"
    )
    assert pins.parse_madison(text) == {
        "xen-utils-4.17": [XEN_PIN, "4.17.5+72-g01140da4e8-1"]
    }


class FakeApt:
    """apt's lists and downloads, and a snapshot archive that is down."""

    def __init__(self, known: dict[str, list[str]]) -> None:
        self.known = known
        self.downloaded: list[tuple[str, str]] = []
        #: Builds apt's (stale) lists still name but the archive no longer has (a 404).
        self.gone: set[tuple[str, str]] = set()

    def install(self, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
        monkeypatch.setattr(artefacts, "DEBS", tmp_path / "debs")
        monkeypatch.setattr(artefacts, "RESOLVED", tmp_path / "debs" / "resolved")
        monkeypatch.setattr(artefacts, "FETCHED", {})
        monkeypatch.setattr(artefacts, "apt_known",
                            lambda names: {n: self.known[n] for n in names if n in self.known})
        monkeypatch.setattr(artefacts, "apt_candidates", lambda _name: self.known)
        monkeypatch.setattr(artefacts, "_apt_download", self.download)
        monkeypatch.setattr(artefacts, "_refresh_apt_lists", lambda _missing: None)
        monkeypatch.setattr(artefacts._Snapshot, "fetch", lambda _self, _n, _v: False)

    def download(self, packages: dict[str, str]) -> dict[str, str]:
        failed = {}
        for n, v in packages.items():
            if v in self.known.get(n, []) and (n, v) not in self.gone:
                artefacts.deb_path(n, v).write_bytes(b"deb")
                self.downloaded.append((n, v))
            else:
                failed[n] = f"E: Failed to fetch http://deb.example/{n}_{v}.deb  404  Not Found"
        return failed


def test_a_superseded_pin_falls_back_to_its_series_and_says_so(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    apt = FakeApt({"seabios": ["1.16.2-1"], "xen-utils-4.17": ["4.17.8-0+deb12u1"]})
    apt.install(monkeypatch, tmp_path)
    got = artefacts.fetch({"seabios": "1.16.2-1", "xen-utils-4.17": XEN_PIN})
    assert got["seabios"] == pins.Fetched("seabios", "1.16.2-1", "seabios", "1.16.2-1", "pin")
    xen = got["xen-utils-4.17"]
    assert (xen.name, xen.version, xen.how) == ("xen-utils-4.17", "4.17.8-0+deb12u1", "series")
    err = capsys.readouterr().err
    superseded = [ln for ln in err.splitlines() if "PIN SUPERSEDED" in ln]
    assert len(superseded) == 1
    assert f"xen-utils-4.17={XEN_PIN} is not in apt's lists" in superseded[0]
    assert "using xen-utils-4.17=4.17.8-0+deb12u1" in superseded[0], superseded
    # The key follows what was fetched, not the pin ...
    pinned_key = key_of("seabios=1.16.2-1", f"xen-utils-4.17={XEN_PIN}")
    assert artefacts.fetched_key(got) != pinned_key
    # ... and equals the pins' key when every pin was exact.
    exact = {"seabios": got["seabios"]}
    assert artefacts.fetched_key(exact) == key_of("seabios=1.16.2-1")
    # A later run takes the recorded fallback from the cache: no apt download.
    apt.downloaded.clear()
    again = artefacts.fetch({"xen-utils-4.17": XEN_PIN})
    assert again["xen-utils-4.17"] == xen and apt.downloaded == []


def test_no_build_of_the_series_fails_with_one_clear_message(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    FakeApt({"xen-utils-4.17": ["4.18.0-1"]}).install(monkeypatch, tmp_path)
    with pytest.raises(BedError,
                       match=r"apt knows no other build of its series 0:4\.17: bump it"):
        artefacts.fetch({"xen-utils-4.17": XEN_PIN})


def test_a_kernel_under_a_new_abi_moves_the_testbed_to_it(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setattr(versions, "KERNEL_ABI", "6.1.0-56-amd64")
    monkeypatch.setattr(versions, "KERNEL", "6.1.192-2")
    monkeypatch.setattr(versions, "GUEST_KERNELS", {"6.12": ("6.12.117+deb12-amd64", "x")})
    FakeApt({"linux-image-6.1.0-57-amd64": ["6.1.192-3"]}).install(monkeypatch, tmp_path)
    got = artefacts.fetch({"linux-image-6.1.0-56-amd64": "6.1.192-2"})
    artefacts._adopt_kernels(got)
    assert (versions.KERNEL_ABI, versions.KERNEL) == ("6.1.0-57-amd64", "6.1.192-3")
    assert versions.GUEST_KERNELS == {"6.12": ("6.12.117+deb12-amd64", "x")}


def test_a_pin_apt_still_lists_but_the_archive_dropped_falls_back_after_one_update(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Lists older than the archive (today's case: 6.12.118 published, 6.12.117 on its way out):
    the pin is listed but its download 404s. apt-get update runs once, the lists then name the
    newer ABI only, and that build is taken, with one line saying why."""
    pin = ("linux-image-6.12.117+deb12-amd64", "6.12.117-1~deb12u1")
    new = ("linux-image-6.12.118+deb12-amd64", "6.12.118-1~deb12u1")
    apt = FakeApt({pin[0]: [pin[1]], "seabios": ["1.16.2-1"]})
    apt.gone.add(pin)
    apt.install(monkeypatch, tmp_path)
    updates: list[list[str]] = []

    def update(missing: list[str]) -> bool:
        updates.append(missing)
        apt.known = {new[0]: [new[1]], "seabios": ["1.16.2-1"]}
        return True

    monkeypatch.setattr(artefacts, "_refresh_apt_lists", update)
    got = artefacts.fetch({pin[0]: pin[1], "seabios": "1.16.2-1"})
    assert updates == [[f"{pin[0]}={pin[1]}"]]
    k = got[pin[0]]
    assert (k.name, k.version, k.how) == (*new, "series")
    assert got["seabios"].exact
    (line,) = [ln for ln in capsys.readouterr().err.splitlines() if "PIN SUPERSEDED" in ln]
    assert f"{pin[0]}={pin[1]} is not in apt's lists even after apt-get update" in line
    assert f"using {new[0]}={new[1]}" in line and "bump versions.py" in line
    assert k.line() == f"{new[0]}={new[1]} (series) instead of the pin {pin[0]}={pin[1]}"


def test_a_pin_that_404s_with_no_update_takes_no_build_that_failed(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Not root (no apt-get update): the listed pin 404s; the stand-in is the newest other build
    of the series, never the one that just failed."""
    apt = FakeApt({"xen-utils-4.17": ["4.17.5+72-g01140da4e8-1", XEN_PIN]})
    apt.gone.add(("xen-utils-4.17", XEN_PIN))
    apt.install(monkeypatch, tmp_path)
    got = artefacts.fetch({"xen-utils-4.17": XEN_PIN})
    assert got["xen-utils-4.17"].version == "4.17.5+72-g01140da4e8-1"
    (line,) = [ln for ln in capsys.readouterr().err.splitlines() if "PIN SUPERSEDED" in ln]
    assert "does not download (E: Failed to fetch" in line and "404" in line, line


def test_a_stand_in_that_fails_too_is_one_error_naming_both(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    apt = FakeApt({"xen-utils-4.17": ["4.17.8-0+deb12u1"]})
    apt.gone.add(("xen-utils-4.17", "4.17.8-0+deb12u1"))
    apt.install(monkeypatch, tmp_path)
    with pytest.raises(BedError) as e:
        artefacts.fetch({"xen-utils-4.17": XEN_PIN})
    msg = str(e.value)
    assert "\n" not in msg
    assert f"xen-utils-4.17={XEN_PIN} is not in apt's lists" in msg
    assert "stand-in xen-utils-4.17=4.17.8-0+deb12u1" in msg and "404" in msg


def test_apt_get_update_runs_once_per_process(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[list[str]] = []

    def run(argv: list[str], **_kw: object) -> str:
        calls.append(list(argv))
        return ""

    monkeypatch.setattr(artefacts, "_APT_UPDATED", [])
    monkeypatch.setattr(os, "geteuid", lambda: 0)
    monkeypatch.setattr(artefacts, "run", run)
    assert artefacts._refresh_apt_lists(["a=1"]) is True
    assert artefacts._refresh_apt_lists(["b=2"]) is False
    assert calls == [["apt-get", "update", "-qq"]]


def test_the_snapshot_archive_is_off_unless_named(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("E2E_SNAPSHOT_URL", raising=False)
    snap = artefacts._Snapshot()
    assert snap.fetch("seabios", "1.16.2-1") is False
    assert "E2E_SNAPSHOT_URL unset" in snap.note()


def test_the_report_lists_every_build_and_one_line_per_superseded_pin() -> None:
    fetched = {
        "seabios": pins.Fetched("seabios", "1.16.2-1", "seabios", "1.16.2-1", "pin"),
        "xen-utils-4.17": pins.Fetched("xen-utils-4.17", XEN_PIN, "xen-utils-4.17",
                                       "4.17.8-0+deb12u1", "series", "is not in apt's lists"),
    }
    assert pins.report(fetched) == [
        "seabios=1.16.2-1 (pin)",
        f"xen-utils-4.17=4.17.8-0+deb12u1 (series) instead of the pin xen-utils-4.17={XEN_PIN}",
        f"PIN SUPERSEDED: xen-utils-4.17={XEN_PIN} is not in apt's lists; using "
        "xen-utils-4.17=4.17.8-0+deb12u1, the newest build of series 0:4.17 apt knows, for this "
        "run and its cache keys; bump versions.py (python -m tests.e2e pins)",
    ]
