#!/usr/bin/env bash
# Installs Debian's Chromium when it is missing: the drift suite loads the
# collector's page in a real headless browser and looks for its charts.
# Idempotent; needs root (CI and the dev machines run as root) or sudo.
set -euo pipefail
if command -v chromium >/dev/null 2>&1; then
  exit 0
fi
echo "installing Chromium (Debian package chromium)" >&2
sudo=""
if [ "$(id -u)" != 0 ]; then sudo="sudo"; fi
export DEBIAN_FRONTEND=noninteractive
$sudo apt-get update -qq
$sudo apt-get install -y -qq --no-install-recommends chromium >/dev/null
command -v chromium >/dev/null
