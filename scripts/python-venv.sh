#!/usr/bin/env bash
# Make (or reuse) the Python venv the client and Ansible tests run in:
# Debian's python3 with clients/requirements-test.txt installed, nothing
# in the system Python. Prints the venv's directory.
#
#   scripts/python-venv.sh [DIR]     # default: target/python-venv
#
# Reused while the requirements file is unchanged (a stamp holds its hash),
# so a rerun costs nothing; a change rebuilds it from scratch.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
VENV=${1:-$ROOT/target/python-venv}
REQ=$ROOT/clients/requirements-test.txt
PYTHON=${IMPRINT_PYTHON:-/usr/bin/python3}

want=$(sha256sum "$REQ" | cut -d' ' -f1)
if [[ -x $VENV/bin/python && $(cat "$VENV/.requirements" 2>/dev/null) == "$want" ]]; then
    echo "$VENV"
    exit 0
fi
if ! "$PYTHON" -c 'import venv, ensurepip' 2>/dev/null; then
    echo "python-venv.sh: $PYTHON cannot make venvs (apt-get install python3-venv)" >&2
    exit 1
fi
rm -rf "$VENV"
"$PYTHON" -m venv "$VENV" >&2
"$VENV/bin/pip" install --quiet --disable-pip-version-check -r "$REQ" >&2
echo "$want" >"$VENV/.requirements"
echo "$VENV"
