"""Imports that leave out what the idle daemon never uses: a module imported while some of ITS
imports are stand-ins that load the real module on first use.

Some modules the agent needs import, at module level, others they use only in a function the
agent never calls: ``dataclasses`` imports ``inspect`` (with ``ast``, ``dis``: about 0.7 MiB)
for the docstring of a dataclass that has none; ``pathlib`` imports ``urllib.parse``
(with ``ipaddress``) for ``Path.as_uri()``; structlog imports ``asyncio`` for its async methods
and ``uuid`` for its deprecated thread-local dicts; pyudev imports ``ctypes.util`` (which brings
``shutil``, ``tempfile``, ``bz2``, ``lzma``) for ``find_library`` and ``subprocess`` to ask
``udevadm`` its version (benchmarks/README.md, "What each MiB is").
:func:`deferring` imports such a module with those names bound to stand-ins: a stand-in's first
attribute access imports the real module and forwards to it, so the code that does use them
works exactly as before, only later. The stand-ins leave ``sys.modules`` when the import is
done: a later ``import inspect`` anywhere gets the real module, as usual.

A name already imported is left alone (there is nothing to save), so this never changes what a
process that has loaded those modules sees (the tests, for one).
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from types import ModuleType
from typing import Any


def stand_in(name: str, calls: Sequence[str] = ()) -> ModuleType:
    """A module named ``name`` whose first attribute access imports the real one (PEP 562).

    ``calls``: functions the stand-in has itself, for a ``from NAME import f`` (which takes the
    attribute at once): each imports the real module when it is called, not before. Give them
    only for a plain module, not a package.
    """
    stub = ModuleType(name, f"guestagent.lazyimport's stand-in: the real {name} loads on first use")

    def real() -> ModuleType:
        if sys.modules.get(name) is stub:
            del sys.modules[name]
        import importlib

        return importlib.import_module(name)

    def __getattr__(attr: str) -> Any:
        if attr == "__path__" and calls:
            # ``from NAME import f`` asks first whether NAME is a package; a stand-in with calls
            # is for a plain module. Any other stand-in imports the real one to answer.
            raise AttributeError(attr)
        return getattr(real(), attr)

    def forwarder(attr: str) -> Callable[..., Any]:
        def call(*args: Any, **kwargs: Any) -> Any:
            return getattr(real(), attr)(*args, **kwargs)

        call.__name__ = call.__qualname__ = attr
        return call

    stub.__getattr__ = __getattr__  # type: ignore[method-assign]  # PEP 562
    for attr in calls:
        setattr(stub, attr, forwarder(attr))
    return stub


@contextmanager
def deferring(*names: str, calls: Mapping[str, Sequence[str]] | None = None) -> Iterator[list[str]]:
    """Within the block, ``import NAME`` of each of ``names`` not imported yet gives its
    :func:`stand_in` (with the functions ``calls[NAME]``); yields the names so deferred.
    Afterwards, every stand-in still in ``sys.modules`` is taken out (the modules that imported
    it keep it)."""
    calls = calls or {}
    stubs = {name: stand_in(name, calls.get(name, ())) for name in names
             if name not in sys.modules}
    sys.modules.update(stubs)
    try:
        yield list(stubs)
    finally:
        for name, stub in stubs.items():
            if sys.modules.get(name) is stub:
                del sys.modules[name]


def import_lean(module: str, *deferred: str,
                calls: Mapping[str, Sequence[str]] | None = None) -> ModuleType:
    """``import module`` with ``deferred`` as stand-ins (when ``module`` is not imported yet)."""
    import importlib

    loaded = sys.modules.get(module)
    if loaded is not None:
        return loaded
    with deferring(*deferred, calls=calls):
        return importlib.import_module(module)


#: What the agent imports first, and what those modules may load later, with the functions a
#: ``from NAME import f`` takes (see the module's docstring; tests/test_daemon_footprint.py checks
#: the idle daemon loads none of the latter). pathlib takes ``quote_from_bytes`` from
#: ``urllib.parse`` for ``as_uri()`` alone; ``urllib.parse`` brings ``ipaddress``.
LEAN_IMPORTS: tuple[tuple[str, dict[str, tuple[str, ...]]], ...] = (
    ("dataclasses", {"inspect": ()}),
    ("pathlib", {"urllib.parse": ("quote_from_bytes",)}),
)


def import_stdlib_lean() -> None:
    """The standard modules of :data:`LEAN_IMPORTS`, each without what it defers (a no-op for a
    module already imported)."""
    for module, deferred in LEAN_IMPORTS:
        import_lean(module, *deferred, calls=deferred)


#: pyudev's imports it makes no use of to open a monitor: Debian's pyudev opens ``libudev.so.1``
#: by name (pip's calls ``find_library``, which then loads the real ``ctypes.util``), and the
#: udev version (``check_output(["udevadm", "--version"])``) is never asked.
PYUDEV_DEFERS: dict[str, tuple[str, ...]] = {
    "ctypes.util": ("find_library",),
    "subprocess": ("check_output",),
}


def import_pyudev() -> ModuleType:
    """``import pyudev`` (ImportError when it is not installed) without what
    :data:`PYUDEV_DEFERS` names, until used."""
    return import_lean("pyudev", *PYUDEV_DEFERS, calls=PYUDEV_DEFERS)
