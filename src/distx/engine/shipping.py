"""The kernel code rank 0 ships to every rank, so that no host needs rank 0's folders.

Rank 0 reads the kernel modules the script names and, transitively, the modules of the
kernels folder they import (found in their syntax trees, nothing is imported), and sends
their source with the start-up broadcast. Every other process writes them into a folder
named after their fingerprint in a per-host cache directory and imports from there:
identical code always lands in the same folder, so numba's `cache=True` files beside it
are compiled once per host and loaded by every later run on that host. Packages the
kernels import from elsewhere (numpy, numba, ...) are not shipped: like any MPI program's
libraries they must be installed on every node.
"""

from __future__ import annotations

import ast
import hashlib
import os
import shutil
import tempfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from distx.script.model import Script

CACHE_VARIABLE = "DISTX_CACHE_DIR"


@dataclass(frozen=True)
class KernelSources:
    """Source files of a kernels folder by path relative to it ('pkg/mod.py')."""

    files: dict[str, bytes]

    @classmethod
    def read(cls, folder: Path, modules: Iterable[str]) -> KernelSources:
        """The named modules of `folder` and every module of `folder` they import.

        A module that does not exist is left out: the checks report it.
        """
        files: dict[str, bytes] = {}
        pending = [(module, 0, "") for module in modules]
        while pending:
            name, level, package = pending.pop()
            for relative in _files_of(folder, _absolute(name, level, package)):
                if relative in files:
                    continue
                source = (folder / relative).read_bytes()
                files[relative] = source
                pending += _imports(source, _package_of(relative))
        return cls(dict(sorted(files.items())))

    @classmethod
    def of_script(cls, script: Script) -> KernelSources:
        """What `script` needs of its kernels folder: every module of it when a `Kernel`
        is a reference (`@[name]`), known only while the run goes."""
        tasks = [spec for spec in script.tasks() if "Kernel" in spec.config]
        if any(spec.kernel is None for spec in tasks):
            modules = _every_module(script.kernels_dir)
        else:
            modules = sorted({spec.kernel.rpartition(".")[0] for spec in tasks})
        return cls.read(script.kernels_dir, modules)

    @property
    def imports_numba(self) -> bool:
        """Whether a module imports numba (found in the syntax trees): the other ranks then
        load numba while rank 0 checks the script (engine/kernels.warm_up_numba)."""
        return any(level == 0 and name.partition(".")[0] == "numba"
                   for relative, source in self.files.items()
                   for name, level, _ in _imports(source, _package_of(relative)))

    def numba_warm_up(self, script: Script) -> bool | None:
        """What the other ranks load of numba while rank 0 checks `script`
        (engine/kernels.warm_up_numba): None when no kernel module imports numba, True
        when a kernel the script names looks compiled by numba (its compiler too), else
        False (the import alone)."""
        if not self.imports_numba:
            return None
        kernels = [spec.kernel for spec in script.tasks() if "Kernel" in spec.config]
        return self.compiles_with_numba(None if None in kernels else kernels)

    def compiles_with_numba(self, kernels: Iterable[str] | None) -> bool:
        """Whether one of `kernels` ('module.function'; None: not known before the run)
        looks compiled by numba in the syntax trees: defined with a decorator that its
        module imports from numba, or bound some other way (`numba.njit(f)`, an import) in
        a module that imports numba. Then the other ranks set numba's compiler up while
        rank 0 checks; a plain function in a module that imports numba needs only the
        import. A wrong guess costs time, never results."""
        if kernels is None:
            return self.imports_numba
        return any(_compiled(self.files.get(relative), function)
                   for module, _, function in (kernel.rpartition(".") for kernel in kernels)
                   for relative in _files_of_module(self.files, module))

    @property
    def fingerprint(self) -> str:
        """SHA-256 over the paths and contents: the kernels fingerprint of the results."""
        hasher = hashlib.sha256()
        for relative, source in self.files.items():
            hasher.update(hashlib.sha256(relative.encode()).digest())
            hasher.update(hashlib.sha256(source).digest())
        return hasher.hexdigest()

    def install(self, cache: Path | None = None) -> Path:
        """The folder holding these files under `cache` (default: `cache_folder()`),
        written if absent: into a private folder first, then renamed into place, so a
        process never sees half of it and ranks sharing a host write it once."""
        root = (cache or cache_folder()) / "kernels"
        target = root / self.fingerprint[:32]
        if not target.is_dir():
            try:
                self._write(root, target)
            except OSError as error:
                raise OSError(f"cannot write the shipped kernel modules into {root} ({error}); "
                              f"set {CACHE_VARIABLE} to a folder this host can write") from error
        return target

    def _write(self, root: Path, target: Path) -> None:
        root.mkdir(parents=True, exist_ok=True)
        draft = Path(tempfile.mkdtemp(prefix=".draft-", dir=root))
        try:
            for relative, source in self.files.items():
                path = draft / relative
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_bytes(source)
            draft.rename(target)
        except OSError:
            shutil.rmtree(draft, ignore_errors=True)
            if not target.is_dir():  # else another rank of this host was first: same files
                raise


