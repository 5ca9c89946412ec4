#!/usr/bin/env bash
# Build the imprint.cloud collection, install it into DIR, render every
# module's documentation with ansible-doc and run `ansible-test sanity` on
# the installed copy (ansible-test needs the ansible_collections/NS/NAME
# layout, which the source tree does not have).
#
#   clients/ansible/tests/sanity.sh DIR [ANSIBLE-TEST ARGS...]
#
# Runs in the project's venv (scripts/python-venv.sh). ansible-test makes a
# venv per sanity test and fills it from PyPI; those are kept in
# target/ansible-test-home (its HOME) and reused while ansible-core is
# unchanged. It bootstraps pip in them with a get-pip.py it downloads from
# a host outside PyPI; the stand-in written below does the same with
# ensurepip and pip from PyPI.
set -euo pipefail

DIR=${1:?usage: sanity.sh DIR [ANSIBLE-TEST ARGS...]}
shift
ROOT=$(cd "$(dirname "$0")/../../.." && pwd)
VENV=$("$ROOT/scripts/python-venv.sh")
COLLECTION=$ROOT/clients/ansible
mkdir -p "$DIR"
DIR=$(cd "$DIR" && pwd)

"$VENV/bin/ansible-galaxy" collection build "$COLLECTION" --output-path "$DIR" --force >/dev/null
version=$(sed -n 's/^version: *//p' "$COLLECTION/galaxy.yml")
"$VENV/bin/ansible-galaxy" collection install "$DIR/imprint-cloud-$version.tar.gz" \
    -p "$DIR/collections" --force >/dev/null 2>&1
INSTALLED=$DIR/collections/ansible_collections/imprint/cloud
echo "installed: $INSTALLED"

export ANSIBLE_COLLECTIONS_PATH=$DIR/collections ANSIBLE_NOCOLOR=1
for module in "$INSTALLED"/plugins/modules/*.py; do
    name=imprint.cloud.$(basename "$module" .py)
    if ! out=$("$VENV/bin/ansible-doc" "$name" 2>&1) || [[ $out != *"MODULE $name"* ]]; then
        echo "ansible-doc $name failed:" >&2
        echo "$out" >&2
        exit 1
    fi
    echo "ansible-doc $name: ok"
done

HOME=$ROOT/target/ansible-test-home
export HOME
cache=$HOME/.ansible/test/cache
mkdir -p "$cache"
pip_version=$("$VENV/bin/python" - <<'EOF'
import re, ansible_test, pathlib
src = pathlib.Path(ansible_test.__file__).parent / '_internal' / 'python_requirements.py'
print(re.search(r"pip='([0-9.]+)'", src.read_text()).group(1))
EOF
)
cat >"$cache/get_pip_${pip_version//./_}.py" <<'EOF'
# Stands in for get-pip.py: ansible-test runs it in a new venv with pip's
# arguments (--disable-pip-version-check pip==X --no-setuptools --no-wheel).
import subprocess
import sys

args = [a for a in sys.argv[1:] if a not in ('--no-setuptools', '--no-wheel')]
subprocess.check_call([sys.executable, '-m', 'ensurepip', '--default-pip'], stdout=subprocess.DEVNULL)
subprocess.check_call([sys.executable, '-m', 'pip', 'install', '--quiet'] + args)
EOF

cd "$INSTALLED"
start=$(date +%s)
"$VENV/bin/ansible-test" sanity --python "$("$VENV/bin/python" -c 'import sys; print("%d.%d" % sys.version_info[:2])')" \
    --color no "$@"
echo "ansible-test sanity: passed in $(($(date +%s) - start)) s"
