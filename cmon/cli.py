"""The `cmon` command's root: `cmon check-config FILE...`, `cmon probe -c FILE [--target N] [--line L] [--json]`,
and the other packages' subcommands (`cmon agent ...`, cmon/agent_commands.py; `cmon collector ...`,
cmon/collector_commands.py; `cmon service ...`, cmon/service/command.py).

`check-config` tells the kind of each file by its top-level keys, through `CONFIG_KINDS`: one `ConfigKind` entry
(name, top-level keys, the keys every such file has, a check returning a one-line summary) per kind of file the
product reads; a new kind is one more entry. `--kind NAME` skips the guessing.

Exit status: 0 all good; 1 a probe is down; 2 the config or the command line is wrong. Each subcommand is a
`cmd_*` function taking the parsed arguments and returning the exit status, so later commands add a subparser
and a function. This package is the only one that sees every other (docs/architecture.md). See docs/cli.md.
"""

from __future__ import annotations

import argparse
import asyncio
import difflib
import logging
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Sequence

from agent import config as agent_config
from agent.config import AgentConfig, ConfigError, load_config
from agent.render import json_lines, table
from agent.runner import plan, run_once
from core.config.issues import ConfigIssue, suggest
from core.config.loader import LocatedYaml, read_yaml
from core.version import package_version

from .agent_commands import add_commands as add_agent_commands
from .collector_commands import add_commands as add_collector_commands
from .service.command import add_parser as add_service_command

if TYPE_CHECKING:
    from collector.config import CollectorConfig

EXIT_OK, EXIT_DOWN, EXIT_USAGE = 0, 1, 2
# How alike a key must be to a kind's key to be taken for its typo (agnet/agent: 0.8); did-you-mean's 0.6 would take
# an alert-rules file's `rules:` for a misspelt `lines:`.
TYPO_CUTOFF = 0.8


class UsageError(Exception):
    """A command-line mistake the user can fix; the message says how."""


@dataclass(frozen=True, slots=True)
class ConfigKind:
    """One kind of config file `cmon check-config` knows: how to tell it from the others, and how to check it."""

    name: str
    # Its top-level keys: a file is taken for the kind it shares the most keys with. A function returning them
    # when they come from a module not to import before a file of that kind is checked.
    top_level: frozenset[str] | Callable[[], frozenset[str]]
    required: tuple[str, ...]  # the keys every such file has: named when a file's kind is unclear
    check: Callable[[LocatedYaml, str], str]  # validate the loaded file; return a one-line summary or raise ConfigError

    @property
    def keys(self) -> frozenset[str]:
        """Return the kind's top-level keys."""
        return self.top_level if isinstance(self.top_level, frozenset) else self.top_level()

    def describe_keys(self, verb: str = "has ") -> str:
        """Return `an agent config has agent: and services:` (the verb left out after the first of a list)."""
        keys = [f"{key}:" for key in self.required]
        listed = keys[0] if len(keys) == 1 else f"{', '.join(keys[:-1])} and {keys[-1]}"
        return f"{_article(self.name)} {self.name} config {verb}{listed}"


def describe_kinds(kinds: Sequence[ConfigKind]) -> str:
    """Return `an agent config has agent: and services:, a collector config province:, listen: and database:`."""
    return ", ".join(kind.describe_keys("has " if index == 0 else "") for index, kind in enumerate(kinds))


def _check_agent(located: LocatedYaml, file: str) -> str:
    return describe(agent_config.from_yaml(located, Path(file)))


def _check_collector(located: LocatedYaml, file: str) -> str:
    from collector import config as collector_config

    return describe_collector(collector_config.from_yaml(located, Path(file).resolve().parent, check_files=True))


def _check_directory(located: LocatedYaml, file: str) -> str:
    from collector import directory

    found = directory.from_yaml(located)
    lines = sum(len(c.lines) for c in found.file.communes)
    return (f"directory of province {found.province} ({found.file.name}): {len(found.file.communes)} communes, "
            f"{lines} lines")


def _directory_keys() -> frozenset[str]:
    from collector import directory  # like the collector's: not imported by `cmon agent run`

    return directory.TOP_LEVEL_KEYS


def _collector_keys() -> frozenset[str]:
    from collector import config as collector_config  # not imported by `cmon agent run` (the agent's memory)

    return collector_config.TOP_LEVEL_KEYS


