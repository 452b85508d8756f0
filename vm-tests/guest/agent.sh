#!/bin/sh
# One boot of a VM test scenario, in the guest (started by tu-vm-agent from the step disk).
# Records what booted, runs step.sh (sourced: it uses fact, save and precut), stores every result
# file on the results disk (a tar the host unpacks after qemu exits), then powers off unless the
# step said a reboot is coming (NO_POWEROFF=1: the host then sees qemu end on that reboot).
IN=/run/tu-vm
OUT=/run/tu-vm-out
RESULTS=/dev/disk/by-id/virtio-tu-out
NO_POWEROFF=0
rm -rf "$OUT"
mkdir -p "$OUT"

say() { echo "TU-VM $*"; }

# fact NAME COMMAND...: stdout to NAME, stderr to NAME.err, exit code to NAME.rc
fact() {
    name=$1
    shift
    say "fact $name: $*"
    "$@" >"$OUT/$name" 2>"$OUT/$name.err" </dev/null
    echo $? >"$OUT/$name.rc"
    say "fact $name: exit $(cat "$OUT/$name.rc")"
}

# store: the results so far onto the results disk (that disk only: nothing else is synced)
store() {
    tar -cf "$RESULTS" -C "$OUT" . && blockdev --flushbufs "$RESULTS" && say "results saved"
}

save() {
    sync
    store
}

# precut POINT: store the results before the step cuts the power (vm-tests/guest/cut.py).  No
# sync: what the tool under test wrote must reach the disk by the tool's own doing, or not at all.
# The host takes results with cut.point and without step.rc for a boot that ended in a cut.
precut() {
    echo "$1" >"$OUT/cut.point"
    store
    say "cutting the power: $1"
}

if [ -d "$IN/repo" ]; then  # this boot's local package repository (apt's file: source)
    rm -rf /var/cache/tu-vm/repo
    mkdir -p /var/cache/tu-vm
    cp -a "$IN/repo" /var/cache/tu-vm/repo
fi
say "boot: $(cat /proc/cmdline)"
fact cmdline cat /proc/cmdline
fact root findmnt -n -o SOURCE,OPTIONS /
fact root_ro btrfs property get / ro
# when each btrfs subvolume mount started and was done (testkit/vm.py checks /var went first)
fact mounts systemctl show -p Id,InactiveExitTimestampMonotonic,ActiveEnterTimestampMonotonic \
    /var /.snapshots /home /root /opt /srv /usr/local
fact kernel uname -r
fact default btrfs subvolume get-default /
fact status transactional-update --json status
fact grubenv grub-editenv /boot/grub/grubenv list
fact boot_check journalctl -b -u transactional-update-health.service -o cat --no-pager
fact boot_check_time systemctl show -p ExecMainStartTimestampMonotonic \
    -p ExecMainExitTimestampMonotonic transactional-update-health.service
. "$IN/step.sh"
echo "$?" >"$OUT/step.rc"
save
if [ "$NO_POWEROFF" = 1 ]; then
    say "step done; waiting for the reboot it started"
    sleep 600
    save
fi
say "done: powering off"
systemctl poweroff
