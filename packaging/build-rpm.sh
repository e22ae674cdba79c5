#!/bin/sh
# Build guestagent's RPMs from packaging/rpm/guestagent.spec, and check them with rpmlint.
#
#   packaging/build-rpm.sh [OUTDIR]      (default OUTDIR: dist/rpm)
#
# Builds the source RPM (`rpmbuild -bs`) and the binary RPMs guestagent and guestagent-dom0
# (`rpmbuild -bb`), then runs rpmlint on all three and on the spec when rpmlint is installed
# (errors fail; every remaining warning is filtered with its reason in
# packaging/rpm/guestagent.rpmlintrc).
#
# On a RHEL-family host the spec's BuildRequires must be installed (rpmbuild checks them) and the
# spec uses pyproject-rpm-macros and systemd-rpm-macros. On any other host with rpmbuild
# (Debian: apt-get install rpm) the spec's fallbacks build the same layout without those macros;
# rpmbuild then runs with --nodeps, because the host's RPM database is empty: the build
# dependencies are Debian's packages (python3-build, python3-installer, python3-cffi, gcc,
# python3-dev), and the RPMs' Requires are not checked against anything. Such RPMs are for
# checking the spec, file list and scriptlets; a RHEL image installs RPMs built on RHEL.
set -eu

here=$(cd "$(dirname "$0")/.." && pwd)
# The host's Python and tools only (a pyenv or virtualenv python first on PATH would otherwise
# be the interpreter the spec's fallback builds for).
PATH=/usr/sbin:/usr/bin:/sbin:/bin
export PATH
unset PYTHONPATH PYTHONHOME VIRTUAL_ENV PIP_REQUIRE_VIRTUALENV || true
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

nodeps=
if ! rpm -q rpm >/dev/null 2>&1; then
    nodeps=--nodeps
    echo "build-rpm: this host's RPM database does not know its packages (not a RHEL-family" \
        "host): building with --nodeps and the spec's fallbacks for the RPM macros"
fi
rpmbuild --define "_topdir $top" $nodeps -bb "$top/SPECS/guestagent.spec"
find "$top/RPMS" -name '*.rpm' -exec cp {} "$outdir/" \;
echo "build-rpm: binary RPMs in $outdir:"
ls -1 "$outdir"/*.rpm | grep -v '\.src\.rpm$'

if command -v rpmlint >/dev/null 2>&1; then
    echo "build-rpm: rpmlint"
    rpmlint --rpmlintrc "$here/packaging/rpm/guestagent.rpmlintrc" "$spec" "$outdir"/*.rpm
    echo "build-rpm: rpmlint passed"
else
    echo "build-rpm: rpmlint not installed: RPMs not checked (Debian: apt-get install rpmlint)"
fi
