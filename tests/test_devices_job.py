"""The devices job's reading of its own domid: a xenstore value like any other input."""

from __future__ import annotations

import errno

import pytest

from guestagent.devices.job import own_domid
from guestagent.xen.xenstore import XenstoreError


class Reader:
    def __init__(self, value: bytes | None) -> None:
        self.value = value

    def read(self, path: str) -> bytes:
        assert path == "domid"
        if self.value is None:
            raise XenstoreError(errno.ENOENT, path, "XS_READ")
        return self.value


@pytest.mark.parametrize(
    ("value", "domid"),
    [
        (b"5", 5),
        (b"32751\n", 32751),
        (b"0", None),  # Dom0 is not a guest
        (b"32752", None),  # DOMID_SELF and above are not real domains
        (b"-3", None),
        (b"5; rm -rf /", None),
        (b"\xff\xfe", None),
        (None, None),
    ],
)
def test_own_domid(value: bytes | None, domid: int | None) -> None:
    assert own_domid(Reader(value)) == domid
