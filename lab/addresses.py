"""Addresses, interface names and routing constants of the lab network.

One commune LAN (pc) behind a commune router (rtr) with a primary and a backup WAN to an ISP (isp), which
also serves the province data center (dc). Other modules import these names instead of repeating literals.

    pc eth0 ── lan0 rtr wan1 ── up1 isp core0 ── eth0 dc
                        wan2 ── up2
"""

from __future__ import annotations

ROLES = ("pc", "rtr", "isp", "dc")

# pc: a counter PC with ONE NIC; the secondary address is the "backup-line" source the router policy-routes.
PC_IF = "eth0"
PC_ADDR = "10.20.0.10"
PC_BACKUP_ADDR = "10.20.0.11"
LAN_PREFIX = 24
LAN_NET = "10.20.0.0/24"

# rtr: the commune router.
RTR_LAN_IF = "lan0"
RTR_LAN_ADDR = "10.20.0.1"
RTR_WAN1_IF = "wan1"
RTR_WAN1_ADDR = "100.64.1.2"
RTR_WAN2_IF = "wan2"
RTR_WAN2_ADDR = "100.64.2.2"
WAN_PREFIX = 30
WAN1_NET = "100.64.1.0/30"
WAN2_NET = "100.64.2.0/30"

# isp: the upstream ends of both WANs and the core towards the data center.
ISP_UP1_IF = "up1"
ISP_UP1_ADDR = "100.64.1.1"
ISP_UP2_IF = "up2"
ISP_UP2_ADDR = "100.64.2.1"
ISP_CORE_IF = "core0"
ISP_CORE_ADDR = "198.51.100.1"
WAN_SUPERNET = "100.64.0.0/16"

# dc: the province data center, every service address on one interface.
DC_IF = "eth0"
DC_PREFIX = 24
DC_NET = "198.51.100.0/24"
DC_GATEWAY = ISP_CORE_ADDR
IOFFICE_ADDR = "198.51.100.10"
DVC_ADDR = "198.51.100.11"
MAIL_ADDR = "198.51.100.25"
DNS_ADDR = "198.51.100.53"
INTERNET_ADDR = "198.51.100.80"
DC_ADDRS = {
    "ioffice": IOFFICE_ADDR,
    "dvc": DVC_ADDR,
    "mail": MAIL_ADDR,
    "dns": DNS_ADDR,
    "internet": INTERNET_ADDR,
}

# Policy routing on rtr: what goes out of the backup WAN.
BACKUP_TABLE = 102
BACKUP_TOS = 0x20  # DSCP CS1 in the tos byte
BACKUP_DSCP = BACKUP_TOS >> 2
# Kernel fib rules reject "tos 0x20" (only the old 0x1e TOS bits are accepted without iproute2 >= 6.13's
# "dscp" selector), so rtr marks CS1 packets with iptables and routes the mark.
BACKUP_FWMARK = 0x66

# Each WAN: (rtr interface, rtr address, isp interface, isp address).
WANS = {
    "wan1": (RTR_WAN1_IF, RTR_WAN1_ADDR, ISP_UP1_IF, ISP_UP1_ADDR),
    "wan2": (RTR_WAN2_IF, RTR_WAN2_ADDR, ISP_UP2_IF, ISP_UP2_ADDR),
}
