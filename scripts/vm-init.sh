#!/bin/busybox sh
# PID 1 of the guest that scripts/vm-run.sh boots (busybox, from an
# initramfs). It builds a root that is the host's filesystem, seen read-only
# over 9p, under a tmpfs overlay (the guest's writes are thrown away),
# switches to it, runs the host's command there as root, and writes the
# command's output and exit status to the shared job directory. Whatever
# fails, the guest powers off: the host then reports the missing status and
# shows the console log.
# shellcheck shell=sh disable=SC2039,SC3037

# -- stage 2, `init run`: PID 1 in the new root (see the end of stage 1) -----------------
if [ "${1:-}" = run ]; then
    job=/run/vm-run
    /bin/bash "$job/command.sh" </dev/null >>"$job/out/output" 2>&1
    echo "$?" >"$job/out/status.tmp" && "$job/busybox" mv "$job/out/status.tmp" "$job/out/status"
    "$job/busybox" sync
    "$job/busybox" poweroff -f
fi

# -- stage 1: the initramfs ----------------------------------------------------------------
/bin/busybox --install -s /bin
export PATH=/bin

say() { echo "vm-init: $*" >/dev/console; }
die() {
    say "$*"
    [ -d /out/.ok ] && echo "$*" >>/out/guest-error
    sync
    poweroff -f
}

mount -t proc proc /proc && mount -t sysfs sysfs /sys && mount -t devtmpfs devtmpfs /dev ||
    die "cannot mount /proc, /sys or /dev"

# virtio, 9p and overlayfs are modules in Debian's kernel: loaded in
# dependency order (vm-run.sh wrote it in /mods/order).
while read -r mod; do
    insmod "/mods/$mod" || die "insmod $mod failed"
done </mods/order

# The host's job directory, read-write, no caching: what is written here
# reaches the host at once (the host streams out/output as it grows).
mount -t 9p -o trans=virtio,version=9p2000.L,cache=none,msize=512000 vmout /out ||
    die "cannot mount the job directory (9p tag vmout)"
mkdir -p /out/.ok
: >/out/booted  # the host knows the guest is up (and that KVM, if tried, works)
. /out/job.env  # KVER, MODULES, WORKDIR, GUEST_HOSTNAME

# The host's / (read-only; cache=loose: it does not change under us) with
# a tmpfs on top.
mount -t 9p -o trans=virtio,version=9p2000.L,ro,cache=loose,msize=512000 hostroot /lower ||
    die "cannot mount the host's root (9p tag hostroot)"
mount -t tmpfs -o mode=755 tmpfs /upper && mkdir -p /upper/u /upper/w ||
    die "cannot mount the overlay's tmpfs"
mount -t overlay -o lowerdir=/lower,upperdir=/upper/u,workdir=/upper/w overlay /newroot ||
    die "cannot mount the overlay root"
R=/newroot

# Modules on demand: the guest kernel's modules (the host's extraction of
# the kernel package) at /lib/modules/KVER, for Debian's modprobe in the new
# root; and for busybox's here, should a kernel thread still resolve
# /proc/sys/kernel/modprobe in this root.
[ -d "/lower$MODULES" ] || die "no $MODULES on the host"
mkdir -p "/lib/modules/$KVER" "$R/lib/modules/$KVER" /sbin
mount --bind "/lower$MODULES" "/lib/modules/$KVER" &&
    mount --bind "/lower$MODULES" "$R/lib/modules/$KVER" || die "cannot bind the modules"
ln -sf /bin/busybox /sbin/modprobe
echo /sbin/modprobe >/proc/sys/kernel/modprobe
# What the tests use anyway: loaded up front rather than at first use.
for mod in veth; do
    modprobe "$mod" || say "modprobe $mod failed"
done

# A working directory under /tmp or /run would be hidden by the fresh
# tmpfs mounted there below: keep the overlay's view of it.
keep=
case $WORKDIR in
/tmp/* | /run/*)
    mkdir -p /keep && mount --bind "$R$WORKDIR" /keep && keep=1 ;;
esac
mount --move /proc "$R/proc" && mount --move /sys "$R/sys" && mount --move /dev "$R/dev" ||
    die "cannot move /proc, /sys, /dev into the new root"
mount -t tmpfs -o mode=755 tmpfs "$R/run" && mkdir -p "$R/run/lock" &&
    mount -t tmpfs -o mode=1777 tmpfs "$R/tmp" || die "cannot mount /run or /tmp"
mkdir -p "$R/dev/pts" "$R/dev/shm"
mount -t devpts -o ptmxmode=0666,mode=0620,gid=5 devpts "$R/dev/pts" &&
    mount -t tmpfs -o mode=1777 tmpfs "$R/dev/shm" || die "cannot mount /dev/pts or /dev/shm"
if [ -n "$keep" ]; then
    mkdir -p "$R$WORKDIR" && mount --move /keep "$R$WORKDIR" || die "cannot keep $WORKDIR"
fi
hostname "$GUEST_HOSTNAME"
ip link set lo up || die "cannot set lo up"

# Stage 2's files in the new root's /run: the job directory, the command,
# busybox (for mv, sync and poweroff) and this script.
job=$R/run/vm-run
mkdir -p "$job/out" && mount --move /out "$job/out" && cp /init "$job/init" &&
    cp "$job/out/command.sh" "$job/command.sh" && cp /bin/busybox "$job/busybox" ||
    die "cannot set up $job"
say "running the command"
# The new root onto /, then chroot by PID 1 itself, as switch_root does: the
# command is not "chrooted" (unshare --user works) and kernel threads,
# which share PID 1's root, find Debian's modprobe there.
cd "$R" && mount --move . / || die "cannot move the new root onto /"
exec chroot . /run/vm-run/busybox sh /run/vm-run/init run
