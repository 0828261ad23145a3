#!/bin/sh
# shellcheck disable=SC2154,SC2034 # SSM_* come from the SSM Agent; passport_* from core.sh
# Passport: create, or extend, the short-lived Linux user of one access request.
#
# Run as root by the SSM document Passport-GrantLinux. Its inputs arrive only as
# environment variables set by the SSM Agent (interpolationType ENV_VAR), never as
# script text, and are checked again here against the documents' patterns:
#   SSM_Username      pp-<handle>-<n>, at most 32 characters
#   SSM_RequestId     AR-<n>, with the n the username ends in
#   SSM_ExpiresAt     when the access ends, in unix seconds (10 digits)
#   SSM_Sudo          true or false
#   SSM_SshPublicKey  "<type> <base64>" of the requester's key, without comment
#
# It creates the user (home 0700, account expiry date, GECOS "passport AR-<n>"),
# installs the key with an expiry-time option, adds or removes the sudo drop-in and
# schedules an on-instance removal at SSM_ExpiresAt (a systemd timer, else an at job)
# so that access ends even when Passport itself is down.
#
# Idempotent: a second run with the same inputs changes nothing, and a run with a
# later SSM_ExpiresAt (an extension) moves all three expiries. On bad inputs or an
# unfit machine it exits 1 with the reason on stderr before changing anything.
#
# Times: the account expiry is a whole day, so it is rounded up to the next midnight
# (UTC); the key's expiry-time has minute precision and is rounded down, so the key is
# never accepted after SSM_ExpiresAt; an at job also has minute precision and is
# rounded up, so the removal never runs early. expiry-time is written without a zone
# suffix, which every OpenSSH since the option exists reads in the system time zone;
# TZ is unset below so this script and sshd agree on that zone.
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
# for its input checks, and later installed as the helper the expiry job runs.
cat >"$work/core.sh" <<'PASSPORT_REVOKE_CORE'
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
user=$SSM_Username
req=$SSM_RequestId
expires=$SSM_ExpiresAt
sudo=$SSM_Sudo
key=$SSM_SshPublicKey

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
case $key in
    "ssh-ed25519 "* | "ecdsa-sha2-nistp256 "* | "ecdsa-sha2-nistp384 "* | \
        "ecdsa-sha2-nistp521 "* | "ssh-rsa "*) ;;
    *) passport_fail "SshPublicKey must be '<type> <base64>' with type ssh-ed25519, ecdsa-sha2-nistp256/384/521 or ssh-rsa, and no options or comment" ;;
esac
key_body=${key#* }
case $key_body in
    '' | *[!A-Za-z0-9+/=]*) passport_fail "SshPublicKey must be '<type> <base64>' with nothing after the base64" ;;
esac
[ "${#key_body}" -le 8192 ] || passport_fail "SshPublicKey is longer than 8192 characters"
printf '%s\n' "$key" >"$work/key.pub"
if command -v ssh-keygen >/dev/null 2>&1 && ! ssh-keygen -l -f "$work/key.pub" >/dev/null 2>&1; then
    passport_fail "SshPublicKey is not a valid OpenSSH public key"
fi

now=$(date +%s)
[ "$expires" -gt "$now" ] || passport_fail "ExpiresAt is not in the future"
# Passport grants at most 12 hours at a time; anything far beyond is a bug upstream.
[ "$expires" -le $((now + 86400)) ] || passport_fail "ExpiresAt is more than 24 hours away"

# --- what this machine offers ---------------------------------------------------------

for tool in useradd usermod userdel getent date; do
    command -v "$tool" >/dev/null 2>&1 || passport_fail "$tool is missing on this instance"
done
if command -v setpriv >/dev/null 2>&1; then
    as_user=setpriv
elif command -v runuser >/dev/null 2>&1; then
    as_user=runuser
else
    passport_fail "neither setpriv nor runuser (util-linux) is installed; they are needed to write the key as the user"
fi

atd_running() {
    if command -v pgrep >/dev/null 2>&1; then
        pgrep -x atd >/dev/null 2>&1
    else
        [ -r /run/atd.pid ] && kill -0 "$(cat /run/atd.pid)" 2>/dev/null
    fi
}
if [ -d /run/systemd/system ] && command -v systemd-run >/dev/null 2>&1; then
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
    out=$(usermod --expiredate "$expire_date" "$user" 2>&1) ||
        passport_fail "usermod could not move the account expiry of $user: $out"
    action=extended
