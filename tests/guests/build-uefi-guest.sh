#!/usr/bin/env bash
# Build imprint's UEFI test guest: the busybox test guest (see
# build-busybox-guest.sh) on a GPT disk that boots by itself with OVMF, i.e. a
# domain with <os firmware='efi'>, <boot dev='hd'/> and no <kernel>. The UEFI
# sibling of build-grub-guest.sh: captures and deploys of it must keep the GPT
# (both copies), the EFI system partition and the root partition.
#
# disk.raw (128 MiB, sparse), GPT written by hand (CRC32s included):
#   LBA 0            protective MBR (one entry, type 0xEE, LBA 1..end)
#   LBA 1, 2..33     primary GPT header, 128 partition entries
#   LBA 2048..67583  partition 1 "EFI System Partition" (type C12A7328-...,
#                    32 MiB FAT16): /EFI/BOOT/BOOTX64.EFI = GRUB 2 x86_64-efi
#                    (part_gpt, fat, ext2, normal, linux, serial ... built in),
#                    prefix (hd0,gpt2)/boot/grub
#   LBA 67584..N-34  partition 2 "imprint-root" (Linux filesystem data,
#                    0FC63DAF-...): the busybox guest's ext4 root file system,
#                    grown to fill the partition, plus /boot/vmlinuz,
#                    /boot/initrd.img, /boot/grub/grub.cfg and
#                    /boot/grub/x86_64-efi/*.mod,*.lst
#   LBA N-33..N-2    backup partition entries;  LBA N-1: backup GPT header
# The disk and partition GUIDs are fixed (reproducible builds; every copy of
# the disk has the same ones, as it has the same ext4 UUID).
# GRUB boots "console=ttyS0 root=/dev/vda2"; its own output goes to the serial
# port only (OVMF also mirrors its EFI console there: its lines come first),
# and a failed boot prints "IMPRINT-ERROR grub: ..." then halts. The guest then
# prints the same IMPRINT-* marker lines as the busybox guest.
# The GRUB image is unsigned: on machine q35 the domain needs
# <firmware><feature enabled='no' name='secure-boot'/></firmware> in <os>,
# or libvirt picks OVMF with Secure Boot on, which refuses it (README.md).
#
# Output (outside the repo so CI can keep it between runs):
#   ${IMPRINT_GUEST_CACHE:-/var/cache/imprint/guests}/uefi/
#       disk.raw  disk.qcow2 (same disk, qcow2)  VERSION
# The build is skipped when VERSION matches this script's content hash + the
# busybox guest's VERSION + the GRUB version. This script builds (or reuses)
# the busybox guest first. Set IMPRINT_GUEST_REBUILD=1 (or pass --force) to
# rebuild anyway (the environment variable also rebuilds the busybox guest).
#
# No loop devices, no mount: the root file system is the busybox guest's image,
# copied, grown with resize2fs and filled with debugfs (as build-grub-guest.sh
# does); the ESP is a FAT image made with mkfs.vfat and filled with mtools;
# both are dd'ed into place; python3 writes the protective MBR and both GPTs
# (sgdisk/sfdisk are in packages install-deps.sh does not install). libblkid
# (partx) reads the partition table back, from the primary GPT and from the
# backup alone, and GRUB's own gpt/fat/ext2 code (grub-fstest) reads the
# files back.
#
# Needs root and the packages from scripts/install-deps.sh: grub-efi-amd64-bin
# (+ grub-common), dosfstools, mtools, e2fsprogs, python3, util-linux,
# qemu-utils and the busybox guest's. Booting it needs ovmf.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
CACHE_ROOT=${IMPRINT_GUEST_CACHE:-/var/cache/imprint/guests}
OUT=$CACHE_ROOT/uefi
DISK_MIB=128
ESP_START=2048  # sectors (1 MiB)
ESP_MIB=32
ROOT_START=$((ESP_START + ESP_MIB * 2048)) # 67584 (33 MiB)
GRUB_DIR=/usr/lib/grub/x86_64-efi
# Modules built into BOOTX64.EFI (their dependencies are added by
# grub-mkimage); the rest are on the root partition for a GRUB prompt.
GRUB_MODULES=(part_gpt part_msdos fat ext2 normal configfile linux boot echo serial terminal terminfo
    efi_gop efi_uga all_video sleep halt reboot)
