#!/usr/bin/env bash
# Build imprint's realistic test guest: a debootstrap'ed Debian bookworm
# (systemd, udev, cloud-init, openssh-server, stock cloud kernel) on a 1 GiB
# ext4 disk, plus the kernel and initrd pulled out of it for libvirt direct
# kernel boot (cmdline "root=/dev/vda console=ttyS0"). A small systemd unit
# prints the same IMPRINT-* marker lines as the busybox guest on the serial
# console, plus the guest's identity (machine-id, SSH host key fingerprint).
# This disk (1 GiB, ~450 MiB allocated) is also the capture benchmark input.
#
# Output (outside the repo so CI can keep it between runs):
#   ${IMPRINT_GUEST_CACHE:-/var/cache/imprint/guests}/debian/
#       vmlinuz  initrd.img  disk.raw  VERSION
# The build is skipped when VERSION matches this script's content hash.
# Set IMPRINT_GUEST_REBUILD=1 (or pass --force) to rebuild anyway.
# IMPRINT_DEBIAN_MIRROR overrides the mirror (default: the one this machine's
# apt sources use).
#
# Needs root and debootstrap + e2fsprogs (scripts/install-deps.sh). ~3-4 min.
set -euo pipefail

CACHE_ROOT=${IMPRINT_GUEST_CACHE:-/var/cache/imprint/guests}
OUT=$CACHE_ROOT/debian
DISK_SIZE=1G
SUITE=bookworm
FORCE=${IMPRINT_GUEST_REBUILD:-0}
[[ ${1:-} == --force ]] && FORCE=1
# debootstrap does not resolve virtual packages: python3-cryptography (via
# cloud-init) needs python3-cffi-backend-api-*, provided by python3-cffi-backend.
# openssh-server: the image carries SSH host keys (part of a clone's
# identity, shown by IMPRINT-SSH-HOSTKEY).
INCLUDE=linux-image-cloud-amd64,systemd-sysv,udev,dbus,kmod,iproute2,cloud-init,python3-cffi-backend,e2fsprogs,procps,qemu-guest-agent,openssh-server

log() { echo "build-debian-guest: $*" >&2; }

if [[ $(id -u) -ne 0 ]]; then
    log "must run as root"
    exit 1
fi
for tool in debootstrap mke2fs flock sha256sum chroot; do
    command -v "$tool" >/dev/null || { log "missing $tool: run scripts/install-deps.sh"; exit 1; }
done

STAMP="script-sha256=$(sha256sum "${BASH_SOURCE[0]}" | cut -d' ' -f1)"

print_outputs() {
    echo "kernel: $OUT/vmlinuz"
    echo "initrd: $OUT/initrd.img"
    echo "disk:   $OUT/disk.raw"
    echo "cmdline: root=/dev/vda console=ttyS0"
}

up_to_date() {
    [[ -f $OUT/VERSION && -f $OUT/vmlinuz && -f $OUT/initrd.img && -f $OUT/disk.raw ]] &&
        [[ $(head -n1 "$OUT/VERSION") == "$STAMP" ]]
}

