#!/bin/sh
# A grandchild leaves the process group (setsid) still holding stdout.
setsid sleep 30 &
echo '{"answer": "2"}'
