"""Run the CLI on a pseudo-terminal, as a user at a terminal would see it (rich draws its
live bar and in-place redraws only there)."""

from __future__ import annotations

import fcntl
import os
import pty
import select
import struct
import subprocess
import termios
import time
from collections.abc import Callable

from tests.conftest import JAMSWEEP, ROOT


def jamsweep_on_a_terminal(
    *args: str,
    timeout: float = 600,
    while_running: Callable[[bytes], None] | None = None,
    env: dict[str, str] | None = None,
) -> tuple[int, str]:
    """(exit code, everything it wrote to the terminal). `while_running` gets the output so
    far about twice a second."""
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 50, 160, 0, 0))
    proc = subprocess.Popen(
        [*JAMSWEEP, *args],
        cwd=ROOT,
        stdin=slave,
        stdout=slave,
        stderr=slave,
        env={**os.environ, "TERM": "xterm-256color", **(env or {})},
        start_new_session=True,
    )
    os.close(slave)
    output = b""
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([master], [], [], 0.5)
            if ready:
                try:
                    chunk = os.read(master, 65536)
                except OSError:  # the terminal closed: every writer is gone
                    break
                if not chunk:
                    break
                output += chunk
            elif proc.poll() is not None:
                break
            if while_running is not None:
                while_running(output)
        else:
            proc.kill()
    finally:
        os.close(master)
    return proc.wait(timeout=30), output.decode(errors="replace")
