"""Load YAML keeping the line of every key and item, and refusing duplicate keys.

PyYAML's `safe_load` forgets where values came from and silently keeps the last of two equal keys. Config
errors must say `file:line`, so we compose the node tree with `SafeLoader` and build plain Python values from
it ourselves, recording one line per path: `("services", "ioffice", 0, "url") -> 14`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import yaml

Path_ = tuple[str | int, ...]
_MERGE_TAG = "tag:yaml.org,2002:merge"


@dataclass(frozen=True, slots=True)
class YamlIssue:
    """A problem found while reading the YAML itself: 1-based `line`, the key `path`, a `message`."""

    line: int
    path: Path_
    message: str


@dataclass(slots=True)
class LocatedYaml:
    """The parsed document, the line of every path in it, and problems found while reading it."""

    data: Any
    lines: dict[Path_, int] = field(default_factory=dict)
    issues: list[YamlIssue] = field(default_factory=list)

    def line_of(self, path: Path_) -> int:
        """Return the line of `path`, or of its closest ancestor that has one (1 for the document)."""
        path = tuple(path)
        while path:
            if path in self.lines:
                return self.lines[path]
            path = path[:-1]
        return self.lines.get((), 1)


class YamlSyntaxError(Exception):
    """The text is not YAML: `line` (1-based) and a plain `message`."""

    def __init__(self, line: int, message: str) -> None:
        super().__init__(f"line {line}: {message}")
        self.line = line
        self.message = message


def load_yaml(text: str) -> LocatedYaml:
    """Parse one YAML document into plain values plus line numbers; raise YamlSyntaxError on bad syntax."""
    loader = yaml.SafeLoader(text)
    try:
        node = loader.get_single_node()
        result = LocatedYaml(None)
        if node is not None:
            result.lines[()] = node.start_mark.line + 1
            result.data = _Builder(loader, result).build(node, ())
        return result
    except yaml.MarkedYAMLError as exc:
        raise _syntax_error(exc) from exc
    except yaml.YAMLError as exc:
        raise YamlSyntaxError(1, f"YAML syntax error: {exc}") from exc
    finally:
        loader.dispose()


def _syntax_error(exc: yaml.MarkedYAMLError) -> YamlSyntaxError:
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
    return YamlSyntaxError(line, f"YAML syntax error{column}: {problem}")


class _Builder:
    """Turns composed nodes into dicts, lists and scalars, recording lines and duplicate keys."""

    def __init__(self, loader: yaml.SafeLoader, out: LocatedYaml) -> None:
        self.loader = loader
        self.out = out
        self.depth = 0

    def build(self, node: yaml.Node, path: Path_) -> Any:
        self.depth += 1
        try:
            if self.depth > 64:  # a recursive alias (&a [*a]) would never end
                raise YamlSyntaxError(node.start_mark.line + 1, "YAML nesting too deep (a recursive alias?)")
            if isinstance(node, yaml.MappingNode):
                return self._mapping(node, path)
            if isinstance(node, yaml.SequenceNode):
                items = []
                for index, item in enumerate(node.value):
                    self.out.lines.setdefault((*path, index), item.start_mark.line + 1)
                    items.append(self.build(item, (*path, index)))
                return items
            return self.loader.construct_object(node, deep=True)
        finally:
            self.depth -= 1

    def _mapping(self, node: yaml.MappingNode, path: Path_) -> dict[str, Any]:
        own = [pair for pair in node.value if pair[0].tag != _MERGE_TAG]
        self.loader.flatten_mapping(node)  # resolves `<<: *anchor`; merged pairs come first
        merged = node.value[: len(node.value) - len(own)]
        result: dict[str, Any] = {}
        first_line: dict[str, int] = {}
        for index, (key_node, value_node) in enumerate([*merged, *own]):
            line = key_node.start_mark.line + 1
            if not isinstance(key_node, yaml.ScalarNode):
                self.out.issues.append(YamlIssue(line, path, "a key must be a plain word, not a list or mapping"))
                continue
            # The key's source text: `on:`/`no:` stay words instead of YAML 1.1 booleans.
            key = str(key_node.value)
            is_own = index >= len(merged)
            if is_own and key in first_line:
                self.out.issues.append(
                    YamlIssue(line, (*path, key), f"duplicate key '{key}' (first at line {first_line[key]}): "
                              "keep only one")
                )
                continue
            if is_own:  # an own key may override a merged one; two own keys may not
                first_line[key] = line
            self.out.lines[(*path, key)] = line
            result[key] = self.build(value_node, (*path, key))
        return result


__all__ = ["LocatedYaml", "YamlIssue", "YamlSyntaxError", "load_yaml"]
