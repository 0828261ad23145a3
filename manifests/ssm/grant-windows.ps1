# Passport: create, or extend, the short-lived Windows user of one access request.
#
# Run as SYSTEM by the SSM document Passport-GrantWindows. Its inputs arrive only as
# environment variables set by the SSM Agent (interpolationType ENV_VAR), never as
# script text, and are checked again here against the documents' patterns:
#   SSM_Username   pp-<handle>-<n>, at most 20 characters (the Windows limit)
#   SSM_RequestId  AR-<n>, with the n the username ends in
#   SSM_ExpiresAt  when the access ends, in unix seconds (10 digits)
#   SSM_Sudo       true adds the user to Administrators, false keeps them out
#   SSM_PublicKey  a one-time RSA public key (2048 bits or more) made by Passport for
#                  this command: base64 of its DER SubjectPublicKeyInfo, i.e. the body
#                  of a PEM "PUBLIC KEY" without header, footer or line breaks
#
# It creates the local user (account expiry at SSM_ExpiresAt, member of Remote Desktop
# Users, of Administrators only when SSM_Sudo is true, description "passport AR-<n>")
# and registers a scheduled task that removes the user at SSM_ExpiresAt even when
# Passport itself is down.
#
# The password is made here, from the system's cryptographic random source, and leaves
# the instance only encrypted to SSM_PublicKey (RSA-OAEP with SHA-256), as the one
# stdout line
#   PASSPORT-PASSWORD-RSA-OAEP-SHA256:<base64 ciphertext of the UTF-8 password>
# so it never appears in clear in the command history or logs. On the instance it never
# is a PowerShell string, a cmdlet parameter or script text either, so PowerShell's
# module and script-block logging cannot record it (see "the password" below).
# Every run sets a new password (an extension too) and prints it that way.
#
# Idempotent: a run with a later SSM_ExpiresAt moves the account expiry and the task.
# On failure it exits 1 with the reason on stderr. Needs Windows PowerShell 5.1 and
# .NET Framework 4.6 or later (Windows Server 2016 and later).
$ErrorActionPreference = 'Stop'
Set-StrictMode -Version 2.0
$PassportWho = 'passport grant'

# The removal logic, shared with revoke-windows.ps1. It is defined here from this
# constant text, and later installed as the script the expiry task runs.
$PassportCore = @'
# passport-include revoke-core.ps1
'@
. ([ScriptBlock]::Create($PassportCore))

# --- inputs -------------------------------------------------------------------------

foreach ($name in 'Username', 'RequestId', 'ExpiresAt', 'Sudo', 'PublicKey') {
    if ($null -eq [Environment]::GetEnvironmentVariable("SSM_$name")) {
        Exit-Passport "SSM_$name is not set: this document needs SSM Agent 3.3.2746.0 or later, which passes parameters as environment variables"
    }
}
$Username = $env:SSM_Username
$RequestId = $env:SSM_RequestId
$ExpiresAtText = $env:SSM_ExpiresAt
$Sudo = $env:SSM_Sudo
$PublicKey = $env:SSM_PublicKey

if (-not (Test-PassportUsername $Username)) {
    Exit-Passport 'Username must be a Passport username (pp-<handle>-<n>, at most 20 characters of a-z 0-9 _ -)'
}
if (-not (Test-PassportRequest $RequestId $Username)) {
    Exit-Passport 'RequestId must be AR-<n> with the same n the Username ends in'
}
if (-not [regex]::IsMatch($ExpiresAtText, '\A[0-9]{10}\z')) { Exit-Passport 'ExpiresAt must be unix seconds (10 digits)' }
if (-not [regex]::IsMatch($Sudo, '\A(true|false)\z')) { Exit-Passport 'Sudo must be true or false' }
if (-not [regex]::IsMatch($PublicKey, '\A[A-Za-z0-9+/]{300,1400}={0,2}\z')) {
    Exit-Passport 'PublicKey must be the base64 DER of an RSA SubjectPublicKeyInfo, without PEM header or line breaks'
}

$expires = [long]$ExpiresAtText
$now = [DateTimeOffset]::UtcNow.ToUnixTimeSeconds()
if ($expires -le $now) { Exit-Passport 'ExpiresAt is not in the future' }
# Passport grants at most 12 hours at a time; anything far beyond is a bug upstream.
if ($expires -gt $now + 86400) { Exit-Passport 'ExpiresAt is more than 24 hours away' }
$expiresLocal = [DateTimeOffset]::FromUnixTimeSeconds($expires).LocalDateTime

