#!/bin/sh
# shellcheck disable=SC2154,SC2034 # SSM_* come from the SSM Agent; passport_* from core.sh
# Passport: create, or extend, the short-lived Linux user of one access request.
#
# Run as root by the SSM document Passport-GrantLinux. Its inputs arrive only as
# environment variables set by the SSM Agent (interpolationType ENV_VAR), never as
# script text, and are checked again here against the documents' patterns:
#   SSM_Username        pp-<handle>-<n>, at most 32 characters
#   SSM_RequestId       AR-<n>, with the n the username ends in
#   SSM_ExpiresAt       when the access ends, in unix seconds (10 digits)
#   SSM_Sudo            true or false
#   SSM_SshPublicKey    none, or "<type> <base64>" of the requester's key (key mode)
#   SSM_TrustedCaKeys   none, or 1 to 4 "<type> <base64>" CA keys joined by "," (certificate mode)
#   SSM_PortForwarding  true or false
#   SSM_UidRange        <first>-<last>: the UIDs Passport may give on this instance
# Exactly one of SshPublicKey and TrustedCaKeys is none.
#
# sshd lets Passport users (pp-*) in through root-owned files only: a Match block
# (a drop-in sorting first in sshd_config.d, else a marked block at the end of
# sshd_config) points it at /etc/ssh/passport/ for the trusted CA keys, the user's
# principals and, in key mode, the user's key with restrict and expiry-time options.
# Nothing in the user's home is read by sshd for them, so they cannot stretch access.
#
# It creates the user with a UID from SSM_UidRange that was never given before on this
# instance (a root-only counter), GECOS "passport AR-<n>" and a home of mode 0700, adds
# or removes the sudo drop-in, and schedules the removal at SSM_ExpiresAt so that
# access ends even when Passport itself is down: a persistent systemd timer, else an at
# job, and in both cases a sweep at boot and every 5 minutes.
#
# Idempotent: a second run with the same inputs changes nothing, and a run with a later
# SSM_ExpiresAt (an extension) moves every expiry. On bad inputs or an unfit machine it
# exits 1 with the reason on stderr before changing anything.
#
# Times: in certificate mode the certificate's valid_before is the exact end of logins;
# in key mode the key's expiry-time has minute precision and is rounded down, so the
# key is never accepted after SSM_ExpiresAt. expiry-time is written without a zone
# suffix, which every OpenSSH since the option exists reads in the system time zone; TZ
# is unset below so this script and sshd agree on that zone. The systemd timer fires to
# the second (in UTC); an at job has minute precision and is rounded up, so the removal
# never runs early. The account expiry is a whole day, rounded up to the next midnight
# (UTC): only a coarse backstop.
set -eu
umask 077
PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
LC_ALL=C
export PATH LC_ALL
unset TZ
cd /
passport_who="passport grant"

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

# The removal logic, shared with revoke-linux.sh. It is written out once here, read
# for its input checks, and later installed as the helper the expiry job and the sweep
# run.
cat >"$work/core.sh" <<'PASSPORT_REVOKE_CORE'
# >>> passport-revoke-core
# Kept identical in grant-linux.sh (which installs it as the on-instance removal job and
# the sweep) and revoke-linux.sh; tests/instance_scripts.rs fails when the copies differ.
passport_state=/var/lib/passport
passport_sshd=/etc/ssh/passport

passport_fail() {
    printf '%s: %s\n' "${passport_who:-passport revoke}" "$*" >&2
    exit 1
}

# True when $1 is digits only, at most $2 of them. Checked with case patterns, not
# grep or regular expressions, so no newline or locale can widen what passes.
passport_digits() {
    case $1 in
        '' | *[!0-9]*) return 1 ;;
    esac
    [ "${#1}" -le "$2" ]
}

# pp-<handle>-<n>: the documents' allowedPattern ^pp-[a-z0-9_-]{1,27}-[0-9]{1,18}$ plus
# the 32-character limit of Linux usernames.
passport_valid_username() {
    case $1 in
        pp-*) ;;
        *) return 1 ;;
    esac
    case $1 in
        *[!a-z0-9_-]*) return 1 ;;
    esac
    [ "${#1}" -le 32 ] || return 1
    _pp_rest=${1#pp-}
    _pp_stem=${_pp_rest%-*}
    [ "$_pp_stem" != "$_pp_rest" ] || return 1
    [ -n "$_pp_stem" ] || return 1
    [ "${#_pp_stem}" -le 27 ] || return 1
    passport_digits "${_pp_rest##*-}" 18
}

# AR-<n>, and the username must end in the same n (Passport derives one from the other).
passport_valid_request() {
    case $1 in
        AR-*) ;;
        *) return 1 ;;
    esac
    passport_digits "${1#AR-}" 18 || return 1
    [ "${2##*-}" = "${1#AR-}" ]
}

# True when $1 is a UID Passport may take away from: never root, a system account or
# the overflow ids, whatever a state file says.
passport_valid_uid() {
    passport_digits "$1" 10 || return 1
    [ "$1" -ge 1000 ] && [ "$1" -le 4294967294 ] && [ "$1" -ne 65534 ] && [ "$1" -ne 65535 ]
}

# Serialises Passport's changes on this instance (grant, revoke, the expiry job, the
# sweep). The state directory is root's alone.
passport_lock() {
    mkdir -p "$passport_state/users"
    chown root:root "$passport_state" "$passport_state/users"
    chmod 0700 "$passport_state" "$passport_state/users"
    if command -v flock >/dev/null 2>&1; then
        exec 9>>"$passport_state/lock"
        flock -w 300 9 || passport_fail "another Passport change is still running on this instance; try again later"
    fi
}

# passport_state_value USER KEY: KEY's value in the root-only state file of USER.
passport_state_value() {
    [ -f "$passport_state/users/$1" ] || return 0
    sed -n "s/^$2=\\([A-Za-z0-9-]*\\)\$/\\1/p" "$passport_state/users/$1" | head -n 1
}

