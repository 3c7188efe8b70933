#!/usr/bin/env bash
# Installs the system parts the Prometheus tests run against: Debian's `prometheus` (with promtool) and
# `prometheus-node-exporter`, with apt-get where they are missing. A policy-rc.d that exits 101 keeps the
# packages' own services from starting (the tests start their own, on free 127.0.0.1 ports); an existing
# policy-rc.d is left alone, one written here is removed afterwards.
# Exit 0 with "skip: ..." on stdout where neither the binaries nor apt-get exist (the tests then skip too).
set -euo pipefail
have() { command -v "$1" >/dev/null 2>&1 || [ -x "/usr/bin/$1" ]; }
if have prometheus && have promtool && have prometheus-node-exporter; then
  echo "prometheus parts: present ($(prometheus --version 2>&1 | head -1))"
  exit 0
fi
if ! command -v apt-get >/dev/null 2>&1; then
  echo "skip: prometheus/promtool/prometheus-node-exporter are missing and there is no apt-get to install them"
  exit 0
fi
SUDO=""
if [ "$(id -u)" != 0 ]; then SUDO="sudo"; fi
POLICY=/usr/sbin/policy-rc.d
created=0
if [ ! -e "$POLICY" ]; then
  printf '#!/bin/sh\n# written by zoo .ci/prometheus-parts.sh: no service starts during the install\nexit 101\n' \
    | $SUDO tee "$POLICY" >/dev/null
  $SUDO chmod +x "$POLICY"
  created=1
fi
cleanup() { if [ "$created" = 1 ]; then $SUDO rm -f "$POLICY"; fi; }
trap cleanup EXIT
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends prometheus prometheus-node-exporter >/dev/null
echo "prometheus parts: installed ($(prometheus --version 2>&1 | head -1))"