# --- the one-time public key ------------------------------------------------------

function Get-DerBytes([byte[]]$Data, [int]$Start, [int]$Length) {
    $out = New-Object byte[] $Length
    [Array]::Copy($Data, $Start, $out, 0, $Length)
    return , $out
}

# Reads the DER element with tag $Tag at $Offset: @(content start, content length, next offset).
function Read-DerElement([byte[]]$Data, [int]$Offset, [int]$Tag) {
    if ($Offset + 2 -gt $Data.Length -or $Data[$Offset] -ne $Tag) { throw 'unexpected DER element' }
    $pos = $Offset + 1
    $len = [int]$Data[$pos]
    $pos++
    if ($len -ge 0x80) {
        $count = $len -band 0x7f
        if ($count -lt 1 -or $count -gt 3 -or $pos + $count -gt $Data.Length) { throw 'unsupported DER length' }
        $len = 0
        for ($i = 0; $i -lt $count; $i++) {
            $len = ($len -shl 8) -bor [int]$Data[$pos]
            $pos++
        }
    }
    if ($pos + $len -gt $Data.Length) { throw 'truncated DER element' }
    return @($pos, $len, ($pos + $len))
}

# SubjectPublicKeyInfo ::= SEQUENCE { SEQUENCE { OID rsaEncryption, NULL },
#                                     BIT STRING { SEQUENCE { INTEGER n, INTEGER e } } }
function Read-RsaPublicKey([string]$Base64) {
    $der = [Convert]::FromBase64String($Base64)
    $spki = Read-DerElement $der 0 0x30
    if ($spki[2] -ne $der.Length) { throw 'trailing bytes after the key' }
    $algorithm = Read-DerElement $der $spki[0] 0x30
    $oid = Read-DerElement $der $algorithm[0] 0x06
    $rsaOid = [Convert]::ToBase64String([byte[]](0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x01))
    if ([Convert]::ToBase64String((Get-DerBytes $der $oid[0] $oid[1])) -cne $rsaOid) { throw 'not an RSA key' }
    $bits = Read-DerElement $der $algorithm[2] 0x03
    if ($bits[1] -lt 1 -or $der[$bits[0]] -ne 0) { throw 'malformed key bits' }
    $rsaKey = Read-DerElement $der ($bits[0] + 1) 0x30
    $modulus = Read-DerElement $der $rsaKey[0] 0x02
    $exponent = Read-DerElement $der $modulus[2] 0x02
    $n = Get-DerBytes $der $modulus[0] $modulus[1]
    $skip = 0
    while ($skip -lt $n.Length - 1 -and $n[$skip] -eq 0) { $skip++ }
    $parameters = New-Object System.Security.Cryptography.RSAParameters
    $parameters.Modulus = Get-DerBytes $n $skip ($n.Length - $skip)
    $parameters.Exponent = Get-DerBytes $der $exponent[0] $exponent[1]
    if ($parameters.Modulus.Length -lt 256) { throw 'the key is shorter than 2048 bits' }
    return $parameters
}

try {
    $rsa = New-Object System.Security.Cryptography.RSACng
    $rsa.ImportParameters((Read-RsaPublicKey $PublicKey))
} catch {
    Exit-Passport "PublicKey is not a usable RSA public key: $($_.Exception.Message)"
}

# --- the password -------------------------------------------------------------------

# The password never becomes a PowerShell string, a cmdlet parameter or script text:
# module logging (event 4103) records the value of every parameter a command is bound
# to, and script-block logging (4104) records the script text. It is drawn character by
# character into a char buffer, copied into a SecureString (which cmdlets receive, and
# logging shows only as "System.Security.SecureString") and, as UTF-8, into a byte
# buffer that only .NET methods read to encrypt it. Both buffers are zeroed at once.

# An unbiased random index below $Count (rejection sampling on one random byte). The
# count is no secret; the index is returned, never passed on as a parameter.
function Get-PassportIndex([int]$Count) {
    $limit = 256 - (256 % $Count)
    do { $script:PassportRng.GetBytes($script:PassportRandomByte) } while ($script:PassportRandomByte[0] -ge $limit)
    return [int]$script:PassportRandomByte[0] % $Count
}

