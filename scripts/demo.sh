#!/usr/bin/env bash
# README, command 1: set up a fresh Debian 12 machine and run the main job.
#
# Installs the packages (libvirt/QEMU from bookworm-backports, protoc, ...),
# starts libvirtd, builds imprint, starts a daemon (SQLite catalog) and an
# agent (directory store) on loopback, boots the small test guest, captures
# it with a progress bar, deploys a copy with a static IP and boots it,
# captures the source again (deduplicated), and shows both images.
#
# The daemon, the agent and both guests keep running afterwards so you can
# go on; the last lines say how, and how to stop everything
# (`scripts/demo.sh --stop`). Run as root.
set -euo pipefail
cd "$(dirname "$0")/.."

work=${IMPRINT_DEMO_DIR:-/var/tmp/imprint-demo}
src=imprint-demo-src
copy=imprint-demo-copy
pool=imprint-demo

stop() {
    for d in "$copy" "$src"; do
        virsh -q destroy "$d" >/dev/null 2>&1 || true
        virsh -q undefine "$d" --nvram >/dev/null 2>&1 || virsh -q undefine "$d" >/dev/null 2>&1 || true
    done
    virsh -q pool-destroy "$pool" >/dev/null 2>&1 || true
    virsh -q pool-undefine "$pool" >/dev/null 2>&1 || true
    for p in "$work"/*.pid; do
        [[ -f $p ]] && kill "$(cat "$p")" 2>/dev/null || true
    done
    rm -rf "$work"
}

if [[ ${1:-} == --stop ]]; then
    stop
    echo "demo stopped and removed"
    exit 0
fi

if ! command -v cargo >/dev/null; then
    echo "demo.sh: cargo is missing: install a Rust toolchain (1.94 or newer: sqlx 0.9) first" >&2
    exit 2
fi

./scripts/install-deps.sh
domain_type=$(./scripts/start-services.sh | sed -n 's/^IMPRINT_DOMAIN_TYPE=//p')
cargo build --release --locked --bin imprintd --bin imprint-agent --bin imprint
bin=$PWD/target/release
imprint=$bin/imprint

guest=$(./tests/guests/build-busybox-guest.sh)
kernel=$(sed -n 's/^kernel: *//p' <<<"$guest")
initrd=$(sed -n 's/^initrd: *//p' <<<"$guest")
disk=$(sed -n 's/^disk: *//p' <<<"$guest")

echo "== fresh demo directory $work"
stop
mkdir -p "$work"/{pool,consoles}
chmod 0755 "$work" "$work/pool"
virsh -q pool-define-as "$pool" dir --target "$work/pool" >/dev/null
virsh -q pool-start "$pool" >/dev/null

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
port=$(free_port)
export IMPRINT_ENDPOINT=http://127.0.0.1:$port

# Wait for a server's "listening on" line in its log.
wait_listening() {
    for _ in $(seq 100); do
        grep -q "^listening on" "$1" 2>/dev/null && return 0
        sleep 0.1
    done
    echo "demo.sh: $2 did not start; its log:" >&2
    cat "$1" "${1%.out}.log" >&2 || true
    exit 1
}

echo "== start imprintd (SQLite catalog in $work/imprintd, store $work/store)"
# The demo installs no libguestfs (its guest has no OS to lint or
# generalize): no lint of each new image.
"$bin/imprintd" --state-dir "$work/imprintd" --store "$work/store" --listen "127.0.0.1:$port" \
    --auto-lint false >"$work/imprintd.out" 2>"$work/imprintd.log" &
echo $! >"$work/imprintd.pid"
wait_listening "$work/imprintd.out" imprintd

echo "== start imprint-agent for host demo-host (its socket $work/agent.sock, its host token)"
( umask 077; "$bin/imprintd" --state-dir "$work/imprintd" host add demo-host 2>/dev/null >"$work/host.token" )
"$bin/imprint-agent" --store "$work/store" --journal-dir "$work/journal" --listen "unix:$work/agent.sock" \
    --daemon "$IMPRINT_ENDPOINT" --host-name demo-host --host-token-file "$work/host.token" --default-pool "$pool" \
    --console-log-dir "$work/consoles" --domain-type "${domain_type:-auto}" \
    >"$work/agent.out" 2>"$work/agent.log" &
echo $! >"$work/agent.pid"
wait_listening "$work/agent.out" imprint-agent

echo "== create account demo (may use every host)"
IMPRINT_TOKEN=$("$bin/imprintd" --state-dir "$work/imprintd" account create demo --can-publish 2>/dev/null)
export IMPRINT_TOKEN
"$bin/imprintd" --state-dir "$work/imprintd" account allow-host demo '*'
echo "$IMPRINT_TOKEN" >"$work/token"
for _ in $(seq 100); do
    "$imprint" -o json host list | grep -q '"alive": true' && break
    sleep 0.2
done
"$imprint" host list

echo "== boot the source guest $src"
cp --sparse=always "$disk" "$work/pool/src-vda.raw"
cp "$kernel" "$work/vmlinuz"
cp "$initrd" "$work/initrd.img"
udp=$(free_port)
cat >"$work/$src.xml" <<XML
<domain type='${domain_type:-qemu}'>
  <name>$src</name>
  <memory unit='MiB'>256</memory>
  <vcpu>1</vcpu>
  <os>
    <type arch='x86_64'>hvm</type>
    <kernel>$work/vmlinuz</kernel>
    <initrd>$work/initrd.img</initrd>
    <cmdline>console=ttyS0 root=/dev/vda</cmdline>
  </os>
  <features><acpi/><apic/></features>
  <on_poweroff>destroy</on_poweroff>
  <devices>
    <disk type='file' device='disk'><driver name='qemu' type='raw'/><source file='$work/pool/src-vda.raw'/><target dev='vda' bus='virtio'/></disk>
    <interface type='udp'>
      <source address='127.0.0.1' port='$((udp + 1))'><local address='127.0.0.1' port='$udp'/></source>
      <model type='virtio'/>
    </interface>
    <serial type='file'><source path='$work/consoles/$src.log' append='on'/><target port='0'/></serial>
    <console type='file'><source path='$work/consoles/$src.log' append='on'/><target type='serial' port='0'/></console>
  </devices>
</domain>
XML
virsh -q define "$work/$src.xml" >/dev/null
virsh -q start "$src" >/dev/null

wait_console() { # log pattern count
    for _ in $(seq 600); do
        [[ $(tr -d '\r' <"$1" 2>/dev/null | grep -c "$2") -ge $3 ]] && return 0
        sleep 0.2
    done
    echo "demo.sh: no '$2' on $1" >&2
    exit 1
}
wait_console "$work/consoles/$src.log" IMPRINT-READY 1
echo "   $(tr -d '\r' <"$work/consoles/$src.log" | grep -m1 IMPRINT-MARKER)"

echo "== an admin gives guest $src (made with virsh, nobody's yet) to account demo"
admin_token=$("$bin/imprintd" --state-dir "$work/imprintd" account create demo-admin --admin 2>/dev/null)
IMPRINT_TOKEN=$admin_token "$imprint" guest assign demo-host "$src" --account demo
"$imprint" guest list --host demo-host

echo "== capture $src while it runs (ACPI shutdown, read, start again)"
"$imprint" -o json image capture --host demo-host --guest "$src" --name demo-web --tag demo \
    --notes "busybox test guest" --shutdown-timeout 120 --wait >"$work/capture.json"
image=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["capture"]["image_id"])' "$work/capture.json")

