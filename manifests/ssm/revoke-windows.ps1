# Passport: remove the short-lived Windows user of one access request.
#
# Run as SYSTEM by the SSM document Passport-RevokeWindows. Its inputs arrive only as
# environment variables set by the SSM Agent (interpolationType ENV_VAR), never as
# script text:
#   SSM_Username   pp-<handle>-<n>, at most 20 characters
#   SSM_RequestId  AR-<n>, with the n the username ends in
#
# Disables the account, logs off its sessions and stops its processes, removes the
# account and its profile, the expiry task and Passport's state for it. Idempotent:
# success when the user is already gone. Refuses (exit 1, reason on stderr) to remove
# an account Passport did not create.
$ErrorActionPreference = 'Stop'
Set-StrictMode -Version 2.0
$PassportWho = 'passport revoke'

# passport-include revoke-core.ps1

foreach ($name in 'Username', 'RequestId') {
    if ($null -eq [Environment]::GetEnvironmentVariable("SSM_$name")) {
        Exit-Passport "SSM_$name is not set: this document needs SSM Agent 3.3.2746.0 or later, which passes parameters as environment variables"
    }
}
try {
    Invoke-PassportRevoke -Username $env:SSM_Username -RequestId $env:SSM_RequestId -ScheduledExpiry ''
} catch {
    Exit-Passport $_.Exception.Message
}
