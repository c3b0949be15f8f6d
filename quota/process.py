"""This process's id, read without a system call: glibc no longer caches getpid(), and
the transports ask on every call whether they run in a forked child. Read it as
``process.pid`` (an attribute of this module, updated in every child at fork)."""

from __future__ import annotations

import os

pid = os.getpid()


def _forked() -> None:
    global pid
    pid = os.getpid()


os.register_at_fork(after_in_child=_forked)
