"""cffi build script for the C doorway (``guestagent.xen._xenc``), run by setuptools.

The declarations come from ``csrc/guestagent_xen.h`` itself, so C and Python can never disagree
on a struct; that header is checked against Xen's own headers by tests/test_abi_layout.py.
"""

from __future__ import annotations

import os

from cffi import FFI

_HERE = os.path.dirname(os.path.abspath(__file__))
CSRC = os.path.normpath(os.path.join(_HERE, "..", "..", "csrc"))
HEADER = os.path.join(CSRC, "guestagent_xen.h")


def _declarations() -> str:
    with open(HEADER) as f:
        return f.read()


ffibuilder = FFI()
ffibuilder.cdef(_declarations())
ffibuilder.set_source(
    "guestagent.xen._xenc",
    '#include <stddef.h>\n#include <stdint.h>\n#include "guestagent_xen.h"\n',
    sources=[os.path.relpath(os.path.join(CSRC, "xenc.c"))],
    include_dirs=[os.path.relpath(CSRC)],
    extra_compile_args=["-std=gnu11", "-Wall", "-Wextra", "-Werror"],
)

if __name__ == "__main__":  # pragma: no cover
    ffibuilder.compile(verbose=True)
