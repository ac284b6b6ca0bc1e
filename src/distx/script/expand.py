"""Variable expansion of task configs: `@[Name]`, `@[Name:default]` and built-ins `@{Rank}`.

`@[...]` looks a name up in the rank's values (published or fetched values, script
Parameters, `--set` overrides). Only the first `:` splits name from default, so a default
may itself contain `:` (ELCM broke on that). A string that is exactly one reference keeps
the value's type (a number stays a number, an array stays an array; a default standing
alone is read as a YAML scalar, so `@[n:3]` is the number 3); inside longer text the value
is formatted. Run.CliExecute never splices values into its command line: see shell.py.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from typing import Any

from distx.errors import TaskFailed

REFERENCE = re.compile(r"@\[([^\]]*)\]|@\{([A-Za-z_][A-Za-z0-9_]*)\}")


def expand(config: Any, values: Mapping[str, Any], builtins: Mapping[str, Any]) -> Any:
    """Return `config` with every reference in its strings replaced (dicts and lists deep)."""
    if isinstance(config, str):
        return _expand_string(config, values, builtins)
    if isinstance(config, dict):
        return {key: expand(item, values, builtins) for key, item in config.items()}
    if isinstance(config, list):
        return [expand(item, values, builtins) for item in config]
    return config


def expand_text(text: str, values: Mapping[str, Any], builtins: Mapping[str, Any]) -> str:
    """`text` with every reference replaced by its value formatted as text."""
    return REFERENCE.sub(lambda match: _format(_resolve(match, values, builtins)), text)


def referenced_names(config: Any) -> set[str]:
    """Names used as `@[Name]` without a default anywhere in `config` (for validation)."""
    return {match.group(1).strip() for text in _strings(config)
            for match in REFERENCE.finditer(text)
            if match.group(1) is not None and ":" not in match.group(1)}


def has_references(config: Any) -> bool:
    """Whether any string in `config` holds a reference (with or without a default)."""
    return any(REFERENCE.search(text) for text in _strings(config))


def _strings(config: Any) -> Iterator[str]:
    """Every string in `config`, dicts and lists deep."""
    if isinstance(config, str):
        yield config
    elif isinstance(config, dict):
        for item in config.values():
            yield from _strings(item)
    elif isinstance(config, list):
        for item in config:
            yield from _strings(item)


def _expand_string(text: str, values: Mapping[str, Any], builtins: Mapping[str, Any]) -> Any:
    whole = REFERENCE.fullmatch(text)
    if whole:
        value = _resolve(whole, values, builtins)
        return _typed(value) if _uses_default(whole, values) else value
    return expand_text(text, values, builtins)


def _resolve(match: re.Match, values: Mapping[str, Any], builtins: Mapping[str, Any]) -> Any:
    reference, builtin = match.group(1), match.group(2)
    if builtin is not None:
        if builtin not in builtins:
            known = ", ".join(f"@{{{name}}}" for name in sorted(builtins))
            raise TaskFailed(f"unknown built-in @{{{builtin}}} (known: {known})")
        return builtins[builtin]
    name, has_default, default = reference.partition(":")
    name = name.strip()
    if name in values:
        return values[name]
    if has_default:
        return default
    raise TaskFailed(f"@[{name}] is not defined on this rank: publish it first, fetch it with "
                     f"Remote.GetValue, pass --set {name}=VALUE, or write @[{name}:default]")


def _uses_default(match: re.Match, values: Mapping[str, Any]) -> bool:
    reference = match.group(1)
    return reference is not None and reference.partition(":")[0].strip() not in values


def _typed(default: str) -> Any:
    """A default standing alone is read as a YAML scalar: `@[n:3]` gives the number 3."""
    from distx.script.source import read_scalar

    value = read_scalar(default)
    return default if value is None else value


def _format(value: Any) -> str:
    if isinstance(value, float) and value.is_integer() and abs(value) < 1e15:
        return repr(value)
    if hasattr(value, "tolist"):
        return str(value.tolist())
    return str(value)
