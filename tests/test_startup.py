"""Start-up time: what a rank imports is what its part of the run needs.

Only rank 0 reads YAML, checks the script and writes HDF5, so the other ranks never import
yaml, h5py or the results writer (each costs start-up time on every rank of every run), and
no rank imports numba for a script without a numba kernel. When the kernels import numba,
the other ranks load it while rank 0 checks the script. The engine uses numpy through
`distx.lazy`: a rank that handles no array does not import it. Checked in real `mpiexec` runs:
every process reports its modules as it exits.
"""

from __future__ import annotations

import json
import subprocess
import sys

from conftest import mpiexec

from distx.engine.shipping import KernelSources

RANK_ZERO_ONLY = ("h5py", "yaml", "distx.results.writer", "distx.check.checks")
WATCHED = (*RANK_ZERO_ONLY, "numba")


def report_at_exit(watched: tuple[str, ...]) -> str:
    """A program that runs distx; each process writes the `watched` modules it imported
    into a file of its own as it exits (stdout could be cut when the launcher winds down)."""
    return f"""\
import atexit, json, os, sys
atexit.register(lambda: open(f"modules-{{os.getpid()}}.json", "w").write(
    json.dumps(sorted(set({watched!r}) & set(sys.modules)))))
from distx.cli import main
sys.exit(main(sys.argv[1:]))
"""


PLAIN = "def double(x):\n    return 2 * x\n"
JITTED = "import numba\n\n\n@numba.njit(cache=True)\ndef double(x):\n    return 2 * x\n"


def sweep(kernel: str) -> str:
    return f"""\
Version: 2
Name: doubling
Kernels: kernels
Experiments:
  Keyfields:
    x: {{stop: 4}}
Sequence:
  - Task: Run.Sweep
    Config: {{Kernel: {kernel}, Outputs: [y]}}
"""


def modules_per_process(tmp_path, script: str, ranks: int, exit_code: int = 0,
                        watched: tuple[str, ...] = WATCHED) -> list[list[str]]:
    path = tmp_path / "script.yml"
    path.write_text(script)
    (tmp_path / "kernels").mkdir(exist_ok=True)
    (tmp_path / "kernels" / "plain.py").write_text(PLAIN)
    (tmp_path / "kernels" / "jitted.py").write_text(JITTED)
    run = subprocess.run([*mpiexec(), "-n", str(ranks), sys.executable, "-c",
                          report_at_exit(watched), str(path), "-o", str(tmp_path / "out.h5")],
                         capture_output=True, text=True, timeout=240, cwd=tmp_path)
    assert run.returncode == exit_code, run.stderr
    return sorted(json.loads(report.read_text()) for report in tmp_path.glob("modules-*.json"))


HELLO = """\
Version: 2
Name: hello
Sequence:
  - {Task: Run.Message, Config: {Message: hello}}
"""


def test_workers_import_neither_yaml_nor_h5py_nor_numba_without_numba_kernels(tmp_path):
    reports = modules_per_process(tmp_path, HELLO, 3)
    assert reports == [[], [], sorted(RANK_ZERO_ONLY)]


def test_workers_that_handle_no_array_do_not_import_numpy(tmp_path):
    # The engine's modules use numpy through distx.lazy: it loads where an array is used.
    (tmp_path / "hello").mkdir()
    reports = modules_per_process(tmp_path / "hello", HELLO, 3, watched=("numpy",))
    assert reports == [[], [], ["numpy"]]
    (tmp_path / "sweep").mkdir()
    reports = modules_per_process(tmp_path / "sweep", sweep("plain.double"), 3,
                                  watched=("numpy",))
    assert reports == [["numpy"]] * 3


def test_every_rank_starts_mpi_before_it_imports_the_engine():
    # MPI starts once every rank is there: the ranks other than 0 import the engine after
    # it, while rank 0 checks the script (launch._load_engine).
    program = ("import sys; import distx.cli, distx.launch\n"
               "early = {'distx.engine.rank', 'distx.engine.tasks', 'distx.engine.core',"
               " 'distx.script.model'} & set(sys.modules)\n"
               "assert not early, early")
    subprocess.run([sys.executable, "-c", program], check=True, timeout=60)


def test_the_engine_imports_numpy_only_when_an_array_is_used():
    program = ("import sys; import distx.cli, distx.launch, distx.engine.rank; "
               "assert 'numpy' not in sys.modules\n"
               "from distx.engine.protocol import np; np.zeros(1); "
               "assert 'numpy' in sys.modules and np.zeros is sys.modules['numpy'].zeros")
    subprocess.run([sys.executable, "-c", program], check=True, timeout=60)


def test_a_sweep_of_a_plain_python_kernel_imports_no_numba(tmp_path):
    reports = modules_per_process(tmp_path, sweep("plain.double"), 3)
    assert reports == [[], [], sorted(RANK_ZERO_ONLY)]


def test_a_plain_kernel_beside_a_numba_one_loads_numba_but_not_its_compiler(tmp_path):
    # Set up on every holder all the same, numba's compiler took 0.15-0.2 s of CPU each
    # while the bench's trivial sweep ran (numba.core.optional comes with that set-up).
    (tmp_path / "kernels").mkdir()
    (tmp_path / "kernels" / "mixed.py").write_text(JITTED + "\n\ndef plain(x):\n    return x\n")
    reports = modules_per_process(tmp_path, sweep("mixed.plain"), 3,
                                  watched=("h5py", "numba", "numba.core.optional"))
    workers = [modules for modules in reports if "h5py" not in modules]
    assert workers == [["numba"], ["numba"]]


def test_workers_load_numba_while_rank_0_checks_a_script_whose_kernels_import_it(tmp_path):
    # The check fails (no such function): rank 0 ends every rank with exit code 2 and
    # writes nothing, but the workers had started loading numba before the verdict.
    reports = modules_per_process(tmp_path, sweep("jitted.missing"), 3, exit_code=2)
    workers = [modules for modules in reports if "distx.check.checks" not in modules]
    assert len(reports) == 3 and all("numba" in modules for modules in workers)
    assert not (tmp_path / "out.h5").exists()


def test_kernel_sources_know_whether_they_import_numba(tmp_path):
    (tmp_path / "plain.py").write_text(PLAIN + "import numpy\nfrom . import helper\n")
    (tmp_path / "helper.py").write_text("import numbalike\n")
    (tmp_path / "jitted.py").write_text(JITTED)
    (tmp_path / "nested.py").write_text("from numba.core import types\n")
    assert not KernelSources.read(tmp_path, ["plain"]).imports_numba
    assert KernelSources.read(tmp_path, ["jitted"]).imports_numba
    assert KernelSources.read(tmp_path, ["plain", "nested"]).imports_numba


def test_the_distx_command_ends_with_mains_exit_code_and_runs_exit_handlers(tmp_path):
    # `program` skips the collector's passes over what is left at exit, nothing else.
    (tmp_path / "hello.yml").write_text(HELLO)
    program = ("import atexit, pathlib, runpy, sys\n"
               "atexit.register(pathlib.Path('handled').touch)\n"
               "sys.argv[0] = 'distx'\n"
               "runpy.run_module('distx', run_name='__main__')\n")
    for script, exit_code in (("hello.yml", 0), ("missing.yml", 2)):
        (tmp_path / "handled").unlink(missing_ok=True)
        run = subprocess.run([sys.executable, "-c", program, script, "-o", "out.h5"],
                             capture_output=True, text=True, timeout=120, cwd=tmp_path)
        assert run.returncode == exit_code, run.stderr
        assert (tmp_path / "handled").exists()
    assert (tmp_path / "out.h5").exists()
