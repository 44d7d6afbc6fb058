#!/bin/sh
# Floods stdout with 200 MB.
head -c 200000000 /dev/zero | tr '\0' 'a'