# Sets $script:PassportSecure (the password, read-only) and $script:PassportCipher (its
# UTF-8 bytes encrypted to the one-time key with RSA-OAEP SHA-256).
function New-PassportPassword {
    $classes = 'ABCDEFGHJKLMNPQRSTUVWXYZ', 'abcdefghijkmnopqrstuvwxyz', '23456789', '!#%+-=?@^_'
    $all = -join $classes
    $charCount = 28
    $script:PassportRng = [System.Security.Cryptography.RandomNumberGenerator]::Create()
    $script:PassportRandomByte = [byte[]]::new(1)
    $passwordChars = [char[]]::new($charCount)
    $passwordBytes = [byte[]]::new(0)
    try {
        # One character of each class, then any, shuffled (Fisher-Yates) so the
        # guaranteed classes are not always in front.
        for ($i = 0; $i -lt $charCount; $i++) {
            $set = $all
            if ($i -lt $classes.Count) { $set = $classes[$i] }
            $k = Get-PassportIndex $set.Length
            $passwordChars[$i] = $set[$k]
        }
        for ($i = $charCount - 1; $i -gt 0; $i--) {
            $j = Get-PassportIndex ($i + 1)
            $passwordSwap = $passwordChars[$i]
            $passwordChars[$i] = $passwordChars[$j]
            $passwordChars[$j] = $passwordSwap
        }
        $passwordSwap = [char]0
        $script:PassportSecure = New-Object System.Security.SecureString
        for ($i = 0; $i -lt $charCount; $i++) { $script:PassportSecure.AppendChar($passwordChars[$i]) }
        $script:PassportSecure.MakeReadOnly()
        $passwordBytes = [Text.Encoding]::UTF8.GetBytes($passwordChars)
        $script:PassportCipher = $rsa.Encrypt($passwordBytes, [System.Security.Cryptography.RSAEncryptionPadding]::OaepSHA256)
    } finally {
        [Array]::Clear($passwordChars, 0, $charCount)
        [Array]::Clear($passwordBytes, 0, $passwordBytes.Length)
        $script:PassportRng.Dispose()
    }
}

# --- the account --------------------------------------------------------------------

$RemoteDesktopUsers = 'S-1-5-32-555'
$Administrators = 'S-1-5-32-544'

# The state directory holds the script the expiry task runs as SYSTEM, so only SYSTEM
# and Administrators may write it. A directory somebody else made (ProgramData lets
# users create folders) is removed rather than trusted.
function Initialize-PassportState {
    $system = New-Object System.Security.Principal.SecurityIdentifier('S-1-5-18')
    $admins = New-Object System.Security.Principal.SecurityIdentifier($Administrators)
    if (Test-Path -LiteralPath $PassportState) {
        $item = Get-Item -LiteralPath $PassportState -Force
        $owner = (Get-Acl -LiteralPath $PassportState).GetOwner([System.Security.Principal.SecurityIdentifier])
        $trusted = $item.PSIsContainer -and -not ($item.Attributes -band [IO.FileAttributes]::ReparsePoint) -and
            ($owner -eq $system -or $owner -eq $admins)
        if (-not $trusted) {
            # rmdir removes junctions and links themselves; Remove-Item -Recurse in
            # Windows PowerShell 5.1 can follow a junction and empty its target.
            $ErrorActionPreference = 'Continue'
            & "$env:SystemRoot\System32\cmd.exe" /d /c rmdir /s /q "$PassportState" 2>$null
            $ErrorActionPreference = 'Stop'
            if (Test-Path -LiteralPath $PassportState) { Exit-Passport "$PassportState was not made by Passport and could not be removed" }
        }
    }
    New-Item -ItemType Directory -Path $PassportState -Force | Out-Null
    $acl = New-Object System.Security.AccessControl.DirectorySecurity
    $acl.SetOwner($admins)
    $acl.SetAccessRuleProtection($true, $false)
    foreach ($sid in $system, $admins) {
        $rule = New-Object System.Security.AccessControl.FileSystemAccessRule($sid, 'FullControl', 'ContainerInherit, ObjectInherit', 'None', 'Allow')
        $acl.AddAccessRule($rule)
    }
    Set-Acl -LiteralPath $PassportState -AclObject $acl
    New-Item -ItemType Directory -Path (Join-Path $PassportState 'users') -Force | Out-Null
}

function Write-PassportFile([string]$Path, [string]$Text) {
    $tmp = "$Path.new"
    [IO.File]::WriteAllText($tmp, $Text, (New-Object System.Text.UTF8Encoding($false)))
    Move-Item -LiteralPath $tmp -Destination $Path -Force
}

