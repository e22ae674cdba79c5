"""The fault tests' own configuration files, in place of /etc/guestagent's."""

from __future__ import annotations

from pathlib import Path


def config_files_beside(root: Path) -> tuple[str, str]:
    """The test's own main configuration file and drop-in directory, next to its host tree
    (``root.parent``: the test's ``tmp_path`` for a tree made at ``tmp_path / "root"``), absent
    until the test writes them. A command gets them through its context
    (``cli.main(argv, config_files=...)``, ``Context(..., config_files=...)``), so it never reads
    this machine's /etc/guestagent."""
    return str(root.parent / "guestagent.toml"), str(root.parent / "conf.d")
