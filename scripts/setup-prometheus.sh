#!/usr/bin/env bash
# Installs Prometheus and promtool (Debian's `prometheus` package) when they
# are missing. The telemetry and deploy tests start a real Prometheus on
# loopback and check the alert rules and the exposition with promtool.
# Idempotent; needs root (CI and the dev machines run as root) or sudo.
set -euo pipefail
if command -v prometheus >/dev/null 2>&1 && command -v promtool >/dev/null 2>&1; then
  exit 0
fi
echo "installing Prometheus (Debian package prometheus)" >&2
sudo=""
if [ "$(id -u)" != 0 ]; then sudo="sudo"; fi
export DEBIAN_FRONTEND=noninteractive
$sudo apt-get update -qq
# --no-install-recommends: the exporters it recommends are not needed.
$sudo apt-get install -y -qq --no-install-recommends prometheus >/dev/null
# The package starts a system service on :9090 where systemd runs; the tests
# start their own on a free loopback port, so stop it if it is running.
if command -v systemctl >/dev/null 2>&1 && systemctl is-active --quiet prometheus 2>/dev/null; then
  $sudo systemctl stop prometheus || true
fi
command -v prometheus >/dev/null && command -v promtool >/dev/null