CMDLINE="console=ttyS0 root=/dev/vda2"
FORCE=${IMPRINT_GUEST_REBUILD:-0}
[[ ${1:-} == --force ]] && FORCE=1

log() { echo "build-uefi-guest: $*" >&2; }

if [[ $(id -u) -ne 0 ]]; then
    log "must run as root"
    exit 1
fi
for tool in grub-mkimage grub-fstest e2fsck resize2fs debugfs dumpe2fs mkfs.vfat mmd mcopy python3 partx \
    qemu-img flock sha256sum dd truncate; do
    command -v "$tool" >/dev/null || { log "missing $tool: run scripts/install-deps.sh"; exit 1; }
done
for f in kernel.img moddep.lst normal.mod linux.mod part_gpt.mod fat.mod; do
    [[ -f $GRUB_DIR/$f ]] || { log "missing $GRUB_DIR/$f: install grub-efi-amd64-bin (scripts/install-deps.sh)"; exit 1; }
done

# The cache directory, its lock, the busybox guest's outputs (BB_KERNEL,
# BB_INITRD, BB_DISK), the VERSION stamp, and WORK: shared with the other
# self-booting disk's builder. Exits here when the outputs are up to date.
# shellcheck source=tests/guests/boot-disk-common.sh
source "$HERE/boot-disk-common.sh"

DISK_SECTORS=$((DISK_MIB * 2048))
ESP_SECTORS=$((ESP_MIB * 2048))
ROOT_END=$((DISK_SECTORS - 34)) # last usable LBA: the backup GPT takes the last 33 sectors
ROOT_SECTORS=$((ROOT_END - ROOT_START + 1))

# --- GRUB config + BOOTX64.EFI ------------------------------------------------------
# Built into the image: switch to the serial port before normal.mod and
# grub.cfg load, so that "file not found" and the rescue prompt show up in the
# serial log. Output to the serial port only: OVMF copies its EFI console
# ("console") to the same port, so both would print every line twice. Terminal
# type "dumb": no escape sequences (screen clearing) in front of the first line.
cat >"$WORK/early.cfg" <<'EOF'
serial --unit=0 --speed=115200
terminfo serial dumb
terminal_input serial console
terminal_output serial
EOF

cat >"$WORK/grub.cfg" <<EOF
# imprint uefi test guest (tests/guests/build-uefi-guest.sh). No menu: boot
# straight away; on failure print an IMPRINT-ERROR line and power off.
serial --unit=0 --speed=115200
terminfo serial dumb
terminal_input serial console
terminal_output serial
echo "imprint-uefi: linux /boot/vmlinuz $CMDLINE"
linux /boot/vmlinuz $CMDLINE
initrd /boot/initrd.img
boot
echo "IMPRINT-ERROR grub: cannot boot /boot/vmlinuz"
sleep 5
halt
EOF

grub-mkimage -O x86_64-efi -d "$GRUB_DIR" -o "$WORK/BOOTX64.EFI" -c "$WORK/early.cfg" \
    -p '(hd0,gpt2)/boot/grub' "${GRUB_MODULES[@]}"

# --- EFI system partition -------------------------------------------------------------
# 32 MiB is too small for FAT32 (65525 clusters at least): mkfs.vfat makes
# FAT16, which OVMF (and the UEFI spec, for removable media) accepts.
ESP=$WORK/esp.img
truncate -s "${ESP_MIB}M" "$ESP"
mkfs.vfat --invariant -i 494d5052 -n ESP -h "$ESP_START" "$ESP" >/dev/null
mmd -i "$ESP" ::/EFI ::/EFI/BOOT
mcopy -i "$ESP" "$WORK/BOOTX64.EFI" ::/EFI/BOOT/BOOTX64.EFI

