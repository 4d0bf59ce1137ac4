"""The probe library: one module per probe (`icmp`, `tcp`, `http`, `dns`, `smtp`, `imap`, `tls`), each returning
Measurements (core.measurement) and never raising; `base` holds the probe contract, `registry` the name → module
map, and `common/` the helpers the probes share (sockets, DNS, TLS inspection, mail, login, the echo transport)."""
