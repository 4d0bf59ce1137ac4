"""Every probe declares the fields it can emit (`FIELDS`): the catalogue (core/catalogue.py) knows each, says which
probes emit it, and the probe's doc page documents it."""

from __future__ import annotations

from pathlib import Path

import pytest

from core.catalogue import HOST, PROBE, TARGET_PROBES, field_spec, unknown_fields
from probes.registry import AGENT_PROBES, PROBE_MODULES, probe_module

DOCS = Path(__file__).resolve().parents[3] / "docs" / "probes"


def test_the_catalogue_knows_every_target_probe():
    assert set(TARGET_PROBES) == set(PROBE_MODULES)


@pytest.mark.parametrize("name", sorted(PROBE_MODULES) + sorted(AGENT_PROBES))
def test_probe_fields_are_catalogued_and_documented(name):
    module = probe_module(name)
    fields = module.FIELDS
    assert fields and len(set(fields)) == len(fields), f"probes/{name}.py FIELDS: empty or a field twice"
    measurement = "host" if name in AGENT_PROBES else "probe"
    assert unknown_fields(measurement, fields) == [], f"add them to core/catalogue.py ({measurement})"
    text = (DOCS / f"{name}.md").read_text(encoding="utf-8")
    undocumented = [f for f in fields if f"`{f}`" not in text]
    assert not undocumented, f"docs/probes/{name}.md does not document {undocumented}"


@pytest.mark.parametrize("name", sorted(PROBE_MODULES))
def test_the_catalogue_names_the_probes_that_emit_a_field(name):
    fields = probe_module(name).FIELDS
    wrong = [f for f in fields if name not in field_spec("probe", f).probes]
    assert not wrong, f"core/catalogue.py does not list {name} as emitting {wrong}"
    claimed = [f.name for f in PROBE.fields if name in f.probes and f.name not in fields]
    assert not claimed, f"core/catalogue.py says {name} emits {claimed}, probes/{name}.py FIELDS does not"


def test_the_host_probe_declares_every_host_field():
    assert set(probe_module("host").FIELDS) == {f.name for f in HOST.fields}
