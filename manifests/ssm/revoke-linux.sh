#!/bin/sh
# Passport: remove the short-lived Linux user of one access request.
#
# Run as root by the SSM document Passport-RevokeLinux. Its inputs arrive only as
# environment variables set by the SSM Agent (interpolationType ENV_VAR), never as
# script text:
#   SSM_Username   pp-<handle>-<n>, at most 32 characters
#   SSM_RequestId  AR-<n>, with the n the username ends in
#
# Takes away the sudo drop-in and the files sshd lets the user in with (always, even
# for an account it then refuses), ends every process of the user's UID, removes their
# at jobs and crontab, the user and their home, every file the UID left on local file
# systems (setuid and setgid ones first), the removal timer or at job and the state.
# Idempotent: success when the user is already gone, and the UID recorded at grant is
# still cleaned up after. Refuses (exit 1, reason on stderr) to remove an account
# Passport did not create.
set -eu
umask 077
PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
LC_ALL=C
export PATH LC_ALL
cd /
passport_who="passport revoke"

# passport-include revoke-core.sh

if [ -z "${SSM_Username+set}" ] || [ -z "${SSM_RequestId+set}" ]; then
    passport_fail "SSM_Username and SSM_RequestId are not set: this document needs SSM Agent 3.3.2746.0 or later, which passes parameters as environment variables"
fi
passport_revoke "$SSM_Username" "$SSM_RequestId"
