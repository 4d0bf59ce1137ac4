"""Coverage-guided fuzzing of the config loader and of both configs' validation, with atheris (not run in CI).

    .venv/bin/pip install atheris          # into the venv only: not a dependency of the product
    .venv/bin/python -m benchmarks.fuzz_config -max_total_time=300

Each input goes through `core.config.loader.load_yaml` and, when it loads, through the agent's and the collector's
validation (`from_yaml`). A finding is anything but a ConfigError whose issues all name the file and a line:
another exception, an issue without a line, more than `-rss_limit_mb` of memory (alias bombs) or more than
`-timeout` seconds for one input. atheris then stops and writes the input to `crash-<sha1>` / `oom-<sha1>` /
`timeout-<sha1>` in its working folder (printed first; a temporary folder).

The seed corpus is every YAML file of configs/ and tests/unit/testdata/ (copied to a temporary folder, where new
interesting inputs are added), and a libFuzzer dictionary of YAML's special tokens guides the mutations. Extra
arguments are libFuzzer's (`-max_total_time`, `-jobs`, `-runs`, a corpus folder of your own...).
"""

from __future__ import annotations

import shutil
from pathlib import Path

import atheris

from benchmarks.fuzzing import fuzz

with atheris.instrument_imports():  # coverage of PyYAML's pure-Python scanner/parser/composer and our code
    import yaml  # noqa: F401  (instrumented before our modules import it)

    from agent import config as agent_config
    from core.config.issues import ConfigError, ConfigIssue
    from core.config.loader import load_yaml
    from collector import config as collector_config

ROOT = Path(__file__).resolve().parents[1]
FILE = "fuzz.yaml"
# YAML's special tokens and values near our limits, for libFuzzer's dictionary.
TOKENS = ["&a ", "*a", "<<: ", "<<: *a", "!!int ", "!!float ", "!!binary ", "!!bool ", "!!timestamp ", "!!set ",
          "!!str ", "!foo ", "? ", ": ", "- ", "[", "]", "{", "}", "|", ">", "---", "...", "%YAML 1.1", "%TAG ! !x",
          ".inf", ".nan", "0x", "0o", "0b", "1:30", "9999999999999999999", "2001-13-45", "~", "\\x09", "\\x00",
          "\\xef\\xbb\\xbf", "agent:", "services:", "province:", "listen:", "database:", "limits:", "max_future: ",
          "defaults:", "lines:", "probe: tcp", "name: ", "timeout: ", "interval: ", "ca_file: ", "24h", "3d", "100MB"]


def check(issues: list[ConfigIssue]) -> None:
    """Every issue must be a ConfigIssue naming FILE and a line >= 1."""
    for issue in issues:
        if not (isinstance(issue, ConfigIssue) and issue.file == FILE and issue.line >= 1):
            raise AssertionError(f"an issue without file:line: {issue!r}")


def test_one_input(data: bytes) -> None:
    """Load `data` as a config file, then validate it as an agent's and as a collector's config."""
    try:
        located = load_yaml(data, FILE)
    except ConfigError as exc:
        check(exc.issues)
        return
    check(located.issues)
    for validate in (lambda: agent_config.from_yaml(located, ROOT / FILE),
                     lambda: collector_config.from_yaml(located, ROOT, check_files=True)):
        try:
            validate()
        except ConfigError as exc:
            check(exc.issues)


def seed_corpus(folder: Path) -> None:
    """Copy every YAML file of configs/ and tests/unit/testdata/ into `folder`."""
    for index, path in enumerate(sorted([*ROOT.glob("configs/*.yaml"), *ROOT.glob("tests/unit/testdata/*/*.yaml")])):
        shutil.copy(path, folder / f"{index:03d}-{path.name}")


def main() -> None:
    """Run atheris over the seeded corpus with the dictionary of tokens; libFuzzer's arguments pass through."""
    fuzz("config", seed_corpus, "".join(f'"{token}"\n' for token in TOKENS), test_one_input, max_len=8192, rss_limit_mb=1024)


if __name__ == "__main__":
    main()
