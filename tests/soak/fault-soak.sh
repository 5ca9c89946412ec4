#!/usr/bin/env bash
# Fault soak, on demand (not in CI): for MINUTES minutes, capture, deploy
# and delete on 3 real busybox guests through imprintd + imprint-agent while
# killing the agent (SIGKILL), the daemon (SIGKILL) and libvirtd at random
# moments. Then, with every fault healed and no operation running:
#   - every source guest runs (captures put guests back);
#   - `imprint store verify` is clean;
#   - after `imprint store gc --grace 0`, a dry run finds nothing more to
#     remove (no unreferenced chunk survives GC);
#   - no domain or volume is left that no operation owns (every soak-c*
#     domain is a succeeded deploy's, every pool volume belongs to a domain);
# and it prints the counts: operations by kind and end, faults by kind.
#
#   tests/soak/fault-soak.sh [MINUTES]      (default 10; root; after scripts/install-deps.sh)
#
# Exit status 0 when every check holds. Everything lives in
# /var/tmp/imprint-soak (removed at the start of the next run).
set -euo pipefail
cd "$(dirname "$0")/../.."

minutes=${1:-10}
work=/var/tmp/imprint-soak
pool=imprint-soak
host=soak-host
log() { echo "soak: $*" >&2; }

./scripts/start-services.sh >/dev/null
cargo build --locked --bins -q
bin=$PWD/target/debug
imprint=$bin/imprint
guest=$(./tests/guests/build-busybox-guest.sh)
kernel=$(sed -n 's/^kernel: *//p' <<<"$guest")
initrd=$(sed -n 's/^initrd: *//p' <<<"$guest")
disk=$(sed -n 's/^disk: *//p' <<<"$guest")

