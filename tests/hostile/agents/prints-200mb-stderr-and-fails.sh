#!/bin/sh
# Floods stderr with 200 MB, then fails.
head -c 200000000 /dev/zero | tr '\0' 'e' >&2
exit 3
