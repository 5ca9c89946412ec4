# Sourced by build-grub-guest.sh and build-uefi-guest.sh after they set
# HERE, CACHE_ROOT, OUT, FORCE and log(): lock the output directory, build
# (or reuse) the busybox guest and read its outputs, compute the VERSION
# stamp, print the outputs and exit when they are up to date, else make the
# work directory WORK (removed on exit) and set `start`.
# shellcheck shell=bash

print_outputs() {
    echo "qcow2: $OUT/disk.qcow2"
    echo "disk: $OUT/disk.raw"
}

mkdir -p "$OUT"
chmod 0755 "$CACHE_ROOT" "$OUT"
# Serialise concurrent builds (parallel CI jobs, test harnesses).
exec 9>"$OUT/.lock"
flock 9

# --- busybox guest (kernel, initrd, root file system) ---------------------------
# Fast (~0.03 s) when it is up to date; its outputs are in its last lines.
bb_lines=$("$HERE/build-busybox-guest.sh")
bb_value() { awk -v k="$1:" '$1 == k { print $2; exit }' <<<"$bb_lines"; }
BB_KERNEL=$(bb_value kernel)
BB_INITRD=$(bb_value initrd)
BB_DISK=$(bb_value disk)
BB_VERSION=$(dirname "$BB_DISK")/VERSION
for f in "$BB_KERNEL" "$BB_INITRD" "$BB_DISK" "$BB_VERSION"; do
    [[ -n $f && -f $f ]] || { log "busybox guest output missing ($f); its output was:"$'\n'"$bb_lines"; exit 1; }
done

GRUB_VERSION=$(grub-mkimage --version | awk '{ print $NF }')
# Both this file and the builder that sources it ($0) are in the stamp.
STAMP="script-sha256=$(cat "$0" "${BASH_SOURCE[0]}" | sha256sum | cut -d' ' -f1)"
STAMP+=" busybox-version-sha256=$(sha256sum "$BB_VERSION" | cut -d' ' -f1) grub=$GRUB_VERSION"

up_to_date() {
    [[ -f $OUT/VERSION && -f $OUT/disk.raw && -f $OUT/disk.qcow2 ]] &&
        [[ $(head -n1 "$OUT/VERSION") == "$STAMP" ]]
}

if [[ $FORCE != 1 ]] && up_to_date; then
    log "up to date ($STAMP)"
    print_outputs
    exit 0
fi

start=$SECONDS
WORK=$(mktemp -d "$OUT/.build.XXXXXX")
trap 'rm -rf "$WORK"' EXIT
