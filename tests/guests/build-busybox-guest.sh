#!/usr/bin/env bash
# Build imprint's small, fast test guest: the stock Debian bookworm cloud
# kernel, a busybox-static initramfs that loads the virtio/ACPI modules and
# mounts /dev/vda, and a 64 MiB ext4 root disk whose /sbin/init prints the
# IMPRINT-* marker lines the end-to-end tests read from the serial console.
# See tests/guests/README.md for the marker lines and a domain XML.
#
# Output (outside the repo so CI can keep it between runs):
#   ${IMPRINT_GUEST_CACHE:-/var/cache/imprint/guests}/busybox/
#       vmlinuz  initrd.img  disk.raw  disk-ignore-acpi.raw  VERSION
# The build is skipped when VERSION matches this script's content hash.
# Set IMPRINT_GUEST_REBUILD=1 (or pass --force) to rebuild anyway.
#
# Needs root (mknod, file ownership inside the images) and the packages from
# scripts/install-deps.sh: busybox-static, e2fsprogs, cpio, kmod, apt.
set -euo pipefail

CACHE_ROOT=${IMPRINT_GUEST_CACHE:-/var/cache/imprint/guests}
OUT=$CACHE_ROOT/busybox
DISK_SIZE=64M
FORCE=${IMPRINT_GUEST_REBUILD:-0}
[[ ${1:-} == --force ]] && FORCE=1

log() { echo "build-busybox-guest: $*" >&2; }

if [[ $(id -u) -ne 0 ]]; then
    log "must run as root"
    exit 1
fi
for tool in busybox mke2fs debugfs cpio depmod modprobe dpkg-deb apt-get apt-cache flock sha256sum gzip; do
    command -v "$tool" >/dev/null || { log "missing $tool: run scripts/install-deps.sh"; exit 1; }
done
BUSYBOX=/bin/busybox
# The guest has no libc: it must be the static busybox.
applets=$("$BUSYBOX" --list) # not piped into grep -q: SIGPIPE + pipefail
if ! grep -qx acpid <<<"$applets" || ! grep -qx findfs <<<"$applets" || ldd "$BUSYBOX" >/dev/null 2>&1; then
    log "$BUSYBOX is not busybox-static with acpid; install busybox-static"
    exit 1
fi

STAMP="script-sha256=$(sha256sum "${BASH_SOURCE[0]}" | cut -d' ' -f1)"

print_outputs() {
    echo "kernel: $OUT/vmlinuz"
    echo "initrd: $OUT/initrd.img"
    echo "disk:   $OUT/disk.raw"
    echo "disk (ignores ACPI power button): $OUT/disk-ignore-acpi.raw"
    echo "cmdline: root=/dev/vda console=ttyS0"
}

up_to_date() {
    [[ -f $OUT/VERSION && -f $OUT/vmlinuz && -f $OUT/initrd.img && -f $OUT/disk.raw && -f $OUT/disk-ignore-acpi.raw ]] &&
        [[ $(head -n1 "$OUT/VERSION") == "$STAMP" ]]
}

mkdir -p "$OUT"
chmod 0755 "$CACHE_ROOT" "$OUT"
# Serialise concurrent builds (parallel CI jobs, test harnesses).
exec 9>"$OUT/.lock"
flock 9

if [[ $FORCE != 1 ]] && up_to_date; then
    log "up to date ($STAMP)"
    print_outputs
    exit 0
fi

start=$SECONDS
WORK=$(mktemp -d "$OUT/.build.XXXXXX")
trap 'rm -rf "$WORK"' EXIT
chmod 0755 "$WORK" # apt-get download runs as _apt and must reach deb/

# --- kernel ------------------------------------------------------------------
# The meta package points at the current bookworm cloud kernel
# (linux-image-<abi>-cloud-amd64). Ask apt rather than hard-coding the ABI.
KPKG=$(apt-cache depends linux-image-cloud-amd64 2>/dev/null | awk '/Depends: linux-image-[0-9]/ { print $2; exit }')
if [[ -z $KPKG ]]; then
    log "cannot resolve linux-image-cloud-amd64 (apt-get update needed?)"
    exit 1
