#!/usr/bin/env bash
# smcroute-py demo: real multicast routed between network namespaces.
#
#   sender (s-r) ---- (r-s) router (r-a) ---- (a-r) receiver
#                              (r-b) ---- (b-r) bystander    (not an OIF)
#
# Run as root on a fresh Debian machine: bash scripts/demo.sh
# Installs what is needed (scripts/setup.sh), starts smcrouted in the router
# namespace as a throwaway system user of its own (as it would run as the
# smcroute user), sends IPv4 and IPv6 multicast from the sender and
# counts what arrives.  Everything is torn down on exit, also on failure.
# Exit status: 0 if every count is as expected, 1 otherwise.
# On a kernel without multicast routing, the demo runs itself again in a VM
# with Debian 12's kernel (scripts/vm-run.sh) once setup is done, with
# --in-vm: no setup there (the guest has no network), the host's venv is used.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
in_vm=
if [ "${1:-}" = --in-vm ]; then
    in_vm=1
fi
if [ "$(id -u)" -ne 0 ]; then
    echo "demo: must run as root (network namespaces, multicast routing)" >&2
    exit 1
fi

COUNT=20
tag="smcdemo-$$"
S=$tag-sender R=$tag-router A=$tag-receiver B=$tag-bystander
work=
daemon=
helper=
user=

say() { printf '%s\n' "$*"; }

stop_pid() {    # stop_pid PID: SIGTERM, up to 5 s, then SIGKILL
    local pid=$1 i
    kill -TERM "$pid" 2>/dev/null || return 0
    for ((i = 0; i < 50; i++)); do
        kill -0 "$pid" 2>/dev/null || return 0
        sleep 0.1
    done
    kill -KILL "$pid" 2>/dev/null || true
}

