"""YAML loading that remembers where every value came from, within fixed bounds.

The document is composed with PyYAML's safe loader (no Python tags, no object
construction) and converted node by node, so every value's path ("Roles", "workers",
"Sequence", 2, "Config") maps to its line in the file. Errors then point at the line.

A script is input from anyone, so loading is bounded: the file's size, the nesting depth
and the number of values after aliases are expanded (an alias bomb of 9 anchors of 9
aliases each would expand to 9**9 values) are limited, and only the plain YAML types are
read: mappings, lists, text, numbers, booleans and null. Every other tag (`!!python/...`,
`!!timestamp`, `!!binary`, `!!set`, merge keys `<<`) is refused with its line, and a date
written plainly is text, as in YAML 1.2's core schema.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

from distx.errors import UserError

Where = tuple  # a path of keys and list indices into the document

MAX_SCRIPT_BYTES = 1_000_000     # the largest script read (the shipped jobs are < 5 kB)
MAX_DEPTH = 64                   # nested mappings and lists, aliases expanded
MAX_VALUES = 200_000             # values in the document once aliases are expanded

_YAML = "tag:yaml.org,2002:"
SCALAR_TAGS = {_YAML + name for name in ("str", "int", "float", "bool", "null")}
_FIX_SYNTAX = "correct the YAML syntax (indentation, quotes, colons)"


class Source:
    """A loaded YAML document plus the line of every path in it."""

    def __init__(self, file: str, text: str) -> None:
        self.file = file
        self.text = text
        self.lines: dict[Where, int] = {}
        self._values = 0
        if len(text.encode("utf-8", errors="surrogatepass")) > MAX_SCRIPT_BYTES:
            raise _too_large(file)
        self.data = self._load()

    @classmethod
    def read(cls, path: str | Path) -> Source:
        try:
            with open(path, "rb") as handle:
                raw = handle.read(MAX_SCRIPT_BYTES + 1)
        except FileNotFoundError:
            raise UserError("no such file", file=str(path),
                            fix="check the path of the script") from None
        except OSError as error:
            raise UserError(f"cannot read the script: {error.strerror}", file=str(path)) from None
        if len(raw) > MAX_SCRIPT_BYTES:
            raise _too_large(str(path))
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as error:
            raise UserError(f"cannot read the script: {error}", file=str(path),
                            fix="save the script as UTF-8 text") from None
        return cls(str(path), text)

    def line(self, where: Where) -> int | None:
        """The line of `where`, or of its nearest parent that has one."""
        while where:
            if where in self.lines:
                return self.lines[where]
            where = where[:-1]
        return self.lines.get(())

    def error(self, where: Where, what: str, fix: str | None = None) -> UserError:
        return UserError(what, file=self.file, line=self.line(where),
                         where=dotted(where) or None, fix=fix)

    def _load(self) -> Any:
        import yaml

        try:
            loader = _loader_class()(self.text)
        except yaml.YAMLError as error:  # a character YAML does not allow
            raise UserError(f"YAML error: {' '.join(str(error).split())}",
                            file=self.file) from None
        try:
            node = loader.get_single_node()
        except yaml.MarkedYAMLError as error:
            # The problem mark is where the parser gave up; when that is the end of the file
            # (an unterminated quote or bracket) the context mark shows where it started.
            mark = error.problem_mark
            if mark is None or mark.index >= len(self.text.rstrip()):
                mark = error.context_mark or mark
            what = "; ".join(part for part in (error.context, error.problem) if part)
            raise UserError(f"YAML syntax error: {what}", file=self.file,
                            line=mark.line + 1 if mark else None, fix=_FIX_SYNTAX) from None
        except yaml.YAMLError as error:
            raise UserError(f"YAML error: {' '.join(str(error).split())}",
                            file=self.file) from None
        except _TooDeep as error:
            raise self._too_deep(error.line) from None
        finally:
            loader.dispose()
        if node is None:
            raise UserError("the script is empty", file=self.file,
                            fix="start from one of the examples in jobs/")
        return self._convert(node, (), loader, ())

    def _convert(self, node: Any, where: Where, loader: Any, path: tuple[int, ...]) -> Any:
        """The value of `node`; `path` holds the ids of the collections it is inside."""
        import yaml

        line = node.start_mark.line + 1
        self._values += 1
        if self._values > MAX_VALUES:
            raise UserError(f"the script holds more than {MAX_VALUES:,} values once its "
                            "aliases are expanded", file=self.file, line=line,
                            fix="write the values out or use fewer aliases (*name)")
        if id(node) in path:
            raise UserError("recursive alias: a list or mapping contains itself",
                            file=self.file, line=line, fix="remove the alias (*name) inside "
                            "its own anchor (&name)")
        if len(path) >= MAX_DEPTH:
            raise self._too_deep(line)
        self.lines.setdefault(where, line)
        if isinstance(node, yaml.MappingNode):
            self._check_tag(node, _YAML + "map")
            result = {}
            for key_node, value_node in node.value:
                key = self._scalar(key_node, loader)
                if not isinstance(key, (str, int, float, bool)):
                    raise UserError("a mapping key must be a plain value", file=self.file,
                                    line=key_node.start_mark.line + 1)
                if key in result:
                    raise UserError(f"key '{key}' appears twice", file=self.file,
                                    line=key_node.start_mark.line + 1, where=dotted(where) or None,
                                    fix="keep one of them")
                self.lines[(*where, key)] = key_node.start_mark.line + 1
                result[key] = self._convert(value_node, (*where, key), loader,
                                            (*path, id(node)))
            return result
        if isinstance(node, yaml.SequenceNode):
            self._check_tag(node, _YAML + "seq")
            return [self._convert(item, (*where, index), loader, (*path, id(node)))
                    for index, item in enumerate(node.value)]
        return self._scalar(node, loader)

    def _scalar(self, node: Any, loader: Any) -> Any:
        import yaml

        if not isinstance(node, yaml.ScalarNode):
            raise UserError("a mapping key must be a plain value", file=self.file,
                            line=node.start_mark.line + 1)
        self._check_tag(node, *SCALAR_TAGS)
        try:
            return loader.construct_object(node)
        except (yaml.YAMLError, ValueError, ArithmeticError, LookupError) as error:
            tag = node.tag.removeprefix(_YAML)
            shown = node.value if len(node.value) <= 40 else node.value[:40] + "..."
            raise UserError(f"cannot read {shown!r} as {tag}: "
                            f"{' '.join(str(error).split())[:200]}", file=self.file,
                            line=node.start_mark.line + 1,
                            fix="quote the value to make it text") from None

    def _check_tag(self, node: Any, *allowed: str) -> None:
        if node.tag in allowed:
            return
        line = node.start_mark.line + 1
        if node.tag == _YAML + "merge":
            raise UserError("YAML merge keys (<<) are not supported", file=self.file, line=line,
                            fix="write the keys out in each mapping")
        tag = "!!" + node.tag.removeprefix(_YAML) if node.tag.startswith(_YAML) else node.tag
        raise UserError(f"YAML tag {tag} is not allowed: a script holds only mappings, lists, "
                        "text, numbers, true/false and null", file=self.file, line=line,
                        fix="remove the tag (quote the value to make it text)")

    def _too_deep(self, line: int | None) -> UserError:
        return UserError(f"the script nests lists and mappings more than {MAX_DEPTH} deep",
                         file=self.file, line=line, fix="flatten the structure")


def read_scalar(text: str) -> Any:
    """`text` read as one plain YAML scalar (a number, true/false, null or text), as a
    script would read it; anything else (a tag, a list, a syntax error) stays text."""
    import yaml

    try:
        loader = _loader_class()(text)
    except yaml.YAMLError:
        return text
    try:
        node = loader.get_single_node()
        if isinstance(node, yaml.ScalarNode) and node.tag in SCALAR_TAGS:
            value = loader.construct_object(node)
            return value if value is None or isinstance(value, (int, float, bool, str)) else text
    except (yaml.YAMLError, ValueError, ArithmeticError, LookupError, _TooDeep):
        pass
    finally:
        loader.dispose()
    return text


class _TooDeep(Exception):
    def __init__(self, line: int) -> None:
        self.line = line


@functools.cache
def _loader_class() -> type:
    """PyYAML's SafeLoader without implicit dates, composing at most MAX_DEPTH levels deep
    (its composer recurses, so a 10,000-deep `[[[...]]]` would exhaust Python's stack)."""
    import yaml

    class BoundedLoader(yaml.SafeLoader):
        yaml_implicit_resolvers = {
            first: [(tag, regexp) for tag, regexp in resolvers
                    if tag != _YAML + "timestamp"]
            for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()}

        def compose_node(self, parent: Any, index: Any) -> Any:
            self._depth = getattr(self, "_depth", 0) + 1
            try:
                if self._depth > MAX_DEPTH:
                    raise _TooDeep(self.peek_event().start_mark.line + 1)
                return super().compose_node(parent, index)
            finally:
                self._depth -= 1

    return BoundedLoader


def _too_large(file: str) -> UserError:
    return UserError(f"the script is larger than {MAX_SCRIPT_BYTES:,} bytes", file=file,
                     fix="keep data in Data files, not in the script")


def dotted(where: Where) -> str:
    text = ""
    for part in where:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text
