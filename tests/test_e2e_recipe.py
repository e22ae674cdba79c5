"""The e2e testbed's image cache keys follow their recipe (tests/e2e/recipe.py): a changed module
list, init script or package list re-keys the image, so a kept cache is never reused stale."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.e2e import images, recipe, rootfs, versions


class Built(Exception):
    """Raised where the image build would start: the key has been computed by then."""


def guest_image_key(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> str:
    """The key ``rootfs.guest_image`` computes, without building anything."""
    keys: list[str] = []
    real_key_of = rootfs.key_of

    def key_of(*parts: str) -> str:
        keys.append(real_key_of(*parts))
        return keys[-1]

    def start_layer(*_args: object) -> Path:
        raise Built

    base = tmp_path / "rootfs-base-0"
    monkeypatch.setattr(rootfs, "CACHE", tmp_path)
    monkeypatch.setattr(rootfs, "base_rootfs", lambda: base)
    monkeypatch.setattr(rootfs, "agent_hash", lambda: "agent")
    monkeypatch.setattr(rootfs, "key_of", key_of)
    monkeypatch.setattr(rootfs, "start_layer", start_layer)
    with pytest.raises(Built):
        rootfs.guest_image(tmp_path / "modules")
    return keys[-1]


def test_changing_the_guest_image_module_list_changes_its_key(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    before = guest_image_key(monkeypatch, tmp_path)
    assert guest_image_key(monkeypatch, tmp_path) == before
    monkeypatch.setattr(rootfs, "SKIP_MODULE_DIRS", (*rootfs.SKIP_MODULE_DIRS, "kernel/mm"))
    assert guest_image_key(monkeypatch, tmp_path) != before


def test_a_new_module_list_in_rootfs_or_versions_changes_the_key(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    before = recipe.guest_image_recipe()
    monkeypatch.setattr(rootfs, "GUEST_MODULES", ("zram", "zsmalloc"), raising=False)
    with_list = recipe.guest_image_recipe()
    assert with_list != before
    monkeypatch.setattr(rootfs, "GUEST_MODULES", ("zram", "zsmalloc", "lz4_compress"))
    assert recipe.guest_image_recipe() != with_list
    monkeypatch.delattr(rootfs, "GUEST_MODULES")
    monkeypatch.setattr(versions, "ROOTFS_INCLUDE", (*versions.ROOTFS_INCLUDE, "util-linux"))
    assert recipe.guest_image_recipe() != before


def test_the_initramfs_keys_follow_their_module_lists_and_the_fetched_packages(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    (stage := tmp_path / "staging-1").mkdir()
    ginit = tmp_path / "guest-initrd-x.cpio.gz"
    guest, dom0 = images.guest_initrd_key(stage), images.dom0_initrd_key(stage, ginit, {})
    monkeypatch.setattr(images, "GUEST_INITRD_MODULES", (*images.GUEST_INITRD_MODULES, "zram"))
    assert images.guest_initrd_key(stage) != guest
    monkeypatch.setattr(images, "DOM0_MODULES", (*images.DOM0_MODULES, "zram"))
    assert images.dom0_initrd_key(stage, ginit, {}) != dom0
    monkeypatch.undo()
    assert images.guest_initrd_key(tmp_path / "staging-2") != guest


def test_the_debootstrap_layer_is_keyed_on_its_own_code_only(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    before = recipe.base_rootfs_recipe()
    monkeypatch.setattr(rootfs, "SKIP_MODULE_DIRS", ())
    assert recipe.base_rootfs_recipe() == before


def test_no_path_enters_a_recipe() -> None:
    # Two clones of the repository share one cache: their keys must agree.
    for module in (rootfs, images, versions):
        text = recipe.lists_of(module)
        assert str(rootfs.HERE) not in text and "PosixPath" not in text
    assert "SKIP_MODULE_DIRS" in recipe.lists_of(rootfs)
