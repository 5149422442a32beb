#!/usr/bin/env bash
# Installs the Debian packages the integration tests start for real: prometheus (a real
# Prometheus server scrapes a duet run) and docker-compose (validates docker/compose.yaml).
# Skips what is already there; needs root or sudo for apt-get.
set -euo pipefail
say() { printf '\033[1m[services]\033[0m %s\n' "$*"; }

missing=()
command -v prometheus >/dev/null 2>&1 || missing+=(prometheus)
command -v docker-compose >/dev/null 2>&1 || missing+=(docker-compose)
if [ ${#missing[@]} -eq 0 ]; then
  exit 0
fi
SUDO=()
if [ "$(id -u)" -ne 0 ]; then
  if command -v sudo >/dev/null 2>&1; then SUDO=(sudo); else
    say "need root to install ${missing[*]} (apt-get); the tests that use them will fail until then"
    exit 0
  fi
fi
if ! command -v apt-get >/dev/null 2>&1; then
  say "no apt-get here: install ${missing[*]} yourself; the tests that use them will fail until then"
  exit 0
fi
say "installing ${missing[*]} (Debian packages)"
export DEBIAN_FRONTEND=noninteractive
"${SUDO[@]}" apt-get update -qq || true  # a stale index still often installs
"${SUDO[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}"
say "done"
