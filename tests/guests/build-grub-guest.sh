#!/usr/bin/env bash
# Build imprint's self-booting test guest: the busybox test guest (see
# build-busybox-guest.sh) on a partitioned disk that boots by itself with
# SeaBIOS, i.e. a domain with <boot dev='hd'/> and no <kernel>/<initrd>. It
# stands in for "a real VM image": captures and deploys of it must keep the
# MBR, the boot loader in the gap before the first partition and the partition
# table, not just the file system.
#
# disk.raw (128 MiB, sparse):
#   LBA 0          MBR: GRUB 2 boot.img (first 440 bytes) + one partition entry
#   LBA 1..        GRUB core.img (i386-pc; biosdisk, part_msdos, ext2, normal,
#                  linux, serial ... embedded), prefix (hd0,msdos1)/boot/grub
#   LBA 2048..end  partition 1 (type 0x83, active): the busybox guest's ext4
#                  root file system, grown to fill the partition, plus
#                  /boot/vmlinuz, /boot/initrd.img, /boot/grub/grub.cfg and
#                  /boot/grub/i386-pc/*.mod,*.lst
# GRUB boots "console=ttyS0 root=/dev/vda1"; its own output goes to the serial
# console too, and a failed boot prints "IMPRINT-ERROR grub: ..." then halts.
# The guest then prints the same IMPRINT-* marker lines as the busybox guest.
#
# Output (outside the repo so CI can keep it between runs):
#   ${IMPRINT_GUEST_CACHE:-/var/cache/imprint/guests}/grub/
#       disk.raw  disk.qcow2 (same disk, qcow2)  VERSION
# The build is skipped when VERSION matches this script's content hash + the
# busybox guest's VERSION + the GRUB version. This script builds (or reuses)
# the busybox guest first. Set IMPRINT_GUEST_REBUILD=1 (or pass --force) to
# rebuild anyway (the environment variable also rebuilds the busybox guest).
#
# No loop devices, no mount: the file system is the busybox guest's image,
# copied, grown with resize2fs and filled with debugfs (debugfs rdump +
# mke2fs -d would lose the sticky bit of /tmp); the MBR is written by hand
# (sfdisk is in the fdisk package, which install-deps.sh does not install).
# GRUB's own ext2 driver (grub-fstest) checks the result.
#
# Needs root and the packages from scripts/install-deps.sh: grub-pc-bin (+
# grub-common), e2fsprogs, qemu-utils and the busybox guest's.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
CACHE_ROOT=${IMPRINT_GUEST_CACHE:-/var/cache/imprint/guests}
OUT=$CACHE_ROOT/grub
DISK_MIB=128
PART_START=2048 # sectors (1 MiB); GRUB's core.img (~290 sectors) must fit in LBA 1..2047
GRUB_DIR=/usr/lib/grub/i386-pc
# Modules built into core.img (their dependencies are added by grub-mkimage).
GRUB_MODULES=(biosdisk part_msdos ext2 normal configfile linux boot echo serial terminal terminfo sleep halt)
CMDLINE="console=ttyS0 root=/dev/vda1"
FORCE=${IMPRINT_GUEST_REBUILD:-0}
[[ ${1:-} == --force ]] && FORCE=1

log() { echo "build-grub-guest: $*" >&2; }

if [[ $(id -u) -ne 0 ]]; then
    log "must run as root"
    exit 1
fi
for tool in grub-mkimage grub-fstest e2fsck resize2fs debugfs dumpe2fs qemu-img flock sha256sum dd truncate; do
    command -v "$tool" >/dev/null || { log "missing $tool: run scripts/install-deps.sh"; exit 1; }
done
for f in boot.img diskboot.img kernel.img moddep.lst normal.mod; do
    [[ -f $GRUB_DIR/$f ]] || { log "missing $GRUB_DIR/$f: install grub-pc-bin (scripts/install-deps.sh)"; exit 1; }
done

# The cache directory, its lock, the busybox guest's outputs (BB_KERNEL,
# BB_INITRD, BB_DISK), the VERSION stamp, and WORK: shared with the other
# self-booting disk's builder. Exits here when the outputs are up to date.
# shellcheck source=tests/guests/boot-disk-common.sh
source "$HERE/boot-disk-common.sh"

DISK_SECTORS=$((DISK_MIB * 2048))
PART_SECTORS=$((DISK_SECTORS - PART_START))

