#!/bin/sh
# Writes terminal escape sequences to stderr, then fails.
printf '\033[2J\033]0;owned\007\033[31mred\n' >&2
exit 1
