"""Starting a run: checks on rank 0, the script to every rank, data, roles, the end.

Under mpiexec/srun with N > 1 ranks every process runs `run`; rank 0 checks the script,
makes the data and creates the results file before any rank starts its role, and shares
the verdict, so bad input stops every rank with exit code 2 and no file written. With one
process the coordinator plays every role itself: each other role runs as a virtual rank
in a thread of the same process, talking through in-process queues.

Whether the run survives a dead worker is decided here, at start-up: under Open MPI
started with ULFM (`mpirun --with-ft ulfm`) the transport reports dead peers instead of
the launcher ending the job (transport.fault_tolerant); the results file says which.
"""

from __future__ import annotations

import faulthandler
import os
import shutil
import signal
import socket
import sys
import tempfile
import threading
import traceback
from collections.abc import Callable, MutableMapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from distx.engine.output import real_stderr
from distx.engine.protocol import Verdict
from distx.engine.transport import (
    LocalHub,
    MPITransport,
    Transport,
    fault_tolerant,
    prepare_fault_tolerance,
)
from distx.errors import ResultsWriteError, UserError
from distx.vocabulary import INIT, PRE_RUN, ExitCode, RunState

# Every rank imports this module before MPI starts, and MPI starts once every rank is
# there: the rest of the engine is imported where it is used, so that the other ranks load
# it while rank 0 checks the script (`_load_engine`) instead of before MPI. Rank 0 alone
# writes HDF5, so results/ is imported inside the functions that only rank 0 runs.
if TYPE_CHECKING:
    import numpy as np

    from distx.engine.core import RunInfo
    from distx.engine.shipping import KernelSources
    from distx.engine.taskrun import Executor
    from distx.results.writer import ResultsFile
    from distx.script.model import Script
    from distx.script.shard import Shard


@dataclass
class RunOptions:
    script: str
    output: str | None = None
    overrides: dict = field(default_factory=dict)
    timeout: float | None = None
    overwrite: bool = False
    verbose: bool = False
    command_line: list[str] = field(default_factory=list)
    resume: bool = False
    force: bool = False
    grace: float = 30.0
    shard: Shard | None = None
    progress: str = "auto"   # sweep progress on stderr: auto, live, lines or off


@dataclass
class _Prepared:
    """Rank 0's outcome of the checks: everything needed to start, or the error."""

    script: Script
    arrays: dict[str, np.ndarray]
    results: ResultsFile
    run_id: str
    kernels: KernelSources


def run(options: RunOptions) -> int:
    """Run the script on this process's MPI world; return the exit code."""
    prefer_shared_memory(os.environ)
    prepare_fault_tolerance(os.environ)
    from mpi4py import MPI

    # a rank that crashes leaves its stack (also while a kernel's output is captured)
    faulthandler.enable(file=real_stderr(), all_threads=True)
    comm = MPI.COMM_WORLD
    if comm.Get_size() == 1:
        return _run_single_process(options)
    tolerant = fault_tolerant(MPI.Get_library_version(), dict(os.environ))
    return _run_mpi(MPITransport(comm, tolerant), options)


SHARED_MEMORY_ONLY = {"UCX_TLS": "self,sm", "FI_PROVIDER": "shm"}


def prefer_shared_memory(environment: MutableMapping[str, str]) -> bool:
    """Before MPI starts: when every rank is on this host, keep MPICH off TCP.

    MPICH's ch4 device starts its network module (UCX, or libfabric) even when all ranks
    share a host, and it listens on TCP ports of 127.0.0.1 and the host's address, even
    with one process. When the launcher says all ranks are here (hydra sets
    MPI_LOCALNRANKS = PMI_SIZE) or there is no launcher, UCX and libfabric are limited to
    shared memory. A UCX_TLS or FI_PROVIDER the user set is left alone. True if set.
    """
    size, local = environment.get("PMI_SIZE"), environment.get("MPI_LOCALNRANKS")
    launched = ("PMI_SIZE", "PMI_RANK", "OMPI_COMM_WORLD_SIZE", "PMIX_RANK", "SLURM_STEP_ID")
    alone = not any(name in environment for name in launched)
    if not (alone or (size is not None and local == size)) or \
            any(name in environment for name in SHARED_MEMORY_ONLY):
        return False
    environment.update(SHARED_MEMORY_ONLY)
    return True


def _read(options: RunOptions) -> tuple[Script, KernelSources]:
    """The script and the kernel code it needs, read but not yet checked."""
    from distx.engine.shipping import KernelSources
    from distx.script.model import load_script

    script = load_script(options.script, options.overrides)
    return script, KernelSources.of_script(script)


