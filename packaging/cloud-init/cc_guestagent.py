"""guestagent: configure and turn on guestagent from cloud-config.

Installed by the guestagent package as cloudinit/config/cc_guestagent.py, so that cloud-init finds
the module named ``guestagent``; the code is ``guestagent.cloudinit.module``.
"""

from __future__ import annotations

from guestagent.cloudinit.module import handle, meta

__all__ = ["handle", "meta"]
