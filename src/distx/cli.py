"""Command line: `distx [run] script.yml`, `distx validate`, `distx show`.

User errors print one line `distx: error: <file>, line <n> (<where>): <what>. Fix: <how>`
and exit 2; `--debug` shows the traceback instead.
"""

from __future__ import annotations

import argparse
import sys

import yaml

from distx.errors import UserError

COMMANDS = ("run", "validate", "show")


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] not in COMMANDS and not argv[0].startswith("-"):
        argv.insert(0, "run")
    arguments = _parser().parse_args(argv)
    if arguments.command is None:
        _parser().print_help(sys.stderr)
        return 2
    try:
        return arguments.handler(arguments)
    except UserError as error:
        if arguments.debug:
            raise
        print(f"distx: error: {error}", file=sys.stderr, flush=True)
        return 2


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="distx", description="Distributed experiments on MPI.")
    parser.set_defaults(command=None, debug=False)
    commands = parser.add_subparsers(dest="command")

    run = commands.add_parser("run", help="run a script (the default command)")
    run.add_argument("script")
    run.add_argument("-o", "--output", help="results file (default: the script's Output)")
    run.add_argument("--set", action="append", default=[], metavar="NAME=VALUE",
                     help="define a value for @[NAME] (repeatable)")
    run.add_argument("--timeout", type=float, help="default Timeout of waits, in seconds")
    run.add_argument("--overwrite", action="store_true", help="replace an existing results file")
    run.add_argument("--resume", action="store_true",
                     help="continue the results file: run only experiments not done")
    run.add_argument("--force", action="store_true",
                     help="with --resume: continue even if script, kernels or data changed")
    run.add_argument("--grace", type=float, default=30.0, metavar="S",
                     help="after SIGTERM/SIGINT/SIGUSR1, wait up to S s for tasks in flight")
    run.add_argument("-v", "--verbose", action="store_true", help="echo every log line")
    run.set_defaults(handler=_run)

    validate = commands.add_parser("validate", help="check a script without running it")
    validate.add_argument("script")
    validate.add_argument("-n", "--ranks", type=int, default=1,
                          help="check roles for this many MPI ranks (default 1)")
    validate.add_argument("--set", action="append", default=[], metavar="NAME=VALUE")
    validate.set_defaults(handler=_validate)

    show = commands.add_parser("show", help="summarise a results file")
    show.add_argument("results")
    show.set_defaults(handler=_show)

    for sub in (run, validate, show):
        sub.add_argument("--debug", action="store_true", help="show tracebacks")
    return parser


def _overrides(pairs: list[str]) -> dict:
    values = {}
    for pair in pairs:
        name, equals, text = pair.partition("=")
        if not equals or not name:
            raise UserError(f"--set {pair!r} is not NAME=VALUE", fix="write e.g. --set seed=3")
        try:
            values[name] = yaml.safe_load(text) if text else ""
        except yaml.YAMLError:
            values[name] = text
    return values


def _run(arguments: argparse.Namespace) -> int:
    from distx.launch import RunOptions, run

    return run(RunOptions(arguments.script, arguments.output, _overrides(arguments.set),
                          arguments.timeout, arguments.overwrite, arguments.verbose,
                          ["distx", *sys.argv[1:]], arguments.resume, arguments.force,
                          arguments.grace))


def _validate(arguments: argparse.Namespace) -> int:
    from distx.checks import check_script
    from distx.script import load_script

    if arguments.ranks < 1:
        raise UserError("-n must be at least 1")
    script = load_script(arguments.script)
    plan = check_script(script, arguments.ranks, _overrides(arguments.set))
    roles = ", ".join(f"{name} {list(ranks)}" for name, ranks in plan.ranks_of.items())
    print(f"{arguments.script}: OK ({len(script.tasks())} tasks; roles: {roles})")
    return 0


def _show(arguments: argparse.Namespace) -> int:
    from distx.show import summary

    print(summary(arguments.results))
    return 0
