"""Every probe has its doc page, and the page documents what the probe really has: config keys and sections."""

from __future__ import annotations

from pathlib import Path

import pytest

from probes.base import TargetConfig
from probes.registry import AGENT_PROBES, PROBE_MODULES, probe_module

DOCS = Path(__file__).resolve().parents[3] / "docs" / "probes"
SECTIONS = ("## Configuration", "## Fields", "## Results", "## Example output", "## Privileges")


@pytest.mark.parametrize("name", sorted(PROBE_MODULES) + sorted(AGENT_PROBES))
def test_probe_module_follows_the_contract(name):
    module = probe_module(name)
    assert module.NAME == name
    assert issubclass(module.Config, TargetConfig)
    assert module.Config.model_fields["probe"].default == name
    assert module.__doc__, f"probes/{name}.py needs a module docstring"


@pytest.mark.parametrize("name", sorted(PROBE_MODULES) + sorted(AGENT_PROBES))
def test_probe_has_a_doc_page_with_every_section_and_key(name):
    page = DOCS / f"{name}.md"
    assert page.exists(), f"docs/probes/{name}.md is missing"
    text = page.read_text(encoding="utf-8")
    for section in SECTIONS:
        assert section in text, f"{page.name} lacks {section!r}"
    own_keys = set(probe_module(name).Config.model_fields) - set(TargetConfig.model_fields)
    undocumented = sorted(k for k in own_keys if f"`{k}`" not in text)
    assert not undocumented, f"{page.name} does not document {undocumented}"
