"""The tcp probe against real local TCP servers: connect, banner, refused, silence, names, lines."""

from __future__ import annotations

import asyncio

import pytest

from probes.base import Line, LineConfig, ProbeContext
from core.measurement import RESULT_CODES
from probes import tcp


@pytest.fixture
async def server():
    """Start TCP servers on 127.0.0.1:0 that greet with a banner (or stay silent); closed at the end."""
    started = []

    async def start(banner: bytes | None):
        async def handle(reader, writer):
            if banner is not None:
                writer.write(banner)
                await writer.drain()
            else:
                await asyncio.sleep(30)
            writer.close()

        srv = await asyncio.start_server(handle, "127.0.0.1", 0)
        started.append(srv)
        return srv.sockets[0].getsockname()[1]

    yield start
    for srv in started:
        srv.close()


async def run(line: Line | None = None, all_lines=None, resolvers=(), **keys):
    config = tcp.Config(name="t", **keys)
    ctx = ProbeContext(service="email", target=config, line=line, all_lines=all_lines or {}, resolvers=resolvers)
    return await tcp.probe(config, ctx)


async def test_connect_and_banner(server):
    port = await server(b"220 mail.example.gov.vn ESMTP\r\n")
    m = await run(host="127.0.0.1", port=port, expect_banner=r"^220 ")
    assert m.result == "ok" and m.up
    assert set(m.fields) == {"connect_ms", "banner_ms", "up", "duration_ms", "result_code"}
    assert "dns_ms" not in m.fields, "an IP literal needs no lookup: no dns_ms, not 0"
    assert 0 < m.fields["connect_ms"] <= m.fields["duration_ms"]
    assert m.tags == {"service": "email", "target": "t", "probe": "tcp", "line": "auto"}


async def test_wrong_banner(server):
    port = await server(b"554 go away\r\n")
    m = await run(host="127.0.0.1", port=port, expect_banner=r"^220 ")
    assert (m.result, m.fields["up"], m.fields["result_code"]) == ("banner_mismatch", 0.0, RESULT_CODES["banner_mismatch"])
    assert "554 go away" in m.detail and "connect_ms" in m.fields


async def test_refused_port(server):
    port = await server(b"")
    m = await run(host="127.0.0.1", port=port)
    assert m.result == "ok"
    closed = await run(host="127.0.0.1", port=1)
    assert closed.result == "refused" and "connect_ms" not in closed.fields


async def test_silent_server_times_out_within_the_timeout(server):
    port = await server(None)
    m = await run(host="127.0.0.1", port=port, expect_banner="^220", timeout=0.5)
    assert m.result == "timeout"
    assert 450 < m.fields["duration_ms"] < 900


async def test_unresolvable_name_is_dns_error():
    # A resolver on loopback that is not listening: ICMP port unreachable -> the lookup fails at once.
    m = await run(host="ioffice.invalid", port=443, resolvers=("127.0.0.1",), timeout=2)
    assert m.result == "dns_error"


async def test_pinned_source_and_identified_line(server):
    port = await server(b"220 ok\r\n")
    backup = Line("backup", LineConfig(source="127.0.0.2"))
    m = await run(line=backup, host="127.0.0.1", port=port)
    assert m.result == "ok" and m.tags["line"] == "backup"
    # Unpinned, but the kernel's choice of local address is a configured line's source: reported as that line.
    primary = Line("primary", LineConfig(source="127.0.0.1"))
    unpinned = await run(all_lines={"primary": primary, "backup": backup}, host="127.0.0.1", port=port)
    assert unpinned.tags["line"] == "primary"


async def test_a_line_source_this_pc_does_not_have_is_unreachable(server):
    port = await server(b"220 ok\r\n")
    m = await run(line=Line("backup", LineConfig(source="192.0.2.77")), host="127.0.0.1", port=port)
    assert m.result == "unreachable" and "192.0.2.77" in m.detail


def test_config_errors_for_bad_port_and_empty_host():
    with pytest.raises(ValueError):
        tcp.Config(name="t", host="x", port=70000)
    with pytest.raises(ValueError):
        tcp.Config(name="t", host="", port=80)
