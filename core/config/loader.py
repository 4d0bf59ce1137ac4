"""Load a YAML config within a budget, keeping the line of every key and item; every problem is a ConfigIssue.

PyYAML's `safe_load` forgets where values came from, silently keeps the last of two equal keys, and has no
budget: a 500-byte alias bomb expands to gigabytes, 5,000 nested brackets overflow Python's stack, a NUL byte or
a 5,000-digit number raise a traceback. Config errors must instead say `file:line: key.path: message` (see
`ConfigIssue`), so this module:

- reads at most `Limits.max_bytes`, decodes UTF-8 itself and refuses control characters, line by line;
- composes the node tree with `SafeLoader`, checking on the event stream, *before* each recursion, the nesting
  depth (aliases included), the number of nodes and the nodes reached again through aliases;
- builds plain Python values from the nodes itself, recording one line per path
  (`("services", "ioffice", 0, "url") -> 14`), refusing duplicate keys, too-long numbers, inf and nan.

Nothing here knows what an agent or a collector is: every config file is read with it.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from .issues import ConfigError, ConfigIssue, Path_

_MERGE_TAG = "tag:yaml.org,2002:merge"
_INT_TAG = "tag:yaml.org,2002:int"
# `a: <<` and `a: =` resolve to tags PyYAML cannot construct: as values they are just words.
_WORD_TAGS = ("tag:yaml.org,2002:merge", "tag:yaml.org,2002:value")
# What YAML allows in a stream (PyYAML's Reader refuses the rest with a traceback, not a line).
_NOT_PRINTABLE = re.compile("[^\x09\x0A\x0D\x20-\x7E\x85\xA0-\uD7FF\uE000-\uFFFD\U00010000-\U0010FFFF]")
_CONTROL_NAMES = {0: "a NUL byte", 0x1B: "an ESC character", 0x7F: "a DEL character"}


@dataclass(frozen=True, slots=True)
class Limits:
    """What one config file may cost to read. Real configs use a few hundred nodes and a few kB."""

    max_bytes: int = 1 << 20  # 1 MiB
    max_nodes: int = 50_000  # keys, values and items written in the file
    max_alias_nodes: int = 10_000  # nodes reached again through `*alias` and `<<: *alias`
    max_depth: int = 64  # nested mappings and lists, counting what aliases bring in
    max_digits: int = 18  # a whole number fits in 64 bits
    max_issues: int = 20  # bad lines reported (encoding, control characters) before stopping


LIMITS = Limits()


@dataclass(slots=True)
class LocatedYaml:
    """The parsed document of `file`, the line of every path in it, and problems found while reading it."""

    data: Any
    file: str = "<config>"
    lines: dict[Path_, int] = field(default_factory=dict)
    issues: list[ConfigIssue] = field(default_factory=list)
    refused: set[Path_] = field(default_factory=set)  # values the loader replaced by None (already reported)

    def line_of(self, path: Path_) -> int:
        """Return the line of `path`, or of its closest ancestor that has one (1 for the document)."""
        path = tuple(path)
        while path:
            if path in self.lines:
                return self.lines[path]
            path = path[:-1]
        return self.lines.get((), 1)

    def issue(self, path: Path_, message: str, *, at: Path_ | None = None) -> ConfigIssue:
        """Return an issue shown with key path `path`, on the line of `at` (default: `path`)."""
        return ConfigIssue(self.file, self.line_of(path if at is None else at), tuple(path), message)


def read_yaml(path: str | Path, limits: Limits = LIMITS) -> LocatedYaml:
    """Read and load the YAML file `path`; raise ConfigError when it cannot be read or loaded at all."""
    file = str(path)
    try:
        with open(path, "rb") as stream:
            raw = stream.read(limits.max_bytes + 1)  # never more than the budget, whatever the file's size
    except OSError as exc:
        raise ConfigError([ConfigIssue(file, 1, (), f"cannot read the file: {exc.strerror or exc}")]) from None
    return load_yaml(raw, file, limits)


def load_yaml(source: str | bytes, file: str = "<config>", limits: Limits = LIMITS) -> LocatedYaml:
    """Load one YAML document into plain values plus line numbers; raise ConfigError when it cannot be loaded.

    Problems that leave the rest readable (a duplicate key, a number too long) are in the result's `issues`,
    with the refused value replaced by None.
    """
    raw = source.encode("utf-8", "surrogatepass") if isinstance(source, str) else source
    if len(raw) > limits.max_bytes:
        raise ConfigError([ConfigIssue(file, 1, (), f"the file is larger than {_size(limits.max_bytes)}, the most "
                                       "a config may be (is this the right file?)")])
    text = _decode(raw, file, limits) if isinstance(source, bytes) else source
    _check_characters(text, file, limits)
    loader = _BudgetLoader(text, limits)
    try:
        node = loader.get_single_node()
        result = LocatedYaml(None, file)
        if node is not None:
            result.lines[()] = node.start_mark.line + 1
            result.data = _Builder(loader, result, limits).build(node, ())
        return result
    except _Refused as exc:
        raise ConfigError([ConfigIssue(file, exc.line, loader.where(), exc.message)]) from None
    except yaml.MarkedYAMLError as exc:
        line, message = _syntax_error(exc)
        raise ConfigError([ConfigIssue(file, line, loader.where(), message)]) from None
    except yaml.YAMLError as exc:
        raise ConfigError([ConfigIssue(file, 1, loader.where(), f"YAML syntax error: {exc}")]) from None
    finally:
        loader.dispose()


def _size(count: int) -> str:
    return f"{count >> 20} MiB" if count >= 1 << 20 and not count % (1 << 20) else f"{count:,} bytes"


# -- text ------------------------------------------------------------------------------------------------


def _decode(raw: bytes, file: str, limits: Limits) -> str:
    """Return the UTF-8 text of `raw`; raise ConfigError naming every line that is not UTF-8."""
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        pass
    if raw.startswith((b"\xff\xfe", b"\xfe\xff")):  # a UTF-16 BOM: no line of it will decode
        raise ConfigError([ConfigIssue(file, 1, (), "the file is not UTF-8 text: save it as UTF-8")])
    issues = []
    for number, line in enumerate(raw.split(b"\n"), 1):
        try:
            line.decode("utf-8")
        except UnicodeDecodeError as exc:
            byte = line[exc.start]
            issues.append(ConfigIssue(file, number, (), f"the file is not UTF-8 text (byte 0x{byte:02x} at "
                                      f"column {exc.start + 1}): save it as UTF-8"))
            if len(issues) >= limits.max_issues:
                break
    raise ConfigError(issues)


def _check_characters(text: str, file: str, limits: Limits) -> None:
    """Raise ConfigError naming every line with a character YAML does not allow (NUL, other controls)."""
    issues = []
    for match in _NOT_PRINTABLE.finditer(text):
        line_start = text.rfind("\n", 0, match.start()) + 1
        code = ord(match.group())
        name = _CONTROL_NAMES.get(code, "a control character" if code < 0x100 else "a character YAML does not allow")
        issues.append(ConfigIssue(file, text.count("\n", 0, match.start()) + 1, (),
                                  f"{name} (U+{code:04X}) at column {match.start() - line_start + 1}: "
                                  "a config is plain text; delete it"))
        if len(issues) >= limits.max_issues:
            break
    if issues:
        raise ConfigError(issues)


def _syntax_error(exc: yaml.MarkedYAMLError) -> tuple[int, str]:
    """Return the line and a plain message of a PyYAML error."""
    mark = exc.problem_mark or exc.context_mark
    line = mark.line + 1 if mark else 1
    problem = exc.problem or "invalid YAML"
    if "'\\t'" in problem:
        problem = "a tab character: YAML indentation must use spaces"
    elif exc.context and exc.context_mark and exc.context_mark.line + 1 != line:
        problem = f"{problem} ({exc.context} started at line {exc.context_mark.line + 1})"
    elif exc.context:
        problem = f"{problem} ({exc.context})"
    column = f", column {mark.column + 1}" if mark else ""
    return line, f"YAML syntax error{column}: {problem}"


# -- composing within the budget -----------------------------------------------------------------------------


class _Refused(Exception):
    """The document is over budget at `line`."""

    def __init__(self, line: int, message: str) -> None:
        super().__init__(message)
        self.line = line
        self.message = message


_KEY = object()  # a path marker: composing a mapping's key (errors there belong to the mapping)


class _BudgetLoader(yaml.SafeLoader):
    """A SafeLoader whose composer counts nodes, alias expansion and depth before it recurses.

    PyYAML's scanner and parser are iterative; only the composer recurses, once per nesting level, and it
    follows aliases for free. So every check happens in `compose_node`, on the next event, before going deeper.
    """

    def __init__(self, text: str, limits: Limits) -> None:
        super().__init__(text)
        self.limits = limits
        self.nodes = 0
        self.aliased = 0
        self.open: list[list[int]] = []  # per open collection: [nodes inside, height of its deepest child]
        self.sizes: dict[int, tuple[int, int]] = {}  # id(anchored node) -> (nodes, height) once complete
        self.path: list[Any] = []  # where the composer is, for error messages

    def where(self) -> Path_:
        """Return the key path being composed (for an error raised there)."""
        return tuple(part for part in self.path if part is not _KEY)

    def compose_node(self, parent: yaml.Node | None, index: Any) -> yaml.Node:
        """Compose the next node as PyYAML does, after checking it against the budget."""
        self.path.append(_path_part(parent, index))
        event = self.peek_event()
        if isinstance(event, yaml.AliasEvent):
            node = self._compose(parent, index)
            self._alias(node, event)
        elif isinstance(event, (yaml.MappingStartEvent, yaml.SequenceStartEvent)):
            self._count(event)
            if len(self.open) >= self.limits.max_depth:
                raise _Refused(_line(event), f"nested deeper than {self.limits.max_depth} levels: "
                               "a config needs a handful")
            self.open.append([1, 0])
            node = self._compose(parent, index)
            self._close(node, event)
        else:
            self._count(event)
            node = self._compose(parent, index)
            self._child(1, 0)
            if event.anchor is not None:
                self.sizes[id(node)] = (1, 0)
        self.path.pop()  # not in `finally`: after an error the path says where it happened
        return node

    def _compose(self, parent: yaml.Node | None, index: Any) -> yaml.Node:
        node = super().compose_node(parent, index)
        assert node is not None  # typeshed says `Node | None`; PyYAML's compose_node always returns a node or raises
        return node

    def _count(self, event: yaml.Event) -> None:
        self.nodes += 1
        if self.nodes > self.limits.max_nodes:
            raise _Refused(_line(event), f"more than {self.limits.max_nodes:,} keys and values: "
                           "a config needs a few hundred (is this the right file?)")

    def _close(self, node: yaml.Node, event: yaml.CollectionStartEvent) -> None:
        size, deepest = self.open.pop()
        self._child(size, deepest + 1)
        if event.anchor is not None:
            self.sizes[id(node)] = (size, deepest + 1)

    def _child(self, size: int, height: int) -> None:
        if self.open:
            frame = self.open[-1]
            frame[0] += size
            frame[1] = max(frame[1], height)

    def _alias(self, node: yaml.Node, event: yaml.AliasEvent) -> None:
        line = _line(event)
        if id(node) not in self.sizes:  # its anchor's node is still open: the alias is inside it
            raise _Refused(line, f"alias *{event.anchor} is inside the value it names (a recursive alias)")
        size, height = self.sizes[id(node)]
        self.aliased += size
        if self.aliased > self.limits.max_alias_nodes:
            raise _Refused(line, f"alias *{event.anchor} brings the values repeated through aliases to more than "
                           f"{self.limits.max_alias_nodes:,} (an alias bomb?)")
        if len(self.open) + height > self.limits.max_depth:
            raise _Refused(line, f"alias *{event.anchor} nests values deeper than {self.limits.max_depth} levels")
        self._child(size, height)


def _line(event: yaml.Event) -> int:
    """Return the 1-based line an event starts on (PyYAML's parser always sets the mark; 0 if not)."""
    return event.start_mark.line + 1 if event.start_mark is not None else 0


def _path_part(parent: yaml.Node | None, index: Any) -> Any:
    """Return the path element of the node composed under `parent` at `index` (PyYAML's arguments)."""
    if isinstance(parent, yaml.SequenceNode):
        return index
    if isinstance(parent, yaml.MappingNode) and isinstance(index, yaml.ScalarNode):
        return str(index.value)
    return _KEY


# -- building plain values -----------------------------------------------------------------------------------


class _Builder:
    """Turns composed nodes into dicts, lists and scalars, recording lines, duplicate keys and refused values."""

    def __init__(self, loader: yaml.SafeLoader, out: LocatedYaml, limits: Limits) -> None:
        self.loader = loader
        self.out = out
        self.limits = limits

    def add(self, line: int, path: Path_, message: str) -> None:
        self.out.issues.append(ConfigIssue(self.out.file, line, path, message))

    def refuse(self, line: int, path: Path_, message: str) -> None:
        """Report a value that is replaced by None: validation must not report it again."""
        self.add(line, path, message)
        self.out.refused.add(path)

    def build(self, node: yaml.Node, path: Path_) -> Any:
        if isinstance(node, yaml.MappingNode):
            return self._mapping(node, path)
        if isinstance(node, yaml.SequenceNode):
            items = []
            for index, item in enumerate(node.value):
                self.out.lines.setdefault((*path, index), item.start_mark.line + 1)
                items.append(self.build(item, (*path, index)))
            return items
        return self._scalar(node, path)

    def _scalar(self, node: yaml.Node, path: Path_) -> Any:
        """Construct one scalar; a value PyYAML cannot or should not construct becomes an issue and None."""
        line = node.start_mark.line + 1
        if node.tag == _INT_TAG and _digits(node.value) > self.limits.max_digits:
            self.refuse(line, path, f"{_show(node.value)} is too large a number: at most {self.limits.max_digits} digits")
            return None
        if node.tag in _WORD_TAGS:
            return node.value
        try:
            value = self.loader.construct_object(node, deep=True)
        except yaml.MarkedYAMLError as exc:  # an unknown !tag
            self.refuse(line, path, f"cannot read {_show(node.value)}: {exc.problem} (quote the value to keep it as text)")
            return None
        except Exception as exc:  # PyYAML's scalar constructors raise ValueError, KeyError...: 2001-13-45, !!bool x
            detail = f" ({exc})" if type(exc) is ValueError else ""
            tag = node.tag.replace("tag:yaml.org,2002:", "!!")
            self.refuse(line, path, f"cannot read {_show(node.value)} as {tag}{detail}: quote it to keep it as text")
            return None
        if isinstance(value, float) and not math.isfinite(value):
            self.refuse(line, path, f"{_show(node.value)} is not a finite number")
            return None
        if isinstance(value, int) and not isinstance(value, bool) and abs(value) >= 10**self.limits.max_digits:
            self.refuse(line, path, f"{_show(node.value)} is too large a number: at most {self.limits.max_digits} digits")
            return None
        return value

    def _mapping(self, node: yaml.MappingNode, path: Path_) -> dict[str, Any]:
        merged, own = self._pairs(node, path)
        result: dict[str, Any] = {}
        first_line: dict[str, int] = {}
        for index, (key_node, value_node) in enumerate([*merged, *own]):
            line = key_node.start_mark.line + 1
            if not isinstance(key_node, yaml.ScalarNode):
                self.add(line, path, "a key must be a plain word, not a list or mapping")
                continue
            # The key's source text: `on:`/`no:` stay words instead of YAML 1.1 booleans.
            key = str(key_node.value)
            is_own = index >= len(merged)
            if is_own and key in first_line:
                self.add(line, (*path, key), f"duplicate key '{_show_key(key)}' (first at line {first_line[key]}): "
                         "keep only one")
                continue
            if is_own:  # an own key may override a merged one; two own keys may not
                first_line[key] = line
            self.out.lines[(*path, key)] = line
            result[key] = self.build(value_node, (*path, key))
        return result

    def _pairs(self, node: yaml.MappingNode, path: Path_) -> tuple[list, list]:
        """Return the pairs `<<:` merges in (earlier sources win, as in PyYAML) and the mapping's own pairs.

        Unlike PyYAML's `flatten_mapping` this does not change the nodes: a mapping reached again through an
        alias must look the same the second time.
        """
        merged: list = []
        own: list = []
        for key_node, value_node in node.value:
            if key_node.tag != _MERGE_TAG:
                own.append((key_node, value_node))
                continue
            sources = value_node.value if isinstance(value_node, yaml.SequenceNode) else [value_node]
            if not all(isinstance(source, yaml.MappingNode) for source in sources):
                self.add(key_node.start_mark.line + 1, path,
                         "'<<' merges a mapping (<<: *name) or a list of them (<<: [*a, *b]), nothing else")
                continue
            for source in reversed(sources):
                merged += [pair for part in self._pairs(source, path) for pair in part]
        return merged, own


def _digits(text: str) -> int:
    """Return how many digits a YAML 1.1 integer's text has (hex letters count; sign, prefix and _ do not)."""
    body = text.lstrip("+-").replace("_", "")
    if body[:2].lower() in ("0x", "0b", "0o"):
        body = body[2:]
    return sum(char.isalnum() for char in body)


def _show(text: str) -> str:
    """Return a short quoted form of a value's source text."""
    return repr(text) if len(text) <= 40 else repr(text[:30]) + f"... ({len(text)} characters)"


def _show_key(key: str) -> str:
    return key if len(key) <= 40 else key[:37] + "..."


__all__ = ["LIMITS", "Limits", "LocatedYaml", "load_yaml", "read_yaml"]
