#!/usr/bin/env bash
# Install every Debian package imprint needs on a fresh Debian 12 (bookworm)
# machine. Run as root. Idempotent: when everything is already installed it
# only checks and exits (no apt-get update), so CI reruns are fast.
#
# libvirt and QEMU come from bookworm-backports: the machine image ships
# qemu-utils 10.0 from backports, which conflicts with bookworm's QEMU 7.2.
#
# With --tests it also installs what only the test suite needs: libguestfs
# (virt-sysprep gives deployed clones a fresh identity; the agent needs it
# for deploys without --keep-identity, the demo deploys with it) with a
# kernel for its appliance, and the S3 server.
set -euo pipefail

TESTS=0
[[ ${1:-} == --tests ]] && TESTS=1

if [[ $(id -u) -ne 0 ]]; then
    echo "install-deps.sh: must run as root" >&2
    exit 1
fi

export DEBIAN_FRONTEND=noninteractive
BACKPORTS_SUITE=bookworm-backports
BACKPORTS_FILE=/etc/apt/sources.list.d/bookworm-backports.sources

# libvirt + QEMU, installed with -t bookworm-backports.
BACKPORTS_PKGS=(
    libvirt-daemon libvirt-daemon-driver-qemu libvirt-daemon-driver-storage
    libvirt-clients libvirt-dev qemu-system-x86 qemu-utils
)
# Build tools, test services and what tests/guests/*.sh use (grub-pc-bin:
# the grub guest's boot loader; grub-efi-amd64-bin: the uefi guest's, and
# ovmf: the UEFI firmware libvirt picks for <os firmware='efi'>); openssl
# (TLS test certificates), python3 (demo, the uefi guest's GPT), systemd
# (systemd-analyze in tests).
MAIN_PKGS=(
    protobuf-compiler pkg-config zstd postgresql
    debootstrap busybox-static e2fsprogs dosfstools mtools grub-pc-bin
    grub-efi-amd64-bin ovmf
    cpio kmod gzip xz-utils util-linux procps openssl python3 systemd
)

# Test suite only: libguestfs's tools and a kernel for their appliance
# (supermin builds it from the host's kernel and packages: no kernel, no
# appliance), and udev from backports (libguestfs needs udev, whose
# bookworm version conflicts with the backports libudev1 systemd pulls).
TEST_BACKPORTS_PKGS=(udev)
# libguestfs-xfs puts XFS in the appliance (the generalization test's XFS
# roots). The packaging test builds the Debian packages (debhelper,
# lintian); the Python client and Ansible tests make a venv (python3-venv).
TEST_PKGS=(libguestfs-tools guestfs-tools libguestfs-xfs linux-image-cloud-amd64 debhelper lintian python3-venv)
if [[ $TESTS -eq 0 ]]; then
    TEST_BACKPORTS_PKGS=()
    TEST_PKGS=()
fi

# The S3 server the store's tests run against (a Rust crate, no Debian
# package): s3s-fs 0.14.1 (0.15+ needs a newer Rust), into cargo's bin dir.
S3S_FS_VERSION=0.14.1
install_s3s_fs() {
    local bin="${CARGO_HOME:-$HOME/.cargo}/bin/s3s-fs"
    if [[ -x $bin ]] && "$bin" --version 2>/dev/null | grep -q "$S3S_FS_VERSION"; then
        return
    fi
    if ! command -v cargo >/dev/null; then
        echo "install-deps.sh: cargo is missing: cannot install s3s-fs (the S3 tests need it)" >&2
        return
    fi
    echo "install-deps.sh: installing s3s-fs $S3S_FS_VERSION (cargo install, ~3 min)"
    cargo install --quiet --locked "s3s-fs@$S3S_FS_VERSION" --features binary
}

is_installed() {
    [[ $(dpkg-query -W -f='${db:Status-Status}' "$1" 2>/dev/null || true) == installed ]]
}

missing=()
for p in "${BACKPORTS_PKGS[@]}" "${MAIN_PKGS[@]}" "${TEST_BACKPORTS_PKGS[@]}" "${TEST_PKGS[@]}"; do
    is_installed "$p" || missing+=("$p")
done
# libvirt from bookworm itself (9.0) would be "installed" but wrong: require 10+.
if is_installed libvirt-daemon; then
    v=$(dpkg-query -W -f='${Version}' libvirt-daemon)
    if dpkg --compare-versions "$v" lt 10; then missing+=(libvirt-daemon); fi
fi

if [[ ${#missing[@]} -eq 0 ]] && grep -rqs "$BACKPORTS_SUITE" /etc/apt/sources.list /etc/apt/sources.list.d/; then
    [[ $TESTS -eq 1 ]] && install_s3s_fs
    echo "install-deps.sh: all packages already installed"
    exit 0
fi

# --- bookworm-backports source -------------------------------------------
# Reuse the URI and keyring of the machine's main Debian source so we hit the
# same (reachable) mirror.
if ! grep -rqs "$BACKPORTS_SUITE" /etc/apt/sources.list /etc/apt/sources.list.d/; then
    uri="" keyring=""
    if [[ -f /etc/apt/sources.list.d/debian.sources ]]; then
        # Take the deb822 stanza whose Suites contains plain "bookworm".
        read -r uri keyring < <(awk '
            BEGIN { RS=""; FS="\n" }
            {
                u=""; k=""; s=""
                for (i = 1; i <= NF; i++) {
                    if ($i ~ /^URIs:/)      { u=$i; sub(/^URIs:[ \t]*/, "", u); split(u, a, " "); u=a[1] }
                    if ($i ~ /^Signed-By:/) { k=$i; sub(/^Signed-By:[ \t]*/, "", k) }
                    if ($i ~ /^Suites:/)    { s=" " $i " " }
                }
                if (s ~ / bookworm / && u != "") { print u, (k == "" ? "-" : k); exit }
            }' /etc/apt/sources.list.d/debian.sources) || true
    fi
    if [[ -z $uri && -f /etc/apt/sources.list ]]; then
        # One-line format: deb [signed-by=...] URI bookworm main
        uri=$(awk '$1=="deb" { for (i=2;i<=NF;i++) if ($i !~ /^\[/ && $i !~ /\]$/) { if ($(i+1)=="bookworm") { print $i; exit } } }' /etc/apt/sources.list) || true
    fi
    uri=${uri:-http://deb.debian.org/debian}
    if [[ -z $keyring || $keyring == - ]]; then
        keyring=/usr/share/keyrings/debian-archive-keyring.gpg
    fi
    echo "install-deps.sh: adding $BACKPORTS_SUITE from $uri"
    cat >"$BACKPORTS_FILE" <<EOF
# Added by imprint scripts/install-deps.sh: libvirt 11 / QEMU 10 come from here.
Types: deb
URIs: $uri
Suites: $BACKPORTS_SUITE
Components: main
Signed-By: $keyring
EOF
fi

echo "install-deps.sh: installing: ${missing[*]:-(backports source only)}"
apt-get update -q

# Backports first (QEMU/libvirt), then bookworm packages.
apt-get install -y -q --no-install-recommends -t "$BACKPORTS_SUITE" "${BACKPORTS_PKGS[@]}" "${TEST_BACKPORTS_PKGS[@]}"
apt-get install -y -q --no-install-recommends "${MAIN_PKGS[@]}" "${TEST_PKGS[@]}"

# Without udev nobody creates the kvm group; QEMU runs as libvirt-qemu:kvm.
getent group kvm >/dev/null || groupadd --system kvm

[[ $TESTS -eq 1 ]] && install_s3s_fs

echo "install-deps.sh: done"
