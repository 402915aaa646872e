"""canopy/signals.py: stop handlers installed for a run, whatever the process inherited."""

from __future__ import annotations

import os
import signal
import time

import pytest

from canopy.signals import interrupt_on_stop_signals


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_stop_signals_interrupt_even_when_inherited_ignored(signum):
    saved = signal.signal(signum, signal.SIG_IGN)  # as a background job of a script starts
    try:
        with pytest.raises(KeyboardInterrupt), interrupt_on_stop_signals():
            os.kill(os.getpid(), signum)
            for _ in range(500):  # the handler runs in this thread between two bytecodes
                time.sleep(0.01)
        assert signal.getsignal(signum) is signal.SIG_IGN  # the previous handler is back
    finally:
        signal.signal(signum, saved)


# A stand-in for torchrun's agent: it starts the node's workers as its children, and when one
# fails it sends SIGTERM to the others. Worker 0 here runs a stage's error handling.
_WORKER = """
import sys, time
import typer
from canopy.errors import user_errors
try:
    with user_errors("sample"):
        print("ready", flush=True)
        time.sleep(60)
except typer.Exit as done:
    sys.exit(done.exit_code)
"""


@pytest.mark.skipif(not os.path.isdir("/proc"), reason="reads the process tree from /proc")
@pytest.mark.parametrize("peer_killed", [True, False])
def test_torchruns_sigterm_after_a_lost_worker_is_not_an_interrupt(peer_killed):
    """torchrun stops the workers of a node with SIGTERM when one fails: rank 0 said
    "interrupted" and exited 130 whenever that came before a collective noticed the loss.
    A SIGTERM with every worker alive (the user stopping the run) stays an interrupt."""
    import subprocess
    import sys

    env = {**os.environ, "TORCHELASTIC_RUN_ID": "test", "LOCAL_WORLD_SIZE": "2",
           "WORLD_SIZE": "2"}
    rank0 = subprocess.Popen([sys.executable, "-c", _WORKER], env={**env, "RANK": "0"},
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    rank1 = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"],
                             env={**env, "RANK": "1"})
    try:
        assert rank0.stdout.readline().strip() == "ready"
        if peer_killed:
            rank1.kill()
            rank1.wait(timeout=10)  # the agent reaps it, then stops the others
        rank0.send_signal(signal.SIGTERM)
        _, err = rank0.communicate(timeout=30)
    finally:
        for proc in (rank0, rank1):
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    if peer_killed:
        assert rank0.returncode == 1, err
        assert err.strip() == ("canopy sample: error: rank 0: another rank stopped or cannot "
                               "be reached (a worker of this node exited, and torchrun stopped "
                               "this one)")
    else:
        assert rank0.returncode == 130 and err.strip() == "canopy sample: interrupted"
