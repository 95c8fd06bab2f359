"""A process that ran OpenVINO engines still survives its signals.

OpenVINO's CPU plugin gives the compiling thread its own alternate signal stack (sigaltstack)
per `ov.Core` and puts back the one it found when that Core goes away. Two Cores released in
the order they were made (a diffusion policy's two graphs, or two policies loaded one after
the other) left the main thread's alternate stack pointing at unmapped memory, and the next
signal with a Python handler (Ctrl-C, SIGTERM during training, the SIGCHLD handler a torch
DataLoader with workers installs for good) killed the process with SIGSEGV instead of running
the handler: the pytest workers of the default suite died that way minutes after an engine
test, in whichever test next waited on a subprocess. The engines now share one Core per
process. Each check runs in its own interpreter, so a crash is seen as its exit signal.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

pytest.importorskip("torch")
pytest.importorskip("openvino", reason="OpenVINO is in the fast extra: pip install 'tether[fast]'")

CHILD = textwrap.dedent('''
    import ctypes, gc, os, signal, sys

    sys.path.insert(0, sys.argv[1])
    from pathlib import Path
    from test_engines import _checkpoint
    from tether.policies.engines import load_engine_policy

    class StackT(ctypes.Structure):
        _fields_ = [("ss_sp", ctypes.c_void_p), ("ss_flags", ctypes.c_int),
                    ("ss_size", ctypes.c_size_t)]

    def alternate_stack_is_mapped() -> bool:
        stack = StackT()
        ctypes.CDLL(None).sigaltstack(None, ctypes.byref(stack))
        if not stack.ss_sp:
            return True  # none: signals run on the thread's own stack
        for line in open("/proc/self/maps"):
            low, high = (int(x, 16) for x in line.split()[0].split("-"))
            if low <= stack.ss_sp < high:
                return True
        return False

    root = Path(sys.argv[2])
    first = load_engine_policy(_checkpoint(root, "diffusion"), "openvino", "fp32")
    second = load_engine_policy(_checkpoint(root, "act"), "openvino", "fp32")
    del first
    gc.collect()
    del second
    gc.collect()
    print("mapped" if alternate_stack_is_mapped() else "unmapped", flush=True)
    handled = []
    signal.signal(signal.SIGUSR1, lambda *_: handled.append(1))
    os.kill(os.getpid(), signal.SIGUSR1)
    print("handled" if handled else "not handled", flush=True)
''')


def test_signals_are_handled_after_engine_policies_are_released(tmp_path):
    from pathlib import Path

    tests = Path(__file__).parent
    proc = subprocess.run([sys.executable, "-c", CHILD, str(tests), str(tmp_path)],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, (
        f"exit {proc.returncode} (negative: killed by that signal)\n{proc.stdout}\n"
        f"{proc.stderr[-3000:]}")
    assert proc.stdout.split() == ["mapped", "handled"]
