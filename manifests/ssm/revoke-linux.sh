#!/bin/sh
# Passport: remove the short-lived Linux user of one access request.
#
# Run as root by the SSM document Passport-RevokeLinux. Its inputs arrive only as
# environment variables set by the SSM Agent (interpolationType ENV_VAR), never as
# script text:
#   SSM_Username   pp-<handle>-<n>, at most 32 characters
#   SSM_RequestId  AR-<n>, with the n the username ends in
#
# Ends the user's sessions and processes, removes the user and their home, the sudo
# drop-in and the on-instance removal job. Idempotent: success when the user is already
# gone. Refuses (exit 1, reason on stderr) to remove an account Passport did not create.
set -eu
umask 077
PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
LC_ALL=C
export PATH LC_ALL
cd /
passport_who="passport revoke"

# >>> passport-revoke-core
# Kept identical in grant-linux.sh (which installs it as the on-instance removal job)
# and revoke-linux.sh; tests/instance_scripts.rs fails when the two copies differ.
passport_state=/var/lib/passport

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

# Serialises Passport's changes on this instance (grant, revoke, the expiry job).
passport_lock() {
    mkdir -p "$passport_state/users"
    chmod 0700 "$passport_state"
    if command -v flock >/dev/null 2>&1; then
        exec 9>>"$passport_state/lock"
        flock -w 300 9 || passport_fail "another Passport change is still running on this instance; try again later"
    fi
}

# True when Passport created account $1 for request $2: the GECOS marker, or the
# root-only state file (which the user cannot edit, unlike their own GECOS on some
# systems).
passport_owned() {
    _pp_gecos=$(getent passwd "$1" | cut -d: -f5)
    [ "$_pp_gecos" = "passport $2" ] && return 0
    [ -f "$passport_state/users/$1" ] && grep -qxF "request=$2" "$passport_state/users/$1"
}

# Ends every session and process of user $1.
passport_end_sessions() {
    if [ -d /run/systemd/system ] && command -v loginctl >/dev/null 2>&1; then
        loginctl terminate-user "$1" >/dev/null 2>&1 || true
    fi
    command -v pkill >/dev/null 2>&1 || return 0
    _pp_try=0
    while pgrep -u "$1" >/dev/null 2>&1; do
        pkill -KILL -u "$1" >/dev/null 2>&1 || true
        _pp_try=$((_pp_try + 1))
        [ "$_pp_try" -le 20 ] || break
        sleep 0.2 2>/dev/null || sleep 1
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

# Cancels the on-instance removal job of user $1: the systemd timer or the at job
# (found by its marker line). A job that is running right now is left alone: it may
# be the caller.
passport_unschedule() {
    if [ -d /run/systemd/system ] && command -v systemctl >/dev/null 2>&1; then
        systemctl stop "passport-expire-$1.timer" >/dev/null 2>&1 || true
        systemctl reset-failed "passport-expire-$1.timer" "passport-expire-$1.service" >/dev/null 2>&1 || true
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
# Removes the user, their home, sudo drop-in, removal job and state. Success when the
# user is already gone. Refuses an account Passport did not create. The expiry job
# passes the expiry it was scheduled for, and stands down if the access was extended
# since (the extension scheduled its own job).
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
        _pp_now_expiry=$(sed -n 's/^expires=\([0-9]*\)$/\1/p' "$passport_state/users/$_pp_user")
        if [ -n "$_pp_now_expiry" ] && [ "$_pp_now_expiry" -gt "$3" ]; then
            echo "passport revoke: $_pp_user was extended; the newer removal job stays in charge"
            return 0
        fi
    fi
    _pp_gone="was already absent"
    if getent passwd "$_pp_user" >/dev/null 2>&1; then
        passport_owned "$_pp_user" "$_pp_req" ||
            passport_fail "account $_pp_user exists but was not created by Passport for $_pp_req; leaving it alone"
        _pp_home=$(getent passwd "$_pp_user" | cut -d: -f6)
        passport_end_sessions "$_pp_user"
        passport_remove_user_jobs "$_pp_user"
        _pp_rc=0
        _pp_out=$(userdel -r "$_pp_user" 2>&1) || _pp_rc=$?
        if [ "$_pp_rc" -eq 8 ]; then
            # Still "logged in" (a process outlived the kill): remove the account anyway.
            passport_end_sessions "$_pp_user"
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
    rm -f "/etc/sudoers.d/passport-$_pp_user"
    passport_unschedule "$_pp_user"
    rm -f "$passport_state/users/$_pp_user"
    echo "passport revoke: $_pp_user $_pp_gone ($_pp_req)"
}
# <<< passport-revoke-core

if [ -z "${SSM_Username+set}" ] || [ -z "${SSM_RequestId+set}" ]; then
    passport_fail "SSM_Username and SSM_RequestId are not set: this document needs SSM Agent 3.3.2746.0 or later, which passes parameters as environment variables"
fi
passport_revoke "$SSM_Username" "$SSM_RequestId"
