"""Helpers the probe modules share; none of them is a probe (the probes are the modules of `probes/` itself).

- `sockets`: sockets pinned to a line, and `ProbeFailure` (a failure already classified);
- `dnswire`: DNS over lossy lines, pinned to a line (`resolve`, `exchange`);
- `netio`: timed TCP/TLS connections (`open_tcp`) and errors → `result` reasons (`classify`);
- `tlsinfo`: TLS contexts, certificate days left, why a chain fails;
- `mail_common`: what the smtp and imap probes share (config keys, a line-based session with STARTTLS);
- `http_login`: login forms for the http probe;
- `echo`, `icmp_socket`: the ICMP echo transport interface and its Linux implementation.
"""
