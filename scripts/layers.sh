#!/usr/bin/env bash
# Checks that src/optimizer/ follows its flow, data <- exec <- methods <- report: a module
# uses modules of its own folder and of the folders before it only. Prints every use of a
# later folder (code, tests and doc links alike) and fails if there is one.
set -u
cd "$(dirname "$0")/../src/optimizer" || exit 2
status=0
check() { # folder, the folders it must not name
    local folder=$1 later=$2 hits
    hits=$(grep -rnE "(crate|fgo)::optimizer::($later)\b|\bsuper::super::" "$folder" || true)
    if [ -n "$hits" ]; then
        echo "$folder/ uses a later stage:"
        echo "$hits"
        status=1
    else
        echo "$folder/: uses nothing from ${later//|/, }"
    fi
}
check data 'exec|methods|report'
check exec 'methods|report'
check methods 'report'
exit $status