def cache_folder() -> Path:
    """Per-host cache: $DISTX_CACHE_DIR, else $XDG_CACHE_HOME/distx, else ~/.cache/distx."""
    if os.environ.get(CACHE_VARIABLE):
        return Path(os.environ[CACHE_VARIABLE])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "distx"


def _every_module(folder: Path) -> list[str]:
    """The top-level modules and packages of a kernels folder."""
    return sorted({path.stem for path in folder.glob("*.py")}
                  | {path.parent.name for path in folder.glob("*/__init__.py")})


def _files_of(folder: Path, module: str) -> Iterator[str]:
    """The files of `folder` that importing `module` runs: the packages' __init__.py on
    the way and the module itself; none for a module from elsewhere."""
    if not module:
        return
    parts = module.split(".")
    for depth in range(1, len(parts) + 1):
        stem = PurePosixPath(*parts[:depth])
        for relative in (f"{stem}/__init__.py", f"{stem}.py"):
            if (folder / relative).is_file():
                yield relative


def _imports(source: bytes, package: str) -> list[tuple[str, int, str]]:
    """(module, level, package) of every import statement, anywhere in the module; for
    `from x import y` both x and x.y, since y may be a module."""
    try:
        tree = ast.parse(source)
    except SyntaxError:
        return []  # the checks report it when importing
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(alias.name, 0, package) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            found.append((base, node.level, package))
            found += [(f"{base}.{alias.name}" if base else alias.name, node.level, package)
                      for alias in node.names if alias.name != "*"]
    return found


def _files_of_module(files: dict[str, bytes], module: str) -> list[str]:
    """The file that defines `module` among shipped `files` (none for a module from
    elsewhere)."""
    stem = module.replace(".", "/")
    return [relative for relative in (f"{stem}.py", f"{stem}/__init__.py") if relative in files]


def _compiled(source: bytes | None, function: str) -> bool:
    """Whether the module's last top-level binding of `function` looks compiled by numba
    (compiles_with_numba)."""
    try:
        tree = ast.parse(source or b"")
    except SyntaxError:
        return False   # the checks report it when importing
    numba_names = _numba_names(tree)
    binding = None
    for node in tree.body:
        if function in _bound_names(node):
            binding = node
    if isinstance(binding, (ast.FunctionDef, ast.AsyncFunctionDef)):
        return any(_root_name(decorator) in numba_names for decorator in binding.decorator_list)
    return bool(numba_names)


def _numba_names(tree: ast.Module) -> set[str]:
    """The names a module's imports bind to numba or to something of it."""
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names |= {(alias.asname or alias.name).partition(".")[0] for alias in node.names
                      if alias.name.partition(".")[0] == "numba"}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and \
                (node.module or "").partition(".")[0] == "numba":
            names |= {alias.asname or alias.name for alias in node.names}
    return names


def _bound_names(node: ast.stmt) -> set[str]:
    """The module-level names a top-level statement binds."""
    if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
        return {node.name}
    if isinstance(node, (ast.Import, ast.ImportFrom)):
        return {(alias.asname or alias.name).partition(".")[0] for alias in node.names}
    targets = node.targets if isinstance(node, ast.Assign) else \
        [node.target] if isinstance(node, (ast.AnnAssign, ast.AugAssign)) else []
    return {name.id for target in targets for name in ast.walk(target)
            if isinstance(name, ast.Name)}


def _root_name(expression: ast.expr) -> str | None:
    """`numba` of `@numba.njit(cache=True)`, `njit` of `@njit`."""
    while isinstance(expression, (ast.Call, ast.Attribute)):
        expression = expression.func if isinstance(expression, ast.Call) else expression.value
    return expression.id if isinstance(expression, ast.Name) else None


def _absolute(name: str, level: int, package: str) -> str:
    """The absolute module name of a (possibly relative) import in `package`."""
    if level == 0:
        return name
    parts = package.split(".") if package else []
    parts = parts[:len(parts) - (level - 1)] if level > 1 else parts
    return ".".join([*parts, name] if name else parts)


def _package_of(relative: str) -> str:
    """The package a file of the kernels folder belongs to ('' at its top)."""
    return ".".join(PurePosixPath(relative).parent.parts)
