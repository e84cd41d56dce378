"""Run a script or a module with some packages impossible to import, as if they were not installed.

    python tests/run_blocked.py transformers,tokenizers script.py ARGS...
    python tests/run_blocked.py transformers -m tstrain ARGS...
    python tests/run_blocked.py transformers -c "import tstrain"
"""

import importlib.abc
import runpy
import sys


class Blocker(importlib.abc.MetaPathFinder):
    def __init__(self, names):
        self.names = set(names)

    def find_spec(self, fullname, path=None, target=None):
        if fullname.split(".")[0] in self.names:
            raise ModuleNotFoundError(f"No module named {fullname!r} (blocked)", name=fullname)
        return None


blocked, target, *rest = sys.argv[1:]
sys.meta_path.insert(0, Blocker(blocked.split(",")))
if target == "-c":
    sys.argv = ["-c", *rest[1:]]
    exec(compile(rest[0], "<string>", "exec"), {"__name__": "__main__"})
elif target == "-m":
    sys.argv = [rest[0], *rest[1:]]
    runpy.run_module(rest[0], run_name="__main__", alter_sys=True)
else:
    sys.argv = [target, *rest]
    runpy.run_path(target, run_name="__main__")
