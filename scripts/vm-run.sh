#!/usr/bin/env bash
# Run a command as root inside a QEMU guest booted with Debian 12's own
# kernel, for hosts whose kernel cannot route multicast (CONFIG_IP_MROUTE
# unset, as in some cloud and microVM kernels):
#
#   bash scripts/vm-run.sh [--timeout SEC] [--accel auto|kvm|tcg] -- COMMAND ARGS...
#
# The guest sees the host's filesystem as it is (read-only over 9p, with a
# tmpfs overlay: its writes are thrown away), except /tmp and /run, which
# are empty tmpfs (the working directory is kept if it lies under them). It
# starts in the same working directory, with only the environment variables
# listed in pass_env below (PATH, CI, ...), has no network device, and exits
# with the command's status. The command's stdout and stderr (merged) are
# streamed to stdout.
#
# The kernel is the package linux-image-amd64 depends on, downloaded with
# apt-get and unpacked once per version into $SMCROUTE_VM_CACHE (default
# /var/cache/smcroute-py/vm, ~400 MB). The guest gets the host's CPUs and
# half its memory (at most 12 GiB). KVM is tried where the CPU has vmx or
# svm, and dropped if the guest is not up within 15 s; otherwise TCG,
# QEMU's emulator, 15-40x slower than native.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cache=${SMCROUTE_VM_CACHE:-/var/cache/smcroute-py/vm}
run_timeout=3600
accel=${SMCROUTE_VM_ACCEL:-auto}
kvm_boot_timeout=15  # a KVM guest that is not up by then is hung: use TCG
# what the command sees of the host's environment (PATH and CI at least)
pass_env=(PATH CI LANG LC_ALL TZ PYTEST_ADDOPTS SMCROUTE_VENV SMCROUTE_DEBIAN_VENV
          SMCROUTE_TEST_TIME_SCALE)

usage() {
    echo "usage: $0 [--timeout SEC] [--accel auto|kvm|tcg] -- COMMAND ARGS..." >&2
    exit 2
}
die() {
    echo "vm-run: $*" >&2
    exit 1
}

