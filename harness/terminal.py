"""A command in a real terminal: a private tmux server, its pane read back as text, keys sent
to it. For tests of what a person sees (`couponctl watch`, `couponctl list`)."""

from __future__ import annotations

import itertools
import os
import re
import shlex
import shutil
import subprocess
import time
from collections.abc import Callable, Mapping
from pathlib import Path

_sessions = itertools.count()


class Terminal:
    """``command`` running in a detached tmux session of ``width`` x ``height`` characters,
    on a tmux server of its own (never the user's). The shell stays open after the command
    ends, having printed ``exit=<status>``, so its last screen can still be read."""

    def __init__(self, command: list[str], env: Mapping[str, str], *, width: int = 140, height: int = 30):
        tmux = shutil.which("tmux") or "/usr/bin/tmux"
        if not os.path.exists(tmux):
            raise RuntimeError("tmux is not installed (apt-get install tmux)")
        self._tmux = [tmux, "-L", f"coupon-test-{os.getpid()}-{next(_sessions)}", "-f", "/dev/null"]
        assignments = " ".join(shlex.quote(f"{name}={value}") for name, value in env.items())
        line = f"env {assignments} {shlex.join(command)}; echo exit=$?; sleep 600"
        self._run("new-session", "-d", "-s", "main", "-x", str(width), "-y", str(height), line)
        self._socket = self._run("display-message", "-p", "#{socket_path}").strip()

    def _run(self, *args: str) -> str:
        done = subprocess.run([*self._tmux, *args], capture_output=True, text=True, timeout=10, check=True)
        return done.stdout

    def screen(self) -> str:
        """The pane's text as shown now, trailing blank lines dropped."""
        return self._run("capture-pane", "-p", "-t", "main").rstrip("\n")

    def wait_for(self, seen: Callable[[str], bool], timeout_s: float, what: str) -> str:
        """The first screen for which ``seen`` is true, polled every 50 ms."""
        deadline = time.monotonic() + timeout_s
        while True:
            screen = self.screen()
            if seen(screen):
                return screen
            if time.monotonic() > deadline:
                raise AssertionError(f"{what}: not seen within {timeout_s} s; the screen:\n{screen}")
            time.sleep(0.05)

    def exit_status(self) -> int | None:
        """The command's exit status once it has ended, else None."""
        found = re.findall(r"^exit=(\d+)$", self.screen(), re.MULTILINE)
        return int(found[-1]) if found else None

    def send(self, *keys: str) -> None:
        """Keys as tmux names them: ``C-c`` is Ctrl-C."""
        self._run("send-keys", "-t", "main", *keys)

    def close(self) -> None:
        subprocess.run([*self._tmux, "kill-server"], capture_output=True, timeout=10, check=False)
        if self._socket:  # tmux leaves its socket behind
            Path(self._socket).unlink(missing_ok=True)
