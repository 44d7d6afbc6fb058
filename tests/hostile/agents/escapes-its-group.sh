#!/bin/sh
# A grandchild leaves the process group (setsid) still holding stdout.
setsid sleep 5 &
echo '{"answer": "2"}'
