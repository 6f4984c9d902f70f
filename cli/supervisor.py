"""The process supervisor behind `nurture up`: child processes, their start-up wait, restarts and stop.

It knows processes and ports, not what they run: cli/up.py decides which children make the mesh.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

# A child that failed this many times within RESTART_WINDOW_S stops the whole mesh (a crash loop
# restarted forever would hide the fault and fill the log).
MAX_RESTARTS = 5
RESTART_WINDOW_S = 60.0


@dataclass
class Child:
    name: str
    argv: list[str]
    env: dict[str, str]
    log: Path
    cwd: Path
    proc: subprocess.Popen[bytes] | None = None
    restarts: list[float] = field(default_factory=list)
    nice: int = 0

    def start(self, *, defer_priority: bool = False) -> None:
        """Start the process. `defer_priority`: at normal priority until `lower_priority` (a service's
        start-up, compiling templates and migrating, is not starved on a busy machine: at nice 19
        messaging took over 400 s to listen at load 18)."""
        self.log.parent.mkdir(parents=True, exist_ok=True)
        out = self.log.open("ab")
        niceness = 0 if defer_priority else self.nice

        def prepare() -> None:  # runs in the child, between fork and exec
            die_with_parent(signal.SIGTERM)
            if niceness:
                _lower_priority(niceness)

        self.proc = subprocess.Popen(self.argv, env=self.env, stdout=out, stderr=subprocess.STDOUT,
                                     start_new_session=True, cwd=self.cwd, preexec_fn=prepare)

    def lower_priority(self) -> None:
        """Give a child started with `defer_priority` its niceness now: its autogroup's (what ranks it
        against other sessions) and every thread's it has so far (threads it starts later inherit)."""
        if not self.nice or self.proc is None or not sys.platform.startswith("linux"):
            return
        pid = self.proc.pid
        with contextlib.suppress(OSError):
            Path(f"/proc/{pid}/autogroup").write_text(str(self.nice))
        with contextlib.suppress(OSError):
            for tid in os.listdir(f"/proc/{pid}/task"):
                with contextlib.suppress(OSError):
                    os.setpriority(os.PRIO_PROCESS, int(tid), max(self.nice, os.getpriority(os.PRIO_PROCESS,
                                                                                              int(tid))))

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self, timeout: float = 8.0) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def die_with_parent(sig: int) -> None:
    """Runs in a child before exec: Linux sends it `sig` when the process that started it dies. A
    supervisor killed outright (SIGKILL, an OOM kill, a test harness's timeout) then takes its services
    with it instead of leaving them holding ports and CPU; elsewhere it does nothing."""
    if not sys.platform.startswith("linux"):
        return
    import ctypes

    pr_set_pdeathsig = 1
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, sig, 0, 0, 0)


def _lower_priority(niceness: int) -> None:
    """Runs in the child. Its own session is its own scheduler autogroup on Linux, where a process's
    nice value only ranks it inside its group: the group's nice is what ranks it against the others
    (measured: consumers at nice 19 still took 1.1 of 2 cores beside the accept path until this)."""
    os.nice(niceness)
    with contextlib.suppress(OSError):
        Path("/proc/self/autogroup").write_text(str(niceness))


def port_open(host: str, port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.2)
        return s.connect_ex((host, port)) == 0


def _last_line(log: Path) -> str:
    """The last line a child wrote (its reason to exit: a port in use names the port), or ""."""
    try:
        with open(log, "rb") as f:
            f.seek(max(0, f.seek(0, os.SEEK_END) - 4096))
            lines = f.read().decode("utf-8", "replace").strip().splitlines()
    except OSError:
        return ""
    return lines[-1][:500] if lines else ""


def wait_port(host: str, port: int, what: str, child: Child, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if port_open(host, port):
            return
        if not child.alive():
            last = _last_line(child.log)
            raise SystemExit(f"{what} exited during start-up{f': {last}' if last else ''}; see {child.log}")
        time.sleep(0.1)
    raise SystemExit(f"{what} did not listen on {host}:{port} within {timeout:.0f} s; see {child.log} "
                     "(on a busy machine give it longer: NURTURE_START_TIMEOUT_S=<seconds>)")


def free_local_port(preferred: int) -> int:
    """`preferred` when nothing listens there, else a free port (a second mesh on one machine)."""
    with socket.socket() as probe:
        try:
            probe.bind(("127.0.0.1", preferred))
            return preferred
        except OSError:
            probe.bind(("127.0.0.1", 0))
            return int(probe.getsockname()[1])


def supervise(children: list[Child], stopping: Callable[[], bool]) -> None:
    """Restart a child that dies until `stopping()` says so or one keeps failing. The caller starts
    the children first and stops them after (see `stop_all`)."""
    while not stopping():
        for child in children:
            if child.alive() or stopping():
                continue
            recent = [t for t in child.restarts if time.monotonic() - t < RESTART_WINDOW_S]
            if len(recent) >= MAX_RESTARTS:
                print(f"{child.name} keeps failing; see {child.log}", file=sys.stderr, flush=True)
                return
            print(f"{child.name} exited ({child.proc.returncode if child.proc else '?'}); restarting",
                  file=sys.stderr, flush=True)
            child.restarts = [*recent, time.monotonic()]
            child.start()
        time.sleep(0.5)


def stop_all(children: list[Child]) -> None:
    """Stop in reverse start order: the gateway before the services it calls, Redis last."""
    for child in reversed(children):
        child.stop()