# True when Passport created account $1 for request $2: the GECOS marker, or the
# root-only state file (which the user cannot edit, unlike their own GECOS on some
# systems).
passport_owned() {
    _pp_gecos=$(getent passwd "$1" | cut -d: -f5)
    [ "$_pp_gecos" = "passport $2" ] && return 0
    [ -f "$passport_state/users/$1" ] && grep -qxF "request=$2" "$passport_state/users/$1"
}

# True when systemd is the init system here.
passport_systemd() {
    [ -d /run/systemd/system ] && command -v systemctl >/dev/null 2>&1
}

# Prints the pids of live processes whose real, effective, saved or file-system UID is
# $1, read from /proc so that no process of the user can hide from a name-based match.
passport_pids_of() {
    for _pp_status in /proc/[0-9]*/status; do
        _pp_state=
        _pp_ids=
        while read -r _pp_key _pp_val _pp_more; do
            case $_pp_key in
                State:) _pp_state=$_pp_val ;;
                Uid:)
                    _pp_ids="$_pp_val $_pp_more"
                    break
                    ;;
            esac
        done 2>/dev/null <"$_pp_status" || continue
        [ "$_pp_state" != Z ] || continue
        for _pp_id in $_pp_ids; do
            if [ "$_pp_id" = "$1" ]; then
                _pp_pid=${_pp_status#/proc/}
                echo "${_pp_pid%/status}"
                break
            fi
        done
    done
}

# passport_end_processes USER UID: ends every session and process of the UID (USER may
# be empty when the account is already gone). Every process is stopped before any is
# killed, so none can fork a replacement; fails if one is still alive afterwards.
passport_end_processes() {
    if [ -n "$1" ] && passport_systemd && command -v loginctl >/dev/null 2>&1; then
        loginctl terminate-user "$1" >/dev/null 2>&1 || true
    fi
    _pp_try=0
    while :; do
        _pp_pids=$(passport_pids_of "$2")
        [ -n "$_pp_pids" ] || return 0
        _pp_try=$((_pp_try + 1))
        # shellcheck disable=SC2086 # one pid per word
        [ "$_pp_try" -le 50 ] || passport_fail "processes of uid $2 are still running after 50 attempts to kill them:" $_pp_pids
        # shellcheck disable=SC2086 # one pid per word
        kill -STOP $_pp_pids 2>/dev/null || true
        # shellcheck disable=SC2086
        kill -KILL $_pp_pids 2>/dev/null || true
        sleep 0.1 2>/dev/null || sleep 1
    done
}

# Removes what user $1 left queued to run later as themselves.
passport_remove_user_jobs() {
    if command -v atq >/dev/null 2>&1; then
        atq 2>/dev/null | while read -r _pp_id _pp_rest; do
            if [ "${_pp_rest##* }" = "$1" ]; then
                atrm "$_pp_id" >/dev/null 2>&1 || true
            fi
        done
    fi
    if command -v crontab >/dev/null 2>&1; then
        crontab -r -u "$1" >/dev/null 2>&1 || true
    fi
}

