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
# passport-include revoke-core.sh
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
