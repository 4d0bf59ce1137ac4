"""Config errors for people: `file:line: key.path: plain message`, and pydantic errors turned into such lines.

Every error carries the file, the line, the key path (`services.ioffice[0].url`) and a message a commune IT
staffer can act on; an unknown key suggests the closest known one.
"""

from __future__ import annotations

import difflib
import re
from dataclasses import dataclass
from typing import Any, Iterable

from .yaml_marks import Path_

SLUG_HINT = "use lowercase ASCII letters, digits, '-', '_' or '.' (e.g. dong-loc); put names with diacritics in display_name"


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
    """The config is invalid; `issues` holds every problem found, sorted by line."""

    def __init__(self, issues: Iterable[ConfigIssue]) -> None:
        unique = {(i.file, i.line, i.path, i.message): i for i in issues}
        self.issues = sorted(unique.values(), key=lambda i: (i.file, i.line))
        super().__init__("\n".join(str(i) for i in self.issues))


def format_path(path: Path_) -> str:
    """Return `services.ioffice[0].url` for ("services", "ioffice", 0, "url"); odd keys are quoted."""
    out = ""
    for part in path:
        if isinstance(part, int):
            out += f"[{part}]"
        elif re.fullmatch(r"[A-Za-z0-9_-]+", part):
            out += f".{part}" if out else part
        else:
            out += f'["{part}"]'
    return out


def suggest(word: str, choices: Iterable[str]) -> str:
    """Return " — did you mean 'x'?" for the closest choice, or "" when nothing is close."""
    close = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.6)
    return f" — did you mean '{close[0]}'?" if close else ""


def unknown_key(key: str, known: Iterable[str]) -> str:
    """Return the message for an unknown key: a suggestion, else the list of valid keys."""
    known = sorted(known)
    hint = suggest(key, known)
    return f"unknown key '{key}'{hint or ' (valid keys: ' + ', '.join(known) + ')'}"


def show(value: Any) -> str:
    """Return a short quoted form of a config value for a message."""
    text = repr(value) if isinstance(value, str) else str(value)
    return text if len(text) <= 60 else text[:57] + "..."


def walk_loc(data: Any, loc: tuple, error_type: str) -> Path_:
    """Return the real key path of a pydantic error `loc`, dropping union-member tags that are not keys."""
    path: list[str | int] = []
    node = data
    for index, part in enumerate(loc):
        if isinstance(node, dict) and part in node:
            node = node[part]
        elif isinstance(node, list) and isinstance(part, int) and 0 <= part < len(node):
            node = node[part]
        elif not (index == len(loc) - 1 and error_type == "missing"):
            continue  # e.g. 'lax-or-strict[...]' or a model name: where pydantic tried a union member
        else:
            node = None
        path.append(part)
    return tuple(path)


def plain_message(error: dict[str, Any], known_keys: Iterable[str] = ()) -> str:
    """Turn one pydantic error into a plain sentence (the key path is reported separately)."""
    kind = error["type"]
    value = error.get("input")
    ctx = error.get("ctx") or {}
    if kind == "missing":
        return f"missing required key '{error['loc'][-1]}'"
    if kind == "extra_forbidden":
        return unknown_key(str(error["loc"][-1]), known_keys)
    if kind == "string_pattern_mismatch":
        pattern = str(ctx.get("pattern", ""))
        if pattern.startswith("^[a-z0-9]"):
            return f"{show(value)} is not a valid identifier: {SLUG_HINT}"
        choices = re.fullmatch(r"\^\(([\w|-]+)\)\$", pattern)
        if choices:
            return f"{show(value)} should be one of: {', '.join(choices.group(1).split('|'))}"
        return f"{show(value)} does not have the expected form ({pattern})"
    if kind in ("ip_v4_address", "ip_v6_address", "ip_any_address"):
        return f"{show(value)} is not an IP address"
    if kind in _PLAIN_TYPES:
        return f"{show(value)} {_PLAIN_TYPES[kind]}"
    if kind in ("dict_type", "model_type", "model_attributes_type"):
        return "should be a mapping of keys to values (key: value), not " + _kind_of(value)
    if kind == "list_type":
        return "should be a list ([a, b] or one '- item' per line), not " + _kind_of(value)
    message = str(error.get("msg", kind))
    for prefix in ("Value error, ", "Assertion failed, "):
        if message.startswith(prefix):
            return message[len(prefix):]
    for subject in ("Input should", "Input is", "String should", "Value should", "URL should", "Input does"):
        if message.startswith(subject):
            return show(value) + message[len(subject.split()[0]):]
    return message


_PLAIN_TYPES = {
    "int_parsing": "is not a whole number",
    "int_type": "is not a whole number",
    "int_from_float": "is not a whole number",
    "float_parsing": "is not a number",
    "float_type": "is not a number",
    "bool_parsing": "should be true or false",
    "bool_type": "should be true or false",
    "string_type": "should be text (put it in quotes)",
}


def _kind_of(value: Any) -> str:
    if value is None:
        return "an empty value"
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    return show(value)


def merge_union_messages(messages: list[str]) -> str:
    """Join the messages of one path's union errors ("not IPv4" + "not IPv6" become one)."""
    unique = list(dict.fromkeys(messages))
    return unique[0] if len(unique) == 1 else "; or ".join(unique)


__all__ = [
    "ConfigError",
    "ConfigIssue",
    "format_path",
    "merge_union_messages",
    "plain_message",
    "show",
    "suggest",
    "unknown_key",
    "walk_loc",
]