def _prepare(script: Script, kernels: KernelSources, options: RunOptions, size: int,
             hosts: list[str], tolerant: bool = False) -> _Prepared:
    from distx.check.checks import check_script
    from distx.engine import data
    from distx.results import provenance
    from distx.results.writer import ResultsFile, RunIdentity

    plan = check_script(script, size, options.overrides)
    arrays = {name: data.materialize(spec, script) for name, spec in script.data.items()}
    run_id = provenance.new_run_id()
    identity = RunIdentity(
        name=script.name, run_id=run_id, script_text=script.text,
        script_path=str(script.path), script_sha256=script.sha256,
        fingerprints=provenance.fingerprints(script, kernels.fingerprint),
        attributes={"world_size": plan.size, "command_line": " ".join(options.command_line),
                    **provenance.versions(), **provenance.fault_tolerance(tolerant)},
        hosts=list(_hosts_per_rank(hosts, plan.size)), shard=options.shard)
    results = ResultsFile.open(_output(options, script), identity,
                               overwrite=options.overwrite, resume=options.resume,
                               force=options.force)
    return _Prepared(script, arrays, results, run_id, kernels)


def _output(options: RunOptions, script: Script) -> Path:
    """--output, else the script's Output; a shard's file says the shard in its name."""
    if options.output:
        return Path(options.output)
    default = Path(script.output)
    if options.shard is None:
        return default
    return default.with_name(f"{default.stem}.{options.shard.file_label}{default.suffix}")


def _info(script: Script, options: RunOptions, run_id: str, size: int,
          hosts: list[str], kernels_folder: Path | None = None) -> RunInfo:
    from distx.engine.core import RunInfo
    from distx.script.roles import plan_roles

    plan = plan_roles(script, size)
    timeout = options.timeout if options.timeout is not None else script.timeout
    temp_root = Path(tempfile.gettempdir()) / f"distx-{run_id}"
    return RunInfo(script, plan, run_id, timeout, dict(options.overrides),
                   _hosts_per_rank(hosts, plan.size),
                   temp_root, options.verbose, options.grace, options.progress,
                   kernels_folder)


def _hosts_per_rank(hosts: list[str], size: int) -> tuple[str, ...]:
    """One host per rank; the virtual ranks of a single process share its host."""
    return tuple(hosts) if len(hosts) == size else tuple(hosts[:1] * size)


def _run_mpi(transport: MPITransport, options: RunOptions) -> int:
    """Every rank: share rank 0's verdict on the input, then play its part.

    A bug anywhere on any rank (not bad input, which ends every rank with exit code 2)
    aborts the whole MPI job, after rank 0 has closed the results file: a rank that just
    exited would leave the others waiting for it.
    """
    prepared = failure = None
    try:
        hosts = transport.gather(socket.gethostname())
        verdict = warm_up = None
        if transport.rank == 0:
            try:
                prepared = _prepare_telling_numba(transport, options, hosts)
                verdict = Verdict(None, prepared.script, prepared.run_id, hosts,
                                  prepared.kernels)
            except (UserError, ResultsWriteError) as error:
                failure = error
                verdict = Verdict(str(error))
        else:
            warm_up = _load_engine(numba=transport.broadcast(None))
        verdict = transport.broadcast(verdict)
        if verdict.error is not None:
            if transport.rank == 0:
                raise failure
            if warm_up is not None:
                warm_up.join()  # not ending the interpreter under an import
            return ExitCode.BAD_INPUT
        # Parsed and read on rank 0: the others need no YAML parser, nor rank 0's folders.
        kernels_folder = None if transport.rank == 0 else verdict.kernels.install()
        info = _info(verdict.script, options, verdict.run_id, transport.size, verdict.hosts,
                     kernels_folder)
        if transport.rank == 0:
            return _coordinate(transport, info, prepared)
        return _work(transport, info)
    except UserError:
        raise
    except Exception:
        traceback.print_exc()
        print(f"distx: internal error on rank {transport.rank}; aborting the MPI job",
              file=sys.stderr, flush=True)
        if prepared is not None:
            prepared.results.close(RunState.ERRORED.value, ExitCode.FAILED)
        transport.comm.Abort(ExitCode.FAILED)
        return ExitCode.FAILED


def _prepare_telling_numba(transport: MPITransport, options: RunOptions,
                           hosts: list[str]) -> _Prepared:
    """Rank 0: read the script, tell the other ranks what to load of numba
    (KernelSources.numba_warm_up: they load it while rank 0 checks), prepare."""
    try:
        script, kernels = _read(options)
    except UserError:
        transport.broadcast(None)
        raise
    transport.broadcast(kernels.numba_warm_up(script))
    return _prepare(script, kernels, options, transport.size, hosts,
                    transport.fault_tolerant)


def _load_engine(numba: bool | None) -> threading.Thread | None:
    """A rank other than 0, while rank 0 checks the script: import the engine (its rank,
    features and the task catalogue; 0.02-0.03 s of CPU), and when the kernels import
    numba, start loading it in a thread, with its compiler when `numba` is True
    (KernelSources.numba_warm_up, engine/kernels.warm_up_numba). Returns that thread, if
    any."""
    from distx.engine import rank  # noqa: F401  (imported now, used after the verdict)
    from distx.engine.kernels import warm_up_numba

    return None if numba is None else warm_up_numba(compiler=numba)


