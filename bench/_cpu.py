"""CPU seconds spent by each process of a private mesh and by the PostgreSQL backends serving its
database, read from /proc (Linux): a figure that does not depend on how busy the machine is, unlike a
latency, so a cost per event compares across runs on a shared host.

A sampler thread re-reads every process a few times a second, so a process that exits between two
phase boundaries (a pooled PostgreSQL connection closed, an autovacuum worker) still counts up to its
last sample."""

from __future__ import annotations

import os
import threading
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

_TICK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def _stat(pid: int) -> tuple[int, float] | None:
    """(parent pid, CPU seconds user+system) of a live process, or None."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = raw[raw.rindex(")") + 2:].split()  # after "pid (comm) "
    return int(fields[1]), (int(fields[11]) + int(fields[12])) / _TICK


def _cmdline(pid: int) -> list[str]:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace").split("\0")
    except OSError:
        return []


def _name(argv: list[str], database: str | None, backends: dict[int, str], pid: int) -> str | None:
    """What a process is, for the report: a mesh process by its module, a PostgreSQL backend of
    `database` by the service it serves (backends of other databases on a shared server are not
    ours), or None."""
    if argv and argv[0].startswith("postgres:"):
        title = argv[0]
        if database and f" {database} " in f"{title} ":
            if "autovacuum" in title:
                return "pg autovacuum"
            return f"pg {backends.get(pid, '?').removeprefix('nurture-')}"
        return None
    if "-m" in argv:
        module = argv[argv.index("-m") + 1] if argv.index("-m") + 1 < len(argv) else ""
        return module.removeprefix("services.")
    # redis-server rewrites its title to "<path>/redis-server <host>:<port>", one argument.
    if argv and argv[0].split(" ", 1)[0].endswith("redis-server"):
        return "redis"
    return None


@dataclass
class CpuMeter:
    """CPU seconds so far per process kind, for the descendants of `root` (a `nurture up`) and the
    backends of `database` on a local PostgreSQL."""

    root: int
    database: str | None = None
    url: str | None = None  # the database's URL, to name its backends by application_name
    interval: float = 0.25
    _seen: dict[int, tuple[str, float]] = field(default_factory=dict)
    _backends: dict[int, str] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def start(self) -> CpuMeter:
        self.sample()
        self._thread = threading.Thread(target=self._loop, daemon=True, name="cpu-meter")
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread:
            self._thread.join()

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            self.sample()

    def sample(self) -> None:
        parents: dict[int, int] = {}
        cpu: dict[int, float] = {}
        for entry in os.scandir("/proc"):
            if entry.name.isdigit():
                stat = _stat(int(entry.name))
                if stat:
                    parents[int(entry.name)], cpu[int(entry.name)] = stat
        ours = {self.root}
        grew = True
        while grew:  # every descendant of the root
            grew = False
            for pid, parent in parents.items():
                if parent in ours and pid not in ours:
                    ours.add(pid)
                    grew = True
        with self._lock:
            for pid, seconds in cpu.items():
                known = self._seen.get(pid)
                if known:
                    self._seen[pid] = (known[0], max(known[1], seconds))
                    continue
                argv = _cmdline(pid)
                if self.url and argv and argv[0].startswith("postgres:") and pid not in self._backends:
                    self._backends.update(_application_names(self.url))
                name = _name(argv, self.database, self._backends, pid) if pid in ours or self.database else None
                if pid in ours and name is None:
                    name = "mesh other"
                if name and (pid in ours or name.startswith("pg ")):
                    self._seen[pid] = (name, seconds)

    def totals(self) -> dict[str, float]:
        """CPU seconds so far per process kind."""
        self.sample()
        out: dict[str, float] = defaultdict(float)
        with self._lock:
            for name, seconds in self._seen.values():
                out[name] += seconds
        return dict(out)


def _application_names(url: str) -> dict[int, str]:
    """Backend pid → application_name (each service names its connections `nurture-<service>`)."""
    import sqlalchemy as sa

    engine = sa.create_engine(url, poolclass=sa.pool.NullPool, connect_args={"application_name": "bench-meter"})
    try:
        with engine.connect() as conn:
            return {int(pid): str(name or "") for pid, name in conn.execute(sa.text(
                "SELECT pid, application_name FROM pg_stat_activity WHERE datname = current_database()"))}
    except sa.exc.SQLAlchemyError:
        return {}
    finally:
        engine.dispose()


def per_event(before: dict[str, float], after: dict[str, float], events: int) -> dict[str, float]:
    """CPU milliseconds per event per process kind between two `totals`, with their sum as `total`."""
    out = {name: round(1000 * (after.get(name, 0.0) - before.get(name, 0.0)) / max(1, events), 3)
           for name in sorted(after)}
    out = {k: v for k, v in out.items() if v > 0}
    out["total"] = round(sum(out.values()), 3)
    return out
