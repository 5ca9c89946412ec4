#!/usr/bin/env bash
# Build the imprint-client wheel with the venv of scripts/python-venv.sh,
# from a scratch copy of the sources and protos: builds running at once
# share no build/ directory, and nothing is written into the tree.
# Prints the wheel's path.
#
#   clients/python/build-wheel.sh [OUTDIR]     # default: clients/python/dist
set -euo pipefail

HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
OUT=$(realpath -m "${1:-$HERE/dist}")
VENV=$("$ROOT/scripts/python-venv.sh")

scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT
mkdir -p "$scratch/clients/python" "$scratch/proto" "$OUT"
cp -r "$HERE/pyproject.toml" "$HERE/setup.py" "$HERE/README.md" "$HERE/src" "$scratch/clients/python/"
find "$scratch/clients/python/src" \( -name '*.egg-info' -o -name __pycache__ \) -prune -exec rm -rf {} +
cp -r "$ROOT/proto/imprint" "$scratch/proto/"
cp "$ROOT/Cargo.toml" "$scratch/"
"$VENV/bin/python" -m build --wheel --no-isolation --outdir "$scratch/dist" "$scratch/clients/python" >&2
wheel=$(echo "$scratch"/dist/imprint_client-*.whl)
cp "$wheel" "$OUT/"
echo "$OUT/${wheel##*/}"
