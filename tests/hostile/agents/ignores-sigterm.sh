#!/bin/sh
# Ignores polite signals and never answers.
trap '' TERM INT HUP
while :; do sleep 1; done