cleanup() {
    for d in $(virsh list --all --name | grep -E '^soak-' || true); do
        virsh -q destroy "$d" >/dev/null 2>&1 || true
        virsh -q undefine "$d" >/dev/null 2>&1 || true
    done
    virsh -q pool-destroy "$pool" >/dev/null 2>&1 || true
    virsh -q pool-undefine "$pool" >/dev/null 2>&1 || true
    for p in "$work"/*.pid; do
        [[ -f $p ]] && kill -9 "$(cat "$p")" 2>/dev/null || true
    done
}
cleanup
rm -rf "$work"
mkdir -p "$work"/{pool,consoles,src}
chmod 0755 "$work" "$work/pool" "$work/src"
virsh -q pool-define-as "$pool" dir --target "$work/pool" >/dev/null
virsh -q pool-start "$pool" >/dev/null

port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
export IMPRINT_ENDPOINT=http://127.0.0.1:$port
state=$work/imprintd

start_daemon() {
    "$bin/imprintd" --state-dir "$state" --store "$work/store" --listen "127.0.0.1:$port" \
        --daemon-id soak-daemon >>"$work/imprintd.log" 2>&1 &
    echo $! >"$work/imprintd.pid"
}
start_agent() {
    "$bin/imprint-agent" --store "$work/store" --journal-dir "$work/journal" \
        --listen "unix:$work/agent.sock" --daemon "$IMPRINT_ENDPOINT" --host-name "$host" \
        --host-token-file "$work/host.token" --default-pool "$pool" \
        --console-log-dir "$work/consoles" --domain-type qemu >>"$work/agent.log" 2>&1 &
    echo $! >"$work/agent.pid"
}
mkdir -p "$state"
( umask 077; "$bin/imprintd" --state-dir "$state" host add "$host" 2>/dev/null >"$work/host.token" )
token=$("$bin/imprintd" --state-dir "$state" account create soak 2>/dev/null)
"$bin/imprintd" --state-dir "$state" account allow-host soak '*'
admin=$("$bin/imprintd" --state-dir "$state" account create soak-admin --admin 2>/dev/null)
export IMPRINT_TOKEN=$token
start_daemon
start_agent
for _ in $(seq 100); do
    "$imprint" -o json host list 2>/dev/null | grep -q '"alive": true' && break
    sleep 0.2
done

# Three source guests.
for i in 0 1 2; do
    g=soak-g$i
    cp --sparse=always "$disk" "$work/src/$g.raw"
    udp=$((20000 + i * 2))
    cat >"$work/$g.xml" <<XML
<domain type='qemu'><name>$g</name><memory unit='MiB'>256</memory><vcpu>1</vcpu>
  <os><type arch='x86_64'>hvm</type><kernel>$kernel</kernel><initrd>$initrd</initrd>
    <cmdline>console=ttyS0 root=/dev/vda</cmdline></os>
  <features><acpi/><apic/></features><on_poweroff>destroy</on_poweroff>
  <devices>
    <disk type='file' device='disk'><driver name='qemu' type='raw'/><source file='$work/src/$g.raw'/><target dev='vda' bus='virtio'/></disk>
    <interface type='udp'><source address='127.0.0.1' port='$((udp + 1))'><local address='127.0.0.1' port='$udp'/></source><model type='virtio'/></interface>
    <serial type='file'><source path='$work/consoles/$g.log' append='on'/><target port='0'/></serial>
  </devices></domain>
XML
    virsh -q define "$work/$g.xml" >/dev/null
    virsh -q start "$g" >/dev/null
done
IMPRINT_TOKEN=$admin "$imprint" guest assign "$host" --all-unowned --account soak >/dev/null

# Faults, in the background, until told to stop.
: >"$work/faults"
faults() {
    while [[ ! -e $work/stop-faults ]]; do
        sleep $((5 + RANDOM % 15))
        [[ -e $work/stop-faults ]] && break
        case $((RANDOM % 3)) in
            0) kill -9 "$(cat "$work/agent.pid")" 2>/dev/null || true; sleep 1; start_agent; echo agent-sigkill >>"$work/faults" ;;
            1) kill -9 "$(cat "$work/imprintd.pid")" 2>/dev/null || true; sleep 1; start_daemon; echo daemon-sigkill >>"$work/faults" ;;
            2) pkill -x libvirtd || true; sleep 2; libvirtd -d; echo libvirtd-restart >>"$work/faults" ;;
        esac
    done
}
faults &
fault_pid=$!

deadline=$((SECONDS + minutes * 60))
n=0
: >"$work/results"
while ((SECONDS < deadline)); do
    n=$((n + 1))
    set +e
    case $((RANDOM % 3)) in
        0)
            g=soak-g$((RANDOM % 3))
            out=$("$imprint" -q -o json image capture --host "$host" --guest "$g" --name "soak-$n" \
                --shutdown-timeout 60 --wait 2>>"$work/cli.log")
            echo "capture $?" >>"$work/results"
            ;;
        1)
            img=$("$imprint" -o json image list 2>/dev/null | python3 -c '
import json, random, sys
ims = [i["id"] for i in json.load(sys.stdin)["images"] if i["state"] == "active"]
print(random.choice(ims) if ims else "")' 2>/dev/null)
            if [[ -n $img ]]; then
                "$imprint" -q image deploy "$img" --host "$host" --name "soak-c$n" --wait >/dev/null 2>>"$work/cli.log"
                echo "deploy $?" >>"$work/results"
            fi
            ;;
        2)
            # Remove one deployed copy (as its user would) and one image.
            c=$(virsh list --all --name | grep -E '^soak-c' | shuf -n1 || true)
            if [[ -n $c ]]; then
                virsh -q destroy "$c" >/dev/null 2>&1
                virsh -q undefine "$c" --remove-all-storage >/dev/null 2>&1
            fi
            img=$("$imprint" -o json image list 2>/dev/null | python3 -c '
import json, random, sys
ims = [i["id"] for i in json.load(sys.stdin)["images"] if i["state"] in ("active", "failed")]
print(random.choice(ims) if ims else "")' 2>/dev/null)
            if [[ -n $img ]]; then
                "$imprint" -q image delete "$img" >/dev/null 2>>"$work/cli.log"
                echo "delete $?" >>"$work/results"
            fi
            ;;
    esac
    set -e
done

log "stopping faults; healing"
touch "$work/stop-faults"
wait "$fault_pid" || true
pgrep -x libvirtd >/dev/null || libvirtd -d
./scripts/start-services.sh >/dev/null
kill -0 "$(cat "$work/imprintd.pid")" 2>/dev/null || start_daemon
kill -0 "$(cat "$work/agent.pid")" 2>/dev/null || start_agent
for _ in $(seq 600); do
    running=$("$imprint" -o json op list --running 2>/dev/null | python3 -c 'import json,sys; print(len(json.load(sys.stdin)["operations"]))' 2>/dev/null || echo x)
    [[ $running == 0 ]] && break
    sleep 1
done
# The agent's recovery pass runs every 15 s: give it two.
sleep 35

fail=0
check() { if eval "$2"; then log "ok: $1"; else log "FAILED: $1"; fail=1; fi; }
for i in 0 1 2; do
    check "soak-g$i runs" "[[ \$(virsh domstate soak-g$i) == running ]]"
done
check "store verify is clean" "'$imprint' store verify --store '$work/store' >/dev/null 2>&1"
"$imprint" -q store gc --store "$work/store" --grace 0 >/dev/null
check "GC leaves no unreferenced chunk" "[[ \$('$imprint' -o json store gc --store '$work/store' --grace 0 --dry-run | python3 -c 'import json,sys; r=json.load(sys.stdin); print(r[\"chunks_removed\"] + r[\"chunks_kept_recent\"])') == 0 ]]"
owned=$("$imprint" -o json op list --page-size 1000 | python3 -c '
import json, sys
print(" ".join(o["deploy"]["guest_name"] for o in json.load(sys.stdin)["operations"]
               if o["kind"] == "deploy" and o["state"] == "succeeded" and o["deploy"]))')
for d in $(virsh list --all --name | grep -E '^soak-c' || true); do
    check "domain $d belongs to a succeeded deploy" "[[ ' $owned ' == *' $d '* ]]"
done
for v in "$work"/pool/*; do
    [[ -e $v ]] || continue
    name=$(basename "$v"); dom=${name%-vd*}; dom=${dom%-cidata.img}
    check "volume $name belongs to domain $dom" "virsh dominfo '$dom' >/dev/null 2>&1"
done

echo
echo "| operations | count |"
echo "|---|---:|"
"$imprint" -o json op list --page-size 1000 | python3 -c '
import collections, json, sys
c = collections.Counter()
for o in json.load(sys.stdin)["operations"]:
    c[(o["kind"], o["state"], o["error"].split(":")[0][:60] if o["error"] else "")] += 1
for (k, s, e), n in sorted(c.items()):
    print(f"| {k} {s}" + (f" ({e})" if e else "") + f" | {n} |")'
echo
echo "| faults injected | count |"
echo "|---|---:|"
sort "$work/faults" | uniq -c | awk '{print "| " $2 " | " $1 " |"}'
echo
echo "CLI calls: $(wc -l <"$work/results"), by exit code: $(awk '{print $1"="$2}' "$work/results" | sort | uniq -c | tr '\n' ' ')"
cleanup
exit "$fail"
