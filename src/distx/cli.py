"""Command line: `distx [run] script.yml`, `distx validate`, `distx show`, ...

User errors print one line `distx: error: <file>, line <n> (<where>): <what>. Fix: <how>`
and exit 2; `--debug` shows the traceback instead. Output cut short by its reader
(`distx export ... | head`) ends the command quietly with exit code 0.
"""

from __future__ import annotations

import argparse
import gc
import os
import sys
from typing import NoReturn

from distx.engine.progress import MODES as PROGRESS
from distx.errors import ResultsWriteError, UserError
from distx.version import __version__
from distx.vocabulary import ExitCode

COMMANDS = ("run", "validate", "show", "status", "reset", "recover", "merge", "export",
            "timeline", "bench", "schema", "examples")

EXAMPLES = """\
examples:
  distx examples my-first && cd my-first     copy the example scripts and kernels
  mpiexec -n 4 distx jobs/pi.yml             run on 4 ranks (results in pi.h5)
  mpiexec -n 4 distx jobs/pi.yml --progress live   a live progress line under mpiexec
  distx validate jobs/pi.yml -n 4            check a script for 4 ranks, run nothing
  distx show pi.h5 --by samples --sort pi --desc --top 5
  distx status 'shard-*.h5'                  counts of several shards together
  distx export pi.h5 --csv - | head          a table as CSV on stdout
  distx timeline pi.h5 -o pi.png --trace pi.json   a picture; a trace for ui.perfetto.dev
  distx schema > distx.schema.json           the script format for editors (see README)
"""


def program() -> NoReturn:
    """The `distx` command and `python -m distx`: `main`, then the process ends.

    Before it ends, every object it holds goes to the collector's permanent generation:
    the interpreter's collections at exit then skip them (0.02-0.03 s of CPU on rank 0,
    which has numpy and h5py loaded; the job ends when rank 0 does). The memory goes back
    to the system with the process all the same."""
    code = main()
    gc.freeze()
    sys.exit(code)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] not in COMMANDS and not argv[0].startswith("-"):
        argv.insert(0, "run")
    try:
        arguments = _parser().parse_args(argv)
    except UserError as error:
        print(f"distx: error: {error}", file=sys.stderr, flush=True)
        return ExitCode.BAD_INPUT
    if arguments.command is None:
        _parser().print_help(sys.stderr)
        return ExitCode.BAD_INPUT
    try:
        return arguments.handler(arguments)
    except UserError as error:
        if arguments.debug:
            raise
        print(f"distx: error: {error}", file=sys.stderr, flush=True)
        return ExitCode.BAD_INPUT
    except ResultsWriteError as error:
        if arguments.debug:
            raise
        print(f"distx: error: {error}", file=sys.stderr, flush=True)
        return ExitCode.FAILED
    except BrokenPipeError:
        _quiet_stdout()
        return ExitCode.OK


