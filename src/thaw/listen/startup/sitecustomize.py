"""thaw's start-up hook for servers run with ``thaw run --park-at-listen`` (see thaw.listen).

Python imports the first ``sitecustomize`` module on its path at start-up; thaw puts
the directory holding this one first on the server's ``PYTHONPATH``. It installs the
park-at-listen audit hook, then runs the ``sitecustomize`` that would have run without
thaw (the next one on the path: the user's, or the distribution's), so that one keeps
working. It never fails the server's start: a problem is one line on stderr.
"""

import importlib.machinery
import importlib.util
import os
import sys


def _install() -> None:
    try:
        from thaw.listen.hook import install_from_env

        install_from_env()
    except Exception as exc:  # noqa: BLE001 - the server must start, parked or not
        print(f"thaw: the park-at-listen hook is not installed: {type(exc).__name__}: {exc}", file=sys.stderr)


def _chain() -> None:
    # this file's directory as it is on the path (it may be a link to thaw's copy: compare the directories)
    here = os.path.realpath(os.path.dirname(os.path.abspath(__file__)))
    rest = [p for p in sys.path if os.path.realpath(p or os.curdir) != here]
    spec = importlib.machinery.PathFinder.find_spec("sitecustomize", rest)
    if spec is None or spec.loader is None:
        return
    module = importlib.util.module_from_spec(spec)
    sys.modules["sitecustomize"] = module  # the user's module is the one the program sees
    spec.loader.exec_module(module)


_install()
_chain()
