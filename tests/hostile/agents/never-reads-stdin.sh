#!/bin/sh
# Closes stdin without reading it and answers.
exec 0<&-
echo '{"answer": "2"}'