def _quiet_stdout() -> None:
    """The reader of our output went away (`| head`): send what is still buffered nowhere,
    so that Python's flush at exit does not fail again."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)


class _Parser(argparse.ArgumentParser):
    """argparse, with its errors as one line (`distx: error: ...`) instead of usage + error."""

    def error(self, message: str) -> NoReturn:
        raise UserError(message, fix=f"see {self.prog} --help")


def _seconds(text: str, *, zero: bool = False) -> float:
    """A command-line duration: finite, > 0 (>= 0 if `zero`), at most MAX_SECONDS."""
    from distx.script.schema import MAX_SECONDS

    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    lowest_ok = value >= 0 if zero else value > 0
    if not (lowest_ok and value <= MAX_SECONDS):  # also refuses nan
        raise argparse.ArgumentTypeError(f"{text} is not a number of seconds "
                                         f"{'>=' if zero else '>'} 0 and <= "
                                         f"{MAX_SECONDS:.0f} (a week)")
    return value


def _grace(text: str) -> float:
    return _seconds(text, zero=True)


def _world_size(text: str) -> int:
    from distx.script.roles import MAX_RANKS

    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if not 1 <= value <= MAX_RANKS:
        raise argparse.ArgumentTypeError(f"{value} ranks: give 1 to {MAX_RANKS:,}")
    return value


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="distx", description="Distributed experiments on MPI.",
                     epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"distx {__version__}")
    parser.set_defaults(command=None, debug=False)
    commands = parser.add_subparsers(dest="command")

    run = commands.add_parser("run", help="run a script (the default command)")
    run.add_argument("script")
    run.add_argument("-o", "--output", help="results file (default: the script's Output)")
    run.add_argument("--set", action="append", default=[], metavar="NAME=VALUE",
                     help="define a value for @[NAME] (repeatable)")
    run.add_argument("--timeout", type=_seconds, help="default Timeout of waits, in seconds")
    run.add_argument("--overwrite", action="store_true", help="replace an existing results file")
    run.add_argument("--resume", action="store_true",
                     help="continue the results file: run only experiments not done")
    run.add_argument("--force", action="store_true",
                     help="with --resume: continue even if script, kernels or data changed")
    run.add_argument("--grace", type=_grace, default=30.0, metavar="S",
                     help="after SIGTERM/SIGINT/SIGUSR1, wait up to S s for tasks in flight")
    run.add_argument("--shard", metavar="I/N",
                     help="run only the I-th of N slices of the experiments (0 <= I < N) "
                     "into its own file; auto: from the Slurm job array's task id")
    run.add_argument("-v", "--verbose", action="store_true", help="echo every log line")
    run.add_argument("--progress", choices=PROGRESS, default="auto",
                     help="sweep progress on stderr: live (one line redrawn with \\r; use "
                     "it under mpiexec, whose stderr is a pipe), lines (a line every 5 s), "
                     "off, or auto (live on a terminal, else lines)")
    run.set_defaults(handler=_run)

    validate = commands.add_parser("validate", help="check a script without running it")
    validate.add_argument("script")
    validate.add_argument("-n", "--ranks", type=_world_size, default=1,
                          help="check roles for this many MPI ranks (default 1)")
    validate.add_argument("--set", action="append", default=[], metavar="NAME=VALUE")
    validate.set_defaults(handler=_validate)

    show = commands.add_parser("show", help="summarise results files: runs, milestones, "
                               "output statistics, best rows, errors")
    show.add_argument("results", nargs="+", help="results files or a quoted pattern "
                      "('shard-*.h5'); several are reported together")
    show.add_argument("--by", metavar="K1[,K2]", default="",
                      help="output statistics per value of one or two keyfields")
    show.add_argument("--sort", metavar="COLUMN", help="list the best rows by this column")
    show.add_argument("--desc", action="store_true", help="with --sort: highest first")
    show.add_argument("--top", type=int, default=10, metavar="N",
                      help="with --sort: how many rows (default 10)")
    show.set_defaults(handler=_show)

    status = commands.add_parser("status", help="live counts (also while a run writes)")
    status.add_argument("results", nargs="+", help="results files or a quoted pattern")
    status.set_defaults(handler=_status)

    reset = commands.add_parser("reset", help="set experiments back to created")
    reset.add_argument("results")
    reset.add_argument("--status", required=True, metavar="S1,S2",
                       help="statuses to reset, e.g. error,running")
    reset.set_defaults(handler=_reset)
    recover = commands.add_parser(
        "recover", help="apply what a killed run left in the journal to its results file "
        "(--resume does this first)")
    recover.add_argument("results")
    recover.set_defaults(handler=_recover)

    merge = commands.add_parser("merge", help="combine results files of one script (the "
                                "shards of an array job) into one")
    merge.add_argument("inputs", nargs="+", metavar="RESULTS")
    merge.add_argument("-o", "--output", required=True, help="the merged file (a new file)")
    merge.add_argument("--force", action="store_true",
                       help="merge even if script, kernels or data differ between the files")
    merge.add_argument("--overwrite", action="store_true",
                       help="replace an existing output file")
    merge.set_defaults(handler=_merge)

    export = commands.add_parser("export", help="write a table as CSV")
    export.add_argument("results")
    export.add_argument("--csv", required=True, metavar="FILE", help="CSV file, - for stdout")
    export.add_argument("--table", default="experiments",
                        help="experiments (default), attempts, milestones, values, tasks, "
                        "logs, runs, sources or conflicts (a merged file)")
    export.set_defaults(handler=_export)

    timeline = commands.add_parser("timeline", help="draw what each rank did (PNG)")
    timeline.add_argument("results")
    timeline.add_argument("-o", "--output", default="timeline.png")
    timeline.add_argument("--run", type=int, help="which run (default: the latest)")
    timeline.add_argument("--trace", metavar="FILE.json",
                          help="also write the events as a Chrome/Perfetto trace "
                          "(open it in ui.perfetto.dev or chrome://tracing)")
    timeline.set_defaults(handler=_timeline)

    bench = commands.add_parser("bench", help="measure distx against raw mpi4py, "
                                "mpi4py.futures and numpy")
    bench.add_argument("--ranks", type=int, default=8, help="most ranks a case uses")
    bench.add_argument("--quick", action="store_true", help="small sizes (a smoke test)")
    bench.add_argument("--json", metavar="FILE", help="also write the figures as JSON")
    bench.add_argument("--peers", action="store_true",
                       help="also run libEnsemble and PyExperimenter (pip install "
                       "'distx[bench]')")
    bench.set_defaults(handler=_bench)

    schema = commands.add_parser("schema", help="print the JSON Schema of the script format "
                                 "(for editor completion)")
    schema.set_defaults(handler=_schema)

    examples = commands.add_parser("examples", help="copy the example scripts and kernels "
                                   "into a folder")
    examples.add_argument("folder")
    examples.set_defaults(handler=_examples)

    for sub in (run, validate, show, status, reset, recover, merge, export, timeline, bench,
                schema, examples):
        sub.add_argument("--debug", action="store_true", help="show tracebacks")
    return parser


def _overrides(pairs: list[str]) -> dict:
    from distx.script.source import read_scalar

    values = {}
    for pair in pairs:
        name, equals, text = pair.partition("=")
        if not equals or not name:
            raise UserError(f"--set {pair!r} is not NAME=VALUE", fix="write e.g. --set seed=3")
        values[name] = read_scalar(text) if text else ""
    return values


def _run(arguments: argparse.Namespace) -> int:
    import os

    from distx.launch import RunOptions, run
    from distx.script.shard import parse_shard

    shard = None if arguments.shard is None else parse_shard(arguments.shard, os.environ)
    return run(RunOptions(arguments.script, arguments.output, _overrides(arguments.set),
                          arguments.timeout, arguments.overwrite, arguments.verbose,
                          ["distx", *sys.argv[1:]], arguments.resume, arguments.force,
                          arguments.grace, shard=shard, progress=arguments.progress))


def _validate(arguments: argparse.Namespace) -> int:
    from distx.check.checks import check_script
    from distx.script.model import load_script

    overrides = _overrides(arguments.set)
    script = load_script(arguments.script, overrides)
    plan = check_script(script, arguments.ranks, overrides)
    roles = ", ".join(f"{name} {list(ranks)}" for name, ranks in plan.ranks_of.items())
    print(f"{arguments.script}: OK ({len(script.tasks())} tasks; roles: {roles})")
    return ExitCode.OK


def _show(arguments: argparse.Namespace) -> int:
    from distx.results.show import ShowOptions, summary

    if arguments.top < 1:
        raise UserError("--top must be at least 1")
    by = [name.strip() for name in arguments.by.split(",") if name.strip()]
    print(summary(arguments.results, ShowOptions(by, arguments.sort, arguments.desc,
                                                 arguments.top)))
    return ExitCode.OK


def _status(arguments: argparse.Namespace) -> int:
    from distx.results.show import status

    print(status(arguments.results))
    return ExitCode.OK


def _reset(arguments: argparse.Namespace) -> int:
    from distx.results.admin import reset_experiments

    statuses = {item.strip() for item in arguments.status.split(",") if item.strip()}
    counts = reset_experiments(arguments.results, statuses)
    total = sum(counts.values())
    detail = ", ".join(f"{number} {status}" for status, number in sorted(counts.items()))
    print(f"{arguments.results}: {total} experiment(s) set back to created"
          + (f" ({detail})" if detail else ""))
    return ExitCode.OK


def _recover(arguments: argparse.Namespace) -> int:
    from pathlib import Path

    from distx.results.admin import recover
    from distx.results.reader import read_results

    path = Path(arguments.results)
    read_results(path, lambda file: None)   # a distx results file, readable
    replayed = recover(path)
    print(f"{path}: {replayed} journal record(s) applied" if replayed
          else f"{path}: nothing to recover")
    return ExitCode.OK


def _merge(arguments: argparse.Namespace) -> int:
    from distx.results.merge import merge

    report = merge(arguments.inputs, arguments.output, force=arguments.force,
                   overwrite=arguments.overwrite)
    if report.conflicts:
        experiment_id, kept, other = report.conflicts[0]
        print(f"distx: warning: {len(report.conflicts)} experiment(s) are done in more than "
              f"one file with different results (first: id {experiment_id} in {kept} and "
              f"{other}); kept the row of the file given first, the others are in "
              "/conflicts", file=sys.stderr, flush=True)
    print(f"{arguments.output}: {report.experiments} experiment(s), {report.done} done, "
          f"from {report.runs} run(s) of {len(arguments.inputs)} file(s)")
    return ExitCode.OK


def _export(arguments: argparse.Namespace) -> int:
    from distx.results.export import export_csv

    rows = export_csv(arguments.results, arguments.table, arguments.csv)
    if arguments.csv != "-":
        print(f"{rows} row(s) of {arguments.table} written to {arguments.csv}")
    return ExitCode.OK


def _timeline(arguments: argparse.Namespace) -> int:
    from distx.results.timeline import draw

    print(f"timeline written to {draw(arguments.results, arguments.output, arguments.run)}")
    if arguments.trace:
        from distx.results.trace import write_trace

        events = write_trace(arguments.results, arguments.trace, arguments.run)
        print(f"trace of {events:,} events written to {arguments.trace}")
    return ExitCode.OK


def _bench(arguments: argparse.Namespace) -> int:
    from distx.bench.harness import run_bench

    print(run_bench(arguments.ranks, arguments.quick, arguments.json, arguments.peers))
    return ExitCode.OK


def _schema(arguments: argparse.Namespace) -> int:
    import json

    from distx.check.script_schema import script_schema

    print(json.dumps(script_schema(), indent=2))
    return ExitCode.OK


def _examples(arguments: argparse.Namespace) -> int:
    from distx.script.examples import copy_examples

    written = copy_examples(arguments.folder)
    print(f"{len(written)} example file(s) copied to {arguments.folder}; try: cd "
          f"{arguments.folder} && mpiexec -n 4 distx jobs/pi.yml && distx show pi.h5")
    return ExitCode.OK