while (($#)); do
    case $1 in
    --timeout) (($# >= 2)) || usage; run_timeout=$2; shift 2 ;;
    --timeout=*) run_timeout=${1#*=}; shift ;;
    --accel) (($# >= 2)) || usage; accel=$2; shift 2 ;;
    --accel=*) accel=${1#*=}; shift ;;
    --) shift; break ;;
    *) usage ;;
    esac
done
(($#)) || usage
[[ $run_timeout =~ ^[1-9][0-9]*$ ]] || die "--timeout wants a number of seconds, not '$run_timeout'"
[[ $accel =~ ^(auto|kvm|tcg)$ ]] || die "--accel wants auto, kvm or tcg, not '$accel'"
[ "$(id -u)" -eq 0 ] || die "must run as root (apt-get, the kernel cache, a root guest)"

apt_wait=(-o DPkg::Lock::Timeout=600 -o APT::Lock::Timeout=600)
updated=
apt_update() {
    [ -n "$updated" ] && return 0
    apt-get "${apt_wait[@]}" update -qq
    updated=1
}

# -- what runs the guest --------------------------------------------------------------------
need=()
for pkg in qemu-system-x86 busybox-static cpio kmod; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "ok installed" || need+=("$pkg")
done
if ((${#need[@]})); then
    echo "vm-run: installing ${need[*]}" >&2
    apt_update
    DEBIAN_FRONTEND=noninteractive apt-get "${apt_wait[@]}" install -y -qq \
        --no-install-recommends "${need[@]}" >/dev/null
fi

# -- the kernel ---------------------------------------------------------------------------
# One unpacked kernel package per version: DIR/.complete holds the kernel
# release and is written last, so a half-done extraction is never used.
tmp=
dl=
qpid=
tailpid=
cleanup() {
    local status=$?
    trap - EXIT INT TERM
    [ -n "$tailpid" ] && kill "$tailpid" 2>/dev/null
    if [ -n "$qpid" ] && kill -0 "$qpid" 2>/dev/null; then
        kill "$qpid" 2>/dev/null
        wait "$qpid" 2>/dev/null
    fi
    [ -n "$dl" ] && rm -rf "$dl"
    [ -n "$tmp" ] && rm -rf "$tmp"
    exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

kernel_package() {  # the package linux-image-amd64 depends on, and its version
    local pkg ver
    pkg=$(apt-cache depends linux-image-amd64 2>/dev/null |
        awk '$1 == "Depends:" && $2 ~ /^linux-image-[0-9]/ {print $2; exit}')
    [ -n "$pkg" ] || return 1
    ver=$(apt-cache policy "$pkg" 2>/dev/null | awk '$1 == "Candidate:" {print $2; exit}')
    [ -n "$ver" ] && [ "$ver" != "(none)" ] || return 1
    echo "$pkg $ver"
}

unpack_kernel() {  # unpack_kernel PKG VERSION DIR
    local krel
    dl=$(mktemp -d "$cache/.download.XXXXXX")
    # apt downloads as its sandbox user _apt where that user may write
    chown _apt "$dl" 2>/dev/null || true
    (cd "$dl" && apt-get -q "${apt_wait[@]}" download "$1=$2" >/dev/null) || return 1
    dpkg -x "$dl"/*.deb "$dl/root"
    krel=$(ls "$dl/root/lib/modules")
    [ -f "$dl/root/boot/vmlinuz-$krel" ] || die "no boot/vmlinuz-$krel in $1"
    depmod -b "$dl/root" "$krel"  # the package ships no modules.dep
    echo "$krel" >"$dl/root/.complete"
    rm -rf "$3"
    mv "$dl/root" "$3"
    rm -rf "$dl"
    dl=
}

mkdir -p "$cache"
exec {lockfd}>"$cache/.lock"  # one extraction at a time
flock -w 1800 "$lockfd" || die "$cache is locked by another run for 30 minutes"
if ! read -r kpkg kpkgver < <(kernel_package); then
    apt_update || true
    read -r kpkg kpkgver < <(kernel_package) || kpkg=
fi
if [ -n "$kpkg" ]; then
    kdir=$cache/${kpkg}_$kpkgver
    if [ ! -s "$kdir/.complete" ]; then
        echo "vm-run: unpacking $kpkg $kpkgver into $kdir" >&2
        if ! unpack_kernel "$kpkg" "$kpkgver" "$kdir"; then
            [ -n "$updated" ] && die "apt-get download $kpkg=$kpkgver failed"
            # an old package index names a version the mirror no longer has
            rm -rf "$dl"
            apt_update
            read -r kpkg kpkgver < <(kernel_package) || die "apt knows no linux-image-amd64"
            kdir=$cache/${kpkg}_$kpkgver
            if [ ! -s "$kdir/.complete" ]; then
                echo "vm-run: unpacking $kpkg $kpkgver into $kdir" >&2
                unpack_kernel "$kpkg" "$kpkgver" "$kdir" ||
                    die "apt-get download $kpkg=$kpkgver failed"
            fi
        fi
    fi
else
    # No package index (offline): the newest kernel unpacked earlier, if any.
    kdir=$(find "$cache" -mindepth 2 -maxdepth 2 -name .complete -printf '%h\n' 2>/dev/null |
        sort -V | tail -n 1)
    [ -n "$kdir" ] || die "apt knows no linux-image-amd64 and $cache holds no kernel"
    echo "vm-run: no package index; using $kdir" >&2
fi
flock -u "$lockfd"
krel=$(cat "$kdir/.complete")
modules=$kdir/lib/modules/$krel
vmlinuz=$kdir/boot/vmlinuz-$krel

# -- the initramfs: busybox, the modules that reach the host's files, /init ----------------
tmp=$(mktemp -d /tmp/vm-run.XXXXXX)
ir=$tmp/initramfs
mkdir -p "$ir"/{bin,sbin,dev,proc,sys,lower,upper,newroot,out,mods}
cp /bin/busybox "$ir/bin/busybox"
# /init still needs these once /dev has moved into the new root
mknod "$ir/dev/console" c 5 1
mknod "$ir/dev/null" c 1 3
cp "$here/scripts/vm-init.sh" "$ir/init"
chmod 755 "$ir/init"
modprobe -d "$kdir" -S "$krel" -a --show-depends virtio_pci 9pnet_virtio 9p overlay |
    awk '$1 == "insmod" && !seen[$2]++ {print $2}' >"$tmp/modules"
while read -r ko; do
    cp "$ko" "$ir/mods/"
    basename "$ko" >>"$ir/mods/order"
done <"$tmp/modules"
[ -s "$ir/mods/order" ] || die "no 9p/virtio modules found in $modules"
(cd "$ir" && find . | cpio -o -H newc --quiet | gzip -1) >"$tmp/initrd.gz"

# -- the job: what the guest's /init reads from the shared directory -------------------------
out=$tmp/out
mkdir "$out"
: >"$out/output"
{
    printf 'KVER=%q\n' "$krel"
    printf 'MODULES=%q\n' "$modules"
    printf 'WORKDIR=%q\n' "$PWD"
    printf 'GUEST_HOSTNAME=%q\n' "$(hostname)"
} >"$out/job.env"
{
    echo '# written by scripts/vm-run.sh: the command, in the host'"'"'s working directory,'
    echo '# with only the environment passed on'
    echo 'for name in $(compgen -e); do unset "$name"; done'
    echo 'export HOME=/root'
    for name in "${pass_env[@]}"; do
        [ -n "${!name+set}" ] && printf 'export %s=%q\n' "$name" "${!name}"
    done
    printf 'cd -- %q || exit 125\n' "$PWD"
    printf 'exec --'
    printf ' %q' "$@"
    printf '\n'
} >"$out/command.sh"

# -- the guest ------------------------------------------------------------------------------
cpus=$(nproc)
mem_mib=$(awk '/^MemTotal:/ {m = int($2 / 1024 / 2); print (m > 12288 ? 12288 : m)}' /proc/meminfo)
qemu_args=(
    -nodefaults -no-user-config -display none -no-reboot
    -m "${mem_mib}M" -smp "$cpus"
    -kernel "$vmlinuz" -initrd "$tmp/initrd.gz"
    # tsc=reliable: the TSC, not the HPET (time reads stay in the vDSO);
    # mitigations=off: a throwaway guest, and TCG pays dearly for them
    -append "console=ttyS0 panic=-1 quiet tsc=reliable mitigations=off"
    -serial "file:$tmp/console.log"
    -virtfs "local,path=/,mount_tag=hostroot,security_model=none,readonly=on,multidevs=remap"
    -virtfs "local,path=$out,mount_tag=vmout,security_model=none,multidevs=remap"
)

start_guest() {  # start_guest kvm|tcg: qemu in the background, bounded by the run's timeout
    local how=$1
    rm -f "$out/booted"
    if [ "$how" = kvm ]; then
        set -- -accel kvm -cpu max
    else
        # thread=single: one host thread runs the vCPUs in turn; multi-threaded
        # TCG makes every TLB flush wait for all vCPUs, and measured 3-8x
        # slower at what the tests do most (start processes, Python, netns)
        set -- -accel tcg,thread=single -cpu max
    fi
    timeout --kill-after=10 "$run_timeout" qemu-system-x86_64 "$@" "${qemu_args[@]}" </dev/null &
    qpid=$!
}

booted_within() {  # booted_within SEC: the guest's /init has written /out/booted
    local i
    for ((i = 0; i < $1 * 10; i++)); do
        [ -e "$out/booted" ] && return 0
        kill -0 "$qpid" 2>/dev/null || return 1
        sleep 0.1
    done
    return 1
}

started=$SECONDS
how=tcg
# auto tries KVM only with the CPU's virtualisation extensions (vmx, svm):
# a /dev/kvm without them (PVM, in some microVMs) hangs a stock kernel.
try_kvm=
if [ -w /dev/kvm ]; then
    case $accel in
    kvm) try_kvm=1 ;;
    auto) grep -qwE 'vmx|svm' /proc/cpuinfo && try_kvm=1 ;;
    esac
fi
if [ -n "$try_kvm" ]; then
    start_guest kvm
    if booted_within "$kvm_boot_timeout"; then
        how=kvm
    else
        [ "$accel" = kvm ] && die "the KVM guest did not boot within ${kvm_boot_timeout}s"
        echo "vm-run: a KVM guest does not boot here; using TCG (slower)" >&2
        kill "$qpid" 2>/dev/null
        wait "$qpid" 2>/dev/null || true
        qpid=
    fi
elif [ "$accel" = kvm ]; then
    die "/dev/kvm is not usable"
fi
[ -z "$qpid" ] && start_guest tcg
echo "vm-run: Debian kernel $krel, $how, $cpus CPUs, $mem_mib MiB; running: $*" >&2

tail -n +1 -f --pid="$qpid" "$out/output" &  # the command's output, as it comes
tailpid=$!
qstatus=0
wait "$qpid" || qstatus=$?
qpid=
wait "$tailpid" 2>/dev/null || true  # (it ends once it has read the rest)
tailpid=

if [ -s "$out/status" ]; then
    status=$(cat "$out/status")
    echo "vm-run: the command exited with $status after $((SECONDS - started))s" >&2
    exit "$status"
fi
if ((qstatus == 124)); then
    why="timed out after ${run_timeout}s"
else
    why="qemu exited with $qstatus"
fi
echo "vm-run: the guest reported no exit status ($why); its console, last 40 lines:" >&2
[ -s "$out/guest-error" ] && sed 's/^/vm-run: guest: /' "$out/guest-error" >&2
tail -n 40 "$tmp/console.log" >&2 || true
exit 1