# Prints the directories to search for a removed user's files: one per local file
# system, each walked with find -xdev. /proc, /sys and /dev (but /dev/shm) hold no
# files of a user, network and FUSE file systems may be shared with other machines
# (and may not even let root in), read-only images cannot have gained any. A mount on
# the same device as its parent directory is already reached from that parent.
passport_local_roots() {
    while read -r _pp_dev _pp_mnt _pp_type _pp_rest; do
        case $_pp_type in
            proc | sysfs | devtmpfs | devpts | cgroup | cgroup2 | securityfs | debugfs | \
                tracefs | pstore | bpf | mqueue | hugetlbfs | configfs | fusectl | autofs | \
                binfmt_misc | efivarfs | rpc_pipefs | nsfs | selinuxfs | squashfs | iso9660 | \
                udf | nfs | nfs4 | cifs | smb3 | smbfs | ceph | glusterfs | lustre | afs | \
                9p | virtiofs | davfs | fuse | fuse.* | fuseblk) continue ;;
        esac
        case $_pp_mnt in
            *\\*) _pp_mnt=$(printf '%b' "$_pp_mnt") ;;
        esac
        case $_pp_mnt in
            /dev/shm | /dev/shm/*) ;;
            /proc | /proc/* | /sys | /sys/* | /dev | /dev/*) continue ;;
        esac
        [ -d "$_pp_mnt" ] || continue
        if [ "$_pp_mnt" != / ]; then
            _pp_parent=${_pp_mnt%/*}
            [ -n "$_pp_parent" ] || _pp_parent=/
            [ "$(stat -c %d "$_pp_mnt" 2>/dev/null)" != "$(stat -c %d "$_pp_parent" 2>/dev/null)" ] || continue
        fi
        printf '%s\n' "$_pp_mnt"
    done </proc/mounts
}

# passport_remove_files UID: removes what the UID left outside its home on local file
# systems, in one walk per file system: every setuid or setgid file that would run as
# it or its group, every other file it owns, and the directories it owned that are then
# empty. Its processes are gone, so nothing races the removal, and find -delete never
# follows a link. When find reports a failure, a second walk looks for setuid or setgid
# files left, and their presence fails the removal.
passport_remove_files() {
    passport_valid_uid "$1" || passport_fail "refusing to remove the files of uid $1"
    command -v find >/dev/null 2>&1 || passport_fail "find is missing on this instance"
    _pp_roots=$(passport_local_roots)
    _pp_failed=
    while IFS= read -r _pp_root; do
        [ -n "$_pp_root" ] || continue
        find "$_pp_root" -xdev \( ! -type d \( -user "$1" -o -group "$1" \) \( -perm -4000 -o -perm -2000 \) -delete \) \
            -o \( -user "$1" \( ! -type d -o -empty \) -delete \) 2>/dev/null || _pp_failed="$_pp_failed$_pp_root
"
    done <<PASSPORT_ROOTS
$_pp_roots
PASSPORT_ROOTS
    while IFS= read -r _pp_root; do
        [ -n "$_pp_root" ] || continue
        _pp_left=$(find "$_pp_root" -xdev ! -type d \( -user "$1" -o -group "$1" \) \
            \( -perm -4000 -o -perm -2000 \) -print 2>/dev/null | head -n 3)
        # shellcheck disable=SC2086 # the paths on one line
        [ -z "$_pp_left" ] || passport_fail "could not remove the setuid/setgid files of uid $1:" $_pp_left
    done <<PASSPORT_FAILED
$_pp_failed
PASSPORT_FAILED
}

# passport_remove_access USER: what lets USER in or up, all of it Passport's own files:
# the sudo drop-in and the files sshd reads for Passport users.
passport_remove_access() {
    rm -f "/etc/sudoers.d/passport-$1" "$passport_sshd/principals/$1" "$passport_sshd/authorized_keys/$1"
}

# Cancels the on-instance removal job of user $1: the systemd timer (its unit files
# and its persistent stamp) or the at job (found by its marker line). A removal that is
# running right now is left alone: it may be the caller.
passport_unschedule() {
    _pp_unit=passport-expire-$1
    if passport_systemd; then
        systemctl stop "$_pp_unit.timer" >/dev/null 2>&1 || true
        systemctl disable "$_pp_unit.timer" >/dev/null 2>&1 || true
    fi
    if [ -e "/etc/systemd/system/$_pp_unit.timer" ] || [ -e "/etc/systemd/system/$_pp_unit.service" ]; then
        rm -f "/etc/systemd/system/$_pp_unit.timer" "/etc/systemd/system/$_pp_unit.service" \
            "/etc/systemd/system/timers.target.wants/$_pp_unit.timer" \
            "/var/lib/systemd/timers/stamp-$_pp_unit.timer"
        if passport_systemd; then
            systemctl daemon-reload >/dev/null 2>&1 || true
        fi
    fi
    if passport_systemd; then
        systemctl reset-failed "$_pp_unit.timer" "$_pp_unit.service" >/dev/null 2>&1 || true
    fi
    if command -v atq >/dev/null 2>&1; then
        atq 2>/dev/null | while read -r _pp_id _pp_rest; do
            case $_pp_rest in
                *" = "*) continue ;;
            esac
            if at -c "$_pp_id" 2>/dev/null | grep -qxF "# passport-expire $1"; then
                atrm "$_pp_id" >/dev/null 2>&1 || true
            fi
        done
    fi
}

# passport_revoke USERNAME REQUEST [SCHEDULED_EXPIRY]
# Removes the user: their access (sudo drop-in, sshd files), processes, queued jobs,
# account, home, files elsewhere, removal job and state. Success when the user is
# already gone. Refuses an account Passport did not create, but takes away Passport's
# access files for that name first. The expiry job and the sweep pass the expiry they
# act on, and stand down if the access was extended since.
passport_revoke() {
    _pp_user=$1
    _pp_req=$2
    passport_valid_username "$_pp_user" ||
        passport_fail "Username must be a Passport username (pp-<handle>-<n>, at most 32 characters of a-z 0-9 _ -)"
    passport_valid_request "$_pp_req" "$_pp_user" ||
        passport_fail "RequestId must be AR-<n> with the same n the Username ends in"
    passport_lock
    if [ "$#" -ge 3 ] && [ -f "$passport_state/users/$_pp_user" ]; then
        passport_digits "$3" 10 || passport_fail "the scheduled expiry must be unix seconds"
        _pp_now_expiry=$(passport_state_value "$_pp_user" expires)
        if [ -n "$_pp_now_expiry" ] && [ "$_pp_now_expiry" -gt "$3" ]; then
            echo "passport revoke: $_pp_user was extended; the newer removal job stays in charge"
            return 0
        fi
    fi
    passport_remove_access "$_pp_user"
    _pp_uid=$(passport_state_value "$_pp_user" uid)
    _pp_gone="was already absent"
    if getent passwd "$_pp_user" >/dev/null 2>&1; then
        passport_owned "$_pp_user" "$_pp_req" ||
            passport_fail "account $_pp_user exists but was not created by Passport for $_pp_req; leaving it alone"
        _pp_uid=$(getent passwd "$_pp_user" | cut -d: -f3)
        _pp_home=$(getent passwd "$_pp_user" | cut -d: -f6)
        passport_valid_uid "$_pp_uid" || passport_fail "account $_pp_user has uid $_pp_uid, which Passport never gives; leaving it alone"
        # An expired account starts no new session while the old ones are ended.
        usermod --expiredate 1 "$_pp_user" >/dev/null 2>&1 || true
        passport_end_processes "$_pp_user" "$_pp_uid"
        passport_remove_user_jobs "$_pp_user"
        _pp_rc=0
        _pp_out=$(userdel -r "$_pp_user" 2>&1) || _pp_rc=$?
        if [ "$_pp_rc" -eq 8 ]; then
            # Still "logged in" (a stale utmp entry): remove the account anyway.
            passport_end_processes "$_pp_user" "$_pp_uid"
            _pp_rc=0
            _pp_out=$(userdel -f -r "$_pp_user" 2>&1) || _pp_rc=$?
        fi
        if getent passwd "$_pp_user" >/dev/null 2>&1; then
            passport_fail "userdel could not remove $_pp_user (exit $_pp_rc): $_pp_out"
        fi
        # userdel exits 12 when the account is gone but the home was not removed.
        if [ "$_pp_home" = "/home/$_pp_user" ] && [ -e "$_pp_home" ]; then
            rm -rf -- "$_pp_home" || passport_fail "could not remove $_pp_home"
        fi
        _pp_gone="removed"
    fi
    if [ -n "$_pp_uid" ]; then
        # Also when the account is already gone: its processes and files may not be.
        passport_valid_uid "$_pp_uid" || passport_fail "the state of $_pp_user names uid $_pp_uid, which Passport never gives"
        passport_end_processes "" "$_pp_uid"
        passport_remove_files "$_pp_uid"
        if [ "$(getent group "$_pp_user" | cut -d: -f3)" = "$_pp_uid" ]; then
            groupdel "$_pp_user" >/dev/null 2>&1 || true
        fi
    fi
    passport_unschedule "$_pp_user"
    rm -f "$passport_state/users/$_pp_user"
    echo "passport revoke: $_pp_user $_pp_gone ($_pp_req)"
}

# passport_sweep: removes every Passport user whose access has ended, by the expiry in
# their state file. Run at boot and every few minutes, so that a removal missed while
# the instance was off, or a lost timer, still happens. Fails when one removal failed.
passport_sweep() {
    _pp_now=$(date +%s)
    _pp_failed=0
    for _pp_file in "$passport_state"/users/*; do
        [ -f "$_pp_file" ] || continue
        _pp_name=${_pp_file##*/}
        passport_valid_username "$_pp_name" || continue
        _pp_expiry=$(passport_state_value "$_pp_name" expires)
        _pp_request=$(passport_state_value "$_pp_name" request)
        passport_digits "$_pp_expiry" 10 || continue
        [ "$_pp_expiry" -le "$_pp_now" ] || continue
        # A process of its own for each: set -e holds there, and one failure does not
        # stop the others.
        /bin/sh "$passport_state/revoke-user.sh" "$_pp_name" "$_pp_request" "$_pp_expiry" || _pp_failed=1
    done
    return "$_pp_failed"
}
# <<< passport-revoke-core
PASSPORT_REVOKE_CORE
# shellcheck source=/dev/null
. "$work/core.sh"