# Mirror: the URI of the machine's main Debian source (the only one reachable
# here), else deb.debian.org.
detect_mirror() {
    local uri=""
    if [[ -f /etc/apt/sources.list.d/debian.sources ]]; then
        uri=$(awk 'BEGIN { RS=""; FS="\n" }
            { u=""; s=""
              for (i = 1; i <= NF; i++) {
                  if ($i ~ /^URIs:/)   { u=$i; sub(/^URIs:[ \t]*/, "", u); split(u, a, " "); u=a[1] }
                  if ($i ~ /^Suites:/) { s=" " $i " " } }
              if (s ~ / bookworm / && u != "") { print u; exit } }' /etc/apt/sources.list.d/debian.sources) || true
    fi
    if [[ -z $uri && -f /etc/apt/sources.list ]]; then
        uri=$(awk '$1=="deb" { for (i=2;i<NF;i++) if ($i !~ /^\[/ && $i !~ /\]$/ && $(i+1)=="bookworm") { print $i; exit } }' /etc/apt/sources.list) || true
    fi
    echo "${uri:-http://deb.debian.org/debian}"
}
MIRROR=${IMPRINT_DEBIAN_MIRROR:-$(detect_mirror)}

mkdir -p "$OUT"
chmod 0755 "$CACHE_ROOT" "$OUT"
exec 9>"$OUT/.lock" # serialise concurrent builds
flock 9

if [[ $FORCE != 1 ]] && up_to_date; then
    log "up to date ($STAMP)"
    print_outputs
    exit 0
fi

start=$SECONDS
WORK=$(mktemp -d "$OUT/.build.XXXXXX")
R=$WORK/rootfs
cleanup() {
    # Never leave mounts behind inside the rootfs, then drop the work dir.
    local m
    for m in "$R/proc" "$R/sys" "$R/dev/pts" "$R/dev"; do
        if mountpoint -q "$m" 2>/dev/null; then umount -l "$m" || true; fi
    done
    # rm -rf through a still bind-mounted /dev would delete the host's nodes.
    if awk -v r="$R/" 'index($2, r) == 1 { found = 1 } END { exit !found }' /proc/mounts; then
        log "mounts left under $R; not removing $WORK"
    else
        rm -rf "$WORK"
    fi
}
trap cleanup EXIT

log "debootstrap $SUITE from $MIRROR (this takes a few minutes)"
debootstrap --variant=minbase --components=main --include="$INCLUDE" \
    "$SUITE" "$R" "$MIRROR" >"$WORK/debootstrap.log" 2>&1 || {
    tail -n 30 "$WORK/debootstrap.log" >&2
    [[ -f $R/debootstrap/debootstrap.log ]] && tail -n 30 "$R/debootstrap/debootstrap.log" >&2
    log "debootstrap failed"
    exit 1
}
log "debootstrap done after $((SECONDS - start)) s"

in_root() { LC_ALL=C DEBIAN_FRONTEND=noninteractive chroot "$R" "$@"; }

# --- base system ------------------------------------------------------------------
echo imprint-debian >"$R/etc/hostname"
cat >"$R/etc/hosts" <<'EOF'
127.0.0.1	localhost
127.0.1.1	imprint-debian
::1		localhost ip6-localhost ip6-loopback
EOF
# No fsck pass: e2fsck on every boot only slows TCG boots.
echo "/dev/vda / ext4 rw,errors=remount-ro 0 0" >"$R/etc/fstab"
# The image carries an identity, as a captured guest does: a machine-id made
# here (a clone that keeps it shows the same one) and SSH host keys (below).
# Generalization (virt-sysprep) empties /etc/machine-id, and systemd then
# makes a new one at boot. The dbus copy goes (systemd-machine-id-setup would
# reuse it; tmpfiles links it to /etc/machine-id at boot). No DNS here either.
rm -f "$R/var/lib/dbus/machine-id" "$R/etc/resolv.conf"
: >"$R/etc/machine-id"
systemd-machine-id-setup --root "$R" >/dev/null 2>&1 || in_root dbus-uuidgen >"$R/etc/machine-id"
if ! grep -Eqx '[0-9a-f]{32}' "$R/etc/machine-id"; then
    log "no machine-id in the image: $(cat "$R/etc/machine-id")"
    exit 1
fi
# Keep kernel messages off the console so marker lines are not split.
echo "kernel.printk = 3 4 1 3" >"$R/etc/sysctl.d/10-imprint-console.conf"
# Classic eth0 names, like the busybox guest (network-config may match on it).
mkdir -p "$R/etc/systemd/network"
ln -sf /dev/null "$R/etc/systemd/network/99-default.link"

# --- network / cloud-init -------------------------------------------------------
# cloud-init renders network-config for systemd-networkd; Debian does not
# enable networkd by default.
in_root systemctl enable systemd-networkd.service >/dev/null 2>&1
# wait-online otherwise blocks ~74 s when a link never comes up.
mkdir -p "$R/etc/systemd/system/systemd-networkd-wait-online.service.d"
cat >"$R/etc/systemd/system/systemd-networkd-wait-online.service.d/imprint.conf" <<'EOF'
[Service]
ExecStart=
ExecStart=/lib/systemd/systemd-networkd-wait-online --any --timeout=30
EOF
# A one-entry datasource_list makes cloud-init run without a seed (fallback
# DHCP, slow boot); with two, ds-identify disables cloud-init when no seed.
# SSH host keys are the image's (kept or removed by imprint's generalization),
# so cloud-init must not delete them on a new instance-id; missing ones are
# made by imprint-ssh-keys.service (also when cloud-init is disabled).
# No generated locales: C.UTF-8 (needs no locale-gen), else
# `cloud-init status` ends in "error".
cat >"$R/etc/cloud/cloud.cfg.d/90-imprint.cfg" <<'EOF'
datasource_list: [NoCloud, ConfigDrive]
ssh_deletekeys: false
ssh_genkeytypes: []
locale: C.UTF-8
EOF

# --- ssh host keys ----------------------------------------------------------------------
# openssh-server's postinst made them in the chroot; make any it did not.
in_root ssh-keygen -A >/dev/null
for t in rsa ecdsa ed25519; do
    [[ -s $R/etc/ssh/ssh_host_${t}_key && -s $R/etc/ssh/ssh_host_${t}_key.pub ]] || {
        log "no ssh_host_${t}_key in the image"
        exit 1
    }
done
# Bookworm's ssh.service does not make missing host keys (its `sshd -t` just
# fails): regenerate keys removed from the image at boot, as cloud images do.
cat >"$R/etc/systemd/system/imprint-ssh-keys.service" <<'EOF'
[Unit]
Description=Generate missing SSH host keys
After=cloud-init.service
Before=ssh.service

[Service]
Type=oneshot
RemainAfterExit=yes
ExecStart=/usr/bin/ssh-keygen -A

[Install]
WantedBy=multi-user.target
EOF

# --- imprint marker units -------------------------------------------------------------
mkdir -p "$R/imprint"
echo "imprint-debian-guest" >"$R/imprint/marker"

cat >"$R/usr/local/sbin/imprint-markers" <<'EOF'
#!/bin/sh
# Print the IMPRINT-* marker lines (same as the busybox guest) on the console.
exec >/dev/console 2>&1
count=$(cat /imprint/boot-count 2>/dev/null || echo 0)
case $count in '' | *[!0-9]*) count=0 ;; esac
count=$((count + 1))
echo "$count" >/imprint/boot-count.tmp && mv /imprint/boot-count.tmp /imprint/boot-count
sync
echo "IMPRINT-BOOT count=$count"
# When cloud-init is enabled (a seed was found) wait until it has applied
# hostname and network, so the lines below show its result.
if [ -e /run/cloud-init/enabled ]; then
    timeout 600 cloud-init status --wait >/dev/null 2>&1
    echo "IMPRINT-CLOUD-INIT $(cloud-init status 2>/dev/null | sed -n 's/^status: //p')"
    iid=$(cat /run/cloud-init/.instance-id 2>/dev/null || cloud-init query instance-id 2>/dev/null)
    [ -n "$iid" ] && echo "IMPRINT-INSTANCE-ID $iid"
    if ls /etc/systemd/network/*.network >/dev/null 2>&1 || ls /run/systemd/network/*.network >/dev/null 2>&1; then
        /lib/systemd/systemd-networkd-wait-online --any --timeout=30 >/dev/null 2>&1
    fi
fi
for b in /sys/block/*; do
    n=${b##*/}
    case $n in loop* | ram* | zram* | sr*) continue ;; esac
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
ip -o addr show scope global | awk '{ print "IMPRINT-ADDR " $4 }'
echo "IMPRINT-HOSTNAME $(hostname)"
if [ -e /imprint/ignore-acpi ]; then
    echo "IMPRINT-ACPI ignored"
