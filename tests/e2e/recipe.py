"""What goes into a cache key besides versions: the recipe that builds an artefact.

An image's key covers its inputs (the pins actually fetched, the scripts copied in) and its recipe:
the source of the code that builds it and the lists that code reads (kernel modules, packages,
binaries: every upper-case tuple, list, set or dict at module level of the modules named), so a
machine that keeps its cache (CI's ``/var/cache/guestagent-e2e``) never reuses an image built by
an older recipe. The lists are read from the loaded modules, so a list changed at run time, or
defined in another module that is named, changes the key as well.
"""

from __future__ import annotations

import inspect
from pathlib import Path
from types import ModuleType
from typing import Any, Callable

from tests.e2e.util import key_of

#: Plain data a recipe list may hold (paths are left out: they differ between clones).
_LIST_TYPES = (tuple, list, set, frozenset, dict)


def lists_of(module: ModuleType) -> str:
    """Every upper-case module-level tuple/list/set/dict of ``module``, as sorted text."""
    items = []
    for name, value in sorted(vars(module).items()):
        if name.isupper() and isinstance(value, _LIST_TYPES):
            if isinstance(value, (set, frozenset)):
                value = sorted(map(repr, value))
            items.append(f"{module.__name__}.{name}={value!r}")
    return "\n".join(items)


def source_of(*parts: ModuleType | Callable[..., Any]) -> str:
    """The source text of whole modules (their file) or single functions."""
    texts = []
    for part in parts:
        if isinstance(part, ModuleType):
            texts.append(Path(str(part.__file__)).read_text())
        else:
            texts.append(inspect.getsource(part))
    return "\n".join(texts)


def recipe_key(
    *,
    code: tuple[ModuleType | Callable[..., Any], ...] = (),
    lists: tuple[ModuleType, ...] = (),
    texts: tuple[str, ...] = (),
) -> str:
    """One key of a recipe: the source of ``code``, the lists of ``lists`` and extra ``texts``
    (scripts copied into the image, package lists)."""
    return key_of(source_of(*code), *(lists_of(m) for m in lists), *texts)


# --- the recipes of the testbed's images ----------------------------------------------------------
# (imported late: the building modules import this one)


def base_rootfs_recipe() -> str:
    """debootstrap's layer: only the code of ``rootfs.base_rootfs`` (its package list and suite are
    in its key already); the rest of rootfs.py may change without a new debootstrap."""
    from tests.e2e import rootfs

    return recipe_key(code=(rootfs.base_rootfs,))


def guest_image_recipe() -> str:
    """A guest root image: all of rootfs.py (module copying and its lists, init, agent install,
    mke2fs) and every list of rootfs.py and versions.py, wherever a module list is defined."""
    from tests.e2e import rootfs, versions

    return recipe_key(code=(rootfs,), lists=(rootfs, versions))


def boot_image_recipe() -> str:
    """Dom0's and the guests' initramfs: images.py (module and binary lists, ELF closure, cpio)."""
    from tests.e2e import images

    return recipe_key(code=(images,), lists=(images,))