fi
log "downloading $KPKG"
mkdir -p "$WORK/deb"
# apt drops privileges to _apt for downloads; let it write there.
chown _apt "$WORK/deb" 2>/dev/null || true
(cd "$WORK/deb" && apt-get download -q "$KPKG" >/dev/null)
dpkg-deb -x "$WORK"/deb/*.deb "$WORK/kernel"
KVER=$(ls "$WORK/kernel/lib/modules")
KDIR=$WORK/kernel/lib/modules/$KVER
# The .deb ships no modules.dep (postinst runs depmod): generate it.
depmod -b "$WORK/kernel" "$KVER"

# --- initramfs -----------------------------------------------------------------
# Modules the guest needs, in load order with their dependencies. The first
# group is required; the rest (cdrom/scsi seeds) are loaded when present.
REQUIRED_MODS=(virtio_pci virtio_blk virtio_net button evdev vfat nls_cp437 nls_ascii nls_utf8)
OPTIONAL_MODS=(virtio_scsi sd_mod sr_mod ata_piix isofs virtio_rng)
IRD=$WORK/initramfs
mkdir -p "$IRD"/{bin,dev,proc,sys,newroot,lib/modules}
: >"$IRD/modules.list"
add_module() { # $1=name $2=required(1/0)
    local deps line path rel
    if ! deps=$(modprobe -d "$WORK/kernel" -S "$KVER" --show-depends "$1" 2>&1); then
        if [[ $2 == 1 ]]; then log "required module $1 missing: $deps"; exit 1; fi
        log "optional module $1 not in $KVER, skipped"
        return 0
    fi
    while read -r line; do
        [[ $line == insmod\ * ]] || continue # "builtin X" lines need nothing
        path=${line#insmod }
        path=${path%% *}
        rel=${path#"$KDIR"/}
        grep -qxF "$rel" "$IRD/modules.list" && continue
        mkdir -p "$IRD/lib/modules/$(dirname "$rel")"
        cp "$path" "$IRD/lib/modules/$rel"
        echo "$rel" >>"$IRD/modules.list"
    done <<<"$deps"
}
for m in "${REQUIRED_MODS[@]}"; do add_module "$m" 1; done
for m in "${OPTIONAL_MODS[@]}"; do add_module "$m" 0; done

cp "$BUSYBOX" "$IRD/bin/busybox"
# The kernel opens /dev/console for init's stdio before anything mounts /dev.
mknod -m 0600 "$IRD/dev/console" c 5 1
mknod -m 0666 "$IRD/dev/null" c 1 3

cat >"$IRD/init" <<'EOF'
#!/bin/busybox sh
# imprint busybox guest, initramfs stage: load modules, mount the root disk,
# switch_root to its /sbin/init.
/bin/busybox --install -s /bin
export PATH=/bin
mount -t devtmpfs devtmpfs /dev
mount -t proc proc /proc
mount -t sysfs sysfs /sys
# Kernel messages would split the marker lines on the serial console.
echo 1 >/proc/sys/kernel/printk

fail() {
    echo "IMPRINT-ERROR initramfs: $*"
    sleep 2
    poweroff -f
}

while read -r m; do
    insmod "/lib/modules/$m" 2>/dev/null || echo "imprint-initramfs: insmod $m failed"
done </modules.list

root=/dev/vda
for arg in $(cat /proc/cmdline); do
    case $arg in root=*) root=${arg#root=} ;; esac
done
case $root in
LABEL=* | UUID=*) ;;
*) i=0; while [ ! -b "$root" ] && [ $i -lt 100 ]; do sleep 0.1; i=$((i + 1)); done ;;
esac
case $root in LABEL=* | UUID=*) root=$(findfs "$root") || fail "cannot find $root" ;; esac
[ -b "$root" ] || fail "root device $root not found"
mount -t ext4 -o rw "$root" /newroot || fail "cannot mount $root"
[ -x /newroot/sbin/init ] || fail "no /sbin/init on $root"
mount --move /dev /newroot/dev
umount /proc /sys
exec switch_root /newroot /sbin/init
EOF
chmod 0755 "$IRD/init"
(cd "$IRD" && find . -mindepth 1 | LC_ALL=C sort | cpio -o -H newc --quiet -R 0:0) | gzip -6 >"$WORK/initrd.img"

# --- root disk -------------------------------------------------------------------
ROOT=$WORK/root
mkdir -p "$ROOT"/{bin,sbin,dev,proc,sys,run,tmp,mnt/cidata,etc/acpi/PWRF,imprint,root}
cp "$BUSYBOX" "$ROOT/bin/busybox"
for applet in $applets; do
    [[ $applet == busybox || $applet == init ]] && continue
    ln -sf busybox "$ROOT/bin/$applet"
done
chmod 1777 "$ROOT/tmp"
echo imprint-busybox >"$ROOT/etc/hostname"
echo "root:x:0:0:root:/root:/bin/sh" >"$ROOT/etc/passwd"
echo "root:x:0:" >"$ROOT/etc/group"
# Known content the tests compare after capture/deploy.
echo "imprint-busybox-guest" >"$ROOT/imprint/marker"

cat >"$ROOT/sbin/init" <<'EOF'
#!/bin/sh
# imprint busybox guest, PID 1. Prints IMPRINT-* marker lines on the console
# (serial), then waits. Marker files on the disk:
#   /imprint/marker        printed as IMPRINT-MARKER <content>
#   /imprint/boot-count    incremented on every boot
#   /imprint/ignore-acpi   if present, no acpid: ACPI power button is ignored
export PATH=/bin:/sbin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
[ -c /dev/null ] || mount -t devtmpfs devtmpfs /dev
mount -t tmpfs -o mode=0755 tmpfs /run
mount -t tmpfs -o mode=1777 tmpfs /tmp
echo 1 >/proc/sys/kernel/printk
exec </dev/console >/dev/console 2>&1
hostname -F /etc/hostname
ip link set lo up

count=$(cat /imprint/boot-count 2>/dev/null || echo 0)
case $count in '' | *[!0-9]*) count=0 ;; esac
count=$((count + 1))
echo "$count" >/imprint/boot-count.tmp && mv /imprint/boot-count.tmp /imprint/boot-count
sync
echo "IMPRINT-BOOT count=$count"

for b in /sys/block/*; do
    n=${b##*/}
    case $n in loop* | ram* | zram*) continue ;; esac
    echo "IMPRINT-DISK $n sectors=$(cat "$b/size")"
