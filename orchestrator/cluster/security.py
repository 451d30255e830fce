"""What keeps an embedded Ray to its user on a shared machine (no ray here).

The embedded Ray listens on 127.0.0.1 only: other machines cannot reach it, but every user
of this machine can connect to a loopback port. Ray's token authentication is what keeps
them out, so the token must be readable by its owner only.
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path


def token_path() -> Path:
    """Where Ray reads and writes the token of a local cluster."""
    return Path.home() / ".ray" / "auth_token"


def protect_token() -> None:
    """Ray writes the token of a new local cluster to ~/.ray/auth_token with the default mode
    (0644 with the usual umask): any user of a shared machine could read it and reach the
    loopback Ray. Create it 0600 first, as Ray would make it (256 random bits, hex), so Ray
    uses it, and tighten one that is there and ours. Raises FileExistsError if another
    process creates it at the same moment (it is then that process's to make)."""
    if os.environ.get("RAY_AUTH_TOKEN") or os.environ.get("RAY_AUTH_MODE") == "disabled":
        return
    path = token_path()
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    if not path.exists():
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as out:
            out.write(secrets.token_hex(32))
    elif path.stat().st_uid == os.getuid() and path.stat().st_mode & 0o077:
        path.chmod(0o600)
