"""The kernel's side of the balloon's allocation guard, on a fixture tree: zram and swap.

The guard (``guestagent/balloon/guard.py``) makes its zram swap with four commands
(:class:`~guestagent.balloon.guard.GuardCommands`: modprobe, mkswap, swapon, swapoff, and
``modprobe -r``) and three sysfs files (``zram-control/hot_add``, read: a new device;
``zram<N>/disksize``; ``zram<N>/reset`` and ``zram-control/hot_remove``, written). On a fixture
tree none of them has any effect; here each has the kernel's, in the tree, so the guard's arm and
undo run there and what they leave can be compared:

* ``modprobe zram num_devices=0``: ``/sys/module/zram`` and ``/sys/class/zram-control`` appear;
  ``modprobe -r zram``: fails when the module is not loaded (kmod exits 1), is refused while a
  zram device is swapped on (the module is in use), else both go, with every zram device;
* a read of ``hot_add``: a new ``/sys/block/zram<N>`` (lowest free N, disksize 0);
* ``reset`` and ``hot_remove``: refused (EBUSY) while the device is swapped on; ``reset`` sets
  the disksize to 0, ``hot_remove`` removes the device;
* ``mkswap``: refused on a device of disksize 0; leaves a signature (``.swap_signature``, the
  device's content); ``swapon``: refused without one, else a ``/proc/swaps`` line;
  ``swapoff``: refused for a device not swapped on, else the line goes.

Each command and each of those sysfs effects is one step reported to ``wrote`` (the crash
test's hook, which may SIGKILL the process right after it): the effect is made first, as the
kernel has made it when the call returns. ``reset`` and ``hot_remove`` are write-only in sysfs
(nothing reads them back), so :data:`WRITE_ONLY` lists them for the tree's comparison.
"""

from __future__ import annotations

import errno
import re
import shutil
from collections.abc import Callable
from pathlib import Path

from guestagent.errors import GuestAgentError
from guestagent.hostfs import HostFS

CONTROL = "sys/class/zram-control"
MODULE = "sys/module/zram"
SWAPS_HEADER = "Filename\t\t\t\tType\t\tSize\t\tUsed\t\tPriority\n"
SIGNATURE = ".swap_signature"
#: sysfs attributes nothing can read back (mode 0200): left out of the tree's comparison.
WRITE_ONLY = re.compile(r"^sys/(class/zram-control/hot_remove|block/zram\d+/reset)$")
_DEVICE = re.compile(r"^/sys/block/zram(\d+)/(reset|disksize)$")

Wrote = Callable[[str], None]


def _nothing(what: str) -> None:
    pass


