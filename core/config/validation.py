"""Pydantic errors turned into config issues for people (`file:line: key.path: plain message`), and `*_file` paths.

Every error carries the file, the line, the key path (`services.ioffice[0].url`) and a message a commune IT
staffer can act on; an unknown key suggests the closest known one. `validate_model` turns a pydantic model's
errors on a loaded YAML document (`core.config.loader`) into such issues (`core.config.issues`). Nothing here is
specific to one config: the agent's and the collector's use it alike.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Iterable, Mapping, get_args

from pydantic import BaseModel, ValidationError

from .issues import ConfigIssue, Path_, kind_of, show, unknown_key
from .loader import LocatedYaml

SLUG_HINT = "use lowercase ASCII letters, digits, '-', '_' or '.' (e.g. dong-loc); put names with diacritics in display_name"


def find_file(value: str, base_dir: Path | None) -> tuple[str, str | None]:
    """Return the path a config's `*_file` value names (relative to `base_dir`) and what is wrong with it, if anything.

    Never raises: a name too long for the system, `~nobody/x` or a NUL is a problem to report, not a traceback.
    """
    try:
        file = Path(value).expanduser()
        file = file if file.is_absolute() or base_dir is None else base_dir / file
        if file.is_file():
            return str(file), None
        problem = "file not found: {} (a relative path is relative to the config file's folder)"
    except RuntimeError:  # expanduser: `~name` of a user this machine does not have
        user = value.split("/")[0][1:]
        return value, f"cannot use {show(value)}: there is no user {user!r} here, whose home folder ~{user} would be"
    except (OSError, ValueError) as exc:  # ENAMETOOLONG, EACCES on a parent folder, an embedded NUL
        return value, f"cannot use {show(value)}: {getattr(exc, 'strerror', None) or exc}"
    shown = str(file) if len(str(file)) <= 120 else str(file)[:100] + f"... ({len(str(file))} characters)"
    return str(file), problem.format(shown)


def absolute_path(value: str, base_dir: Path) -> tuple[str, str | None]:
    """Return a config's path value made absolute (relative to `base_dir`), and what is wrong with it, if anything.

    For paths that need not exist yet (a spool, a credential written later); never raises, like `find_file`.
    """
    if not value.strip():
        return value, "an empty path: give a file name (a relative path is relative to the config file's folder)"
    try:
        path = Path(value).expanduser()
        return str(path if path.is_absolute() else base_dir / path), None
    except RuntimeError:  # expanduser: `~name` of a user this machine does not have
        user = value.split("/")[0][1:]
        return value, f"cannot use {show(value)}: there is no user {user!r} here, whose home folder ~{user} would be"
    except ValueError as exc:  # an embedded NUL
        return value, f"cannot use {show(value)}: {exc}"


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


def plain_message(error: Mapping[str, Any], known_keys: Iterable[str] = ()) -> str:
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
        return "should be a mapping of keys to values (key: value), not " + kind_of(value)
    if kind == "list_type":
        return "should be a list ([a, b] or one '- item' per line), not " + kind_of(value)
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


def merge_union_messages(messages: list[str]) -> str:
    """Join the messages of one path's union errors ("not IPv4" + "not IPv6" become one)."""
    unique = list(dict.fromkeys(messages))
    return unique[0] if len(unique) == 1 else "; or ".join(unique)


def validate_model(
    model: type[BaseModel], data: Any, located: LocatedYaml, base: Path_ = (),
    origin: Mapping[str, Path_] | None = None, skip: Iterable[Path_] = (),
) -> tuple[Any, list[ConfigIssue]]:
    """Validate `data` (found at `base` in `located`) against `model`; return the instance or the issues.

    `origin` maps a top-level key of `data` to where it was really written (values merged from elsewhere);
    errors at or under a path in `skip` (already reported better, e.g. a value the loader refused) are dropped.
    A missing or unknown key is reported on its mapping, at the key's own line when it has one.
    """
    try:
        return model.model_validate(data), []
    except ValidationError as exc:
        errors = exc.errors()
    skip = tuple(skip)
    by_path: dict[tuple[Path_, Path_], list[str]] = {}
    for error in errors:
        loc = walk_loc(data, error["loc"], error["type"])
        full = (*base, *loc)
        if origin and loc and isinstance(loc[0], str) and loc[0] in origin:
            full = (*origin[loc[0]], *loc[1:])
        if any(full[: len(s)] == s for s in skip):
            continue
        message = plain_message(error, known_keys(model, error["loc"]))
        shown = full[:-1] if error["type"] in ("missing", "extra_forbidden") else full
        by_path.setdefault((shown, full), []).append(message)
    issues = [located.issue(shown, merge_union_messages(messages), at=full) for (shown, full), messages in by_path.items()]
    return None, issues


def field_keys(model: type[BaseModel]) -> set[str]:
    """Return the YAML keys a model accepts (aliases where set)."""
    return {f.alias or name for name, f in model.model_fields.items()}


def _models_in(annotation: Any) -> set[type[BaseModel]]:
    """Return the models reachable through Optional/Union/list/dict/Annotated in a field annotation."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return {annotation}
    found: set[type[BaseModel]] = set()
    for arg in get_args(annotation):
        found |= _models_in(arg)
    return found


def known_keys(model: type[BaseModel], loc: tuple) -> set[str]:
    """Return the keys valid where an error's `loc` points (for "did you mean")."""
    models = {model}
    for part in loc[:-1]:
        inner: set[type[BaseModel]] = set()
        for candidate in models:
            f = candidate.model_fields.get(part) if isinstance(part, str) else None
            if f is not None:
                inner |= _models_in(f.annotation)
        if inner:
            models = inner  # else: a list index, mapping key or union tag: same models
    return set().union(*(field_keys(m) for m in models))


__all__ = ["SLUG_HINT", "absolute_path", "field_keys", "find_file", "known_keys", "merge_union_messages", "plain_message",
           "validate_model", "walk_loc"]
