"""SIGTERM taken as Ctrl-C by the command line.

``kill PID`` or a batch scheduler's stop sends SIGTERM. Ray's ``ray.init`` installs a handler
that dumps a stack trace and kills the driver at once, so the command's "continue with
--resume" line never came. With :func:`interrupt_on_sigterm` a SIGTERM becomes a SIGINT: Tune
stops its trials and returns, finished candidates stay in the journal, and the command ends as
after Ctrl-C. Only the command line asks for it; a library call leaves the user's handlers alone.
"""
from __future__ import annotations

import os
import signal
import threading

_wanted = False


def _interrupt(signum, frame) -> None:
    os.kill(os.getpid(), signal.SIGINT)


def interrupt_on_sigterm() -> None:
    """From now on (and again after each ``ray.init``, see :func:`reinstall`) SIGTERM stops
    the process as Ctrl-C does."""
    global _wanted
    _wanted = True
    reinstall()


def reinstall() -> None:
    """Called after ``ray.init``, which replaces the SIGTERM handler."""
    if _wanted and threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _interrupt)