class ZramKernel:
    """zram and swap state kept in the fixture tree below ``root`` (shared by every process that
    opens the tree: the crashed child and the reset)."""

    def __init__(self, root: Path, wrote: Wrote | None = None) -> None:
        self.root = root
        self.wrote = wrote or _nothing

    # -- the state --------------------------------------------------------------------------------

    def device(self, n: int) -> Path:
        return self.root / f"sys/block/zram{n}"

    def devices(self) -> list[int]:
        return sorted(int(p.name[4:]) for p in (self.root / "sys/block").glob("zram*"))

    def swapped_on(self) -> set[int]:
        lines = (self.root / "proc/swaps").read_text().splitlines()[1:]
        return {int(m.group(1)) for ln in lines
                if (m := re.match(r"^/dev/zram(\d+)\s", ln)) is not None}

    def loaded(self) -> bool:
        return (self.root / MODULE).is_dir()

    def add_device(self, disksize: int = 0) -> int:
        n = next(i for i in range(1024) if not self.device(i).exists())
        d = self.device(n)
        d.mkdir(parents=True)
        (d / "disksize").write_text(f"{disksize}\n")
        (d / "comp_algorithm").write_text("lzo [lzo-rle] lz4 zstd\n")
        (d / "reset").write_text("")
        return n

    def load(self) -> None:
        (self.root / MODULE).mkdir(parents=True)
        (self.root / MODULE / "refcnt").write_text("0\n")
        ctl = self.root / CONTROL
        ctl.mkdir(parents=True)
        (ctl / "hot_add").write_text("0\n")
        (ctl / "hot_remove").write_text("")

    def swap_line(self, n: int, priority: int) -> None:
        size = int((self.device(n) / "disksize").read_text()) // 1024
        with open(self.root / "proc/swaps", "a") as f:
            f.write(f"/dev/zram{n}\tpartition\t{size}\t0\t{priority}\n")

    # -- the commands (GuardCommands) -------------------------------------------------------------

    def _number(self, device: str) -> int:
        m = re.fullmatch(r"/dev/zram(\d+)", device)
        if m is None or not self.device(int(m.group(1))).is_dir():
            raise GuestAgentError(f"{device}: no such device")
        return int(m.group(1))

    def modprobe(self, module: str, *params: str) -> None:
        assert (module, params) == ("zram", ("num_devices=0",)), (module, params)
        if not self.loaded():
            self.load()
        self.wrote(f"modprobe {module} {' '.join(params)}")

    def modprobe_remove(self, module: str) -> None:
        assert module == "zram", module
        if not self.loaded():  # kmod: "Module zram is not in kernel" (quiet under -q)
            raise GuestAgentError("modprobe -r -q zram: exit 1: ")
        if self.swapped_on():
            raise GuestAgentError("modprobe -r zram: exit 1: Module zram is in use")
        for n in self.devices():
            shutil.rmtree(self.device(n))
        shutil.rmtree(self.root / CONTROL)
        shutil.rmtree(self.root / MODULE)
        self.wrote(f"modprobe -r {module}")

    def mkswap(self, device: str) -> None:
        n = self._number(device)
        if int((self.device(n) / "disksize").read_text()) == 0:
            raise GuestAgentError(f"mkswap {device}: exit 1: cannot determine size")
        (self.device(n) / SIGNATURE).write_text("SWAPSPACE2 guestagent-guard\n")
        self.wrote(f"mkswap {device}")

    def swapon(self, device: str, priority: int) -> None:
        n = self._number(device)
        if not (self.device(n) / SIGNATURE).exists() or n in self.swapped_on():
            raise GuestAgentError(f"swapon {device}: exit 255: Invalid argument")
        self.swap_line(n, priority)
        self.wrote(f"swapon {device}")

    def swapoff(self, device: str) -> None:
        n = self._number(device)
        if n not in self.swapped_on():
            raise GuestAgentError(f"swapoff {device}: exit 255: Invalid argument")
        swaps = self.root / "proc/swaps"
        swaps.write_text("".join(ln for ln in swaps.read_text().splitlines(keepends=True)
                                 if not ln.startswith(f"{device}\t")))
        self.wrote(f"swapoff {device}")

    # -- the sysfs files (ZramFS) -----------------------------------------------------------------

    def hot_add(self) -> int:
        n = self.add_device()
        self.wrote(f"hot_add -> zram{n}")
        return n

    def sysfs_write(self, host_path: str, value: str) -> None:
        """The kernel's part of a write to a zram device's file or to ``hot_remove``, made
        before the file is written. Raises OSError as the kernel refuses."""
        m = _DEVICE.match(host_path)
        if m is not None:
            n = int(m.group(1))
            if n in self.swapped_on():
                raise OSError(errno.EBUSY, "Device or resource busy", host_path)
            if m.group(2) == "reset":
                (self.device(n) / SIGNATURE).unlink(missing_ok=True)
                (self.device(n) / "disksize").write_text("0\n")
        elif host_path == f"/{CONTROL}/hot_remove":
            n = int(value)
            if n in self.swapped_on():
                raise OSError(errno.EBUSY, "Device or resource busy", host_path)
            shutil.rmtree(self.device(n))


class ZramFS(HostFS):
    """The fixture tree's file system with :class:`ZramKernel` behind the zram sysfs files."""

    def __init__(self, root: Path, kernel: ZramKernel) -> None:
        super().__init__(str(root))
        self.kernel = kernel

    def read_int(self, host_path: str, minimum: int | None = None,
                 maximum: int | None = None) -> int:
        if host_path == f"/{CONTROL}/hot_add" and self.kernel.loaded():
            return self.kernel.hot_add()
        return super().read_int(host_path, minimum, maximum)

    def write_text(self, host_path: str, value: str) -> None:
        self.kernel.sysfs_write(host_path, value)
        super().write_text(host_path, value)
