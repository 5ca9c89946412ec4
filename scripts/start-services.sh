#!/usr/bin/env bash
# Start the host services imprint's tests need: virtlogd + libvirtd (there is
# no systemd as PID 1 here, so we run the daemons ourselves). Idempotent.
#
#   scripts/start-services.sh          start (if needed), wait, print versions
#   scripts/start-services.sh --stop   stop virtlogd/libvirtd started this way
#
# The last line of stdout is always IMPRINT_DOMAIN_TYPE=kvm|qemu: `kvm` only
# when hardware virtualisation really works, else `qemu` (TCG). Tests read it
# (or call this script and eval the last line).
# Env: IMPRINT_LIBVIRT_WAIT (seconds to wait for libvirtd, default 30).
set -euo pipefail

URI=qemu:///system
WAIT=${IMPRINT_LIBVIRT_WAIT:-30}

log() { echo "start-services.sh: $*" >&2; }

if [[ $(id -u) -ne 0 ]]; then
    log "must run as root"
    exit 1
fi

# Exact-name match (-x) so we never hit unrelated processes.
daemon_pids() { pgrep -x "$1" || true; }

stop_daemon() {
    local name=$1 pids pid i
    pids=$(daemon_pids "$name")
    [[ -z $pids ]] && return 0
    for pid in $pids; do kill "$pid" 2>/dev/null || true; done
    for ((i = 0; i < 50; i++)); do
        [[ -z $(daemon_pids "$name") ]] && { log "stopped $name"; return 0; }
        sleep 0.2
    done
    log "$name did not stop after SIGTERM; sending SIGKILL"
    for pid in $(daemon_pids "$name"); do kill -9 "$pid" 2>/dev/null || true; done
}

if [[ ${1:-} == --stop ]]; then
    # libvirtd first: it holds connections to virtlogd.
    stop_daemon libvirtd
    stop_daemon virtlogd
    exit 0
elif [[ $# -gt 0 ]]; then
    log "usage: $0 [--stop]"
    exit 2
fi

for bin in virtlogd libvirtd virsh; do
    command -v "$bin" >/dev/null || { log "$bin not found: run scripts/install-deps.sh first"; exit 1; }
done

# --- /dev/kvm --------------------------------------------------------------
# Without udev /dev/kvm is 0600 root:root and QEMU (libvirt-qemu:kvm) fails
# with a misleading "Could not access KVM kernel module".
if [[ -e /dev/kvm ]]; then
    getent group kvm >/dev/null || groupadd --system kvm
    chgrp kvm /dev/kvm
    chmod 0660 /dev/kvm
fi

# --- daemons -----------------------------------------------------------------
# virtlogd must be up before any domain starts (libvirt sends QEMU's stdio to
# it). libvirtd must start after every driver package is installed, which
# install-deps.sh guarantees when run first.
mkdir -p /var/log/libvirt/qemu /run/libvirt
if [[ -z $(daemon_pids virtlogd) ]]; then
    log "starting virtlogd"
    virtlogd -d
fi
if [[ -z $(daemon_pids libvirtd) ]]; then
    log "starting libvirtd"
    libvirtd -d
fi

deadline=$((SECONDS + WAIT))
until virsh -c "$URI" version >/dev/null 2>&1; do
    if ((SECONDS >= deadline)); then
        log "ERROR: libvirtd did not answer on $URI within ${WAIT}s"
        virsh -c "$URI" version >&2 || true
        exit 1
    fi
    sleep 0.5
done

virsh -c "$URI" version --daemon | sed -n 's/^Using library: /libvirt library: /p; s/^Running against daemon: /libvirt daemon: /p; s/^Running hypervisor: /hypervisor: /p'

# --- domain type -------------------------------------------------------------
# Hardware KVM = vmx/svm CPU flag and not the PVM (kvm_pvm) paravirtual
# module, under which stock guest kernels hang. Otherwise use TCG.
domain_type=qemu
reason=""
if [[ ! -e /dev/kvm ]]; then
    reason="no /dev/kvm"
elif [[ -d /sys/module/kvm_pvm ]]; then
    reason="/dev/kvm is PVM (kvm_pvm loaded)"
elif ! grep -qwE 'vmx|svm' /proc/cpuinfo; then
    reason="no vmx/svm in /proc/cpuinfo"
else
    domain_type=kvm
    reason="hardware KVM available"
fi
echo "hardware KVM: $([[ $domain_type == kvm ]] && echo yes || echo no) ($reason)"
echo "IMPRINT_DOMAIN_TYPE=$domain_type"
