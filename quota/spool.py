"""The last resort for usage events: a local file, appended and fsync'd, when neither
Redis nor Postgres takes them, replayed into Postgres once it answers.

One file per process (``spool-<pid>.jsonl``), one JSON event per line. Appending and
replaying both hold an exclusive ``flock`` on the file; a replayer reads the whole file
and unlinks it under the lock, and an appender that finds its path unlinked opens a
new file. A replayed event carries its event id, so replaying twice (a crash between
the write and the unlink) counts it once. Any process of the deployment on the host
can replay any file, including a dead process's.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

from quota.models import UsageEvent

log = logging.getLogger("quota")


def encode(event: UsageEvent) -> str:
    return json.dumps(
        {
            "event_id": event.event_id,
            "port_id": event.port_id,
            "user_id": event.user_id,
            "feature": event.feature,
            "provider": event.provider,
            "model": event.model,
            "input_tokens": event.input_tokens,
            "output_tokens": event.output_tokens,
            "request_id": event.request_id,
            "occurred_at": event.occurred_at.isoformat(),
        },
        sort_keys=True,
    )


def decode(line: str) -> UsageEvent:
    data: dict[str, Any] = json.loads(line)
    data["occurred_at"] = datetime.fromisoformat(data["occurred_at"])
    return UsageEvent(**data)


class Spool:
    def __init__(self, directory: Path) -> None:
        self.directory = directory

    def _path(self) -> Path:
        return self.directory / f"spool-{os.getpid()}.jsonl"

    def append(self, event: UsageEvent) -> None:
        """Append ``event`` durably (file and directory fsync'd). Raises OSError."""
        self.directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        line = (encode(event) + "\n").encode()
        path = self._path()
        while True:
            fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX)
                try:
                    if os.fstat(fd).st_ino != os.stat(path).st_ino:
                        continue  # a replayer took this file away meanwhile
                except FileNotFoundError:
                    continue
                os.write(fd, line)
                os.fsync(fd)
                break
            finally:
                os.close(fd)
        dir_fd = os.open(self.directory, os.O_RDONLY)
        try:
            os.fsync(dir_fd)  # the file's name, too, survives a crash
        finally:
            os.close(dir_fd)

    def pending(self) -> bool:
        try:
            return any(self.directory.glob("spool-*.jsonl"))
        except OSError:
            return False

    def replay(self, write: Callable[[UsageEvent], object]) -> int:
        """Hand every spooled event to ``write`` (which raises if it could not store it),
        file by file; a file is removed once all of it is written. Returns how many
        events were handed over."""
        done = 0
        for path in sorted(self.directory.glob("spool-*.jsonl")):
            try:
                fd = os.open(path, os.O_RDWR)
            except FileNotFoundError:
                continue  # another replayer took it
            try:
                fcntl.flock(fd, fcntl.LOCK_EX)
                with open(fd, closefd=False, encoding="utf-8") as f:
                    lines = f.read().splitlines()
                for line in lines:
                    if not line.strip():
                        continue
                    try:
                        event = decode(line)
                    except (ValueError, TypeError, KeyError):
                        log.error("spool %s: dropping a line that is no event: %r", path, line)
                        continue
                    write(event)
                    done += 1
                with contextlib.suppress(FileNotFoundError):
                    path.unlink()
            finally:
                os.close(fd)
        return done
