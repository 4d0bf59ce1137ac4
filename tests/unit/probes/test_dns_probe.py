"""The dns probe against a real dnsmasq on 127.0.0.1, a responder that drops the first datagram, and silence."""

from __future__ import annotations

import asyncio
import os
import socket

import dns.message
import dns.rrset
import pytest
from pydantic import ValidationError

from lab.servers import dns as lab_dns
from lab.servers.process import Check, ServerProcess
from probes import dns as dns_probe
from probes.base import ProbeContext
from core.measurement import Measurement

from probe_helpers import free_port, make_expected, make_strip

strip = make_strip()
expected = make_expected("dns", "dns")


async def run(**keys) -> Measurement:
    """Run the dns probe with these config keys (target name `t`)."""
    config = dns_probe.Config(name="t", **keys)
    return await dns_probe.probe(config, ProbeContext(service="dns", target=config))


@pytest.fixture(scope="module")
def dnsmasq(tmp_path_factory):
    """Run dnsmasq (lab.servers.dns) on 127.0.0.1:<free port> with more record types; yield the port."""
    if not os.path.exists(lab_dns.dnsmasq_binary()):
        pytest.skip("dnsmasq is not installed (apt-get install dnsmasq-base)")
    workdir = tmp_path_factory.mktemp("dnsmasq")
    port = free_port(socket.SOCK_DGRAM)
    # lab.servers.dns answers NXDOMAIN for unknown names under lab.test and REFUSED outside it (no upstream).
    argv = lab_dns.command(workdir, "127.0.0.1", {"ioffice.lab.test": ["127.0.0.10", "::10"]}, port=port) + [
        "--cname=www.lab.test,ioffice.lab.test",
        "--mx-host=lab.test,mail.lab.test,10",
        "--txt-record=lab.test,v=spf1 mx -all",
        "--ptr-record=10.0.0.127.in-addr.arpa,ioffice.lab.test",
    ]
    server = ServerProcess("dnsmasq", argv, [Check("dns", "127.0.0.1", port)], workdir / "dnsmasq.log")
    try:
        server.start()
        yield port
    finally:
        server.stop()


async def test_a_record_with_expected_answer(dnsmasq):
    m = await run(query_name="ioffice.lab.test", resolver="127.0.0.1", port=dnsmasq, expect_answers=["127.0.0.10"])
    assert strip(m) == expected("ok", {"answers": 1.0, "retries": 0.0, "rcode": 0.0})
    assert 0 < m.fields["dns_ms"] < 1000


@pytest.mark.parametrize(
    ("keys", "answers"),
    [
        ({"query_name": "ioffice.lab.test", "type": "AAAA", "expect_answers": ["0:0::10"]}, 1.0),
        ({"query_name": "www.lab.test", "expect_answers": ["IOFFICE.lab.test.", "127.0.0.10"]}, 1.0),
        ({"query_name": "lab.test", "type": "mx", "expect_answers": ["mail.lab.test"]}, 1.0),
        ({"query_name": "lab.test", "type": "MX", "expect_answers": ["10 Mail.Lab.Test."]}, 1.0),
        ({"query_name": "lab.test", "type": "TXT", "expect_answers": ['"v=spf1 mx -all"']}, 1.0),
        ({"query_name": "127.0.0.10", "type": "PTR", "expect_answers": ["ioffice.lab.test"]}, 1.0),
        ({"query_name": "www.lab.test", "type": "CNAME", "recursion": False}, 1.0),
    ],
)
async def test_record_types_compare_normalised(dnsmasq, keys, answers):
    m = await run(resolver="127.0.0.1", port=dnsmasq, **keys)
    assert (m.result, m.detail, m.fields["answers"]) == ("ok", "", answers)


async def test_wrong_expected_answer(dnsmasq):
    m = await run(query_name="ioffice.lab.test", resolver="127.0.0.1", port=dnsmasq, expect_answers=["127.0.0.99"])
    assert strip(m) == expected(
        "answer_mismatch",
        {"answers": 1.0, "retries": 0.0, "rcode": 0.0},
        "A ioffice.lab.test lacks 127.0.0.99 (got 127.0.0.10)",
    )


async def test_txt_content_is_case_sensitive(dnsmasq):
    m = await run(query_name="lab.test", type="TXT", resolver="127.0.0.1", port=dnsmasq, expect_answers=["V=SPF1 MX -ALL"])
    assert m.result == "answer_mismatch"


async def test_nxdomain_is_dns_error(dnsmasq):
    m = await run(query_name="nope.lab.test", resolver="127.0.0.1", port=dnsmasq)
    assert strip(m) == expected(
        "dns_error", {"answers": 0.0, "retries": 0.0, "rcode": 3.0}, "127.0.0.1 answered NXDOMAIN for A nope.lab.test"
    )


