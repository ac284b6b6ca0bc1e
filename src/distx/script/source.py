"""YAML loading that remembers where every value came from.

The document is composed with PyYAML's safe loader (no Python tags, no object
construction) and converted node by node, so every value's path ("Roles", "workers",
"Sequence", 2, "Config") maps to its line in the file. Errors then point at the line.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from distx.errors import UserError

Where = tuple  # a path of keys and list indices into the document


class Source:
    """A loaded YAML document plus the line of every path in it."""

    def __init__(self, file: str, text: str) -> None:
        self.file = file
        self.text = text
        self.lines: dict[Where, int] = {}
        self.data = self._load()

    @classmethod
    def read(cls, path: str | Path) -> Source:
        try:
            text = Path(path).read_text(encoding="utf-8")
        except FileNotFoundError:
            raise UserError("no such file", file=str(path),
                            fix="check the path of the script") from None
        except (OSError, UnicodeDecodeError) as error:
            raise UserError(f"cannot read the script: {error}", file=str(path)) from None
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
        import yaml  # here, not at the top: ranks that get a parsed script never load PyYAML

        loader = yaml.SafeLoader(self.text)
        try:
            node = loader.get_single_node()
        except yaml.MarkedYAMLError as error:
            # The problem mark is where the parser gave up; when that is the end of the file
            # (an unterminated quote or bracket) the context mark shows where it started.
            mark = error.problem_mark
            if mark is None or mark.index >= len(self.text.rstrip()):
                mark = error.context_mark or mark
            what = "; ".join(part for part in (error.context, error.problem) if part)
            raise UserError(f"YAML syntax error: {what}",
                            file=self.file, line=mark.line + 1 if mark else None,
                            fix="correct the YAML syntax (indentation, quotes, colons)") from None
        except yaml.YAMLError as error:
            raise UserError(f"YAML error: {error}", file=self.file) from None
        finally:
            loader.dispose()
        if node is None:
            raise UserError("the script is empty", file=self.file,
                            fix="start from one of the examples in jobs/")
        return self._convert(node, (), loader)

    def _convert(self, node: Any, where: Where, loader: Any) -> Any:
        import yaml

        self.lines.setdefault(where, node.start_mark.line + 1)
        if isinstance(node, yaml.MappingNode):
            result = {}
            for key_node, value_node in node.value:
                key = loader.construct_object(key_node)
                if not isinstance(key, (str, int, float, bool)):
                    raise UserError("a mapping key must be a plain value", file=self.file,
                                    line=key_node.start_mark.line + 1)
                if key in result:
                    raise UserError(f"key '{key}' appears twice", file=self.file,
                                    line=key_node.start_mark.line + 1, where=dotted(where) or None,
                                    fix="keep one of them")
                self.lines[(*where, key)] = key_node.start_mark.line + 1
                result[key] = self._convert(value_node, (*where, key), loader)
            return result
        if isinstance(node, yaml.SequenceNode):
            return [self._convert(item, (*where, index), loader)
                    for index, item in enumerate(node.value)]
        return loader.construct_object(node)


def dotted(where: Where) -> str:
    text = ""
    for part in where:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text