# --- GRUB config + core.img -------------------------------------------------------
# Built into core.img: switch to the serial console before normal.mod and
# grub.cfg load, so that "file not found" and the rescue prompt show up in the
# serial log. Terminal type "dumb": no escape sequences (screen clearing) in
# front of the first line.
cat >"$WORK/early.cfg" <<'EOF'
serial --unit=0 --speed=115200
terminfo serial dumb
terminal_input serial console
terminal_output serial console
EOF

cat >"$WORK/grub.cfg" <<EOF
# imprint grub test guest (tests/guests/build-grub-guest.sh). No menu: boot
# straight away; on failure print an IMPRINT-ERROR line and power off.
serial --unit=0 --speed=115200
terminfo serial dumb
terminal_input serial console
terminal_output serial console
echo "imprint-grub: linux /boot/vmlinuz $CMDLINE"
linux /boot/vmlinuz $CMDLINE
initrd /boot/initrd.img
boot
echo "IMPRINT-ERROR grub: cannot boot /boot/vmlinuz"
sleep 5
halt
EOF

grub-mkimage -O i386-pc -d "$GRUB_DIR" -o "$WORK/core.img" -c "$WORK/early.cfg" \
    -p '(hd0,msdos1)/boot/grub' "${GRUB_MODULES[@]}"

# Reads a little-endian unsigned integer of $3 bytes at offset $2 of file $1.
le_at() { od -An -tu"$3" -j "$2" -N "$3" --endian=little "$1" | tr -d ' '; }

core_size=$(stat -c %s "$WORK/core.img")
core_sectors=$(((core_size + 511) / 512))
if ((core_sectors >= PART_START)); then
    log "core.img ($core_size bytes) does not fit before the partition at LBA $PART_START"
    exit 1
fi
# boot.img loads the first sector of core.img (diskboot.img) from the LBA in
# its kernel_sector field (0x5c); diskboot.img loads the rest from its
# blocklist at the end of that sector (start 0x1f4, 8 bytes; sector count
# 0x1fc, 2 bytes; grub-mkimage fills the count). With core.img contiguous at
# LBA 1 both defaults are right and nothing needs patching (what
# grub-bios-setup would do for a core.img elsewhere): check them.
[[ $(le_at "$GRUB_DIR/boot.img" $((0x5c)) 8) == 1 ]] ||
    { log "boot.img kernel_sector (0x5c) is not 1"; exit 1; }
[[ $(le_at "$WORK/core.img" $((0x1f4)) 8) == 2 ]] ||
    { log "core.img blocklist start (0x1f4) is not 2"; exit 1; }
[[ $(le_at "$WORK/core.img" $((0x1fc)) 2) == $((core_sectors - 1)) ]] ||
    { log "core.img blocklist length (0x1fc) is not $((core_sectors - 1)) sectors"; exit 1; }

# --- root file system ---------------------------------------------------------------
PART=$WORK/part.img
cp --sparse=always "$BB_DISK" "$PART"
# resize2fs wants a freshly checked file system; 1 = errors corrected.
rc=0
e2fsck -fp "$PART" >&2 || rc=$?
((rc <= 1)) || { log "e2fsck $BB_DISK: exit $rc"; exit 1; }
resize2fs "$PART" "${PART_SECTORS}s" >&2 2>"$WORK/resize2fs.err" ||
    { cat "$WORK/resize2fs.err" >&2; log "resize2fs failed"; exit 1; }

{
    echo "mkdir /boot"
    echo "mkdir /boot/grub"
    echo "mkdir /boot/grub/i386-pc"
    echo "cd /boot"
    echo "write \"$BB_KERNEL\" vmlinuz"
    echo "write \"$BB_INITRD\" initrd.img"
    echo "cd /boot/grub"
    echo "write \"$WORK/grub.cfg\" grub.cfg"
    echo "cd /boot/grub/i386-pc"
    # All modules (2.4 MiB), so that commands typed at a GRUB prompt on the
    # serial console autoload; the .lst files are what normal.mod reads.
    for f in "$GRUB_DIR"/*.mod "$GRUB_DIR"/*.lst; do
        echo "write \"$f\" ${f##*/}"
    done
} >"$WORK/debugfs.cmds"
# debugfs exits 0 even when a command fails: anything on stderr besides its
# version banner is an error.
debugfs -w -f "$WORK/debugfs.cmds" "$PART" >/dev/null 2>"$WORK/debugfs.err"
if grep -v '^debugfs [0-9]' "$WORK/debugfs.err" >&2; then
    log "debugfs could not fill /boot"
    exit 1
fi
# Files written from root-owned 0600 sources keep 0600: make them readable.
for f in /boot/vmlinuz /boot/initrd.img /boot/grub/grub.cfg; do
    debugfs -w -R "sif $f mode 0100644" "$PART" 2>/dev/null
