#!/bin/sh
# Renders the SSM documents in this directory from their scripts. A script is its
# .sh/.ps1 file with every line '# passport-include FILE' replaced by FILE from its
# first '# >>> ' line on (the lines above it describe the fragment and stay here), so
# code that grant and revoke share is written once, in the fragment. Each document's
# runCommand becomes its script, one YAML single-quoted string per line (a quote is
# doubled, nothing else is escaped); the rest of the document is kept as it is.
#
# Run it after editing a script or a fragment; tests/instance_scripts.rs fails when a
# document is not the rendering of its sources (it renders into a directory of its own:
# `render.sh DIR` writes the documents to DIR instead of beside their sources). The
# output is deterministic, so the content hash Passport uses to spot outdated installed
# documents only changes with the scripts.
set -eu
out=$(cd "${1:-$(dirname "$0")}" && pwd)
cd "$(dirname "$0")"

# include_fragments SCRIPT: the script with its fragments in place.
include_fragments() {
    awk '
        /^# passport-include [A-Za-z0-9._-]+$/ {
            file = $3
            started = 0
            while ((getline line < file) > 0) {
                if (!started && line ~ /^# >>> /) started = 1
                if (started) print line
            }
            close(file)
            if (!started) {
                print "render.sh: " FILENAME " includes " file ", which is missing or has no \"# >>> \" line" > "/dev/stderr"
                exit 1
            }
            next
        }
        { print }
    ' "$1"
}

render() { # document script
    doc=$1
    script=$2
    grep -q '^      runCommand:$' "$doc" || {
        echo "render.sh: $doc has no '      runCommand:' line" >&2
        exit 1
    }
    tmp=$(mktemp "$out/$doc.XXXXXX")
    include_fragments "$script" >"$tmp.script" || {
        rm -f "$tmp" "$tmp.script"
        exit 1
    }
    sed '/^      runCommand:$/q' "$doc" >"$tmp"
    sed -e "s/'/''/g" -e "s/^/        - '/" -e "s/\$/'/" "$tmp.script" >>"$tmp"
    rm -f "$tmp.script"
    chmod 0644 "$tmp"
    mv -f "$tmp" "$out/$doc"
}

render Passport-GrantLinux.yaml grant-linux.sh
render Passport-RevokeLinux.yaml revoke-linux.sh
render Passport-GrantWindows.yaml grant-windows.ps1
render Passport-RevokeWindows.yaml revoke-windows.ps1
