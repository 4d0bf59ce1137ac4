"""The ingest fast path (collector.decode) gives the slow path's lines and refusals, and VM stores its numbers."""

from __future__ import annotations

import json
import random
import time

import pytest

from collector.decode import _slow, decode_ingest, identity_suffix
from collector.validate import PayloadError, Rules, check_ingest
from collector_helpers import collector_client, credential, expected_pairs, make_config, payload, post
from lab.fleet import standard_round
from lab.victoria import Victoria, available

RULES = Rules(frozenset({"service", "target", "probe", "line", "mount", "interface", "battery", "version"}),
              30 * 86_400_000, 600_000, 5000, 200)
IDENT = identity_suffix("ha-tinh", "dong loc", "quay=01")  # values that need escaping


def parsed(lines: list[bytes]) -> list[tuple[str, dict[str, float], int]]:
    """Return (head, fields as floats, time) per line."""
    out = []
    for line in lines:
        head, fields, stamp = line.decode().rstrip("\n").rsplit(" ", 2)
        out.append((head, {k: float(v) for k, v in (f.split("=") for f in fields.split(","))}, int(stamp)))
    return out


def standard_payload() -> dict:
    rng, now = random.Random(7), int(time.time() * 1000) - 3_600_000
    items = standard_round(rng, {"province": "other", "commune": "x", "agent": "y"}, now)
    items += standard_round(rng, {"province": "other", "commune": "x", "agent": "y"}, now + 30_000)
    items[0]["fields"].update(tiny=1e-05, huge=1.5e15, whole=3)  # exponents and a JSON integer
    return {"version": 1, "spool": "s-1", "first": 11, "last": 10 + len(items),
            "measurements": [{"seq": 11 + i, **m} for i, m in enumerate(items)], "evicted": [[1, 10]], "agent": {}}


@pytest.mark.parametrize("separators", [(",", ":"), (", ", ": ")])  # compact (the agent) and spaced JSON
def test_fast_path_gives_the_slow_paths_lines(separators):
    data = standard_payload()
    body = json.dumps(data, separators=separators).encode()
    fast, slow = decode_ingest(body, RULES, IDENT), _slow(body, RULES, IDENT, None)
    assert parsed(fast.lines) == parsed(slow.lines)
    assert fast.series == slow.series and fast.samples == slow.samples and fast.evicted == [(1, 10)]
    assert len(fast.series) == 32  # one round of the standard profile
    head = parsed(fast.lines)[0][0]
    assert head.endswith(",province=ha-tinh,commune=dong\\ loc,agent=quay\\=01") and "province=other" not in head
    verbatim = b"tiny=1e-05,huge=1500000000000000.0,whole=3 " if separators == (",", ":") else b"whole=3.0 "
    assert verbatim in fast.lines[0]  # compact JSON (the agent's): its number text as it came


@pytest.mark.parametrize("mutate", [
    lambda d: d.update(version=2), lambda d: d.update(version="1"), lambda d: d.update(spool="a b"),
    lambda d: d.update(last=d["last"] + 1), lambda d: d.update(first=0), lambda d: d.update(measurements=[]),
    lambda d: d["measurements"][3].update(seq=99), lambda d: d["measurements"][3].update(seq=True),
    lambda d: d["measurements"][3].update(name="cpu"), lambda d: d["measurements"][3].update(extra=1),
    lambda d: d["measurements"][3]["tags"].update(hostname="pc"),
    lambda d: d["measurements"][3]["tags"].update(target="a\nb"),
    lambda d: d["measurements"][3]["tags"].update(target="x" * 201),
    lambda d: d["measurements"][3]["tags"].update(target=5),
    lambda d: d["measurements"][3]["fields"].update(up="1"), lambda d: d["measurements"][3]["fields"].update(up=True),
    lambda d: d["measurements"][3]["fields"].update({"Up": 1.0}),
    lambda d: d["measurements"][3]["fields"].update(up=10**400),
    lambda d: d["measurements"][3].update(fields={}),
    lambda d: d["measurements"][3].update(fields={f"f{i}": 1.0 for i in range(65)}),
    lambda d: d["measurements"][3].update(time=1.5), lambda d: d["measurements"][3].update(time=0),
    lambda d: d["measurements"][3].update(time=int(time.time() * 1000) + 3_600_000),
    lambda d: d.update(evicted=[[5, 2]]), lambda d: d.update(evicted=[[1, True]]), lambda d: d.update(agent=[]),
    lambda d: d.update(evicted=[[1, 2**63]]), lambda d: d.update(lost=[[1, 2, "a\nb"]]),
    lambda d: d.update(lost=[[3, 2, "x"]]), lambda d: d.update(lost=[[1, 2]]),
    lambda d: d.update(first=2**63 - 1), lambda d: d.update(version=True),
    lambda d: d["agent"].update(health="sick"), lambda d: d["agent"].update(version="\ud800"),
    lambda d: d["agent"].update(tasks={"x": {"state": "ok", "restarts": -1}}),
    lambda d: d["measurements"][3]["fields"].update(up=2**53 + 2),
    lambda d: d["measurements"][3]["tags"].update(target="\x85"),
    lambda d: d["measurements"][3].update(name=["probe"]),
])
def test_fast_path_refuses_what_the_slow_path_refuses_with_its_reason(mutate):
    data = standard_payload()
    mutate(data)
    with pytest.raises(PayloadError) as slow:
        check_ingest(json.loads(json.dumps(data)), RULES)
    with pytest.raises(PayloadError) as fast:
        decode_ingest(json.dumps(data).encode(), RULES, IDENT)
    assert str(fast.value) == str(slow.value)


def test_non_finite_and_duplicate_fields():
    for text in (b"NaN", b"Infinity", b"1e999"):
        body = json.dumps(payload(1, 1)).replace('"up": 1.0', '"up": ' + text.decode()).encode()
        with pytest.raises(PayloadError, match="number|finite|inf"):
            decode_ingest(body, RULES, IDENT)
    body = json.dumps(payload(1, 1), separators=(",", ":")).replace('"up":1.0', '"up":1.0,"up":0.0').encode()
    assert parsed(decode_ingest(body, RULES, IDENT).lines)[0][1]["up"] == 0.0  # one value per field, as json.loads


@pytest.mark.skipif(available() is not None, reason=available() or "")
async def test_vm_stores_the_verbatim_numbers(tmp_path):
    with Victoria(tmp_path / "vm", retention="30d") as vm:
        async with collector_client(make_config(tmp_path / "c", vm.url)) as client:
            cred = credential(client, agent="numbers-01")
            data = payload(1, 2, fields={"up": 1, "rtt_ms": 1e-05, "big_bytes": 2**53, "loss_pct": -0.0})
            status, answer, _ = await post(client, cred, data)
            assert status == 200 and answer["written"] == 2, answer
        samples = vm.samples('{agent="numbers-01"}')
        assert {(labels, t) for labels, t, _ in samples} == expected_pairs(data, agent="numbers-01")
        values = {dict(labels)["__name__"]: v for labels, _, v in samples}
        assert values == {"probe_up": 1.0, "probe_rtt_ms": 1e-05, "probe_big_bytes": 2.0**53, "probe_loss_pct": 0.0}