# --- root file system ---------------------------------------------------------------
PART=$WORK/part.img
cp --sparse=always "$BB_DISK" "$PART"
# resize2fs wants a freshly checked file system; 1 = errors corrected.
rc=0
e2fsck -fp "$PART" >&2 || rc=$?
((rc <= 1)) || { log "e2fsck $BB_DISK: exit $rc"; exit 1; }
resize2fs "$PART" "${ROOT_SECTORS}s" >&2 2>"$WORK/resize2fs.err" ||
    { cat "$WORK/resize2fs.err" >&2; log "resize2fs failed"; exit 1; }
# resize2fs rounds down to whole blocks: the file must fit the partition.
(($(stat -c %s "$PART") <= ROOT_SECTORS * 512)) || { log "root file system larger than partition 2"; exit 1; }

{
    echo "mkdir /boot"
    echo "mkdir /boot/grub"
    echo "mkdir /boot/grub/x86_64-efi"
    echo "cd /boot"
    echo "write \"$BB_KERNEL\" vmlinuz"
    echo "write \"$BB_INITRD\" initrd.img"
    echo "cd /boot/grub"
    echo "write \"$WORK/grub.cfg\" grub.cfg"
    echo "cd /boot/grub/x86_64-efi"
    # All modules (3 MiB), so that commands typed at a GRUB prompt on the
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

# --- disk image: partitions, then protective MBR + GPTs ----------------------------------
DISK=$WORK/disk.raw
truncate -s "${DISK_MIB}M" "$DISK"
dd if="$ESP" of="$DISK" bs=1M seek=$((ESP_START / 2048)) conv=notrunc,sparse status=none
dd if="$PART" of="$DISK" bs=1M seek=$((ROOT_START / 2048)) conv=notrunc,sparse status=none
rm -f "$ESP" "$PART"

# UEFI spec 2.10, 5.2.3 (protective MBR) and 5.3 (GPT header, entries).
python3 - "$DISK" "$DISK_SECTORS" "$ESP_START" $((ESP_START + ESP_SECTORS - 1)) "$ROOT_START" "$ROOT_END" <<'PY'
import struct, sys, uuid, zlib

path = sys.argv[1]
sectors, esp_first, esp_last, root_first, root_last = map(int, sys.argv[2:])
SS = 512
N_ENTRIES, ENTRY_SIZE = 128, 128
ARRAY_SECTORS = N_ENTRIES * ENTRY_SIZE // SS  # 32
first_usable = 2 + ARRAY_SECTORS               # 34
last_usable = sectors - 2 - ARRAY_SECTORS      # N-34
assert first_usable <= esp_first <= esp_last < root_first <= root_last <= last_usable

# Fixed GUIDs (reproducible); stored in the mixed-endian GUID layout.
ns = uuid.UUID("6ba7b811-9dad-11d1-80b4-00c04fd430c8")  # NAMESPACE_URL
disk_guid = uuid.uuid5(ns, "imprint:tests/guests/uefi/disk")
parts = [
    # type GUID, unique GUID, first, last, attributes, name
    (uuid.UUID("C12A7328-F81F-11D2-BA4B-00A0C93EC93B"), uuid.uuid5(ns, "imprint:tests/guests/uefi/esp"),
     esp_first, esp_last, 0, "EFI System Partition"),
    (uuid.UUID("0FC63DAF-8483-4772-8E79-3D69D8477DE4"), uuid.uuid5(ns, "imprint:tests/guests/uefi/root"),
     root_first, root_last, 0, "imprint-root"),
]

array = bytearray(N_ENTRIES * ENTRY_SIZE)
for i, (ptype, puniq, first, last, attrs, name) in enumerate(parts):
    struct.pack_into("<16s16sQQQ72s", array, i * ENTRY_SIZE, ptype.bytes_le, puniq.bytes_le,
                     first, last, attrs, name.encode("utf-16-le"))
array_crc = zlib.crc32(array)

def header(my_lba, alternate_lba, entries_lba):
    h = bytearray(struct.pack("<8sIIIIQQQQ16sQIII", b"EFI PART", 0x00010000, 92, 0, 0,
                              my_lba, alternate_lba, first_usable, last_usable,
                              disk_guid.bytes_le, entries_lba, N_ENTRIES, ENTRY_SIZE, array_crc))
    assert len(h) == 92
    struct.pack_into("<I", h, 16, zlib.crc32(h))
    return bytes(h) + bytes(SS - 92)

# Protective MBR: no boot code, one partition of type 0xEE covering the disk
# from LBA 1 (CHS start 0/0/2, end 0xFFFFFF as the spec says).
mbr = bytearray(SS)
struct.pack_into("<B3sB3sII", mbr, 446, 0, b"\x00\x02\x00", 0xEE, b"\xff\xff\xff",
                 1, min(sectors - 1, 0xFFFFFFFF))
mbr[510:512] = b"\x55\xaa"

with open(path, "r+b") as f:
    def put(lba, data):
        f.seek(lba * SS)
        f.write(data)
    put(0, mbr)
    put(1, header(1, sectors - 1, 2))
    put(2, array)
    put(sectors - 1 - ARRAY_SECTORS, array)
    put(sectors - 1, header(sectors - 1, 1, sectors - 1 - ARRAY_SECTORS))
PY
[[ $(stat -c %s "$DISK") == $((DISK_MIB * 1048576)) ]] || { log "disk.raw has the wrong size"; exit 1; }

# libblkid (which checks the header and entry array CRCs) must find both
# partitions where they were put: from the primary GPT, and from the backup
# GPT alone (a sparse file with only the protective MBR and the last 33
# sectors of disk.raw).
expected="1 $ESP_START $((ESP_START + ESP_SECTORS - 1)) c12a7328-f81f-11d2-ba4b-00a0c93ec93b
2 $ROOT_START $ROOT_END 0fc63daf-8483-4772-8e79-3d69d8477de4"
BACKUP_ONLY=$WORK/backup-only.raw
truncate -s "${DISK_MIB}M" "$BACKUP_ONLY"
dd if="$DISK" of="$BACKUP_ONLY" bs=512 count=1 conv=notrunc status=none
dd if="$DISK" of="$BACKUP_ONLY" bs=512 skip=$((DISK_SECTORS - 33)) seek=$((DISK_SECTORS - 33)) \
    count=33 conv=notrunc status=none
for img in "$DISK" "$BACKUP_ONLY"; do
    got=$(partx --show --noheadings --output NR,START,END,TYPE "$img" 2>&1 | awk '{ $1 = $1; print }') || true
    if [[ $got != "$expected" ]]; then
        log "partx reads ${img##*/} as:"$'\n'"$got"$'\n'"expected:"$'\n'"$expected"
        exit 1
    fi
done
rm -f "$BACKUP_ONLY"

# What GRUB will do at boot, with GRUB's own partition, FAT and ext2 code: find
# both partitions and read the files back byte for byte.
while read -r part file src; do
    if ! grub-fstest "$DISK" cmp "(loop0,$part)$file" "$src" </dev/null >&2; then
        log "GRUB cannot read (loop0,$part)$file back from disk.raw (ext4 features: $(dumpe2fs -h "$DISK?offset=$((ROOT_START * 512))" 2>/dev/null | sed -n 's/^Filesystem features: *//p'))"
        exit 1
    fi
done <<EOF
gpt1 /EFI/BOOT/BOOTX64.EFI $WORK/BOOTX64.EFI
gpt2 /boot/vmlinuz $BB_KERNEL
gpt2 /boot/initrd.img $BB_INITRD
gpt2 /boot/grub/grub.cfg $WORK/grub.cfg
gpt2 /boot/grub/x86_64-efi/normal.mod $GRUB_DIR/normal.mod
EOF

efi_size=$(stat -c %s "$WORK/BOOTX64.EFI")
rm -f "$WORK/BOOTX64.EFI"
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
log "built in $((SECONDS - start)) s (BOOTX64.EFI $efi_size bytes, GRUB $GRUB_VERSION)"
print_outputs
