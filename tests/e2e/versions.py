"""Every artefact the e2e testbed fetches, pinned in one place.

Debian's security archive keeps only the newest build of a package, so a pin here is superseded with
each security update. The testbed then fetches, in this order and with a log line for each pin
not fetched exactly (:mod:`tests.e2e.pins`): the exact pin from apt, the exact pin from the
snapshot archive, and only then the newest build apt knows of the same upstream series (for a
kernel, also under a newer ABI name). Every cache key follows what was fetched, and each run
records it in its ``versions.txt``. Bump the version here when that line appears (see
``python -m tests.e2e pins``, which prints what apt would fetch now).
"""

from __future__ import annotations

XEN = "4.17.7+13-g2445b30a44-0+deb12u1"
KERNEL_ABI = "6.1.0-56-amd64"
KERNEL = "6.1.192-2"
#: Guest kernel variants besides the default (Dom0's own kernel, KERNEL_ABI): variant name ->
#: (ABI, version of the package ``linux-image-<ABI>``). A guest picks one with
#: ``GuestSpec.hvm(..., kernel="6.12")``; Dom0 always runs KERNEL_ABI. 6.12 has DAMOS
#: ``migrate_cold`` (Linux 6.11+); Debian ships it for bookworm in bookworm-security (source package
#: linux-6.12, versions ``~deb12uN``), so a stock bookworm sources list fetches it.
GUEST_KERNELS: dict[str, tuple[str, str]] = {
    "6.12": ("6.12.117+deb12-amd64", "6.12.117-1~deb12u1"),
}
#: The name of the default guest kernel (KERNEL_ABI), as ``GuestSpec(kernel=...)`` spells it.
DEFAULT_GUEST_KERNEL = "6.1"
QEMU_XEN = "1:7.2+dfsg-7+deb12u18+b3"
QEMU_DATA = "1:7.2+dfsg-7+deb12u18"

#: Debian suite the guest root file system is bootstrapped from.
SUITE = "bookworm"
#: Bump to force a rebuild of the guest's base root file system (debootstrap is not pinnable).
ROOTFS_REVISION = "1"
#: Packages in the guest's root file system besides debootstrap's minbase.
ROOTFS_INCLUDE: tuple[str, ...] = (
    "python3",
    "python3-pip",
    "python3-venv",
    "python3-dev",
    "gcc",
    "libc6-dev",
    "libffi-dev",
    "libudev-dev",
    "pkg-config",
    "kmod",
    "udev",
    "iproute2",
    "procps",
    "numactl",
    "xenstore-utils",
    "ca-certificates",
    # Ship-it proofs: cloud-init with a NoCloud seed under systemd, and Debian's qemu-guest-agent
    # as the native agent the daemon's footprint is compared with.
    "systemd-sysv",
    "cloud-init",
    "qemu-guest-agent",
    # Debian's irqbalance beside the agent's pinned vectors (issue 16 item 4,
    # tests/e2e/test_dom0_devices.py); the e2e init starts no service, the test runs it by hand.
    "irqbalance",
    # What the guestagent .deb depends on, so the built package installs offline in the guest.
    "python3-cffi-backend",
    "python3-psutil",
    "python3-pyroute2",
    "python3-pyudev",
    "python3-structlog",
)

#: Debian packages extracted for Dom0 and the guests' boot images: name -> exact version.
PACKAGES: dict[str, str] = {
    "xen-hypervisor-4.17-amd64": XEN,
    "xen-utils-4.17": XEN,
    "xen-utils-common": XEN,
    "xenstore-utils": XEN,
    f"linux-image-{KERNEL_ABI}": KERNEL,
    "qemu-system-xen": QEMU_XEN,
    "qemu-system-data": QEMU_DATA,
    "seabios": "1.16.2-1",
    "busybox-static": "1:1.35.0-4+deb12u1+b1",
    # Shared libraries of xl, xenstored, xenconsoled and the device model (only the ELF closure
    # of the binaries Dom0 needs is copied into its image).
    "libxencall1": XEN,
    "libxendevicemodel1": XEN,
    "libxenevtchn1": XEN,
    "libxenforeignmemory1": XEN,
    "libxengnttab1": XEN,
    "libxenhypfs1": XEN,
    "libxenmisc4.17": XEN,
    "libxenstore4": XEN,
    "libxentoolcore1": XEN,
    "libxentoollog1": XEN,
    "libyajl2": "2.1.0-3+deb12u2",
    "libc6": "2.36-9+deb12u14",
    "libgcc-s1": "12.2.0-14+deb12u1",
    "libstdc++6": "12.2.0-14+deb12u1",
    "libncurses6": "6.4-4",
    "libtinfo6": "6.4-4",
    "libfdt1": "1.6.1-4+b1",
    "libglib2.0-0": "2.74.6-2+deb12u9",
    "libjpeg62-turbo": "1:2.1.5-2",
    "libpixman-1-0": "0.42.2-1",
    "libspice-server1": "0.15.1-1",
    "libusb-1.0-0": "2:1.0.26-1",
    "zlib1g": "1:1.2.13.dfsg-1",
    "libudev1": "252.39-1~deb12u2",
    "libffi8": "3.4.4-1",
    "libpcre2-8-0": "10.42-1+deb12u2",
    "libmount1": "2.38.1-5+deb12u3",
    "libselinux1": "3.4-1+b6",
    "libblkid1": "2.38.1-5+deb12u3",
    "libopus0": "1.3.1-3",
    "liborc-0.4-0": "1:0.4.33-2",
    "libgstreamer1.0-0": "1.22.0-2+deb12u1",
    "libgstreamer-plugins-base1.0-0": "1.22.0-3+deb12u7",
    "libssl3": "3.0.22-1~deb12u2",
    "liblz4-1": "1.9.4-1",
    "libzstd1": "1.5.4+dfsg2-5",
    "liblzma5": "5.4.1-1+deb12u2",
    "libuuid1": "2.38.1-5+deb12u3",
    "libunwind8": "1.6.2-3",
    "libnl-3-200": "3.7.0-0.2+b1",
    "libnl-route-3-200": "3.7.0-0.2+b1",
    "libgnutls30": "3.7.9-2+deb12u7",
    "libsasl2-2": "2.1.28+dfsg-10+deb12u1",
    "libcap-ng0": "0.8.3-1+b3",
    "libaio1": "0.3.113-4",
    "libgmp10": "2:6.2.1+dfsg1-1.1",
    "libp11-kit0": "0.24.1-2",
    "libidn2-0": "2.3.3-1+b1",
    "libunistring2": "1.0-2",
    "libtasn1-6": "4.19.0-2+deb12u1",
    "libnettle8": "3.8.1-2",
    "libhogweed6": "3.8.1-2",
    "libdw1": "0.188-2.1",
    "libelf1": "0.188-2.1",
    "libbz2-1.0": "1.0.8-5+b1",
    "libcap2": "1:2.66-4+deb12u3+b1",
}