done

# --- disk image: MBR, core.img, partition ------------------------------------------------
DISK=$WORK/disk.raw
truncate -s "${DISK_MIB}M" "$DISK"
dd if="$GRUB_DIR/boot.img" of="$DISK" bs=440 count=1 conv=notrunc status=none

# printf escapes for $2 little-endian bytes of the number $1.
le_bytes() {
    local v=$1 n=$2 s=""
    while ((n-- > 0)); do
        s+=$(printf '\\x%02x' $((v & 0xff)))
        v=$((v >> 8))
    done
    printf '%s' "$s"
}
# CHS (255 heads, 63 sectors/track; 1023/254/63 beyond 8 GiB) of LBA $1 as
# the 3 bytes of a partition entry. Only legacy tools look at it.
chs_bytes() {
    local lba=$1 c h s
    c=$((lba / (255 * 63)))
    h=$(((lba / 63) % 255))
    s=$((lba % 63 + 1))
    if ((c > 1023)); then c=1023 h=254 s=63; fi
    printf '\\x%02x\\x%02x\\x%02x' "$h" $(((s & 0x3f) | ((c >> 2) & 0xc0))) $((c & 0xff))
}
{
    printf '%b' 'IMPR\x00\x00'                      # 0x1b8 disk signature, 0x1bc reserved
    printf '%b' '\x80'                                # entry 1: active (boot flag)
    printf '%b' "$(chs_bytes $PART_START)"            # first sector, CHS
    printf '%b' '\x83'                                # type: Linux
    printf '%b' "$(chs_bytes $((DISK_SECTORS - 1)))"  # last sector, CHS
    printf '%b' "$(le_bytes $PART_START 4)"           # first sector, LBA
    printf '%b' "$(le_bytes $PART_SECTORS 4)"         # sector count
    head -c 48 /dev/zero                              # entries 2-4: unused
    printf '%b' '\x55\xaa'                            # boot signature
} >"$WORK/mbr-tail.bin"
[[ $(stat -c %s "$WORK/mbr-tail.bin") == 72 ]] || { log "bad MBR tail"; exit 1; }
dd if="$WORK/mbr-tail.bin" of="$DISK" bs=1 seek=440 conv=notrunc status=none
dd if="$WORK/core.img" of="$DISK" bs=512 seek=1 conv=notrunc status=none
dd if="$PART" of="$DISK" bs=1M seek=$((PART_START / 2048)) conv=notrunc,sparse status=none
rm -f "$PART"
[[ $(stat -c %s "$DISK") == $((DISK_MIB * 1048576)) ]] || { log "disk.raw has the wrong size"; exit 1; }

# What GRUB will do at boot, with GRUB's own partition and ext2 code: find
# partition 1 and read the files back byte for byte.
for pair in "boot/vmlinuz:$BB_KERNEL" "boot/initrd.img:$BB_INITRD" \
    "boot/grub/grub.cfg:$WORK/grub.cfg" "boot/grub/i386-pc/normal.mod:$GRUB_DIR/normal.mod"; do
    if ! grub-fstest "$DISK" cmp "(loop0,msdos1)/${pair%%:*}" "${pair#*:}" >&2; then
        log "GRUB cannot read /${pair%%:*} back from disk.raw (ext4 features: $(dumpe2fs -h "$DISK?offset=$((PART_START * 512))" 2>/dev/null | sed -n 's/^Filesystem features: *//p'))"
        exit 1
    fi
done

qemu-img convert -f raw -O qcow2 "$DISK" "$WORK/disk.qcow2"
chmod 0644 "$WORK/disk.raw" "$WORK/disk.qcow2"
{
    echo "$STAMP"
    echo "busybox-guest=$(head -n1 "$BB_VERSION")"
    echo "kernel=$(sed -n 's/^kernel=//p' "$BB_VERSION")"
    echo "grub-modules=${GRUB_MODULES[*]}"
    echo "cmdline=$CMDLINE"
    echo "built=$(date -u +%Y-%m-%dT%H:%M:%SZ)"
} >"$WORK/VERSION"

# Replace outputs; VERSION last so an interrupted build never looks current.
rm -f "$OUT/VERSION"
mv -f "$WORK/disk.raw" "$WORK/disk.qcow2" "$OUT/"
mv -f "$WORK/VERSION" "$OUT/VERSION"
log "built in $((SECONDS - start)) s (core.img $core_sectors sectors, GRUB $GRUB_VERSION)"
print_outputs
