# The removal logic of Passport's Linux documents, written once. render.sh puts it, from
# its '# >>> passport-revoke-core' line on, where grant-linux.sh and revoke-linux.sh say
# '# passport-include revoke-core.sh': revoke runs it, grant installs it on the instance
# as the removal job and the sweep. Edit it here and run render.sh.
# shellcheck shell=sh
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
