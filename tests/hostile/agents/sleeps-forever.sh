#!/bin/sh
# Never answers: the timeout must stop it.
sleep 1000