else
    if [ -e "$home" ] || [ -L "$home" ]; then
        passport_fail "$home exists but account $user does not; remove it before granting"
    fi
    shell=/bin/sh
    [ -x /bin/bash ] && shell=/bin/bash
    # The password field '*' allows no password but, unlike a locked '!', does not
    # make sshd refuse keys when it runs without PAM.
    out=$(useradd --create-home --home-dir "$home" --shell "$shell" --user-group \
        --comment "passport $req" --expiredate "$expire_date" --password '*' "$user" 2>&1) ||
        passport_fail "useradd could not create $user: $out"
    action=created
fi
if [ ! -d "$home" ] || [ -L "$home" ]; then
    passport_fail "$home is missing or not a directory"
fi
chown "$user:" "$home"
chmod 0700 "$home"

# Recorded for the extension check of the expiry job and as a second ownership proof.
printf 'request=%s\nexpires=%s\n' "$req" "$expires" >"$passport_state/users/.$user.new"
mv -f "$passport_state/users/.$user.new" "$passport_state/users/$user"

# --- the key ----------------------------------------------------------------------------

# Written by the user, not by root: the home is the user's, and whatever links they
# planted there then only lead where the user could write anyway. The lock (fd 9) is
# not handed to anything running as the user.
# shellcheck disable=SC2016 # expanded by the user's shell, from its arguments
write_key='
set -eu
umask 077
cd "$1"
if [ -L .ssh ] || { [ -e .ssh ] && [ ! -d .ssh ]; }; then
    rm -f .ssh
fi
[ -d .ssh ] || mkdir .ssh
chmod 0700 .ssh
tmp=$(mktemp .ssh/.authorized_keys.XXXXXX)
printf "%s\n" "$2" >"$tmp"
chmod 0600 "$tmp"
mv -f "$tmp" .ssh/authorized_keys
'
key_line="expiry-time=\"$key_expiry\" $key"
if [ "$as_user" = setpriv ]; then
    out=$(env -i PATH="$PATH" LC_ALL=C setpriv --reuid="$(id -u "$user")" --regid="$(id -g "$user")" \
        --clear-groups /bin/sh -c "$write_key" passport-key "$home" "$key_line" 2>&1 9>&-) ||
        passport_fail "could not install the SSH key for $user: $out"
else
    out=$(env -i PATH="$PATH" LC_ALL=C runuser -u "$user" -- /bin/sh -c "$write_key" passport-key "$home" "$key_line" 2>&1 9>&-) ||
        passport_fail "could not install the SSH key for $user: $out"
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
{
    echo '#!/bin/sh'
    echo '# Passport: removes a short-lived user at expiry. Written by Passport-GrantLinux.'
    echo 'set -eu'
    echo 'umask 077'
    echo 'PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin'
    echo 'LC_ALL=C'
    echo 'export PATH LC_ALL'
    echo 'cd /'
    echo 'passport_who="passport expire"'
    cat "$work/core.sh"
    echo 'passport_revoke "$@"'
} >"$passport_state/.revoke-user.sh.new"
chmod 0700 "$passport_state/.revoke-user.sh.new"
mv -f "$passport_state/.revoke-user.sh.new" "$helper"

passport_unschedule "$user"
if [ "$scheduler" = systemd ]; then
    when=$(date -d "@$expires" '+%Y-%m-%d %H:%M:%S')
    out=$(systemd-run --quiet --unit="passport-expire-$user" \
        --description="Passport: remove $user ($req) at expiry" \
        --on-calendar="$when" --timer-property=AccuracySec=1s \
        /bin/sh "$helper" "$user" "$req" "$expires" 2>&1) ||
        passport_fail "systemd-run could not schedule the removal of $user: $out"
    scheduled="systemd timer passport-expire-$user.timer at $when"
else
    run_at=$(((expires + 59) / 60 * 60))
    when=$(date -d "@$run_at" +%Y%m%d%H%M)
    out=$(printf '# passport-expire %s\n/bin/sh %s %s %s %s\n' "$user" "$helper" "$user" "$req" "$expires" |
        env -i PATH="$PATH" LC_ALL=C at -t "$when" 2>&1) ||
        passport_fail "at could not schedule the removal of $user: $out"
    scheduled="at job at $(date -d "@$run_at" '+%Y-%m-%d %H:%M')"
fi

echo "passport grant: $user $action for $req until $(date -d "@$expires" '+%Y-%m-%d %H:%M:%S %Z') (account expires $expire_date, sudo $sudo, removal by $scheduled)"