async def test_nxdomain_expected_is_ok(dnsmasq):
    m = await run(query_name="nope.lab.test", resolver="127.0.0.1", port=dnsmasq, expect_rcode="nxdomain")
    assert strip(m) == expected("ok", {"answers": 0.0, "retries": 0.0, "rcode": 3.0})


async def test_nxdomain_expected_but_name_exists(dnsmasq):
    m = await run(query_name="ioffice.lab.test", resolver="127.0.0.1", port=dnsmasq, expect_rcode="NXDOMAIN")
    assert (m.result, m.fields["rcode"]) == ("answer_mismatch", 0.0)


async def test_no_record_of_that_type(dnsmasq):
    m = await run(query_name="lab.test", type="A", resolver="127.0.0.1", port=dnsmasq)
    assert (m.result, m.fields["answers"]) == ("answer_mismatch", 0.0)


async def test_refused_rcode_is_dns_error(dnsmasq):
    # dnsmasq has no upstream: a name outside its local zone gets REFUSED.
    m = await run(query_name="example.com", resolver="127.0.0.1", port=dnsmasq)
    assert (m.result, m.fields["rcode"], m.detail) == ("dns_error", 5.0, "127.0.0.1 answered REFUSED for A example.com")


async def test_resolver_not_listening_is_refused():
    m = await run(query_name="ioffice.lab.test", resolver="127.0.0.1", port=free_port(socket.SOCK_DGRAM), timeout=3)
    assert (m.result, m.fields["retries"]) == ("refused", 0.0)
    assert m.fields["duration_ms"] < 1000  # ICMP port unreachable ends it at once, not at the timeout


async def test_silent_resolver_is_timeout():
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as silent:
        silent.bind(("127.0.0.1", 0))
        m = await run(query_name="ioffice.lab.test", resolver="127.0.0.1", port=silent.getsockname()[1], timeout=1.5)
    # Sent at 0 s, 0.4 s and 1.2 s: two retransmissions before the 1.5 s budget ran out.
    assert strip(m) == expected("timeout", {"retries": 2.0}, "DNS server 127.0.0.1 did not answer in time (3 queries sent)")
    assert 1400 < m.fields["duration_ms"] < 2500


class DropFirst(asyncio.DatagramProtocol):
    """A resolver that loses the first query datagram and answers every later one with 127.0.0.10."""

    def __init__(self) -> None:
        self.received = 0
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport) -> None:
        self.transport = transport

    def datagram_received(self, data: bytes, addr) -> None:
        self.received += 1
        if self.received == 1:
            return
        query = dns.message.from_wire(data)
        response = dns.message.make_response(query)
        response.answer.append(dns.rrset.from_text(query.question[0].name, 60, "IN", "A", "127.0.0.10"))
        self.transport.sendto(response.to_wire(), addr)


async def test_one_lost_datagram_costs_a_retry_not_the_probe():
    loop = asyncio.get_running_loop()
    transport, responder = await loop.create_datagram_endpoint(DropFirst, local_addr=("127.0.0.1", 0))
    try:
        port = transport.get_extra_info("sockname")[1]
        m = await run(query_name="ioffice.lab.test", resolver="127.0.0.1", port=port, expect_answers=["127.0.0.10"])
    finally:
        transport.close()
    assert strip(m) == expected("ok", {"answers": 1.0, "retries": 1.0, "rcode": 0.0})
    assert responder.received == 2
    assert 350 < m.fields["dns_ms"] < 1500  # the answer came to the retransmission at 0.4 s


@pytest.mark.parametrize(
    "keys",
    [
        {"query_name": "bad name.lab.test"},
        {"query_name": "a..lab.test"},
        {"query_name": "x" * 64 + ".lab.test"},
        {"query_name": "127.0.0.1"},  # an address is only a PTR question
        {"query_name": "lab.test", "type": "BOGUS"},
        {"query_name": "lab.test", "resolver": "dns.lab.test"},
        {"query_name": "lab.test", "port": 0},
        {"query_name": "lab.test", "expect_rcode": "NOPE"},
        {"query_name": "lab.test", "server": "127.0.0.1"},
    ],
)
def test_config_errors(keys):
    with pytest.raises(ValidationError):
        dns_probe.Config(name="t", **keys)


async def test_province_dns_through_the_lines_resolver(province):
    """Without `resolver`, the probe asks the line's resolver, over a socket bound to the line's source."""
    from probes.base import Line, LineConfig

    dns_ip, mail_ip = province.addresses["dns"], province.addresses["mail"]
    config = dns_probe.Config(name="t", query_name="mail.lab.test", expect_answers=[mail_ip])
    line = Line("primary", LineConfig(source="127.0.0.1", resolver=dns_ip))
    m = await dns_probe.probe(config, ProbeContext(service="dns", target=config, line=line))
    assert (m.result, m.tags["line"], m.fields["answers"], m.fields["retries"]) == ("ok", "primary", 1.0, 0.0)
