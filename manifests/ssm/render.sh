#!/bin/sh
# Rewrites the runCommand lines of the SSM documents in this directory from their
# scripts, one YAML single-quoted string per script line (a quote is doubled, nothing
# else is escaped). Run it after editing a script; tests/instance_scripts.rs fails when
# a document and its script differ. The output is deterministic, so the content hash
# Passport uses to spot outdated installed documents only changes with the scripts.
set -eu
cd "$(dirname "$0")"

render() { # document script
    doc=$1
    script=$2
    grep -q '^      runCommand:$' "$doc" || {
        echo "render.sh: $doc has no '      runCommand:' line" >&2
        exit 1
    }
    tmp=$(mktemp "$doc.XXXXXX")
    sed '/^      runCommand:$/q' "$doc" >"$tmp"
    sed -e "s/'/''/g" -e "s/^/        - '/" -e "s/\$/'/" "$script" >>"$tmp"
    chmod 0644 "$tmp"
    mv -f "$tmp" "$doc"
}

render Passport-GrantLinux.yaml grant-linux.sh
render Passport-RevokeLinux.yaml revoke-linux.sh
render Passport-GrantWindows.yaml grant-windows.ps1
render Passport-RevokeWindows.yaml revoke-windows.ps1
