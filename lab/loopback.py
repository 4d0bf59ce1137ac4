"""The province on loopback: the addresses unit tests run the real servers on, and whether they can here."""

from __future__ import annotations

import os
import shutil

# Loopback addresses of the province roles (ports below 1024: root only).
PROVINCE_ADDRESSES = {"ioffice": "127.0.0.10", "dvc": "127.0.0.11", "mail": "127.0.0.25", "dns": "127.0.0.53"}


def province_skip_reason() -> str | None:
    """Say why the loopback province cannot run here, or None when it can."""
    if os.geteuid() != 0:
        return "needs root: the province servers listen on ports below 1024"
    for tool in ("dovecot", "dnsmasq"):
        if not shutil.which(tool, path=os.environ.get("PATH", "") + ":/usr/sbin:/sbin"):
            return f"{tool} is not installed (apt-get install dovecot-imapd dnsmasq-base)"
    return None
