#!/usr/bin/env bash
# Build the Debian packages imprint, imprintd and imprint-agent with
# dpkg-buildpackage (debian/), check them with lintian, and put them in
# target/debian/.
#
#   scripts/package.sh            # release build
#   scripts/package.sh --dev      # package the dev build (what the tests use)
#   scripts/package.sh --no-lint  # skip lintian
#
# Needs debhelper, dpkg-dev and lintian (install-deps.sh --tests installs
# them) and Rust from rustup. Install the result on a host with
#   apt-get install ./target/debian/imprintd_*.deb ./target/debian/imprint-agent_*.deb ./target/debian/imprint_*.deb
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"

PROFILE=release
LINT=1
for a in "$@"; do
    case $a in
    --dev) PROFILE=dev ;;
    --no-lint) LINT=0 ;;
    *)
        echo "usage: $0 [--dev] [--no-lint]" >&2
        exit 2
        ;;
    esac
done

for tool in cargo dpkg-buildpackage dh; do
    if ! command -v "$tool" >/dev/null; then
        echo "package.sh: $tool is missing (cargo: rustup; the rest: scripts/install-deps.sh --tests)" >&2
        exit 1
    fi
done

version=$(dpkg-parsechangelog -S Version)
arch=$(dpkg --print-architecture)
parent=$(dirname "$ROOT")
out=$ROOT/target/debian
mkdir -p "$out"

# -b: binary packages only; -us -uc: unsigned. Debug symbols of the dev
# build are large: the dev packages carry none.
opts=()
[[ $PROFILE == dev ]] && export DEB_BUILD_OPTIONS="noautodbgsym ${DEB_BUILD_OPTIONS:-}"
IMPRINT_PROFILE=$PROFILE dpkg-buildpackage -b -us -uc "${opts[@]}" >&2

# dpkg-buildpackage writes next to the source tree; collect what it made.
changes=$parent/imprint_${version}_${arch}.changes
files=("$changes")
while read -r f; do
    files+=("$parent/$f")
done < <(sed -n '/^Files:/,/^[A-Z]/s/^ [0-9a-f]\{32\} [0-9]* [^ ]* [^ ]* //p' "$changes")
mv -f "${files[@]}" "$out/"
echo "package.sh: $(cd "$out" && ls ./*_"${version}"_"${arch}".*deb | tr '\n' ' ')in $out" >&2

if [[ $LINT -eq 1 ]]; then
    # Remaining tags are explained in debian/*.lintian-overrides.
    lintian --fail-on error,warning --display-info "$out/imprint_${version}_${arch}.changes" >&2
fi
echo "$out"
