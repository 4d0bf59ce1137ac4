"""Lossy-line DNS: retransmission inside the timeout, A and AAAA in parallel, overrides, failure reasons."""

import asyncio
import time

import dns.message
import dns.rcode
import dns.rrset
import pytest

from probes.base import Line, LineConfig, ProbeContext
from probes.common.dnswire import DnsFailure, resolve
from probes.common.netio import classify
from probes.tcp import Config as TcpConfig

V4V6 = (2, 10)  # AF_INET, AF_INET6


class Responder(asyncio.DatagramProtocol):
    """A real UDP DNS server on loopback that can drop and delay answers per query type."""

    def __init__(self, records, drop_first=None, delay=None):
        self.records = records  # {("name.", "A"): ["1.2.3.4"]}
        self.drop_first = dict(drop_first or {})
        self.delay = delay or {}
        self.seen: list[str] = []

    def connection_made(self, transport):
        self.transport = transport

    def datagram_received(self, data, addr):
        query = dns.message.from_wire(data)
        q = query.question[0]
        rdtype = dns.rdatatype.to_text(q.rdtype)
        self.seen.append(rdtype)
        if self.drop_first.get(rdtype, 0) > 0:
            self.drop_first[rdtype] -= 1
            return
        response = dns.message.make_response(query)
        name = q.name.to_text()
        if not any(key[0] == name for key in self.records):
            response.set_rcode(dns.rcode.NXDOMAIN)
        for value in self.records.get((name, rdtype), []):
            response.answer.append(dns.rrset.from_text(name, 60, "IN", rdtype, value))
        asyncio.get_running_loop().call_later(self.delay.get(rdtype, 0), self.transport.sendto, response.to_wire(), addr)


@pytest.fixture
async def responder():
    servers = []

    async def start(records, **kw):
        loop = asyncio.get_running_loop()
        transport, proto = await loop.create_datagram_endpoint(lambda: Responder(records, **kw), local_addr=("127.0.0.1", 0))
        servers.append(transport)
        return proto, transport.get_extra_info("sockname")[1]

    yield start
    for t in servers:
        t.close()


def ctx_for(port_server, timeout=3.0, line=None):
    target = TcpConfig(name="t", host="x", port=1, timeout=timeout)
    return ProbeContext(service="s", target=target, line=line, resolvers=(port_server,))


RECORDS = {("ioffice.lab.test.", "A"): ["198.51.100.10"], ("ioffice.lab.test.", "AAAA"): ["2001:db8::10"]}


async def test_a_and_aaaa_are_asked_in_parallel(responder, monkeypatch):
    proto, port = await responder(RECORDS, delay={"A": 0.3, "AAAA": 0.3})
    monkeypatch.setattr("probes.common.dnswire.exchange", _with_port(port))
    started = time.monotonic()
    addresses, dns_ms = await resolve(ctx_for("127.0.0.1"), "ioffice.lab.test", V4V6)
    assert addresses == ["198.51.100.10", "2001:db8::10"]
    assert 280 < dns_ms < 550, "two 300 ms answers asked one after the other would take 600 ms"
    assert time.monotonic() - started < 0.55


async def test_one_lost_datagram_costs_a_retransmission_not_the_probe(responder, monkeypatch):
    proto, port = await responder(RECORDS, drop_first={"A": 1, "AAAA": 1})
    monkeypatch.setattr("probes.common.dnswire.exchange", _with_port(port))
    addresses, dns_ms = await resolve(ctx_for("127.0.0.1"), "ioffice.lab.test", V4V6)
    assert set(addresses) == {"198.51.100.10", "2001:db8::10"}
    assert proto.seen.count("A") == 2 and proto.seen.count("AAAA") == 2
    assert 380 < dns_ms < 1000


async def test_slow_aaaa_does_not_hold_back_a(responder, monkeypatch):
    proto, port = await responder(RECORDS, delay={"AAAA": 2.0})
    monkeypatch.setattr("probes.common.dnswire.exchange", _with_port(port))
    addresses, dns_ms = await resolve(ctx_for("127.0.0.1"), "ioffice.lab.test", V4V6)
    assert addresses == ["198.51.100.10"]
    assert dns_ms < 200


async def test_nxdomain_is_dns_error(responder, monkeypatch):
    proto, port = await responder(RECORDS)
    monkeypatch.setattr("probes.common.dnswire.exchange", _with_port(port))
    with pytest.raises(DnsFailure) as info:
        await resolve(ctx_for("127.0.0.1"), "nope.lab.test", V4V6)
    assert classify(info.value)[0] == "dns_error"
    assert "NXDOMAIN" in str(info.value)


async def test_silent_resolver_is_a_timeout_within_the_budget(responder, monkeypatch):
    proto, port = await responder(RECORDS, drop_first={"A": 99, "AAAA": 99})
    monkeypatch.setattr("probes.common.dnswire.exchange", _with_port(port))
    started = time.monotonic()
    with pytest.raises(DnsFailure) as info:
        await resolve(ctx_for("127.0.0.1", timeout=1.5), "ioffice.lab.test", V4V6)
    assert info.value.result == "timeout"
    assert 1.4 < time.monotonic() - started < 1.8
    assert proto.seen.count("A") >= 3, "retransmits at 0.4 s and 1.2 s"


async def test_line_hosts_override_and_literals_need_no_lookup():
    line = Line("backup", LineConfig(hosts={"ioffice.lab.test": "203.0.113.7"}))
    ctx = ctx_for("127.0.0.1", line=line)
    assert await resolve(ctx, "ioffice.lab.test", V4V6) == (["203.0.113.7"], None)
    assert await resolve(ctx, "192.0.2.1", V4V6) == (["192.0.2.1"], None)


def _with_port(port):
    """Point exchange() at the responder's port (the probes use port 53)."""
    from probes.common import dnswire

    original = dnswire.exchange

    async def exchange(ctx, query, servers, port_=53, deadline=None):
        return await original(ctx, query, servers, port, deadline)

    return exchange
