"""Kernel code shipped by rank 0: which files, their fingerprint, the per-host copy."""

from __future__ import annotations

import textwrap
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from distx.engine.kernels import KernelLibrary
from distx.engine.shipping import KernelSources
from distx.script.model import load_script


def kernels_folder(folder: Path, files: dict[str, str]) -> Path:
    for relative, source in files.items():
        path = folder / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(source))
    return folder


def test_the_named_modules_and_what_they_import_from_the_folder_only(tmp_path):
    folder = kernels_folder(tmp_path / "kernels", {
        "main.py": """\
            import numpy
            import helpers
            from tools import grid
            def kernel(x):
                from late import LATE  # imported when called: still shipped
                return x
            """,
        "helpers.py": "from tools.grid import SIZE\n",
        "tools/__init__.py": "",
        "tools/grid.py": "from . import units\nfrom .units import METRE\nSIZE = 3\n",
        "tools/units.py": "METRE = 1\n",
        "late.py": "raise SystemExit('never run: the sources are read, not imported')\n",
        "unused.py": "X = 1\n",
        "broken.py": "def (\n",
    })
    sources = KernelSources.read(folder, ["main", "missing"])
    assert list(sources.files) == ["helpers.py", "late.py", "main.py", "tools/__init__.py",
                                   "tools/grid.py", "tools/units.py"]
    assert sources.files["main.py"] == (folder / "main.py").read_bytes()


def test_fingerprint_changes_with_an_imported_module(tmp_path):
    folder = kernels_folder(tmp_path / "kernels", {"main.py": "import helpers\n",
                                                   "helpers.py": "A = 1\n",
                                                   "unused.py": "B = 1\n"})
    before = KernelSources.read(folder, ["main"]).fingerprint
    (folder / "unused.py").write_text("B = 2\n")
    assert KernelSources.read(folder, ["main"]).fingerprint == before
    (folder / "helpers.py").write_text("A = 2\n")
    assert KernelSources.read(folder, ["main"]).fingerprint != before


def test_installed_once_at_a_path_named_by_the_content(tmp_path):
    folder = kernels_folder(tmp_path / "kernels", {"shipk.py": "from shiph import K\n"
                                                               "def twice(x):\n"
                                                               "    return 2 * x + K\n",
                                                   "shiph.py": "K = 1\n"})
    sources = KernelSources.read(folder, ["shipk"])
    cache = tmp_path / "cache"
    installed = sources.install(cache)
    assert installed.parent == cache / "kernels"
    assert sorted(path.name for path in installed.iterdir()) == ["shiph.py", "shipk.py"]
    written = (installed / "shipk.py").stat().st_mtime_ns
    again = KernelSources(dict(sources.files)).install(cache)
    assert again == installed and (again / "shipk.py").stat().st_mtime_ns == written
    assert [path.name for path in (cache / "kernels").iterdir()] == [installed.name]
    kernel = KernelLibrary(installed).get("shipk.twice")
    assert kernel.call({"x": 4}) == 9 and kernel.file == str(installed / "shipk.py")


def test_a_kernel_named_by_a_reference_ships_the_whole_folder(tmp_path):
    folder = kernels_folder(tmp_path / "kernels", {"one.py": "X = 1\n", "two.py": "Y = 2\n",
                                                   "pkg/__init__.py": "",
                                                   "notes.txt": "not a module\n"})
    script = tmp_path / "job.yml"
    script.write_text("Version: 2\nName: chosen\nParameters: {kernel: one.f}\nSequence:\n"
                      "  - Task: Run.Kernel\n    Config: {Kernel: one.f}\n"
                      "  - Task: Run.Kernel\n    Config: {Kernel: \"@[kernel]\"}\n")
    shipped = KernelSources.of_script(load_script(script))
    assert list(shipped.files) == ["one.py", "pkg/__init__.py", "two.py"]
    assert folder == tmp_path / "kernels"
    script.write_text(script.read_text().replace('"@[kernel]"', "two.g"))
    assert list(KernelSources.of_script(load_script(script)).files) == ["one.py", "two.py"]


def test_a_cache_that_cannot_be_written_is_named(tmp_path):
    (tmp_path / "kernels").mkdir()
    (tmp_path / "kernels" / "one.py").write_text("X = 1\n")
    blocked = tmp_path / "a-file"
    blocked.write_text("")
    with pytest.raises(OSError, match=r"a-file/kernels .*set DISTX_CACHE_DIR to a folder"):
        KernelSources.read(tmp_path / "kernels", ["one"]).install(blocked)


def test_ranks_of_one_host_installing_at_once_leave_one_copy(tmp_path):
    folder = kernels_folder(tmp_path / "kernels", {f"m{index}.py": f"X = {index}\n"
                                                   for index in range(20)})
    sources = KernelSources.read(folder, [f"m{index}" for index in range(20)])
    with ThreadPoolExecutor(8) as pool:
        installed = set(pool.map(lambda _: sources.install(tmp_path / "cache"), range(8)))
    assert len(installed) == 1
    assert [path.name for path in (tmp_path / "cache" / "kernels").iterdir()] == [
        installed.pop().name]  # no draft left behind


@pytest.mark.parametrize(("kernel", "compiled"), [
    ("bench.trivial", False), ("bench.squares", True), ("aliased.renamed", True),
    ("aliased.vectorized", True), ("aliased.wrapped", True), ("aliased.plain", False),
    ("plain.double", False), ("pkg.mod.looped", True), ("bench.missing", True)])
def test_the_syntax_trees_tell_which_kernels_numba_compiles(tmp_path, kernel, compiled):
    """A plain function of a module that imports numba needs numba imported, not its
    compiler set up (0.15-0.2 s of CPU on every other rank, while a sweep runs)."""
    folder = kernels_folder(tmp_path / "kernels", {
        "bench.py": """\
            import numba
            def trivial(seed):
                return seed * 2.0
            @numba.njit(cache=True)
            def squares(values):
                return (values * values).sum()
            """,
        "aliased.py": """\
            import numba as nb
            from numba import njit as fast
            @fast
            def renamed(x):
                return x
            @nb.vectorize(["f8(f8)"])
            def vectorized(x):
                return x
            def wrapped(x):
                return x
            wrapped = nb.njit(wrapped)
            def plain(x):
                return x
            """,
        "plain.py": "def double(x):\n    return 2 * x\n",
        "pkg/__init__.py": "",
        "pkg/mod.py": "from numba import jit\n@jit(nopython=True)\ndef looped(x):\n    return x\n",
    })
    sources = KernelSources.read(folder, ["bench", "aliased", "plain", "pkg.mod"])
    assert sources.compiles_with_numba([kernel]) is compiled
    assert sources.compiles_with_numba(None) is True   # a reference: known only later
