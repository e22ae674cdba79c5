"""Which build of a pinned Debian package the e2e testbed fetches (tests/e2e/pins.py and
artefacts.fetch), checked without a network: apt, the snapshot archive and downloads are faked."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.e2e import artefacts, pins, versions

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

    def download(self, packages: dict[str, str]) -> list[str]:
        failed = []
        for n, v in packages.items():
            if v in self.known.get(n, []):
                artefacts.deb_path(n, v).write_bytes(b"deb")
                self.downloaded.append((n, v))
            else:
                failed.append(n)
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
    assert f"xen-utils-4.17={XEN_PIN}" in superseded[0] and "4.17.8-0+deb12u1" in superseded[0]
    # The key follows what was fetched, not the pin ...
    pinned_key = artefacts.key_of("seabios=1.16.2-1", f"xen-utils-4.17={XEN_PIN}")
    assert artefacts.fetched_key(got) != pinned_key
    # ... and equals the pins' key when every pin was exact.
    exact = {"seabios": got["seabios"]}
    assert artefacts.fetched_key(exact) == artefacts.key_of("seabios=1.16.2-1")
    # A later run takes the recorded fallback from the cache: no apt download.
    apt.downloaded.clear()
    again = artefacts.fetch({"xen-utils-4.17": XEN_PIN})
    assert again["xen-utils-4.17"] == xen and apt.downloaded == []


def test_no_build_of_the_series_fails_with_one_clear_message(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    FakeApt({"xen-utils-4.17": ["4.18.0-1"]}).install(monkeypatch, tmp_path)
    with pytest.raises(artefacts.BedError, match=r"no build of its series 0:4\.17"):
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
