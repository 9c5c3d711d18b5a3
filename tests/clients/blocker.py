"""Make modules unimportable in a child interpreter, as if they were not installed: the code a subprocess runs
first, `BLOCK = {...}` filled in by the test."""

from __future__ import annotations

BLOCKER = """
import sys
from importlib.abc import MetaPathFinder

BLOCK = {blocked!r}


class Blocker(MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in BLOCK or name in BLOCK:
            raise ModuleNotFoundError(f"No module named {{name!r}} (blocked by the test)", name=name)
        return None


sys.meta_path.insert(0, Blocker())
"""


def blocking(*modules: str) -> str:
    """Python source that, run first, makes `modules` (and their submodules) raise ModuleNotFoundError."""
    return BLOCKER.format(blocked=set(modules))
