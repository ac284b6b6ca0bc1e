"""Run.CliExecute's command line: each reference becomes a shell variable, never text.

The command line is lexed BEFORE expansion. Every `@[Name]` / `@{Builtin}` in it is
replaced by a parameter expansion of an environment variable (`DISTX_VALUE_1`, ...) that
carries the value, and `/bin/sh` runs the result. The shell expands a variable after it
has parsed the command and never parses the value again, so no value can become code, in
any context, by construction: the value text is simply not part of what the shell parses.
The lexer only decides the form that keeps the value one word, byte-exact:

- unquoted (also in `$(...)`, backticks, an assignment, a redirection): `"${DISTX_VALUE_1}"`
- inside `"..."` or the body of a heredoc with a bare delimiter: `${DISTX_VALUE_1}`

A reference where no such form exists is refused at validation: inside `'...'` or the body
of a heredoc with a quoted delimiter (the text is literal: often a program of its own, such
as awk or `sh -c`, that would interpret the value), inside `$((...))` (bash evaluates a
variable's text as arithmetic, which can run commands) and inside `${...}`.

A program that interprets its arguments as code (`eval`, `sh -c "@[x]"`, `python -c`)
still does so: the value reaches it as one exact argument, as with any argv.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from distx.script.expand import REFERENCE

VARIABLE_PREFIX = "DISTX_VALUE_"

_WORD_START = " \t\n;&|()<>"
_UNQUOTED = ("command", "subst", "group", "backtick")


class UnsafeReference(ValueError):
    """A reference in a context where the shell would not take its value as data."""

    def __init__(self, reference: str, context: str, fix: str) -> None:
        super().__init__(f"{reference} cannot stand inside {context}")
        self.fix = fix


@dataclass(frozen=True)
class ShellCommand:
    """The script `/bin/sh -c` runs and, in order, the reference behind each variable."""

    script: str
    references: tuple[str, ...]

    def variable(self, number: int) -> str:
        """The environment variable carrying the value of `references[number]`."""
        return f"{VARIABLE_PREFIX}{number + 1}"

    def environment(self, values: Sequence[str], base: Mapping[str, str]) -> dict[str, str]:
        """`base` plus one variable per reference, holding `values` (in order)."""
        environment = dict(base)
        for number, (reference, value) in enumerate(zip(self.references, values)):
            if "\0" in value:
                raise ValueError(f"the value of {reference} holds a NUL byte, which no "
                                 "command argument or variable can carry")
            environment[self.variable(number)] = value
        return environment


def compile_command(template: str) -> ShellCommand:
    """Replace every reference of `template` by a variable; raise UnsafeReference where
    no safe form exists."""
    return _Lexer(template).run()


@dataclass
class _Heredoc:
    delimiter: str
    quoted: bool
    strip_tabs: bool


@dataclass
class _Lexer:
    text: str
    position: int = 0
    output: list[str] = field(default_factory=list)
    references: list[str] = field(default_factory=list)
    modes: list[str] = field(default_factory=lambda: ["command"])
    heredocs: list[_Heredoc] = field(default_factory=list)   # announced, body not yet read
    body: _Heredoc | None = None                             # the body being read

    def run(self) -> ShellCommand:
        while self.position < len(self.text):
            if self.body is not None and self._at_line_start():
                self._heredoc_line()
                continue
            reference = REFERENCE.match(self.text, self.position)
            if reference:
                self._substitute(reference.group(0))
                self.position = reference.end()
            else:
                self._step()
        return ShellCommand("".join(self.output), tuple(self.references))

    # ----- references ------------------------------------------------------------------
    def _substitute(self, reference: str) -> None:
        mode = self.modes[-1]
        if self.body is not None and mode == "heredoc":
            if self.body.quoted:
                raise UnsafeReference(reference, "a heredoc whose delimiter is quoted",
                                      "write the delimiter bare (<<EOF, not <<'EOF')")
            form = "${%s}"
        elif mode in _UNQUOTED or mode == "comment":
            form = '"${%s}"'
        elif mode == "double":
            form = "${%s}"
        else:
            raise UnsafeReference(reference, *_REFUSED[mode])
        self.references.append(reference)
        self.output.append(form % f"{VARIABLE_PREFIX}{len(self.references)}")

    # ----- lexing ----------------------------------------------------------------------
    def _take(self, count: int = 1) -> str:
        taken = self.text[self.position:self.position + count]
        self.output.append(taken)
        self.position += len(taken)
        return taken

    def _ahead(self, text: str) -> bool:
        return self.text.startswith(text, self.position)

    def _at_line_start(self) -> bool:
        return self.position == 0 or self.text[self.position - 1] == "\n"

    def _step(self) -> None:
        mode = self.modes[-1]
        if mode == "single":
            if self._take() == "'":
                self.modes.pop()
        elif mode == "comment":
            if self._ahead("\n"):
                self.modes.pop()
            else:
                self._take()
        elif mode in ("double", "heredoc"):
            self._step_double(mode)
        elif mode == "arith":
            self._step_nested("((", "))")
        elif mode == "param":
            self._step_nested("{", "}")
        else:
            self._step_unquoted(mode)

    def _step_unquoted(self, mode: str) -> None:
        previous = self.text[self.position - 1] if self.position else "\n"
        if self._expansion_start():
            return
        char = self._take()
        if char == "\\":
            self._take()
        elif char == "'":
            self.modes.append("single")
        elif char == '"':
            self.modes.append("double")
        elif char == "`":
            if mode == "backtick":
                self.modes.pop()
            else:
                self.modes.append("backtick")
        elif char == "(":
            self.modes.append("group")
        elif char == ")" and mode in ("subst", "group"):
            self.modes.pop()
        elif char == "#" and previous in _WORD_START:
            self.modes.append("comment")
        elif char == "<" and self._ahead("<<"):  # a here-string (bash): not a heredoc
            self._take(2)
        elif char == "<" and self._ahead("<"):
            self._take()
            self._announce_heredoc()
        elif char == "\n" and self.heredocs:
            self.body = self.heredocs.pop(0)
            self.modes.append("heredoc")

    def _step_double(self, mode: str) -> None:
        if self._expansion_start():
            return
        char = self._take()
        if char == "\\":
            self._take()
        elif char == "`":
            self.modes.append("backtick")
        elif char == '"' and mode == "double":
            self.modes.pop()

    def _expansion_start(self) -> bool:
        """`$((`, `$(` or `${` opens a context of its own."""
        for opener, mode in (("$((", "arith"), ("$(", "subst"), ("${", "param")):
            if self._ahead(opener):
                self._take(len(opener))
                self.modes.append(mode)
                return True
        return False

    def _step_nested(self, opener: str, closer: str) -> None:
        """Inside `$((...))` or `${...}`: find the matching end (references are refused)."""
        if self._ahead(closer):
            self._take(len(closer))
            self.modes.pop()
        elif self._ahead(opener) or self._ahead("$" + opener):
            self._take(len(opener) + self._ahead("$"))
            self.modes.append(self.modes[-1])
        else:
            self._take()

    def _announce_heredoc(self) -> None:
        """After `<<`: note the delimiter; its body starts at the next line."""
        strip_tabs = self._ahead("-")
        if strip_tabs:
            self._take()
        while self._ahead(" ") or self._ahead("\t"):
            self._take()
        word = []
        while self.position < len(self.text) and self.text[self.position] not in _WORD_START:
            word.append(self._take())
        raw = "".join(word)
        delimiter = raw.replace('"', "").replace("'", "").replace("\\", "")
        self.heredocs.append(_Heredoc(delimiter, delimiter != raw, strip_tabs))

    def _heredoc_line(self) -> None:
        """At the start of a line of a heredoc body: its end, or the line's text."""
        end = self.text.find("\n", self.position)
        line = self.text[self.position:] if end < 0 else self.text[self.position:end]
        if (line.lstrip("\t") if self.body.strip_tabs else line) == self.body.delimiter:
            self._take(len(line) + (end >= 0))
            self.modes.pop()
            self.body = self.heredocs.pop(0) if self.heredocs else None
            if self.body is not None:
                self.modes.append("heredoc")
            return
        if self.body.quoted:  # literal text: only references matter (refused)
            reference = REFERENCE.search(line)
            if reference:
                self._substitute(reference.group(0))
            self._take(len(line) + (end >= 0))
            return
        self._step()


_REFUSED = {
    "single": ("'...': its text is literal, often a program of its own (awk, sh -c) that "
               "would interpret the value",
               "move the reference out of the single quotes: write it bare or inside "
               "\"...\", or pass it to the program as an argument or variable (awk -v "
               "x=\"@[x]\")"),
    "arith": ("$((...)): the shell evaluates a variable's text as arithmetic there",
              "compute the number with Run.Evaluate, or pass it outside $((...))"),
    "param": ("${...}", "write the reference outside ${...}"),
}
