"""Run.CliExecute's command lines: no value is ever executed, whatever quoting surrounds it.

The property test runs the real /bin/sh over contexts x payloads: a marker file that a
payload would create if it ran is never there, and the value arrives byte-exact.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from distx.script.shell import UnsafeReference, compile_command

# Each context prints the value of @[v] framed by '<' and '>' (command substitution strips
# trailing newlines, so those print a '.' after the value inside and drop it outside).
CONTEXTS = [
    "printf '<%s>' @[v]",
    "printf '<%s>' \"@[v]\"",
    "printf '%s' \"<@[v]>\"",
    "printf '%s' '<'@[v]'>'",
    "x=@[v]; printf '<%s>' \"$x\"",
    "x=\"@[v]\" && printf '<%s>' \"$x\"",
    "V=@[v] sh -c 'printf \"<%s>\" \"$V\"'",
    "x=$(printf '%s.' @[v]); printf '<%s>' \"${x%.}\"",
    "x=\"$(printf '%s.' \"@[v]\")\"; printf '<%s>' \"${x%.}\"",
    "x=`printf '%s.' @[v]`; printf '<%s>' \"${x%.}\"",
    "x=\"`printf '%s.' @[v]`\"; printf '<%s>' \"${x%.}\"",
    "printf '%s' @[v] | { printf '<'; cat; printf '>'; }",
    "printf '%s' @[v] > out.txt && printf '<' && cat out.txt && printf '>'",
    "cat <<EOF\n<@[v]>\nEOF",
    "cat <<-EOF\n\t<@[v]>\n\tEOF",
    "true # '@[v]' `@[v]` $(@[v])\nprintf '<%s>' @[v]",
    "if [ -n \"@[v]\" ] || true; then printf '<%s>' \"@[v]\"; fi",
    "for item in @[v]; do printf '<%s>' \"$item\"; done",
    "f() { printf '<%s>' \"$1\"; }; f @[v]",
]

PAYLOADS = [
    "$(touch MARK)", "`touch MARK`", "'; touch MARK; '", "\"; touch MARK; \"",
    "\"$(touch MARK)\"", "'$(touch MARK)'", "x\ntouch MARK\n", "${IFS}touch${IFS}MARK",
    "*", "?", "[a-z]*", "~", "$HOME", "\\", "\\\n", "EOF\ntouch MARK\nEOF", "-n", "",
    " a  b ", "\t", "!", "$((1+1))", "%s", "}", ")", "\xff\xfe",
]

# Any bytes but NUL, as the text Python gives for them (surrogateescape round-trips).
binary = st.binary(max_size=40).filter(lambda b: b"\0" not in b).map(os.fsdecode)
payloads = st.one_of(st.sampled_from(PAYLOADS), binary,
                     st.lists(st.sampled_from(PAYLOADS), max_size=3).map("".join))


def run_in_shell(template: str, value: str, folder: Path) -> bytes:
    command = compile_command(template)
    environment = command.environment([value] * len(command.references), os.environ)
    result = subprocess.run(["/bin/sh", "-c", command.script], cwd=folder, env=environment,
                            capture_output=True, timeout=10)
    assert not (folder / "MARK").exists(), f"{value!r} ran in {template!r}"
    return result.stdout


def expected_output(template: str, value: bytes) -> bytes:
    if template.startswith("for item"):        # an unquoted word in `for` is split
        return b"".join(b"<" + word + b">" for word in value.split())
    if "<<" in template:
        return b"<" + value + b">\n"
    return b"<" + value + b">"


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow,
          HealthCheck.function_scoped_fixture])
@given(template=st.sampled_from(CONTEXTS), value=payloads)
@example(template=CONTEXTS[2], value="$(touch MARK)")
@example(template=CONTEXTS[1], value="\"; touch MARK; \"")
def test_no_value_is_ever_executed_and_each_arrives_exact(tmp_path, template, value):
    folder = tmp_path / "cwd"
    folder.mkdir(exist_ok=True)
    (folder / "MARK").unlink(missing_ok=True)
    printed = run_in_shell(template, value, folder)
    raw = os.fsencode(value)
    if template.startswith("for item"):
        return  # globs and splitting are the script's own choice there: only safety counts
    assert printed == expected_output(template, raw)


@pytest.mark.parametrize("template, context", [
    ("echo '@[v]'", "'...'"),
    ("awk '{print \"@[v]\"}'", "'...'"),
    ("sh -c 'echo @[v]'", "'...'"),
    ("echo \"it's\" 'a @{Rank} b'", "'...'"),
    ("echo $((@[n] + 1))", "$((...))"),
    ("echo ${HOME:-@[v]}", "${...}"),
    ("cat <<'EOF'\n@[v]\nEOF", "a heredoc whose delimiter is quoted"),
    ("cat <<\"EOF\"\n@[v]\nEOF", "a heredoc whose delimiter is quoted"),
])
def test_reference_without_a_safe_form_is_refused(template, context):
    with pytest.raises(UnsafeReference, match=r"cannot stand inside " + __import__("re")
                       .escape(context)):
        compile_command(template)


def test_quotes_that_are_literal_do_not_count():
    """A ' inside "...", a comment or after \\ opens no single quotes; <<< is no heredoc."""
    for template in ("echo \"it's @[v]\"", "echo it\\'s @[v]", "# it's\necho @[v]",
                     "cat <<< 'x'\necho @[v]"):
        assert compile_command(template).references == ("@[v]",)


def test_ordinary_command_lines_keep_working(tmp_path):
    command = ("mkdir -p out && X=1 printf 'a\\nb\\n' | sort -r > out/f.txt; "
               "cat out/f.txt | tr a-z A-Z && echo \"$((2 + 3))\" $(echo sub) `echo back`")
    assert compile_command(command).script == command
    result = subprocess.run(["/bin/sh", "-c", command], cwd=tmp_path, capture_output=True,
                            text=True, timeout=10)
    assert result.stdout == "B\nA\n5 sub back\n"


def test_nul_byte_cannot_be_carried():
    command = compile_command("echo @[v]")
    with pytest.raises(ValueError, match=r"@\[v\] holds a NUL byte"):
        command.environment(["a\0b"], {})