# Every kind of config file the product reads, in order of precedence when a file's keys fit several equally.
CONFIG_KINDS: tuple[ConfigKind, ...] = (
    ConfigKind("agent", agent_config.TOP_LEVEL_KEYS, ("agent", "services"), _check_agent),
    ConfigKind("collector", _collector_keys, ("province", "listen", "database"), _check_collector),
    ConfigKind("directory", _directory_keys, ("province", "name", "communes"), _check_directory),
)


def build_parser() -> argparse.ArgumentParser:
    """Return the `cmon` argument parser with every subcommand."""
    parser = argparse.ArgumentParser(prog="cmon", description="Monitor a commune service center's lines and services.")
    parser.add_argument("--version", action="version", version=f"cmon {package_version()}")
    parser.add_argument(
        "--log-level", default="warning", choices=("debug", "info", "warning", "error"),
        help="how much to log on stderr (default: warning)",
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    check = commands.add_parser("check-config", help="validate config files and list every error")
    check.add_argument("files", nargs="+", metavar="FILE", help="config YAML files (agent, collector)")
    check.add_argument("--kind", choices=[kind.name for kind in CONFIG_KINDS],
                       help="check every FILE as this kind (default: told by each file's top-level keys)")
    check.set_defaults(func=cmd_check_config)

    probe = commands.add_parser("probe", help="run every probe once and show the results")
    probe.add_argument("-c", "--config", required=True, metavar="FILE", help="agent config YAML file")
    probe.add_argument("--target", action="append", metavar="NAME", help="only this target (repeatable)")
    probe.add_argument("--service", action="append", metavar="NAME", help="only this service's targets (repeatable)")
    probe.add_argument("--line", metavar="NAME", help="only over this line (e.g. primary, backup)")
    probe.add_argument("--json", action="store_true", help="one JSON object per measurement per line")
    probe.set_defaults(func=cmd_probe)
    add_agent_commands(commands)
    add_service_command(commands)
    add_collector_commands(commands)
    return parser


def cmd_check_config(args: argparse.Namespace) -> int:
    """Validate each file: print every error (exit 2) or a one-line summary per file (exit 0)."""
    status = EXIT_OK
    for file in args.files:
        try:
            summary = check_file(file, getattr(args, "kind", None))
        except ConfigError as exc:
            for issue in exc.issues:
                print(issue, file=sys.stderr)
            print(f"{file}: {len(exc.issues)} error{'s' if len(exc.issues) != 1 else ''}", file=sys.stderr)
            status = EXIT_USAGE
            continue
        print(f"{file}: OK — {summary}")
    return status


def check_file(file: str, kind: str | None = None) -> str:
    """Validate a config file of any known kind (told by its top-level keys, or `kind`); return a one-line summary."""
    located = read_yaml(file)
    notes: list[ConfigIssue] = []
    if kind is not None:
        chosen = next(k for k in CONFIG_KINDS if k.name == kind)
    else:
        chosen, notes = kind_of(located)
    try:
        return chosen.check(located, file)
    except ConfigError as exc:
        raise ConfigError([*notes, *exc.issues]) from None


def config_kind(located: LocatedYaml) -> tuple[str, list[ConfigIssue]]:
    """Return the name of the file's kind by its top-level keys, with a note when they do not tell (see kind_of)."""
    kind, notes = kind_of(located)
    return kind.name, notes


def kind_of(located: LocatedYaml) -> tuple[ConfigKind, list[ConfigIssue]]:
    """Return the kind whose top-level keys the file uses most, with a note when several fit as well.

    A file with no keys (empty, not a mapping) is taken for the first kind, whose errors say what it needs; one
    whose keys fit no kind goes to the kind a key looks like a typo of, else it is an error naming every kind
    and its keys (ConfigError).
    """
    keys = [key for key in located.data if isinstance(key, str)] if isinstance(located.data, dict) else []
    scores = [(len(set(keys) & kind.keys), kind) for kind in CONFIG_KINDS]
    best = max(score for score, _ in scores)
    if not best:
        return _unknown_kind(located, keys), []
    tied = [kind for score, kind in scores if score == best]
    if len(tied) == 1:
        return tied[0], []
    others = " or ".join(f"{_article(kind.name)} {kind.name}'s" for kind in tied[1:])
    note = located.issue((), f"checked as {_article(tied[0].name)} {tied[0].name} config: its top-level keys are as "
                             f"much {others} ({describe_kinds(tied)})")
    return tied[0], [note]


def _unknown_kind(located: LocatedYaml, keys: list[str]) -> ConfigKind:
    """Return the kind for a file none of whose keys is known: by a typo of one, else raise ConfigError."""
    if not keys:
        return CONFIG_KINDS[0]
    for kind in CONFIG_KINDS:
        if any(difflib.get_close_matches(key, kind.keys, n=1, cutoff=TYPO_CUTOFF) for key in keys):
            return kind  # its own check says "unknown key 'agnet' — did you mean 'agent'?"
    shown = ", ".join(f"{key}:" for key in keys[:5]) + (", ..." if len(keys) > 5 else "")
    kinds = describe_kinds(CONFIG_KINDS)
    names = "|".join(kind.name for kind in CONFIG_KINDS)
    raise ConfigError([located.issue((), f"not a config file cmon knows: its top-level keys ({shown}) are none of a "
                                         f"known kind's ({kinds}); to check it as one anyway: --kind {names}",
                                     at=(keys[0],))])


def _article(word: str) -> str:
    return "an" if word[:1] in "aeiou" else "a"


def describe_collector(config: "CollectorConfig") -> str:
    """Return `collector for province ha-tinh, HTTPS on 0.0.0.0:8443, database http://127.0.0.1:8428/`."""
    listen = config.listen
    scheme = "plain HTTP" if listen.allow_http else "HTTPS"
    return f"collector for province {config.province}, {scheme} on {listen.host}:{listen.port}, database {config.database.url}"


def describe(config: AgentConfig) -> str:
    """Return `14 targets in 5 services, 2 lines (primary, backup), agent ha-tinh/dong-loc/quay-01`."""
    n_targets, n_services, n_lines = len(config.targets), len(config.services), len(config.lines)
    lines = f"{n_lines} line{'s' if n_lines != 1 else ''} ({', '.join(config.lines)})" if n_lines else "no lines (unpinned)"
    agent = config.agent
    return (
        f"{n_targets} target{'s' if n_targets != 1 else ''} in {n_services} service{'s' if n_services != 1 else ''}, "
        f"{lines}, agent {agent.province}/{agent.commune}/{agent.id}"
    )


def cmd_probe(args: argparse.Namespace) -> int:
    """Run the selected probes once; print a table or JSON lines; exit 1 if any is down."""
    try:
        config = load_config(args.config)
    except ConfigError as exc:
        print("\n".join(str(i) for i in exc.issues), file=sys.stderr)
        return EXIT_USAGE
    try:
        targets = select_targets(config, args.target, args.service)
        check_line(config, args.line)
        runs = plan(config, targets=targets, line=args.line)
        if not runs:
            raise UsageError(f"nothing to run: the selected targets do not run on line '{args.line}'")
    except UsageError as exc:
        print(f"cmon probe: {exc}", file=sys.stderr)
        return EXIT_USAGE
    measurements = asyncio.run(run_once(config, target=targets, line=args.line))
    if args.json:
        sys.stdout.write(json_lines(measurements))
    else:
        agent = config.agent
        title = f" — {agent.display_name}" if agent.display_name else ""
        print(f"Agent {agent.province}/{agent.commune}/{agent.id}{title}\n")
        sys.stdout.write(table(measurements))
    return EXIT_OK if all(m.up for m in measurements) else EXIT_DOWN


def select_targets(config: AgentConfig, names: list[str] | None, services: list[str] | None) -> set[str] | None:
    """Return the target names chosen by --target/--service (None: all); UsageError for unknown names."""
    if not names and not services:
        return None
    known = [t.name for t in config.targets]
    chosen: set[str] = set()
    for name in names or []:
        if name not in known:
            raise UsageError(f"unknown target '{name}'{suggest(name, known)} (valid targets: {', '.join(known)})")
        chosen.add(name)
    grouped = config.services
    for service in services or []:
        if service not in grouped:
            raise UsageError(
                f"unknown service '{service}'{suggest(service, grouped)} (valid services: {', '.join(grouped)})"
            )
        chosen.update(t.name for t in grouped[service])
    return chosen


def check_line(config: AgentConfig, line: str | None) -> None:
    """Raise UsageError when --line names no configured line."""
    if line is None or line in config.lines:
        return
    if not config.lines:
        raise UsageError(f"--line {line}: {config.path} has no lines: section, so probes run unpinned")
    names = list(config.lines)
    raise UsageError(f"unknown line '{line}'{suggest(line, names)} (valid lines: {', '.join(names)})")


def main(argv: Sequence[str] | None = None) -> int:
    """Run `cmon`; return the exit status."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=args.log_level.upper(), stream=sys.stderr, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    try:
        return args.func(args)
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