else
    echo "IMPRINT-ACPI listening"
fi
# The guest's identity: a generalized clone shows new ones.
mid=$(cat /etc/machine-id 2>/dev/null)
[ -n "$mid" ] || mid="(empty)"
echo "IMPRINT-MACHINE-ID $mid"
# imprint-ssh-keys.service (ordered before us) makes missing keys; wait for
# the ED25519 key anyway in case they are still being made.
key=/etc/ssh/ssh_host_ed25519_key.pub
i=0
while [ ! -s "$key" ] && [ "$i" -lt 60 ]; do
    sleep 1
    i=$((i + 1))
done
fp=""
[ -s "$key" ] && fp=$(ssh-keygen -lf "$key" 2>/dev/null | awk '{print $2}')
[ -n "$fp" ] || fp="(none)"
echo "IMPRINT-SSH-HOSTKEY $fp"
echo "IMPRINT-READY"
EOF

cat >"$R/usr/local/sbin/imprint-stop-marker" <<'EOF'
#!/bin/sh
# Runs when the system goes down: tell power-off from reboot.
if systemctl list-jobs 2>/dev/null | grep -Eq 'reboot\.target|kexec\.target'; then
    echo "IMPRINT-REBOOT" >/dev/console
else
    echo "IMPRINT-POWEROFF" >/dev/console
fi
EOF
chmod 0755 "$R/usr/local/sbin/imprint-markers" "$R/usr/local/sbin/imprint-stop-marker"

# Simple (not oneshot) and not ordered after cloud-final: cloud-final is
# After=multi-user.target, so ordering this unit after it while wanted by
# multi-user.target would be a cycle. The script waits for cloud-init itself.
cat >"$R/etc/systemd/system/imprint-markers.service" <<'EOF'
[Unit]
Description=Print imprint test markers on the console
After=local-fs.target systemd-logind.service network.target imprint-ssh-keys.service

[Service]
Type=simple
ExecStart=/usr/local/sbin/imprint-markers

[Install]
WantedBy=multi-user.target
EOF
# ExecStop runs at shutdown, early (units stop in reverse start order).
cat >"$R/etc/systemd/system/imprint-stop-marker.service" <<'EOF'
[Unit]
Description=Print IMPRINT-POWEROFF on the console when going down
After=systemd-logind.service

[Service]
Type=oneshot
RemainAfterExit=yes
ExecStart=/bin/true
ExecStop=/usr/local/sbin/imprint-stop-marker