# --- inputs -------------------------------------------------------------------------

# need NAME "${NAME+set}": fails unless the SSM Agent set the variable.
need() {
    [ "$2" = set ] ||
        passport_fail "$1 is not set: this document needs SSM Agent 3.3.2746.0 or later, which passes parameters as environment variables"
}
need SSM_Username "${SSM_Username+set}"
need SSM_RequestId "${SSM_RequestId+set}"
need SSM_ExpiresAt "${SSM_ExpiresAt+set}"
need SSM_Sudo "${SSM_Sudo+set}"
need SSM_SshPublicKey "${SSM_SshPublicKey+set}"
need SSM_TrustedCaKeys "${SSM_TrustedCaKeys+set}"
need SSM_PortForwarding "${SSM_PortForwarding+set}"
need SSM_UidRange "${SSM_UidRange+set}"
user=$SSM_Username
req=$SSM_RequestId
expires=$SSM_ExpiresAt
sudo=$SSM_Sudo
key=$SSM_SshPublicKey
ca_keys=$SSM_TrustedCaKeys
forwarding=$SSM_PortForwarding
uid_range=$SSM_UidRange

passport_valid_username "$user" ||
    passport_fail "Username must be a Passport username (pp-<handle>-<n>, at most 32 characters of a-z 0-9 _ -)"
passport_valid_request "$req" "$user" ||
    passport_fail "RequestId must be AR-<n> with the same n the Username ends in"
if ! passport_digits "$expires" 10 || [ "${#expires}" -ne 10 ]; then
    passport_fail "ExpiresAt must be unix seconds (10 digits)"
fi
case $sudo in
    true | false) ;;
    *) passport_fail "Sudo must be true or false" ;;
esac
case $forwarding in
    true | false) ;;
    *) passport_fail "PortForwarding must be true or false" ;;
esac

# public_key PARAM VALUE MAXLEN: fails unless VALUE is "<type> <base64>" of a type sshd
# takes, with nothing else, and ssh-keygen reads it as a public key.
public_key() {
    case $2 in
        "ssh-ed25519 "* | "ecdsa-sha2-nistp256 "* | "ecdsa-sha2-nistp384 "* | \
            "ecdsa-sha2-nistp521 "* | "ssh-rsa "*) ;;
        *) passport_fail "$1 must be '<type> <base64>' with type ssh-ed25519, ecdsa-sha2-nistp256/384/521 or ssh-rsa, and no options or comment" ;;
    esac
    _body=${2#* }
    case $_body in
        '' | *[!A-Za-z0-9+/=]*) passport_fail "$1 must be '<type> <base64>' with nothing after the base64" ;;
    esac
    [ "${#_body}" -le "$3" ] || passport_fail "$1 has a key longer than $3 characters"
    printf '%s\n' "$2" >"$work/check.pub"
    if command -v ssh-keygen >/dev/null 2>&1 && ! ssh-keygen -l -f "$work/check.pub" >/dev/null 2>&1; then
        passport_fail "$1 is not a valid OpenSSH public key"
    fi
}

: >"$work/ca.pub"
if [ "$key" != none ]; then
    public_key SshPublicKey "$key" 8192
fi
if [ "$ca_keys" != none ]; then
    # Up to 4 keys joined by commas (a rotation sends the old and the new one).
    rest=$ca_keys
    count=0
    while :; do
        one=${rest%%,*}
        count=$((count + 1))
        [ "$count" -le 4 ] || passport_fail "TrustedCaKeys has more than 4 keys"
        public_key TrustedCaKeys "$one" 1400
        printf '%s\n' "$one" >>"$work/ca.pub"
        [ "$one" != "$rest" ] || break
        rest=${rest#*,}
    done
fi
if [ "$key" = none ] && [ "$ca_keys" = none ]; then
    passport_fail "SshPublicKey and TrustedCaKeys are both none: send the requester's key, or the CA keys for certificate logins"
fi
if [ "$key" != none ] && [ "$ca_keys" != none ]; then
    passport_fail "SshPublicKey and TrustedCaKeys are both set: exactly one of them must be none"
fi
mode=key
[ "$key" != none ] || mode=certificate

case $uid_range in
    *-*) ;;
    *) passport_fail "UidRange must be <first>-<last>, e.g. 10000000-19999999" ;;
