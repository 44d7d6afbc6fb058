#!/bin/sh
echo 'the answer is 2'