def _distribute(transport: MPITransport, executor: Executor, arrays: dict | None,
                specs: dict) -> None:
    from distx.engine import data

    dispatch = executor.core.dispatch
    layout = transport.broadcast(data.layouts(arrays, specs) if transport.rank == 0 else None,
                                 dispatch)
    executor.partitions = data.distribute(transport, layout, executor.info.plan.holders,
                                          arrays, dispatch)


STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGUSR1)


def _stop_on_signals(executor: Executor) -> None:
    """SIGTERM, SIGINT and SIGUSR1 (Slurm's warning before a time limit) stop the run
    gracefully: no new tasks, a bounded wait for those in flight, state Cancelled."""
    for number in STOP_SIGNALS:
        signal.signal(number, lambda *_: executor.core.on_signal())


def _start_coordinator(transport: Transport, info: RunInfo, prepared: _Prepared) -> Executor:
    """Rank 0: a rank that also records into the results file."""
    from distx.engine.coordinator import Coordinator
    from distx.engine.rank import start_rank

    executor = start_rank(transport, info)
    shapes = {name: array.shape for name, array in prepared.arrays.items()}
    Coordinator(executor, prepared.results, shapes)
    prepared.results.on_failure = _ender(transport)  # a file it cannot write ends the job
    _stop_on_signals(executor)
    return executor


def _ender(transport: Transport) -> Callable[[int], None]:
    """Ends the whole job at once (MPI_Abort may return before the job is torn down)."""
    def end(exit_code: int) -> None:
        transport.abort(exit_code)
        os._exit(exit_code)
    return end


def _coordinate(transport: Transport, info: RunInfo, prepared: _Prepared) -> int:
    from distx.engine.rank import preload_kernels

    executor = _start_coordinator(transport, info, prepared)
    executor.core.reach(INIT)
    executor.core.reach(PRE_RUN)
    _distribute(transport, executor, prepared.arrays, info.script.data)
    prepared.arrays.clear()
    preload_kernels(executor)
    return _finish(executor, prepared)


def _work(transport: Transport, info: RunInfo) -> int:
    from distx.engine.rank import preload_kernels, run_as_worker, start_rank

    executor = start_rank(transport, info)
    _stop_on_signals(executor)
    executor.core.reach(INIT)
    executor.core.reach(PRE_RUN)
    _distribute(transport, executor, None, info.script.data)
    preload_kernels(executor)
    run_as_worker(executor)
    shutil.rmtree(executor.temp_folder, ignore_errors=True)
    return executor.core.exit_code


def _finish(executor: Executor, prepared: _Prepared) -> int:
    from distx.engine.command import end_commands
    from distx.engine.coordinator import Coordinator
    from distx.engine.rank import run_as_coordinator

    core, coordinator = executor.core, executor.feature(Coordinator)
    stuck = coordinator.stuck
    state, exit_code = run_as_coordinator(executor)
    end_commands(executor)
    # A rank lost in a kernel never joins; after a stop, waiting ends with --grace.
    joined = not stuck.why and core.transport.close(coordinator.join_deadline())
    coordinator.close_results(state, exit_code)
    shutil.rmtree(executor.info.temp_root, ignore_errors=True)
    hint = "; --resume continues it" if exit_code == ExitCode.STOPPED else ""
    lost = "".join(f"; lost {core.describe(rank)}: {cause}"
                   for rank, cause in sorted(core.lost.items()))
    print(f"distx: {executor.info.script.name} {state.lower()} "
          f"(exit code {exit_code}); results in {prepared.results.path}{hint}{lost}",
          file=sys.stderr, flush=True)
    stuck.abort_if_any(exit_code)
    if not joined:
        print(f"distx: ranks still in a kernel or command {executor.info.grace:g} s "
              "(--grace) after the stop: aborting the MPI job", file=sys.stderr, flush=True)
        core.transport.abort(exit_code)
    return exit_code


def _run_single_process(options: RunOptions) -> int:
    from distx.engine import data
    from distx.engine.rank import preload_kernels, start_rank

    host = socket.gethostname()
    prepared = _prepare(*_read(options), options, 1, [host])
    info = _info(prepared.script, options, prepared.run_id, 1, [host])
    hub = LocalHub(info.plan.size)
    coordinator = _start_coordinator(hub.transport(0), info, prepared)
    others = [start_rank(hub.transport(rank), info) for rank in range(1, info.plan.size)]
    layout = data.layouts(prepared.arrays, info.script.data)
    partitions = data.split_locally(prepared.arrays, layout, info.plan.holders)
    for executor in (coordinator, *others):
        executor.partitions = partitions.get(executor.rank, {})
        executor.core.reach(INIT)
        executor.core.reach(PRE_RUN)
        preload_kernels(executor)
    hub.threads = [threading.Thread(target=_virtual_rank, args=(executor,), daemon=True,
                                    name=f"distx-rank{executor.rank}") for executor in others]
    for thread in hub.threads:
        thread.start()
    return _finish(coordinator, prepared)


def _virtual_rank(executor: Executor) -> None:
    from distx.engine.rank import run_as_worker

    try:
        run_as_worker(executor)
    except Exception:
        traceback.print_exc()
        os._exit(ExitCode.FAILED)
