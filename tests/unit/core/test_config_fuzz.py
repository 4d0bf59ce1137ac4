"""Hostile and arbitrary input to the config loader: never a traceback, never a memory blow-up, always file:line.

- `cmon check-config` on the alias bombs and on 5,000-deep nesting, in a child process: exit 2, no traceback, the
  expected error line, and a peak RSS under 100 MB (`RUSAGE_CHILDREN` of a small parent; before the budget the
  agent's bomb passed 6.7 GB within a minute).
- Property tests (hypothesis) of core/config/loader.py and of both configs' validation: arbitrary bytes, text,
  YAML-looking text and arbitrary documents raise nothing but ConfigError, and every issue names the file and a
  line that exists.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agent import config as agent_config
from core.config.issues import ConfigError, ConfigIssue
from core.config.loader import LocatedYaml, load_yaml
from collector import config as collector_config
from probes import registry

TESTDATA = Path(__file__).parents[1] / "testdata"
ROOT = Path(__file__).resolve().parents[3]
FILE = "fuzz.yaml"
MB = 1024 * 1024


# Runs the command and prints its peak RSS. A child's ru_maxrss starts at its parent's RSS at fork (Linux keeps the
# high-water mark across exec), so the parent must be this small interpreter, not pytest (~120 MB by then).
MEASURE = """
import resource, subprocess, sys

def bounded():  # a regression fails the test instead of eating the machine
    resource.setrlimit(resource.RLIMIT_AS, (2 << 30, 2 << 30))
    resource.setrlimit(resource.RLIMIT_CPU, (60, 60))