cleanup() {
    local status=$?
    trap - EXIT INT TERM
    if [ -n "$daemon" ]; then
        stop_pid "$daemon"
        wait "$daemon" 2>/dev/null || true
    fi
    # The helper exits with its controller; make sure, by PID.
    if [ -n "$helper" ] && grep -qs smcroute.privileged "/proc/$helper/cmdline"; then
        stop_pid "$helper"
    fi
    for ns in "$S" "$R" "$A" "$B"; do
        ip netns del "$ns" 2>/dev/null || true
    done
    [ -n "$work" ] && rm -rf "$work"
    if [ -n "$user" ]; then
        userdel "$user" 2>/dev/null || true
        groupdel "$user" 2>/dev/null || true
    fi
    if [ "$status" -ne 0 ]; then
        say "demo: FAILED (exit $status)" >&2
    fi
    exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

fail() {
    say "demo: $*" >&2
    if [ -n "$work" ] && [ -s "$work/smcrouted.log" ]; then
        say "--- smcrouted log (last 20 lines) ---" >&2
        tail -n 20 "$work/smcrouted.log" >&2
    fi
    exit 1
}

say "== setup ==${in_vm:+ (done on the host)}"
work=$(mktemp -d /tmp/smcdemo.XXXXXX)
chmod 755 "$work" # the daemon's user must still read its config here (reload)
# setup.sh prints the venv path last; its progress and pip noise go to a log.
if [ -n "$in_vm" ]; then
    venv=${SMCROUTE_VENV:-/opt/smcroute-py/venv}
elif ! venv=$("$here/scripts/setup.sh" 2>"$work/setup.log" | tail -n 1); then
    cat "$work/setup.log" >&2
    fail "scripts/setup.sh failed"
fi
python=$venv/bin/python
smcrouted=$venv/bin/smcrouted
[ -x "$smcrouted" ] || fail "no $smcrouted after setup"
say "venv: $venv"
# mroute_probe.py exits 1 where the kernel has no multicast routing
if [ -z "$in_vm" ] && ! why=$("$python" "$here/tests/integration/mroute_probe.py" 2>/dev/null) &&
    [ -n "$why" ]; then
    say "$why: the demo runs in a VM with Debian 12's kernel (scripts/vm-run.sh)"
    status=0
    bash "$here/scripts/vm-run.sh" --timeout 1800 -- bash "$here/scripts/demo.sh" --in-vm ||
        status=$?
    exit "$status"
fi

say "== topology =="
for ns in "$S" "$R" "$A" "$B"; do
    ip netns add "$ns"
    # no duplicate address detection: addresses are usable at once
    ip netns exec "$ns" sh -c 'echo 0 >/proc/sys/net/ipv6/conf/all/accept_dad &&
        echo 0 >/proc/sys/net/ipv6/conf/default/accept_dad'
    ip -n "$ns" link set lo up
done

# link NET LEAF_NS LEAF_IF ROUTER_IF: veth pair router <-> leaf on subnet NET,
# router .1 / ::1, leaf .2 / ::2, leaf routes everything via the router.
link() {
    local net=$1 leaf=$2 lif=$3 rif=$4
    ip -n "$R" link add "$rif" type veth peer name "$lif" netns "$leaf"
    ip -n "$R" addr add "10.0.$net.1/24" dev "$rif"
    ip -n "$R" -6 addr add "fd00:$net::1/64" dev "$rif" nodad
    ip -n "$leaf" addr add "10.0.$net.2/24" dev "$lif"
    ip -n "$leaf" -6 addr add "fd00:$net::2/64" dev "$lif" nodad
    ip -n "$R" link set "$rif" up
    ip -n "$leaf" link set "$lif" up
    ip -n "$leaf" route add default via "10.0.$net.1"
    ip -n "$leaf" -6 route add default via "fd00:$net::1"
}
link 1 "$S" s-r r-s
link 2 "$A" a-r r-a
link 3 "$B" b-r r-b

# A fresh veth drops IPv6 multicast until carrier is processed and ff00::/8
# is in the local table (~1 s). Wait for both, bounded.
wait_link() {
    local ns=$1 dev=$2 i
    for ((i = 0; i < 100; i++)); do
        if [[ $(ip -n "$ns" link show "$dev") == *"state UP"* ]] &&
            [ -n "$(ip -n "$ns" -6 route show table local ff00::/8 dev "$dev")" ]; then
            return 0
        fi
        sleep 0.1
    done
    fail "link $dev in $ns did not come up"
}
wait_link "$S" s-r
wait_link "$R" r-s
wait_link "$R" r-a
wait_link "$R" r-b
wait_link "$A" a-r
wait_link "$B" b-r
say "sender 10.0.1.2 fd00:1::2 -- router -- receiver (r-a, an OIF), bystander (r-b, not an OIF)"

say "== smcrouted =="
cat >"$work/smcroute.conf" <<'EOF'
phyint r-s enable
phyint r-a enable
phyint r-b enable
mroute from r-s source 10.0.1.2 group 225.1.2.3 to r-a
mroute from r-s source fd00:1::2 group ff0e::1:3 to r-a
EOF
chmod 644 "$work/smcroute.conf"
sed 's/^/  /' "$work/smcroute.conf"

# 'ip netns exec' execs smcrouted: $! is the daemon's PID.
# Without -p, started as root, smcrouted becomes its dedicated user
# (smcroute by default; here a throwaway one, deleted at the end).
useradd --system --no-create-home --shell /usr/sbin/nologin --user-group "$tag" \
    || fail "cannot create the daemon's user $tag"
user=$tag
ip netns exec "$R" "$smcrouted" -n -l info --default-user "$user" -f "$work/smcroute.conf" \
    -P "$work/smcroute.pid" -u "$work/smcroute.sock" >"$work/smcrouted.log" 2>&1 &
daemon=$!
for ((i = 0; i < 100; i++)); do
    [ "$(cat "$work/smcroute.pid" 2>/dev/null)" = "$daemon" ] && break
    kill -0 "$daemon" 2>/dev/null || fail "smcrouted exited before it was ready"
    sleep 0.1
done
[ "$(cat "$work/smcroute.pid" 2>/dev/null)" = "$daemon" ] || fail "smcrouted not ready after 10 s"
helper=$(awk '{print $1}' "/proc/$daemon/task/$daemon/children" 2>/dev/null || true)
for ((i = 0; i < 20; i++)); do # the privilege drop follows the PID file
    grep -qs '^CapEff:[[:space:]]*0*$' "/proc/$daemon/status" && break
    sleep 0.1
done
caps() { awk '/^Uid:/ {u = $2} /^CapEff:/ {c = $2} END {print "uid " u ", CapEff " c}' "/proc/$1/status"; }
say "controller pid $daemon: $(caps "$daemon")  (want: no capability)"
if [ -n "$helper" ]; then
    say "helper     pid $helper: $(caps "$helper"), $(grep '^Seccomp:' "/proc/$helper/status")  (want: no capability, a seccomp filter: Seccomp 2)"
fi

say "== traffic: $COUNT datagrams per flow, TTL 8 =="
flow() {    # flow SOURCE GROUP NOTE EXPECTED_AT_RECEIVER
    "$python" "$here/scripts/demo_traffic.py" --sender "$S:s-r" --source "$1" --group "$2" \
        --count "$COUNT" --note "$3" --listen "receiver=$A:a-r:$4" --listen "bystander=$B:b-r:0"
}
ok=0
flow 10.0.1.2 225.1.2.3 "routed" "$COUNT" || ok=1
flow fd00:1::2 ff0e::1:3 "routed" "$COUNT" || ok=1
flow 10.0.1.2 225.1.2.99 "no route" 0 || ok=1
flow fd00:1::2 ff0e::1:99 "no route" 0 || ok=1

say "== router MFC: ip mroute; ip -6 mroute =="
ip -n "$R" mroute show | sed 's/^/  /'
ip -n "$R" -6 mroute show | sed 's/^/  /'

kill -0 "$daemon" 2>/dev/null || fail "smcrouted died during the demo"
if [ "$ok" -ne 0 ]; then
    fail "some counts are wrong"
fi
say "== OK: routed flows reached the receiver only; unrouted groups reached nobody =="
