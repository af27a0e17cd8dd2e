#!/usr/bin/env bash
# Installs what a test needs from Debian packages, if missing (root only): the tests call
# it themselves, so a fresh machine needs nothing done by hand.
#   scripts/test_deps.sh python3-cryptography
set -euo pipefail
missing=()
for p in "$@"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
[[ ${#missing[@]} -eq 0 ]] && exit 0
[[ $(id -u) -eq 0 ]] || { echo "need root to install ${missing[*]}" >&2; exit 1; }
apt-get update -qq
DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
