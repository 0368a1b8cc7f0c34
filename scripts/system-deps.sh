#!/usr/bin/env bash
# Installs the Debian packages the test suite talks to for real:
# mosquitto (MQTT broker), chromium (browser page), libportaudio2 (microphone client), openssl (wss test),
# nginx-light (the load balancer of deploy/nginx.conf, tests/server/test_nginx.py).
# Does nothing when they are all present; needs root (or sudo) otherwise.
set -o errexit -o pipefail -o nounset

missing=()
command -v mosquitto >/dev/null || [[ -x /usr/sbin/mosquitto ]] || missing+=(mosquitto)
[[ -x /usr/bin/chromium ]] || missing+=(chromium)
ldconfig -p 2>/dev/null | grep -q libportaudio.so.2 || missing+=(libportaudio2)
command -v openssl >/dev/null || missing+=(openssl)
command -v nginx >/dev/null || [[ -x /usr/sbin/nginx ]] || missing+=(nginx-light)
[[ ${#missing[@]} -eq 0 ]] && exit 0

sudo=""
[[ $(id -u) -eq 0 ]] || sudo="sudo"
echo "system-deps: installing ${missing[*]}" >&2
$sudo apt-get update -q
DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -q --no-install-recommends "${missing[@]}"