function Set-PassportGroup([string]$GroupSid, $User, [bool]$Member) {
    try {
        if ($Member) {
            Add-LocalGroupMember -SID $GroupSid -Member $User
        } else {
            Remove-LocalGroupMember -SID $GroupSid -Member $User
        }
    } catch {
        # Already a member, or already not one: that is the state we want.
        $name = $_.Exception.GetType().Name
        if ($name -ne 'MemberExistsException' -and $name -ne 'MemberNotFoundException') { throw }
    }
}

try {
    Lock-Passport
    $user = Get-LocalUser -Name $Username -ErrorAction SilentlyContinue
    if ($user -and -not (Test-PassportOwned $user $RequestId)) {
        Exit-Passport "account $Username exists but was not created by Passport for $RequestId; refusing to touch it"
    }
    Initialize-PassportState

    New-PassportPassword
    $rsa.Dispose()
    $secure = $script:PassportSecure
    if ($user) {
        Set-LocalUser -SID $user.SID -Password $secure -AccountExpires $expiresLocal -PasswordNeverExpires $true
        Enable-LocalUser -SID $user.SID
        $action = 'extended'
    } else {
        $user = New-LocalUser -Name $Username -Password $secure -AccountExpires $expiresLocal `
            -Description "passport $RequestId" -FullName "Passport $RequestId" `
            -PasswordNeverExpires -UserMayNotChangePassword
        $action = 'created'
    }
    Set-PassportGroup $RemoteDesktopUsers $user $true
    Set-PassportGroup $Administrators $user ($Sudo -ceq 'true')

    # Recorded for the extension check of the expiry task and as a second ownership proof.
    Write-PassportFile (Join-Path $PassportState ('users\' + $Username)) "request=$RequestId`nexpires=$expires`n"

    # --- removal at expiry ---------------------------------------------------------
    $helperHead = @'
# Passport: removes a short-lived user at expiry. Written by Passport-GrantWindows.
param([string]$Username, [string]$RequestId, [string]$ScheduledExpiry)
$ErrorActionPreference = 'Stop'
Set-StrictMode -Version 2.0
$PassportWho = 'passport expire'
'@
    $helperTail = @'
try {
    Invoke-PassportRevoke -Username $Username -RequestId $RequestId -ScheduledExpiry $ScheduledExpiry
} catch {
    Exit-Passport $_.Exception.Message
}
'@
    $helper = Join-Path $PassportState 'revoke-user.ps1'
    Write-PassportFile $helper ($helperHead + "`n" + $PassportCore + "`n" + $helperTail + "`n")

    $powershell = Join-Path $env:SystemRoot 'System32\WindowsPowerShell\v1.0\powershell.exe'
    $arguments = "-NoProfile -NonInteractive -ExecutionPolicy Bypass -File `"$helper`" -Username $Username -RequestId $RequestId -ScheduledExpiry $expires"
    $taskAction = New-ScheduledTaskAction -Execute $powershell -Argument $arguments
    $trigger = New-ScheduledTaskTrigger -Once -At $expiresLocal
    # StartWhenAvailable runs a missed removal as soon as the instance is back; the end
    # boundary only lets the finished task delete itself.
    $trigger.EndBoundary = $expiresLocal.AddDays(30).ToString('s')
    $settings = New-ScheduledTaskSettingsSet -StartWhenAvailable -AllowStartIfOnBatteries -DontStopIfGoingOnBatteries `
        -ExecutionTimeLimit (New-TimeSpan -Minutes 30) -DeleteExpiredTaskAfter (New-TimeSpan -Days 1)
    $principal = New-ScheduledTaskPrincipal -UserId 'S-1-5-18' -LogonType ServiceAccount -RunLevel Highest
    Register-ScheduledTask -TaskPath $PassportTaskPath -TaskName "Expire-$Username" -Action $taskAction -Trigger $trigger `
        -Settings $settings -Principal $principal -Description "Passport: remove $Username ($RequestId) at expiry" -Force | Out-Null

    # --- the password, encrypted to the one-time key --------------------------------
    $secure.Dispose()
    Write-Output ('PASSPORT-PASSWORD-RSA-OAEP-SHA256:' + [Convert]::ToBase64String($script:PassportCipher))
    Write-Output ("passport grant: $Username $action for $RequestId until " + $expiresLocal.ToString('yyyy-MM-dd HH:mm:ss') +
        ' (instance time; administrators ' + $Sudo + ', removal by task ' + $PassportTaskPath + "Expire-$Username)")
} catch {
    Exit-Passport $_.Exception.Message
}