status = subprocess.run(sys.argv[1:], stdout=subprocess.DEVNULL, preexec_fn=bounded).returncode
print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)
sys.exit(status)
"""


def run_measured(argv: list[str], cwd: Path) -> tuple[int, str, float]:
    """Run `argv`; return its exit status, its stderr and its peak RSS in MB."""
    done = subprocess.run([sys.executable, "-c", MEASURE, *argv], capture_output=True, text=True, cwd=cwd,
                          timeout=120)
    return done.returncode, done.stderr, int(done.stdout) * 1024 / MB


@pytest.mark.parametrize("config", ["bad-configs/alias-bomb.yaml", "bad-configs/deep-nesting.yaml",
                                    "bad-collector-configs/alias-bomb.yaml"])
def test_check_config_on_hostile_files_exits_2_quickly_in_little_memory(config: str) -> None:
    path = TESTDATA / config
    status, err, peak_mb = run_measured([sys.executable, "-m", "cmon", "check-config", path.name], path.parent)
    assert status == 2, err
    assert "Traceback" not in err
    assert err.splitlines() == [*path.with_suffix(".expected").read_text(encoding="utf-8").splitlines(),
                                f"{path.name}: 1 error"]
    assert peak_mb < 100, f"peak RSS {peak_mb:.0f} MB"


# -- properties ------------------------------------------------------------------------------------------------

_BREAKS = ("\n", "\r", "\x85", "\u2028", "\u2029")  # what PyYAML counts as a line break


def check_issues(issues: list[ConfigIssue], source: str | bytes) -> None:
    """Every issue names FILE and a line between 1 and the last line PyYAML or a reader could count."""
    text = source.decode("latin-1") if isinstance(source, bytes) else source
    last = sum(text.count(b) for b in _BREAKS) + 1
    assert issues
    for issue in issues:
        assert isinstance(issue, ConfigIssue)
        assert issue.file == FILE and 1 <= issue.line <= last, issue
        assert str(issue).startswith(f"{FILE}:{issue.line}: ")


def load(source: str | bytes) -> LocatedYaml | None:
    """Load `source`; on ConfigError check its issues and return None. Any other exception fails the test."""
    try:
        located = load_yaml(source, FILE)
    except ConfigError as exc:
        check_issues(exc.issues, source)
        return None
    if located.issues:
        check_issues(located.issues, source)
    return located


# Pieces of YAML that reach the loader's corners: anchors, aliases, merges, tags, flow and block collections,
# numbers near the limits, control characters, a BOM.
TOKENS = [
    "a", "b", ":", ": ", "- ", ",", "[", "]", "{", "}", "\n", "\n  ", "\n    ", "\t", " ", "#", "'", '"', "|", ">",
    "?", "&a ", "&b ", "*a", "*b", "<<: ", "<<: *a", "!!int ", "!!float ", "!!binary ", "!!bool ", "!!timestamp ",
    "!foo ", "!!set ", "0x", "0b", "0o", "1", "9" * 19, "1_000", "1:30", ".inf", "-.inf", ".nan", "1.5e+400",
    "2001-13-45", "2001-12-14", "---", "...", "~", "null", "yes", "on", "\x00", "\x1b", "\ufeff", "é", "\u2028",
    "%YAML 1.1\n", "\\", "=",
]
yamlish = st.lists(st.sampled_from(TOKENS), max_size=60).map("".join)
SETTINGS = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@SETTINGS
@given(st.binary(max_size=400))
def test_arbitrary_bytes_give_a_config_error_or_values(source: bytes) -> None:
    load(source)


@SETTINGS
@given(st.text(max_size=400))
def test_arbitrary_text_gives_a_config_error_or_values(source: str) -> None:
    load(source)


@SETTINGS
@given(yamlish)
def test_yaml_looking_text_gives_a_config_error_or_values(source: str) -> None:
    located = load(source)
    if located is not None:
        assert located.line_of(()) >= 1


# Documents shaped like configs: known keys at every level, values of every kind, including out-of-range ones.
KEYS = sorted(
    agent_config.TOP_LEVEL_KEYS | collector_config.TOP_LEVEL_KEYS | set(registry.PROBE_MODULES)
    | {"province", "commune", "id", "url", "host", "port", "probe", "name", "timeout", "interval", "lines", "source",
       "allow_http", "cert_file", "key_file", "ca_file", "max_future", "max_body", "retention", "extra_tag_keys",
       "ioffice", "primary", "backup", "jitter", "max_size", "path", "tcp", "shared", "expect_banner"}
)
scalars = st.one_of(
    st.none(), st.booleans(), st.integers(), st.floats(), st.text(max_size=20), st.sampled_from(KEYS),
    st.sampled_from(["5s", "24h", "25h", "3d", "9" * 400 + "s", "100MB", "9" * 50 + "MB", "30d", "200y", "0",
                     "http://127.0.0.1:8428", "https://x.example/", "192.168.1.1", "tcp", "primary", "../x.pem",
                     "x" * 300, "~cmon-no-such-user/x.pem", "/etc/passwd/x"]),  # file names the system refuses
)
documents = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.sampled_from(KEYS) | st.text(max_size=8), inner,
                                                                 max_size=5),
    max_leaves=30,
)
top_levels = st.dictionaries(st.sampled_from(KEYS), documents, max_size=8)
# Shaped like each config, so that validation gets past the top level into targets, defaults and sections.
TARGET_KEYS = ["name", "probe", "host", "port", "lines", "timeout", "interval", "shared", "ca_file", "url", "allow_http",
               "cert_file", "max_future", "max_body", "source"]
targets = st.fixed_dictionaries(
    {}, optional={"probe": st.sampled_from(sorted(registry.PROBE_MODULES)) | documents, **{k: documents for k in TARGET_KEYS}}
) | st.dictionaries(st.sampled_from(KEYS), documents, max_size=6)
agent_like = st.fixed_dictionaries(
    {"agent": st.dictionaries(st.sampled_from(["province", "commune", "id", "display_name"]), scalars),
     "services": st.dictionaries(st.sampled_from(KEYS) | st.text(max_size=5), st.lists(targets, max_size=3) | scalars,
                                 max_size=3)},
    optional={"lines": st.dictionaries(st.sampled_from(KEYS), targets | scalars, max_size=3),
              "defaults": st.dictionaries(st.sampled_from(KEYS), targets | documents, max_size=4),
              "collector": targets, "schedule": targets, "spool": targets, "resolvers": documents})
collector_like = st.fixed_dictionaries(
    {"province": scalars, "listen": targets, "database": targets},
    optional={"limits": targets, "token_ttl": scalars, "data_dir": scalars, "views_token": scalars})


@settings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(top_levels | agent_like | collector_like)
def test_arbitrary_documents_give_config_errors_or_a_config_for_both_kinds(data: dict) -> None:
    text = yaml.safe_dump(data, allow_unicode=True)
    located = load(text)
    if located is None:
        return
    for validate in (lambda: agent_config.from_yaml(located, ROOT / FILE),
                     lambda: collector_config.from_yaml(located, ROOT, check_files=True)):
        try:
            validate()
        except ConfigError as exc:
            check_issues(exc.issues, text)