[Install]
WantedBy=multi-user.target
EOF
# /imprint/ignore-acpi => logind ignores the power button (tests of forced
# power-off), decided at boot so the same image serves both cases.
cat >"$R/etc/systemd/system/imprint-ignore-acpi.service" <<'EOF'
[Unit]
Description=Ignore the ACPI power button when /imprint/ignore-acpi exists
ConditionPathExists=/imprint/ignore-acpi
Before=systemd-logind.service
After=local-fs.target

[Service]
Type=oneshot
ExecStart=/bin/sh -c 'mkdir -p /run/systemd/logind.conf.d && printf "[Login]\\nHandlePowerKey=ignore\\n" >/run/systemd/logind.conf.d/imprint-ignore-acpi.conf'

[Install]
WantedBy=multi-user.target
EOF
in_root systemctl enable imprint-markers.service imprint-stop-marker.service imprint-ignore-acpi.service imprint-ssh-keys.service >/dev/null 2>&1

# --- guest agent ---------------------------------------------------------------------
# qemu-guest-agent starts when the domain has its virtio-serial channel
# (org.qemu.guest_agent.0): live captures freeze the filesystems through it,
# tests run commands with guest-exec. Its freeze hook lets a test make a
# freeze hang for real: /run/imprint-hang-freeze holds the seconds.
mkdir -p "$R/etc/qemu"
cat >"$R/etc/qemu/qemu-ga.conf" <<'EOF'
[general]
fsfreeze-hook=/usr/local/sbin/imprint-fsfreeze-hook
EOF
cat >"$R/usr/local/sbin/imprint-fsfreeze-hook" <<'EOF'
#!/bin/sh
# qemu-ga runs this with "freeze" before it freezes, "thaw" after it thaws.
if [ "$1" = freeze ] && [ -f /run/imprint-hang-freeze ]; then
    s=$(cat /run/imprint-hang-freeze)
    rm -f /run/imprint-hang-freeze
    echo "IMPRINT-FREEZE-HANG $s" >/dev/console
    sleep "$s"
fi
exit 0
EOF
chmod 0755 "$R/usr/local/sbin/imprint-fsfreeze-hook"

# --- initramfs -----------------------------------------------------------------------
# A small initrd (only what direct kernel boot from virtio needs) boots much
# faster under TCG than MODULES=most; regenerate it with that config.
cat >"$R/etc/initramfs-tools/conf.d/imprint.conf" <<'EOF'
MODULES=list
COMPRESS=zstd
EOF
cat >>"$R/etc/initramfs-tools/modules" <<'EOF'
virtio_pci
virtio_blk
virtio_scsi
sd_mod
EOF
mount -t proc proc "$R/proc"
mount -t sysfs sysfs "$R/sys"
mount --bind /dev "$R/dev"
in_root update-initramfs -u -k all >"$WORK/initramfs.log" 2>&1 || {
    cat "$WORK/initramfs.log" >&2
    log "update-initramfs failed"
    exit 1
}
umount "$R/dev" "$R/sys" "$R/proc"

# --- slim down, extract kernel, make the disk ----------------------------------------
in_root apt-get clean
rm -rf "$R"/var/lib/apt/lists/* "$R"/var/cache/debconf/*-old "$R"/var/log/*.log "$R"/tmp/* "$R/debootstrap"

KVER=$(ls "$R/lib/modules" | sort -V | tail -n1)
cp "$R/boot/vmlinuz-$KVER" "$WORK/vmlinuz"
cp "$R/boot/initrd.img-$KVER" "$WORK/initrd.img"

rm -f "$WORK/disk.raw"
mke2fs -q -F -t ext4 -L imprint-root -d "$R" "$WORK/disk.raw" "$DISK_SIZE" >&2
# Debian's /boot/vmlinuz-* is 0600; QEMU (libvirt-qemu) must read the copies.
chmod 0644 "$WORK/vmlinuz" "$WORK/initrd.img" "$WORK/disk.raw"
{
    echo "$STAMP"
    echo "kernel=$KVER"
    echo "suite=$SUITE mirror=$MIRROR"
    echo "packages=$(in_root dpkg-query -W -f='.' | wc -c)"
    echo "allocated-kib=$(du -k "$WORK/disk.raw" | cut -f1)"
    echo "built=$(date -u +%Y-%m-%dT%H:%M:%SZ)"
} >"$WORK/VERSION"

# Replace outputs; VERSION last so an interrupted build never looks current.
rm -f "$OUT/VERSION"
mv -f "$WORK/vmlinuz" "$WORK/initrd.img" "$WORK/disk.raw" "$OUT/"
mv -f "$WORK/VERSION" "$OUT/VERSION"
log "built in $((SECONDS - start)) s (kernel $KVER)"
print_outputs
