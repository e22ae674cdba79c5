"""End-to-end testbed: real Xen 4.17 in QEMU (TCG), Dom0 and guests from Debian packages."""
