# The removal logic of Passport's Windows documents, written once. render.sh puts it,
# from its '# >>> passport-revoke-core' line on, where grant-windows.ps1 and
# revoke-windows.ps1 say '# passport-include revoke-core.ps1': revoke runs it, grant
# installs it on the instance for the expiry task. Edit it here and run render.sh.
# >>> passport-revoke-core
# Kept identical in grant-windows.ps1 (which installs it for the expiry task) and
# revoke-windows.ps1; tests/instance_scripts.rs fails when the two copies differ.
# The caller sets $PassportWho (the prefix of error messages) before this block.
$PassportState = Join-Path $env:ProgramData 'Passport'
$PassportTaskPath = '\Passport\'

function Exit-Passport([string]$Message) {
    [Console]::Error.WriteLine("${PassportWho}: $Message")
    exit 1
}

# pp-<handle>-<n>: the documents' allowedPattern plus the 20-character limit of Windows
# account names. .NET character classes are ordinal and IsMatch is case-sensitive, and
# \A...\z (unlike ^...$) admits no trailing newline.
function Test-PassportUsername([string]$Value) {
    return ($Value.Length -le 20) -and [regex]::IsMatch($Value, '\App-[a-z0-9_-]{1,15}-[0-9]{1,15}\z')
}

# AR-<n>, and the username must end in the same n (Passport derives one from the other).
function Test-PassportRequest([string]$Value, [string]$Username) {
    if (-not [regex]::IsMatch($Value, '\AAR-[0-9]{1,18}\z')) { return $false }
    return $Username.Substring($Username.LastIndexOf('-') + 1) -ceq $Value.Substring(3)
}

# Serialises Passport's changes on this instance (grant, revoke, the expiry task).
function Lock-Passport {
    $script:PassportMutex = New-Object System.Threading.Mutex($false, 'Global\PassportInstanceChanges')
    try {
        if (-not $script:PassportMutex.WaitOne([TimeSpan]::FromMinutes(5))) {
            Exit-Passport 'another Passport change is still running on this instance; try again later'
        }
    } catch [System.Threading.AbandonedMutexException] {
        # The previous holder died; the mutex is ours now.
    }
}

# True when Passport created $User for $RequestId: the description it set (which the
# user cannot change), or the state file in the administrators-only state directory.
function Test-PassportOwned($User, [string]$RequestId) {
    if ($User.Description -ceq "passport $RequestId") { return $true }
    $state = Join-Path $PassportState ('users\' + $User.Name)
    if (-not (Test-Path -LiteralPath $state -PathType Leaf)) { return $false }
    return @(Get-Content -LiteralPath $state) -ccontains "request=$RequestId"
}

# Logs off every session of $Username (quser prints nothing useful when there is none).
function Stop-PassportSessions([string]$Username) {
    $ErrorActionPreference = 'Continue'
    $lines = @()
    try { $lines = @(& "$env:SystemRoot\System32\quser.exe" 2>$null) } catch { $lines = @() }
    foreach ($line in $lines) {
        $fields = @(($line.Trim() -replace '^>', '') -split '\s+')
        if ($fields.Count -lt 3 -or $fields[0] -ne $Username) { continue }
        $id = $fields | Select-Object -Skip 1 | Where-Object { $_ -match '\A[0-9]+\z' } | Select-Object -First 1
        if ($id) {
            try { & "$env:SystemRoot\System32\logoff.exe" $id 2>$null } catch { }
        }
    }
    Get-Process -IncludeUserName -ErrorAction SilentlyContinue |
        Where-Object { $_.UserName -eq "$env:COMPUTERNAME\$Username" } |
        Stop-Process -Force -ErrorAction SilentlyContinue
}

# Removes the profile (C:\Users\<name> and its registry entry) of account $Sid.
function Remove-PassportProfile([string]$Sid) {
    for ($try = 0; $try -lt 15; $try++) {
        $found = @(Get-CimInstance -ClassName Win32_UserProfile | Where-Object { $_.SID -eq $Sid })
        if ($found.Count -eq 0) { return }
        try { $found | Remove-CimInstance; return } catch { Start-Sleep -Seconds 2 }
    }
    Exit-Passport "the profile of $Sid could not be removed; it may still be loaded"
}

# Removes the user, their profile, group memberships (with the account), state and
# expiry task. Success when the user is already gone. Refuses an account Passport did
# not create. The expiry task passes the expiry it was scheduled for, and stands down
# if the access was extended since; it also leaves its own task alone (the task
# deletes itself a day after its end boundary).
function Invoke-PassportRevoke([string]$Username, [string]$RequestId, [string]$ScheduledExpiry) {
    if (-not (Test-PassportUsername $Username)) {
        Exit-Passport 'Username must be a Passport username (pp-<handle>-<n>, at most 20 characters of a-z 0-9 _ -)'
    }
    if (-not (Test-PassportRequest $RequestId $Username)) {
        Exit-Passport 'RequestId must be AR-<n> with the same n the Username ends in'
    }
    Lock-Passport
    $state = Join-Path $PassportState ('users\' + $Username)
    if ($ScheduledExpiry) {
        if (-not [regex]::IsMatch($ScheduledExpiry, '\A[0-9]{10}\z')) { Exit-Passport 'the scheduled expiry must be unix seconds' }
        if (Test-Path -LiteralPath $state -PathType Leaf) {
            $line = @(Get-Content -LiteralPath $state) | Where-Object { $_ -cmatch '\Aexpires=[0-9]{10}\z' } | Select-Object -First 1
            if ($line -and ([long]$line.Substring(8) -gt [long]$ScheduledExpiry)) {
                Write-Output "passport revoke: $Username was extended; the newer expiry task stays in charge"
                return
            }
        }
    }
    $result = 'was already absent'
    $user = Get-LocalUser -Name $Username -ErrorAction SilentlyContinue
    if ($user) {
        if (-not (Test-PassportOwned $user $RequestId)) {
            Exit-Passport "account $Username exists but was not created by Passport for $RequestId; leaving it alone"
        }
        $sid = $user.SID.Value
        # Disabled first, so that no new logon races the removal.
        Disable-LocalUser -SID $user.SID
        Stop-PassportSessions $Username
        Remove-LocalUser -SID $user.SID
        Remove-PassportProfile $sid
        $result = 'removed'
    }
    if (-not $ScheduledExpiry) {
        Unregister-ScheduledTask -TaskPath $PassportTaskPath -TaskName "Expire-$Username" -Confirm:$false -ErrorAction SilentlyContinue
    }
    Remove-Item -LiteralPath $state -Force -ErrorAction SilentlyContinue
    Write-Output "passport revoke: $Username $result ($RequestId)"
}
# <<< passport-revoke-core
