"""The example scripts and kernels that ship with distx (jobs/, kernels/).

In a checkout they are beside src/; an installed wheel puts them under
<prefix>/share/distx/examples (setup.cfg's data_files), keeping the layout, so jobs/*.yml
still name ../kernels. `distx bench` runs their kernels; `distx examples DIR` copies them.
"""

from __future__ import annotations

import shutil
import sysconfig
from pathlib import Path

from distx.errors import UserError

FOLDERS = ("jobs", "kernels")


def examples_folder() -> Path:
    """The folder holding jobs/ and kernels/: the checkout distx runs from, else where the
    wheel installed them."""
    checkout = Path(__file__).resolve().parents[3]
    installed = Path(sysconfig.get_path("data")) / "share" / "distx" / "examples"
    for folder in (checkout, installed):
        if (folder / "kernels" / "montecarlo.py").is_file():
            return folder
    raise UserError(f"the example kernels are neither in {checkout / 'kernels'} nor in "
                    f"{installed / 'kernels'}", fix="run distx from a checkout, or "
                    "reinstall distx")


def copy_examples(destination: str | Path) -> list[Path]:
    """Copy jobs/*.yml, jobs/*.sbatch and kernels/*.py into `destination`; return the files
    written. Existing files are never overwritten."""
    source, destination = examples_folder(), Path(destination)
    files = [path for folder in FOLDERS for pattern in ("*.yml", "*.sbatch", "*.py")
             for path in sorted((source / folder).glob(pattern))]
    clashes = [destination / path.relative_to(source) for path in files
               if (destination / path.relative_to(source)).exists()]
    if clashes:
        raise UserError(f"{clashes[0]} already exists" + (
            f" (and {len(clashes) - 1} more example file(s))" if len(clashes) > 1 else ""),
            fix="give an empty or new folder")
    written = []
    for path in files:
        target = destination / path.relative_to(source)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, target)
        written.append(target)
    return written
