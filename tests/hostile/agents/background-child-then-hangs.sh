#!/bin/sh
# A background child keeps stdout open while the program itself hangs past the timeout.
sleep 1000 &
sleep 1000
