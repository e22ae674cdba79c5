#!/bin/sh
# Build guestagent's RPMs from packaging/rpm/guestagent.spec.
#
#   packaging/build-rpm.sh [OUTDIR]      (default OUTDIR: dist/rpm)
#
# Always builds the source RPM (`rpmbuild -bs`; Debian's `rpm` package is enough). Then, only
# where the spec's build dependencies are installed (a RHEL-family host: python3-devel,
# pyproject-rpm-macros, systemd-rpm-macros, python3-cffi, gcc), the binary RPMs with
# `rpmbuild -bb`; elsewhere it says why it stops at the source RPM and exits 0. On Debian they
# cannot be had: the Python and systemd RPM macros (%pyproject_wheel, %_unitdir, ...) are
# Fedora/RHEL packages, and `rpmbuild -bb --nodeps` would only fail on the undefined macros.
set -eu

here=$(cd "$(dirname "$0")/.." && pwd)
outdir=${1:-"$here/dist/rpm"}
mkdir -p "$outdir"
outdir=$(cd "$outdir" && pwd)
spec="$here/packaging/rpm/guestagent.spec"

command -v rpmbuild >/dev/null 2>&1 || { echo "build-rpm: rpmbuild not found (Debian: apt-get install rpm)" >&2; exit 1; }

name=$(rpmspec -q --srpm --qf '%{name}' "$spec" 2>/dev/null || echo guestagent)
version=$(rpmspec -q --srpm --qf '%{version}' "$spec" 2>/dev/null \
    || sed -n 's/^Version:[[:space:]]*//p' "$spec")
top=$(mktemp -d "${TMPDIR:-/tmp}/guestagent-rpm.XXXXXX")
trap 'rm -rf "$top"' EXIT INT TERM
mkdir -p "$top/SOURCES" "$top/SPECS" "$top/SRPMS" "$top/RPMS" "$top/BUILD"

# Source0: the files git would ship (tracked and untracked-but-not-ignored), under NAME-VERSION/.
stage="$top/stage/$name-$version"
mkdir -p "$stage"
if git -C "$here" rev-parse --git-dir >/dev/null 2>&1; then
    (cd "$here" && git ls-files -z --cached --others --exclude-standard \
        | tar --null --ignore-failed-read -T - -cf -) | tar -xf - -C "$stage"
else
    (cd "$here" && tar --exclude=.git --exclude=build --exclude=dist --exclude='*.egg-info' \
        --exclude='*.so' --exclude=__pycache__ --exclude=tests/e2e/cache -cf - .) \
        | tar -xf - -C "$stage"
fi
tar -C "$top/stage" --owner=0 --group=0 -czf "$top/SOURCES/$name-$version.tar.gz" "$name-$version"
cp "$spec" "$top/SPECS/"

rpmbuild --define "_topdir $top" -bs "$top/SPECS/guestagent.spec"
cp "$top"/SRPMS/*.src.rpm "$outdir/"
echo "build-rpm: source RPM in $outdir:"
ls -1 "$outdir"/*.src.rpm

if [ -n "$(rpm --eval '%{?pyproject_wheel}')" ] && [ -n "$(rpm --eval '%{?_unitdir}')" ]; then
    rpmbuild --define "_topdir $top" -bb "$top/SPECS/guestagent.spec"
    find "$top/RPMS" -name '*.rpm' -exec cp {} "$outdir/" \;
    echo "build-rpm: binary RPMs in $outdir:"
    ls -1 "$outdir"/*.rpm
else
    echo "build-rpm: binary RPMs not built: this host lacks the spec's RPM build dependencies" \
        "(pyproject-rpm-macros, systemd-rpm-macros: RHEL-family packages)"
fi
