#!/bin/sh
# Runs a command as root inside a throw-away view of this machine, so the instance
# scripts in manifests/ssm/ can create and remove real users without touching the host.
#
#   tests/sandbox/enter.sh SANDBOX_DIR COMMAND [ARG...]
#
# SANDBOX_DIR holds private copies of what the scripts write: etc/ (a copy of /etc),
# home/, root/, tmp/, run/, var/lib/, var/log/, var/mail/, var/spool/cron/ and var/tmp/;
# /dev/shm is a fresh tmpfs in every call. It is
# filled on first use and kept between calls, so a test can grant in one call, look at
# the files from the host, and revoke in the next call.
#
# Each call gets new mount, PID, network and IPC namespaces: the copies are
# bind-mounted over the real paths, /proc only shows the sandbox's processes, and the
# network has nothing but its own loopback (brought up when `ip` exists). When COMMAND
# exits, every process left in the sandbox (atd, sshd, user sessions) is killed with it.
#
# atd is started in every call so that `at` jobs queue as on a real instance; set
# SANDBOX_NO_ATD=1 to leave it stopped (a machine without any scheduler). When
# SANDBOX_DIR/usr-local-sbin exists it is mounted over /usr/local/sbin, the first
# directory of the scripts' PATH: that is how a test puts stand-in commands in place
# (a recording systemctl, for one).
set -eu
PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
export PATH

if [ "$#" -lt 2 ]; then
    echo "usage: $0 SANDBOX_DIR COMMAND [ARG...]" >&2
    exit 2
fi
sandbox=$1
shift

case $sandbox in
    /*) ;;
    *) echo "enter.sh: SANDBOX_DIR must be an absolute path" >&2; exit 2 ;;
esac

# The directories bind-mounted over the host. /tmp comes last: the sandbox directory
# itself usually lives under /tmp and must stay reachable until every bind is done.
mounts="etc home root run var/lib var/log var/mail var/spool/cron var/tmp tmp"

prepare() {
    mkdir -p "$sandbox"
    cp -a /etc "$sandbox/etc"
    # Leave no Passport leftovers of the host (there should be none) in the copy.
    rm -f "$sandbox"/etc/sudoers.d/passport-*
    mkdir -p "$sandbox/home" "$sandbox/root" "$sandbox/run/lock" "$sandbox/run/sshd" \
        "$sandbox/var/lib" "$sandbox/var/log" "$sandbox/var/mail" "$sandbox/var/tmp" "$sandbox/tmp"
    chmod 0755 "$sandbox/home" "$sandbox/run" "$sandbox/run/sshd" "$sandbox/var/lib" "$sandbox/var/log"
    chmod 0700 "$sandbox/root"
    chmod 1777 "$sandbox/tmp" "$sandbox/var/tmp" "$sandbox/run/lock"
    chown root:mail "$sandbox/var/mail" 2>/dev/null || true
    chmod 2775 "$sandbox/var/mail"
    : >"$sandbox/var/log/lastlog"
    : >"$sandbox/var/log/faillog"
    : >"$sandbox/var/log/wtmp"
    : >"$sandbox/run/utmp"
    if [ -d /var/spool/cron ]; then
        mkdir -p "$sandbox/var/spool"
        cp -a /var/spool/cron "$sandbox/var/spool/cron"
    else
        mkdir -p "$sandbox/var/spool/cron"
    fi
    : >"$sandbox/.prepared"
}

[ -e "$sandbox/.prepared" ] || prepare

for d in $mounts; do
    if [ ! -d "/$d" ]; then
        echo "enter.sh: /$d does not exist on this machine, so it cannot be replaced by a private copy" >&2
        exit 3
    fi
done

# A previous call's atd is gone (its PID namespace died), but its pid file may not be.
rm -f "$sandbox/run/atd.pid"

exec unshare --mount --propagation private --pid --fork --mount-proc --net --ipc \
    /bin/sh -c '
set -eu
sandbox=$1
mounts=$2
shift 2
# Before the binds below: /tmp, which usually holds the sandbox, is the last of them.
if [ -d "$sandbox/usr-local-sbin" ]; then
    mount --bind "$sandbox/usr-local-sbin" /usr/local/sbin
fi
for d in $mounts; do
    mount --bind "$sandbox/$d" "/$d"
done
mount -t tmpfs -o mode=1777,nosuid,nodev sandbox-shm /dev/shm
if command -v ip >/dev/null 2>&1; then
    ip link set lo up
fi
if [ "${SANDBOX_NO_ATD:-0}" != 1 ] && command -v atd >/dev/null 2>&1; then
    atd
fi
unset SANDBOX_NO_ATD
# Not exec: this shell stays PID 1 of the sandbox and reaps orphans (killed sessions),
# which userdel would otherwise see as processes still owned by the user.
set +e
"$@"
exit $?
' enter-sandbox "$sandbox" "$mounts" "$@"