echo "== deploy image $image as $copy: 128 MiB disk, 192.0.2.50/24, host name demo-copy"
# --keep-identity: the busybox guest has no operating system for
# virt-sysprep to generalize (a real OS gets a fresh identity by default).
"$imprint" image deploy "$image" --host demo-host --name "$copy" --disk-size 128M \
    --hostname demo-copy --nic addr=192.0.2.50/24,gw4=192.0.2.1 --keep-identity --start --wait >/dev/null
wait_console "$work/consoles/$copy.log" IMPRINT-READY 1
echo "   the copy booted and says:"
tr -d '\r' <"$work/consoles/$copy.log" | grep -E 'IMPRINT-(MARKER|HOSTNAME|ADDR|DISK)' | sed 's/^/     /'

echo "== capture $src again: only what changed is stored"
"$imprint" -o json image capture --host demo-host --guest "$src" --name demo-web-2 --tag demo \
    --shutdown-timeout 120 --wait >"$work/capture2.json"
python3 - "$work/capture.json" "$work/capture2.json" <<'PY'
import json, sys
for path in sys.argv[1:]:
    c = json.load(open(path))["capture"]
    mib = lambda n: f"{n / 2**20:.1f} MiB"
    print(f"   {c['image_id']}: read {mib(c['bytes_read'])}, stored {mib(c['bytes_stored'])}, "
          f"deduplicated {mib(c['bytes_deduplicated'])}, holes skipped {mib(c['zero_bytes_skipped'])}, "
          f"downtime {c['downtime_seconds']:.1f} s (disks read in {c['read_seconds']:.1f} s"
          + (" while it ran)" if c["point_in_time"] else ")"))
PY
"$imprint" image list
sleep 1 # the daemon recounts each image's own bytes just after a capture
"$imprint" image show "$image"
echo "   store on disk: $(du -sh --apparent-size "$work/store/chunks" | cut -f1) of chunks for two images of a $(du -h --apparent-size "$disk" | cut -f1) disk"

cat <<TXT

The daemon (imprintd, $IMPRINT_ENDPOINT), the agent and both guests are running.
Go on with:
  export IMPRINT_ENDPOINT=$IMPRINT_ENDPOINT IMPRINT_TOKEN=\$(cat $work/token)
  $imprint image list
  $imprint image show $image
  $imprint -o json op list
  $imprint image deploy $image --host demo-host --name another --keep-identity --start --wait
  grpcurl -plaintext -H "authorization: Bearer \$IMPRINT_TOKEN" ${IMPRINT_ENDPOINT#http://} imprint.v1.ImageService/ListImages
Logs: $work/imprintd.log $work/agent.log; consoles: $work/consoles/
Stop and remove everything: scripts/demo.sh --stop
TXT