esac
uid_first=${uid_range%%-*}
uid_last=${uid_range#*-}
if ! passport_digits "$uid_first" 10 || ! passport_digits "$uid_last" 10; then
    passport_fail "UidRange must be <first>-<last>, two numbers of at most 10 digits, e.g. 10000000-19999999"
fi
# Without leading zeros, which the shell could read as octal.
uid_first=$((uid_first + 0))
uid_last=$((uid_last + 0))
[ "$uid_first" -ge 1000 ] || passport_fail "UidRange must start at 1000 or above, past the system accounts"
[ "$uid_last" -le 4294967294 ] || passport_fail "UidRange must end at 4294967294 or below"
[ "$uid_first" -le "$uid_last" ] || passport_fail "UidRange must not end before it starts"

now=$(date +%s)
[ "$expires" -gt "$now" ] || passport_fail "ExpiresAt is not in the future"
# Passport grants at most 12 hours at a time; anything far beyond is a bug upstream.
[ "$expires" -le $((now + 86400)) ] || passport_fail "ExpiresAt is more than 24 hours away"

# --- what this machine offers ---------------------------------------------------------

for tool in useradd usermod userdel groupadd groupdel getent date find stat; do
    command -v "$tool" >/dev/null 2>&1 || passport_fail "$tool is missing on this instance"
done
sshd=$(command -v sshd 2>/dev/null || true)
[ -n "$sshd" ] || sshd=/usr/sbin/sshd
[ -x "$sshd" ] || passport_fail "sshd (the OpenSSH server) is not installed on this instance"
[ -f /etc/ssh/sshd_config ] || passport_fail "/etc/ssh/sshd_config does not exist"

atd_running() {
    if command -v pgrep >/dev/null 2>&1; then
        pgrep -x atd >/dev/null 2>&1
    else
        [ -r /run/atd.pid ] && kill -0 "$(cat /run/atd.pid)" 2>/dev/null
    fi
}
if passport_systemd; then
    scheduler=systemd
elif command -v at >/dev/null 2>&1 && atd_running; then
    scheduler="at"
elif command -v at >/dev/null 2>&1; then
    passport_fail "cannot schedule the removal at expiry: systemd is not running and atd is not running (start atd)"
else
    passport_fail "cannot schedule the removal at expiry: systemd is not running and at is not installed (install at and start atd)"
fi

dropin=/etc/sudoers.d/passport-$user
if [ "$sudo" = true ]; then
    command -v visudo >/dev/null 2>&1 || passport_fail "Sudo=true but sudo (visudo) is not installed"
    grep -Eq '^[[:space:]]*[@#]includedir[[:space:]]+/etc/sudoers\.d/?[[:space:]]*$' /etc/sudoers 2>/dev/null ||
        passport_fail "Sudo=true but /etc/sudoers does not include /etc/sudoers.d"
    [ -d /etc/sudoers.d ] || passport_fail "Sudo=true but /etc/sudoers.d does not exist"
fi

# UIDs in the range must not be anyone's subordinate ids (containers of other users
# would own the files of Passport users, or the other way round).
for file in /etc/subuid /etc/subgid; do
    [ -f "$file" ] || continue
    while IFS=: read -r owner start count; do
        if ! passport_digits "$start" 10 || ! passport_digits "$count" 10; then
            continue
        fi
        [ "$count" -gt 0 ] || continue
        if [ "$start" -le "$uid_last" ] && [ $((start + count - 1)) -ge "$uid_first" ]; then
            passport_fail "UidRange $uid_first-$uid_last overlaps the subordinate ids $start-$((start + count - 1)) of $owner in $file; configure another range"
        fi
    done <"$file"
done

# --- sshd -------------------------------------------------------------------------------

# oneline TEXT: TEXT with its lines joined, for a one-line error message.
oneline() {
    printf '%s' "$1" | tr '\n' ' '
}

# ensure_dir DIR MODE: DIR is a real directory owned by root with MODE. Only root can
# create anything under /etc/ssh, so a link there is not the user's: refuse it anyway.
ensure_dir() {
    if [ -L "$1" ] || { [ -e "$1" ] && [ ! -d "$1" ]; }; then
        passport_fail "$1 is not a directory; remove it"
    fi
    [ -d "$1" ] || mkdir "$1"
    chown root:root "$1"
    chmod "$2" "$1"
}

# put_file PATH MODE < CONTENT: replaces PATH with CONTENT through a temp file in the
# same directory (never through a link at PATH), owned by root. Sets put_changed=1
# when the content changed.
put_file() {
    _tmp=$(mktemp "${1%/*}/.passport.XXXXXX")
    cat >"$_tmp"
    chown root:root "$_tmp"
    chmod "$2" "$_tmp"
    if [ -f "$1" ] && [ ! -L "$1" ] && cmp -s "$_tmp" "$1"; then
        rm -f "$_tmp"
        put_changed=0
    else
        mv -f "$_tmp" "$1"
        put_changed=1
    fi
}

passport_block() {
    echo "# Passport: managed by Passport-GrantLinux; do not edit"
    echo "Match User pp-*"
    echo "    TrustedUserCAKeys $passport_sshd/ca.pub"
    echo "    AuthorizedPrincipalsFile $passport_sshd/principals/%u"
    echo "    AuthorizedKeysFile $passport_sshd/authorized_keys/%u"
    echo "    AllowAgentForwarding no"
    echo "    X11Forwarding no"
    echo "    PermitUserRC no"
    echo "    PermitTunnel no"
    echo "Match all"
}
block_begin="# >>> Passport: managed by Passport-GrantLinux; do not edit"
block_end="# <<< Passport"
main_conf=/etc/ssh/sshd_config
dropin_dir=/etc/ssh/sshd_config.d
dropin_conf=$dropin_dir/00-passport.conf

# The old configuration files, put back when sshd rejects the new one.
mkdir "$work/sshd-old"
save_conf() {
    [ ! -e "$work/sshd-old/${1##*/}" ] && [ ! -e "$work/sshd-old/${1##*/}.absent" ] || return 0
    if [ -f "$1" ]; then
        cp -p "$1" "$work/sshd-old/${1##*/}"
    else
        : >"$work/sshd-old/${1##*/}.absent"
    fi
}
restore_conf() {
    for conf in "$main_conf" "$dropin_conf"; do
        if [ -e "$work/sshd-old/${conf##*/}.absent" ]; then
            rm -f "$conf"
        elif [ -e "$work/sshd-old/${conf##*/}" ]; then
            cp -p "$work/sshd-old/${conf##*/}" "$conf.passport-restore"
            mv -f "$conf.passport-restore" "$conf"
        fi
    done
}

# configure_sshd: writes Passport's Match block where sshd reads it, checks that sshd
# accepts it and that it is in force for this user, and reloads sshd if it changed.
configure_sshd() {
    ensure_dir "$passport_sshd" 0755
    ensure_dir "$passport_sshd/principals" 0755
    ensure_dir "$passport_sshd/authorized_keys" 0755
    # Rewritten on every grant: this is how a CA key rotation reaches the instance.
    put_file "$passport_sshd/ca.pub" 0644 <"$work/ca.pub"

    conf_changed=0
    if grep -Eiq '^[[:space:]]*Include[[:space:]]+(/etc/ssh/)?sshd_config\.d/\*\.conf([[:space:]]|$)' "$main_conf"; then
        [ -d "$dropin_dir" ] || ensure_dir "$dropin_dir" 0755
        save_conf "$dropin_conf"
        passport_block >"$work/put"
        put_file "$dropin_conf" 0644 <"$work/put"
        [ "$put_changed" = 0 ] || conf_changed=1
        # A block from a time when sshd_config had no Include goes.
        if grep -qxF "$block_begin" "$main_conf"; then
            save_conf "$main_conf"
            awk -v b="$block_begin" -v e="$block_end" '$0 == b { skip = 1; next } skip && $0 == e { skip = 0; next } !skip' \
                "$main_conf" >"$work/put"
            put_file "$main_conf" 0644 <"$work/put"
            conf_changed=1
        fi
        where=$dropin_conf
    else
        save_conf "$main_conf"
        {
            awk -v b="$block_begin" -v e="$block_end" '$0 == b { skip = 1; next } skip && $0 == e { skip = 0; next } !skip' "$main_conf"
            echo "$block_begin"
            passport_block
            echo "$block_end"
        } >"$work/sshd_config.new"
        put_file "$main_conf" 0644 <"$work/sshd_config.new"
        [ "$put_changed" = 0 ] || conf_changed=1
        where="the end of $main_conf"
    fi

    sshd_ok=yes
    if ! out=$("$sshd" -t 2>&1); then
        sshd_ok=no
        # Debian's sshd wants its privilege separation directory, which only its service
        # creates: make it when sshd has not run yet, as that service would.
        privsep=$(printf '%s\n' "$out" | sed -n 's/^Missing privilege separation directory: \(\/[^ ]*\)$/\1/p')
        if [ -n "$privsep" ] && [ ! -e "$privsep" ]; then
            mkdir -p "$privsep"
            chmod 0755 "$privsep"
            if out=$("$sshd" -t 2>&1); then
                sshd_ok=yes
            fi
        fi
    fi
    if [ "$sshd_ok" = no ]; then
        restore_conf
        passport_fail "sshd rejects the configuration with Passport's block in $where, so the old one was put back: $(oneline "$out")"
    fi
    # laddr and lport too: sshd -T refuses a test that leaves out what a Match block of
    # the configuration asks about.
    if ! effective=$("$sshd" -T -C "user=$user,host=localhost,addr=127.0.0.1,laddr=127.0.0.1,lport=22" 2>&1); then
        restore_conf
        passport_fail "sshd -T cannot show the configuration for $user, so the old one was put back: $(oneline "$effective")"
    fi
    for setting in "trustedusercakeys $passport_sshd/ca.pub" \
        "authorizedprincipalsfile $passport_sshd/principals/%u" \
        "authorizedkeysfile $passport_sshd/authorized_keys/%u"; do
        printf '%s\n' "$effective" | grep -qixF "$setting" && continue
        keyword=${setting%% *}
        actual=$(printf '%s\n' "$effective" | sed -n "s/^$keyword //p")
        others=$(grep -il "^[[:space:]]*${keyword}[[:space:]]" "$main_conf" "$dropin_dir"/*.conf 2>/dev/null | grep -vxF "$dropin_conf" || true)
        restore_conf
        passport_fail "sshd would use $keyword ${actual:-none} for $user, not Passport's (another Match block takes precedence; it is set in: $(oneline "${others:-an unknown file}")), so the old configuration was put back"
    done

    [ "$conf_changed" = 1 ] || return 0
    if passport_systemd; then
        for unit in ssh.service sshd.service; do
            if systemctl is-active --quiet "$unit" 2>/dev/null; then
                systemctl reload "$unit" >/dev/null 2>&1 ||
                    passport_fail "systemctl reload $unit failed after Passport's sshd configuration changed"
                return 0
            fi
        done
    fi
    pidfile=$(printf '%s\n' "$effective" | sed -n 's/^pidfile //p')
    if [ -n "$pidfile" ] && [ -s "$pidfile" ]; then
        pid=$(cat "$pidfile")
        if passport_digits "$pid" 10 && [ "$(cat "/proc/$pid/comm" 2>/dev/null)" = sshd ]; then
            kill -HUP "$pid"
        fi
    fi
}

# --- the account ------------------------------------------------------------------------

passport_lock

home=/home/$user
expire_day=$(((expires + 86399) / 86400))
expire_date=$(date -u -d "@$((expire_day * 86400))" +%Y-%m-%d)
key_expiry=$(date -d "@$((expires / 60 * 60))" +%Y%m%d%H%M)

if getent passwd "$user" >/dev/null 2>&1; then
    passport_owned "$user" "$req" ||
        passport_fail "account $user exists but was not created by Passport for $req; refusing to touch it"
    [ "$(getent passwd "$user" | cut -d: -f6)" = "$home" ] ||
        passport_fail "account $user does not have $home as its home; refusing to touch it"
    existing=yes
else
    if [ -e "$home" ] || [ -L "$home" ]; then
        passport_fail "$home exists but account $user does not; remove it before granting"
    fi
    existing=no
fi

configure_sshd

# next_uid: the lowest UID of the range above every UID Passport gave here before (the
# counter) and above every account already in the range, that no user or group has.
next_uid() {
    candidate=$uid_first
    counter=$(cat "$passport_state/next-uid" 2>/dev/null || true)
    if passport_digits "$counter" 10 && [ "$counter" -gt "$candidate" ]; then
        candidate=$counter
    fi
    while IFS=: read -r _name _pw _uid _rest; do
        passport_digits "$_uid" 10 || continue
        if [ "$_uid" -ge "$uid_first" ] && [ "$_uid" -le "$uid_last" ] && [ "$_uid" -ge "$candidate" ]; then
            candidate=$((_uid + 1))
        fi
    done </etc/passwd
    while [ "$candidate" -le "$uid_last" ]; do
        if [ "$candidate" -ne 65534 ] && [ "$candidate" -ne 65535 ] &&
            ! getent passwd "$candidate" >/dev/null 2>&1 && ! getent group "$candidate" >/dev/null 2>&1; then
            echo "$candidate"
            return 0
        fi
        candidate=$((candidate + 1))
    done
    passport_fail "UidRange $uid_first-$uid_last is used up on this instance (UIDs are never given twice); configure a range above $((candidate - 1))"
}

if [ "$existing" = yes ]; then
    out=$(usermod --expiredate "$expire_date" "$user" 2>&1) ||
        passport_fail "usermod could not move the account expiry of $user: $out"
    uid=$(getent passwd "$user" | cut -d: -f3)
    action=extended
else
    uid=$(next_uid)
    shell=/bin/sh
    [ -x /bin/bash ] && shell=/bin/bash
    # The user's group has the same number; neither is ever given again here.
    out=$(groupadd -g "$uid" "$user" 2>&1) ||
        passport_fail "groupadd could not create the group $user ($uid): $out"
    # -l: no lastlog entry (a sparse file as large as the highest UID). The password
    # field '*' allows no password but, unlike a locked '!', does not make sshd refuse
    # keys when it runs without PAM.
    if ! out=$(useradd -u "$uid" -g "$uid" -N -l --create-home --home-dir "$home" --shell "$shell" \
        --comment "passport $req" --expiredate "$expire_date" --password '*' "$user" 2>&1); then
        groupdel "$user" >/dev/null 2>&1 || true
        passport_fail "useradd could not create $user: $out"
    fi
    echo $((uid + 1)) >"$passport_state/.next-uid.new"
    mv -f "$passport_state/.next-uid.new" "$passport_state/next-uid"
    action=created
fi
if [ ! -d "$home" ] || [ -L "$home" ]; then
    passport_fail "$home is missing or not a directory"
fi
chown "$user:" "$home"
chmod 0700 "$home"

# Recorded for the extension check of the expiry job, the sweep, as a second ownership
# proof, and so that revoke finds the UID's processes and files after the account is gone.
printf 'request=%s\nexpires=%s\nuid=%s\n' "$req" "$expires" "$uid" >"$passport_state/users/.$user.new"
mv -f "$passport_state/users/.$user.new" "$passport_state/users/$user"

# --- how the user logs in -------------------------------------------------------------

# The principals file and the key file are root's and outside the home: the user can
# neither drop an option nor add a key. Options cap what a certificate's extensions
# or the key allow: no agent or X11 forwarding, no ~/.ssh/rc, port forwarding only with
# PortForwarding=true; a terminal is allowed.
options=restrict,pty
[ "$forwarding" = false ] || options="$options,port-forwarding"
if [ "$mode" = certificate ]; then
    printf '%s %s\n' "$options" "$user" >"$work/put"
    put_file "$passport_sshd/principals/$user" 0644 <"$work/put"
    rm -f "$passport_sshd/authorized_keys/$user"
else
    printf '%s,expiry-time="%s" %s\n' "$options" "$key_expiry" "$key" >"$work/put"
    put_file "$passport_sshd/authorized_keys/$user" 0644 <"$work/put"
    rm -f "$passport_sshd/principals/$user"
fi

# --- sudo -------------------------------------------------------------------------------

if [ "$sudo" = true ]; then
    # A name with a dot is skipped by sudo's includedir, so the half-written file is
    # never read; visudo checks it before it is renamed into place.
    tmp=$(mktemp /etc/sudoers.d/.passport.XXXXXX)
    printf '# Passport %s, until %s\n%s ALL=(ALL:ALL) NOPASSWD: ALL\n' "$req" "$(date -u -d "@$expires" '+%Y-%m-%d %H:%M:%S UTC')" "$user" >"$tmp"
    chmod 0440 "$tmp"
    if ! out=$(visudo -cf "$tmp" 2>&1); then
        rm -f "$tmp"
        passport_fail "the sudoers drop-in for $user did not validate: $out"
    fi
    mv -f "$tmp" "$dropin"
else
    rm -f "$dropin"
fi

# --- removal at expiry ------------------------------------------------------------------

helper=$passport_state/revoke-user.sh
# shellcheck disable=SC2016 # expanded when the helper runs
{
    echo '#!/bin/sh'
    echo '# Passport: removes a short-lived user at expiry (USER REQUEST EXPIRY), or every'
    echo '# user whose access has ended (--sweep). Written by Passport-GrantLinux.'
    echo 'set -eu'
    echo 'umask 077'
    echo 'PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin'
    echo 'LC_ALL=C'
    echo 'export PATH LC_ALL'
    echo 'cd /'
    echo 'passport_who="passport expire"'
    cat "$work/core.sh"
    echo 'if [ "${1-}" = --sweep ]; then'
    echo '    passport_sweep'
    echo 'else'
    echo '    passport_revoke "$@"'
    echo 'fi'
} >"$work/put"
put_file "$helper" 0700 <"$work/put"

passport_unschedule "$user"
units=/etc/systemd/system
if [ "$scheduler" = systemd ]; then
    unit=passport-expire-$user
    when=$(date -u -d "@$expires" '+%Y-%m-%d %H:%M:%S UTC')
    {
        echo '[Unit]'
        echo "Description=Passport: remove $user ($req) at expiry"
        echo
        echo '[Service]'
        echo 'Type=oneshot'
        echo "ExecStart=/bin/sh $helper $user $req $expires"
    } >"$work/put"
    put_file "$units/$unit.service" 0644 <"$work/put"
    # Persistent: a removal missed while the instance was off runs at the next boot.
    {
        echo '[Unit]'
        echo "Description=Passport: remove $user ($req) at expiry"
        echo
        echo '[Timer]'
        echo "OnCalendar=$when"
        echo 'Persistent=true'
        echo 'AccuracySec=1s'
        echo "Unit=$unit.service"
        echo
        echo '[Install]'
        echo 'WantedBy=timers.target'
    } >"$work/put"
    put_file "$units/$unit.timer" 0644 <"$work/put"
    out=$(systemctl daemon-reload 2>&1) ||
        passport_fail "systemctl daemon-reload failed: $out"
    out=$(systemctl enable "$unit.timer" 2>&1) ||
        passport_fail "systemctl could not enable the removal timer of $user: $out"
    out=$(systemctl restart "$unit.timer" 2>&1) ||
        passport_fail "systemctl could not start the removal timer of $user: $out"
    scheduled="systemd timer $unit.timer at $when"
else
    run_at=$(((expires + 59) / 60 * 60))
    when=$(date -d "@$run_at" +%Y%m%d%H%M)
    out=$(printf '# passport-expire %s\n/bin/sh %s %s %s %s\n' "$user" "$helper" "$user" "$req" "$expires" |
        env -i PATH="$PATH" LC_ALL=C at -t "$when" 2>&1) ||
        passport_fail "at could not schedule the removal of $user: $out"
    scheduled="at job at $(date -d "@$run_at" '+%Y-%m-%d %H:%M')"
fi

# The sweep: at boot and every 5 minutes, every user whose expiry has passed goes, so a
# lost timer or at job (an at queue does not always survive a reboot) ends nothing late.
if [ "$scheduler" = systemd ]; then
    {
        echo '[Unit]'
        echo 'Description=Passport: remove every Passport user whose access has ended'
        echo
        echo '[Service]'
        echo 'Type=oneshot'
        echo "ExecStart=/bin/sh $helper --sweep"
        echo
        echo '[Install]'
        echo 'WantedBy=multi-user.target'
    } >"$work/put"
    put_file "$units/passport-sweep.service" 0644 <"$work/put"
    sweep_changed=$put_changed
    {
        echo '[Unit]'
        echo 'Description=Passport: remove every Passport user whose access has ended, every 5 minutes'
        echo
        echo '[Timer]'
        echo 'OnBootSec=1min'
        echo 'OnUnitActiveSec=5min'
        echo 'AccuracySec=1s'
        echo 'Unit=passport-sweep.service'
        echo
        echo '[Install]'
        echo 'WantedBy=timers.target'
    } >"$work/put"
    put_file "$units/passport-sweep.timer" 0644 <"$work/put"
    if [ "$sweep_changed" = 1 ] || [ "$put_changed" = 1 ]; then
        out=$(systemctl daemon-reload 2>&1) ||
            passport_fail "systemctl daemon-reload failed: $out"
    fi
    out=$(systemctl enable passport-sweep.service passport-sweep.timer 2>&1) ||
        passport_fail "systemctl could not enable the Passport sweep: $out"
    out=$(systemctl start passport-sweep.timer 2>&1) ||
        passport_fail "systemctl could not start the Passport sweep: $out"
    sweep="passport-sweep.timer"
elif [ -d /etc/cron.d ]; then
    {
        echo '# Passport: removes every Passport user whose access has ended, at boot and every'
        echo '# 5 minutes. Written by Passport-GrantLinux.'
        echo 'SHELL=/bin/sh'
        echo 'PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin'
        echo "@reboot root /bin/sh $helper --sweep"
        echo "*/5 * * * * root /bin/sh $helper --sweep"
    } >"$work/put"
    put_file /etc/cron.d/passport-sweep 0644 <"$work/put"
    sweep="/etc/cron.d/passport-sweep"
else
    sweep="none (no systemd and no /etc/cron.d: install cron)"
fi

echo "passport grant: $user $action for $req until $(date -d "@$expires" '+%Y-%m-%d %H:%M:%S %Z') (uid $uid, $mode login, account expires $expire_date, sudo $sudo, port forwarding $forwarding, removal by $scheduled, sweep $sweep)"
