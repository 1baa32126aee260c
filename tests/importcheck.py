"""The modules a real process had imported when it exited (``sys.modules`` at exit, every way of importing).

``python -X importtime`` would miss modules loaded through ``importlib.import_module`` (the stage dispatcher's
and the lazy exports' way), so the process runs its module under :func:`runpy.run_module` with an ``atexit``
hook that writes ``sorted(sys.modules)``: the command itself is unchanged (``python -m <module> <args>``).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

_PROBE = """\
import atexit, json, runpy, sys
out, module = sys.argv[1], sys.argv[2]
atexit.register(lambda: json.dump(sorted(sys.modules), open(out, "w")))
sys.argv = [module, *sys.argv[3:]]
runpy.run_module(module, run_name="__main__", alter_sys=True)
"""


def run_module(module: str, args: list[str], cwd: Path, timeout: float = 600) -> tuple[subprocess.CompletedProcess[str], set[str]]:
    """Run ``python -m <module> <args>`` in ``cwd`` (the repository on the path); fail on a non-zero exit.

    Returns the finished process and the names of every module it had imported when it exited.
    """
    out = cwd / "modules.json"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.run([sys.executable, "-c", _PROBE, str(out), module, *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, f"python -m {module} failed ({proc.returncode}):\n{proc.stderr[-4000:]}"
    return proc, set(json.loads(out.read_text()))
