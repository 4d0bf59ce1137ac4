"""One config problem as people read it: `file:line: key.path: message`, and the words that make it actionable.

`ConfigIssue` is one problem (file, 1-based line, key path, message); `ConfigError` carries every problem of a
file at once, sorted by line. An unknown key suggests the closest known one (`suggest`, `unknown_key`): a commune
IT staffer fixes `intervall` without reading the docs. Nothing here knows which config it is about.
"""

from __future__ import annotations

import difflib
import re
from dataclasses import dataclass
from typing import Any, Iterable

Path_ = tuple[str | int, ...]


@dataclass(frozen=True, slots=True)
class ConfigIssue:
    """One config problem: where (file, 1-based line, key path) and what (message)."""

    file: str
    line: int
    path: Path_
    message: str

    def __str__(self) -> str:
        where = format_path(self.path)
        return f"{self.file}:{self.line}: {where + ': ' if where else ''}{self.message}"


class ConfigError(Exception):
    """The config is invalid; `issues` holds every problem found, sorted by line (the files in the order they
    first appear: a config's issue about a file it names comes before that file's own issues)."""

    def __init__(self, issues: Iterable[ConfigIssue]) -> None:
        unique = {(i.file, i.line, i.path, i.message): i for i in issues}
        files = {file: n for n, file in enumerate(dict.fromkeys(i.file for i in unique.values()))}
        self.issues = sorted(unique.values(), key=lambda i: (files[i.file], i.line))
        super().__init__("\n".join(str(i) for i in self.issues))


def format_path(path: Path_) -> str:
    """Return `services.ioffice[0].url` for ("services", "ioffice", 0, "url"); odd keys are quoted.

    A path deeper than 12 shows its first 8 and last 3 parts around `…` (a hostile file can nest 64 deep).
    """
    if len(path) > 12:
        return _join(path[:8]) + "…" + _join(path[-3:], first=False)
    return _join(path)


def _join(parts: Path_, first: bool = True) -> str:
    out = ""
    for part in parts:
        if isinstance(part, int):
            out += f"[{part}]"
        elif re.fullmatch(r"[A-Za-z0-9_-]+", part):
            out += f".{part}" if out or not first else part
        else:
            shown = part if len(part) <= 40 else part[:37] + "..."  # a hostile key must not flood the terminal
            out += f'["{shown}"]'
    return out


def suggest(word: str, choices: Iterable[str]) -> str:
    """Return " — did you mean 'x'?" for the closest choice, or "" when nothing is close."""
    close = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.6)
    return f" — did you mean '{close[0]}'?" if close else ""


def unknown_key(key: str, known: Iterable[str]) -> str:
    """Return the message for an unknown key: a suggestion, else the list of valid keys."""
    known = sorted(known)
    hint = suggest(key, known)
    shown = key if len(key) <= 40 else key[:37] + "..."  # a hostile key must not flood the terminal
    return f"unknown key '{shown}'{hint or ' (valid keys: ' + ', '.join(known) + ')'}"


def show(value: Any) -> str:
    """Return a short quoted form of a config value for a message."""
    text = repr(value) if isinstance(value, str) else str(value)
    return text if len(text) <= 60 else text[:57] + "..."


def kind_of(value: Any) -> str:
    """Return what a wrong value is, for a message: "an empty value", "a mapping", "a list" or the value."""
    if value is None:
        return "an empty value"
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    return show(value)


__all__ = ["ConfigError", "ConfigIssue", "Path_", "format_path", "kind_of", "show", "suggest", "unknown_key"]