done

if [ -f /imprint/marker ]; then
    echo "IMPRINT-MARKER $(cat /imprint/marker)"
else
    echo "IMPRINT-MARKER (missing)"
fi

for n in /sys/class/net/*; do
    n=${n##*/}
    [ "$n" = lo ] && continue
    echo "IMPRINT-NIC $n mac=$(cat /sys/class/net/$n/address)"
done

# --- cloud-init NoCloud seed (vfat or iso9660 labelled cidata) -------------
# (Debian's busybox-static has findfs but no blkid applet.)
seed=$(findfs LABEL=cidata 2>/dev/null || findfs LABEL=CIDATA 2>/dev/null || true)
if [ -n "$seed" ]; then
    if mount -t vfat -o ro "$seed" /mnt/cidata 2>/dev/null || mount -t iso9660 -o ro "$seed" /mnt/cidata 2>/dev/null; then
        echo "IMPRINT-SEED $seed"
        md=/mnt/cidata/meta-data
        # YAML or JSON "key: value" -> value
        mdval() {
            [ -f "$md" ] || return 0
            sed -n "s/^[[:space:]\"]*$1\"\{0,1\}[[:space:]]*:[[:space:]]*[\"']\{0,1\}\([^\"',}]*\).*/\1/p" "$md" | head -n1 | sed 's/[[:space:]]*$//'
        }
        iid=$(mdval instance-id)
        [ -n "$iid" ] && echo "IMPRINT-INSTANCE-ID $iid"
        h=$(mdval local-hostname)
        [ -n "$h" ] && hostname "$h"
        nic=
        for n in /sys/class/net/*; do
            n=${n##*/}
            [ "$n" = lo ] || { nic=$n; break; }
        done
        if [ -f /mnt/cidata/network-config ]; then
            # Addresses from network-config v1 (address:) or v2 (addresses:
            # as a list or [a, b]); routes/gateways are not applied.
            addrs=$(awk '
                function emit(s,   n, i, a) {
                    gsub(/[][",'"'"']/, " ", s); sub(/^[ \t]*-/, " ", s)
                    n = split(s, a, /[ \t]+/)
                    for (i = 1; i <= n; i++) if (a[i] ~ /^[0-9a-fA-F:.]+(\/[0-9]+)?$/ && a[i] ~ /[.:]/) print a[i]
                }
                /^[ \t]*#/ { next }
                /^[ \t]*(-[ \t]*)?addresses[ \t]*:/ { inaddr = 1; s = $0; sub(/.*addresses[ \t]*:/, "", s); emit(s); next }
                /^[ \t]*(-[ \t]*)?address[ \t]*:/ { inaddr = 0; s = $0; sub(/.*address[ \t]*:/, "", s); emit(s); next }
                inaddr && /^[ \t]*-/ { emit($0); next }
                { inaddr = 0 }
            ' /mnt/cidata/network-config)
            [ -n "$nic" ] && ip link set "$nic" up
            for a in $addrs; do
                echo "IMPRINT-ADDR $a"
                if [ -z "$nic" ]; then
                    echo "IMPRINT-WARN no network interface for $a"
                elif ! ip addr add "$a" dev "$nic"; then
                    echo "IMPRINT-WARN ip addr add $a dev $nic failed"
                fi
            done
        fi
        umount /mnt/cidata
    else
        echo "IMPRINT-WARN cannot mount seed $seed"
    fi
fi
echo "IMPRINT-HOSTNAME $(hostname)"

# Start listening for the ACPI power button before READY, so READY means a
# shutdown request will not be lost.
if [ -e /imprint/ignore-acpi ]; then
    echo "IMPRINT-ACPI ignored"
else
    acpid -c /etc/acpi -l /run/acpid.log -p /run/acpid.pid
    # acpid daemonizes: wait (max 5 s) until it holds the input devices open.
    i=0
    while [ $i -lt 50 ]; do
        pid=$(cat /run/acpid.pid 2>/dev/null)
        [ -n "$pid" ] && ls -l "/proc/$pid/fd" 2>/dev/null | grep /dev/input/event >/dev/null && break
        sleep 0.1
        i=$((i + 1))
    done
    [ $i -ge 50 ] && echo "IMPRINT-WARN acpid has no input device open"
    echo "IMPRINT-ACPI listening"
fi
echo "IMPRINT-READY"

while :; do sleep 3600; done
EOF

# busybox acpid maps the power button (KEY_POWER) to the built-in action
# PWRF/00000080, a file under its config dir.
cat >"$ROOT/etc/acpi/PWRF/00000080" <<'EOF'
#!/bin/sh
echo "IMPRINT-POWEROFF" >/dev/console
sync
mount -o remount,ro / 2>/dev/null
sync
poweroff -f
EOF
chmod 0755 "$ROOT/sbin/init" "$ROOT/etc/acpi/PWRF/00000080"

rm -f "$WORK/disk.raw"
mke2fs -q -F -t ext4 -L imprint-root -d "$ROOT" "$WORK/disk.raw" "$DISK_SIZE" >&2

# Ready-made variant whose guest ignores the ACPI power button (tests of
# forced power-off). Same content plus the empty file /imprint/ignore-acpi.
cp --sparse=always "$WORK/disk.raw" "$WORK/disk-ignore-acpi.raw"
debugfs -w -R "write /dev/null /imprint/ignore-acpi" "$WORK/disk-ignore-acpi.raw" >/dev/null 2>&1
debugfs -R "stat /imprint/ignore-acpi" "$WORK/disk-ignore-acpi.raw" 2>/dev/null | grep Inode >/dev/null ||
    { log "debugfs could not add /imprint/ignore-acpi"; exit 1; }

cp "$WORK/kernel/boot/vmlinuz-$KVER" "$WORK/vmlinuz"
chmod 0644 "$WORK/vmlinuz" "$WORK/initrd.img" "$WORK/disk.raw" "$WORK/disk-ignore-acpi.raw"
{
    echo "$STAMP"
    echo "kernel=$KVER"
    echo "kernel-package=$(dpkg-deb -f "$WORK"/deb/*.deb Package)_$(dpkg-deb -f "$WORK"/deb/*.deb Version)"
    echo "busybox=$("$BUSYBOX" | head -n1)"
    echo "built=$(date -u +%Y-%m-%dT%H:%M:%SZ)"
} >"$WORK/VERSION"

# Replace outputs; VERSION last so an interrupted build never looks current.
rm -f "$OUT/VERSION"
mv -f "$WORK/vmlinuz" "$WORK/initrd.img" "$WORK/disk.raw" "$WORK/disk-ignore-acpi.raw" "$OUT/"
mv -f "$WORK/VERSION" "$OUT/VERSION"
log "built in $((SECONDS - start)) s (kernel $KVER)"
print_outputs
