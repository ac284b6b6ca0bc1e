"""numpy, imported when a rank first uses it.

Importing numpy costs a rank 0.1-0.15 s of CPU (with OpenBLAS starting its threads), more
than the rest of distx together. A rank whose part of the run needs no array (the
ranks of a script of messages and shell commands, the waiting ranks of many others)
should not pay it: the engine's modules bind `np` to the stand-in below instead of
importing numpy, and numpy loads on the first use of any of its names. Each name is then
kept on the stand-in, so later uses cost what a module attribute costs.

Not `importlib.util.LazyLoader`: a lazy module in `sys.modules` loads at the next plain
`import numpy` anywhere (the import system reads its `__spec__`), and before Python 3.12
it is not safe with a second thread (the numba warm-up) importing at the same time.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any


class LazyModule:
    """Stands in for module `name` until a name of it is used, then imports it."""

    def __init__(self, name: str) -> None:
        self._module_name = name

    def __getattr__(self, attribute: str) -> Any:
        value = getattr(importlib.import_module(self._module_name), attribute)
        setattr(self, attribute, value)  # found in __dict__ from now on
        return value


if TYPE_CHECKING:
    import numpy
else:
    numpy = LazyModule("numpy")
