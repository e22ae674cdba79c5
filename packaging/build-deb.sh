#!/bin/sh
# Build the Debian packages guestagent and guestagent-dom0 and check them with lintian.
#
#   packaging/build-deb.sh [OUTDIR]      (default OUTDIR: dist/deb)
#
# The Debian packaging lives in packaging/debian/; this copies the repository (the files git would
# ship: tracked and untracked-but-not-ignored, so no build/, *.so or caches) into a temporary
# directory with that packaging as debian/, runs `dpkg-buildpackage -us -uc -b` there, then
# lintian on the result. Exits non-zero when the build fails or lintian reports an error or a
# warning (tags that are justified are overridden, with the reason, in packaging/debian/*.lintian-
# overrides). Needs the Build-Depends of packaging/debian/control, dpkg-dev and lintian.
set -eu

here=$(cd "$(dirname "$0")/.." && pwd)
outdir=${1:-"$here/dist/deb"}
mkdir -p "$outdir"
outdir=$(cd "$outdir" && pwd)

# Debian's Python and tools only: a pyenv, virtualenv or ~/.local python first on PATH would
# otherwise be the interpreter pybuild builds the extension for.
PATH=/usr/sbin:/usr/bin:/sbin:/bin
export PATH
unset PYTHONPATH PYTHONHOME VIRTUAL_ENV PIP_REQUIRE_VIRTUALENV || true

version=$(dpkg-parsechangelog -l "$here/packaging/debian/changelog" -S Version)
work=$(mktemp -d "${TMPDIR:-/tmp}/guestagent-deb.XXXXXX")
trap 'rm -rf "$work"' EXIT INT TERM
src="$work/guestagent-$version"
mkdir -p "$src"

if git -C "$here" rev-parse --git-dir >/dev/null 2>&1; then
    # --ignore-failed-read: a tracked file deleted in the work tree is simply not copied.
    (cd "$here" && git ls-files -z --cached --others --exclude-standard \
        | tar --null --ignore-failed-read -T - -cf -) | tar -xf - -C "$src"
else
    (cd "$here" && tar --exclude=.git --exclude=build --exclude=dist --exclude='*.egg-info' \
        --exclude='*.so' --exclude=__pycache__ --exclude=tests/e2e/cache -cf - .) \
        | tar -xf - -C "$src"
fi
rm -rf "$src/debian"
cp -a "$here/packaging/debian" "$src/debian"

echo "build-deb: building guestagent $version in $src"
(cd "$src" && dpkg-buildpackage -us -uc -b)

changes=$(ls "$work"/guestagent_"$version"_*.changes)
for deb in "$work"/*.deb; do
    cp "$deb" "$outdir/"
done
cp "$changes" "$outdir/"
echo "build-deb: packages in $outdir:"
ls -1 "$outdir"/*.deb

if command -v lintian >/dev/null 2>&1; then
    echo "build-deb: lintian"
    # Errors and warnings fail the build; info, pedantic and experimental tags are shown only.
    lintian --fail-on error,warning --display-info --display-experimental --pedantic \
        --tag-display-limit 0 "$changes"
    echo "build-deb: lintian passed"
else
    echo "build-deb: lintian not installed: packages not checked" >&2
    exit 1
fi
