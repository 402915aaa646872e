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
