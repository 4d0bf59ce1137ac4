#!/usr/bin/env bash
# Install everything commune-monitor needs on a fresh Debian 12 machine (run as root):
# Debian packages with apt-get, Python packages into ./.venv. Safe to run again.
set -euo pipefail
cd "$(dirname "$0")/.."

APT_PACKAGES=(
  python3 python3-venv python3-dev gcc           # venv + building NetfilterQueue
  iproute2 iptables nftables procps               # lab: namespaces, veth, NFQUEUE, tbf
  libnetfilter-queue-dev                          # lab: the packet-holding impairer
  iputils-ping                                    # benchmark peer: system ping
  dnsmasq-base                                    # lab: the province DNS server
  dovecot-imapd                                   # lab: the province IMAP server
  victoria-metrics                                # the time-series database
  prometheus-blackbox-exporter                    # benchmark peer
  prometheus-node-exporter                        # benchmark peer (agent footprint)
  systemd                                         # systemd-analyze verify for the unit files
  debootstrap systemd-container                   # tests/system: a Debian tree booted with systemd-nspawn
  faketime                                        # e2e tests: an agent whose clock is 10 minutes wrong
  openssl ca-certificates git
)
missing=()
for p in "${APT_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -q
  # policy-rc.d keeps the packaged daemons from auto-starting; the lab starts its own copies.
  apt-get install -y -q --no-install-recommends "${missing[@]}"
fi

if [ ! -x .venv/bin/python ]; then
  /usr/bin/python3 -m venv .venv
fi
.venv/bin/pip install -q --upgrade pip
.venv/bin/pip install -q -e ".[test,lab]"
echo "setup: ok ($(.venv/bin/python --version), cmon at .venv/bin/cmon)"
