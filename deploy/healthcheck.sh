#!/bin/bash
# The image's HEALTHCHECK: `GET /ready` on the port that INFINI_ADDR names, over bash's /dev/tcp
# (the slim runtime image has no curl). Healthy only on HTTP 200: 503 while the model loads or the
# server drains after SIGTERM.
set -eu
port=${INFINI_ADDR##*:}
exec 3<>"/dev/tcp/127.0.0.1/${port}"
printf 'GET /ready HTTP/1.0\r\nHost: localhost\r\n\r\n' >&3
read -r -t 5 _ status _ <&3
[ "$status" = 200 ]
