"""Where a machine's CPU goes during a load run: CPU time of groups of processes (a process
tree, every process of a name, one pid) from /proc deltas, the load generator's from the
kernel's account of our finished children, and a CPU-speed yardstick to tell hosts apart."""

from __future__ import annotations

import os
import platform
import re
import resource
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from types import TracebackType
from urllib.parse import urlsplit

import psutil
import redis

from service.config import StorageSettings

_TICK_S = 1.0 / os.sysconf("SC_CLK_TCK")


@dataclass(frozen=True)
class Proc:
    pid: int
    ppid: int
    name: str  # the kernel's comm: "postgres", "redis-server", "k6", "python"
    started: int  # clock ticks since boot: with the pid, tells a reused pid apart
    cpu_s: float  # user + system time so far


Snapshot = dict[int, Proc]
# Picks a group's processes out of a snapshot.
Finder = Callable[[Snapshot], Iterable[int]]


def snapshot() -> Snapshot:
    """Every process /proc shows now; those that end while it is read are left out."""
    procs: Snapshot = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", encoding="utf-8", errors="replace") as stat:
                text = stat.read()
        except OSError:
            continue
        # The name sits in parentheses and may hold spaces or parentheses itself.
        name = text[text.index("(") + 1 : text.rindex(")")]
        fields = text[text.rindex(")") + 2 :].split()
        procs[int(entry)] = Proc(
            pid=int(entry),
            ppid=int(fields[1]),
            name=name,
            started=int(fields[19]),
            cpu_s=(int(fields[11]) + int(fields[12])) * _TICK_S,
        )
    return procs


def tree(root: int) -> Finder:
    """A process and all its descendants (a Sanic app: its manager and its workers)."""

    def find(procs: Snapshot) -> list[int]:
        found = [root] if root in procs else []
        for parent in found:  # grows while it is walked: breadth first
            found.extend(p.pid for p in procs.values() if p.ppid == parent)
        return found

    return find


def serving(port: int) -> Finder | None:
    """The local processes that listen on ``port`` (a service this run did not start), with
    their descendants: the topmost listeners are the roots (Sanic's manager holds the socket it
    hands its workers). None when nothing here listens on it."""
    listeners = set()
    for process in psutil.process_iter():
        try:
            connections = process.net_connections("tcp")
        except psutil.Error:
            continue
        if any(conn.status == psutil.CONN_LISTEN and conn.laddr.port == port for conn in connections):
            listeners.add(process.pid)
    roots = [one for one in listeners if _parent(one) not in listeners]
    if not roots:
        return None
    finders = [tree(root) for root in roots]
    return lambda procs: [found for finder in finders for found in finder(procs)]


def _parent(one: int) -> int | None:
    try:
        return psutil.Process(one).ppid()
    except psutil.Error:
        return None


def named(name: str) -> Finder:
    """Every process of a name, e.g. all of PostgreSQL's (one per connection, plus its own)."""
    return lambda procs: [p.pid for p in procs.values() if p.name == name]


def pid(one: int) -> Finder:
    return lambda procs: [one] if one in procs else []


def machine_busy_s() -> float:
    """CPU time all cores spent on anything but idling and waiting for I/O, since boot."""
    with open("/proc/stat", encoding="utf-8") as stat:
        ticks = [int(value) for value in stat.readline().split()[1:]]
    # user nice system idle iowait irq softirq steal: guest time is already inside user.
    return (sum(ticks[:8]) - ticks[3] - ticks[4]) * _TICK_S


def _children_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


@dataclass
class Split:
    """CPU seconds per group over a run of ``wall_s`` seconds; a core is one CPU second a second."""

    wall_s: float = 0.0
    cpu_s: dict[str, float] = field(default_factory=dict)
    busy_s: float = 0.0  # the whole machine

    def cores(self, name: str) -> float:
        return self.cpu_s[name] / self.wall_s if self.wall_s else 0.0

    def us_per(self, names: Iterable[str], answers: int) -> float:
        """CPU µs per answer of the groups named (those not measured count nothing)."""
        return 1e6 * sum(self.cpu_s.get(name, 0.0) for name in names) / answers if answers else float("nan")

    def line(self) -> str:
        """Each group's cores, the rest of the machine's busy time, and the machine's total."""
        parts = [f"{name} {self.cores(name):.2f}" for name in self.cpu_s]
        parts.append(f"other {self.other_s / self.wall_s if self.wall_s else 0.0:.2f}")
        busy = self.busy_s / self.wall_s if self.wall_s else 0.0
        return (
            f"{', '.join(parts)}; machine busy {busy:.2f} of {os.cpu_count()} cores, over {self.wall_s:.1f} s"
        )

    @property
    def other_s(self) -> float:
        """What the machine did beyond the groups measured (other processes, the kernel)."""
        return max(0.0, self.busy_s - sum(self.cpu_s.values()))


class Meter:
    """Measures the CPU of each group while its `with` block runs.

    ``generator`` names the group of our child processes that start and end inside the
    block (the load tool): /proc cannot show a process once it has ended, the kernel's
    account of waited-for children can. Nothing else we start may end inside the block.
    A group's process that ends inside the block is left out of it.
    """

    def __init__(self, groups: Mapping[str, Finder], generator: str | None = None) -> None:
        self.groups = dict(groups)
        self.generator = generator
        self.split = Split()

    def __enter__(self) -> Meter:
        self._start = snapshot()
        self._children_s = _children_s()
        self._busy_s = machine_busy_s()
        self._wall = time.monotonic()
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        wall_s = time.monotonic() - self._wall
        busy_s = machine_busy_s() - self._busy_s
        children_s = _children_s() - self._children_s
        end = snapshot()
        cpu_s = {} if self.generator is None else {self.generator: children_s}
        cpu_s.update((name, _spent(self._start, end, find(end))) for name, find in self.groups.items())
        self.split = Split(wall_s=wall_s, cpu_s=cpu_s, busy_s=busy_s)


def _spent(start: Snapshot, end: Snapshot, pids: Iterable[int]) -> float:
    total = 0.0
    for one in pids:
        now = end[one]
        before = start.get(one)
        # A process started inside the window spent all its CPU there.
        total += now.cpu_s - (before.cpu_s if before and before.started == now.started else 0.0)
    return total


def generator_sentence(split: Split, generator: str, served: Iterable[str], what: str) -> str:
    """Says plainly whether the load generator took more CPU than what it loads."""
    tool = split.cores(generator)
    target = sum(split.cores(name) for name in served if name in split.cpu_s)
    missing = [name for name in served if name not in split.cpu_s]
    if missing:
        return (
            f"The generator ({generator}) took {tool:.2f} cores; {', '.join(missing)} not measured"
            f" (not found on this machine), so it is not compared with {what}."
        )
    if tool > target:
        return (
            f"The generator ({generator}) took more CPU than {what}: {tool:.2f} against {target:.2f}"
            " cores; on shared cores what it takes, the service cannot have."
        )
    return f"The generator ({generator}) took {tool:.2f} cores, {what} {target:.2f}."


STORAGE_GROUPS = ("Redis", "PostgreSQL")


def storage_groups(storage: StorageSettings) -> dict[str, Finder]:
    """Redis and PostgreSQL, where their processes run on this machine: Redis by the pid it
    reports, PostgreSQL as every process named postgres (its own and one per connection)."""
    groups: dict[str, Finder] = {}
    if not storage.redis_cluster:
        client = redis.Redis.from_url(storage.redis_url, socket_timeout=5, socket_connect_timeout=5)
        try:
            found = local_redis_pid(storage.redis_url, int(client.info("server")["process_id"]))
        finally:
            client.close()
        if found is not None:
            groups["Redis"] = pid(found)
    if any(p.name == "postgres" for p in snapshot().values()):
        groups["PostgreSQL"] = named("postgres")
    return groups


def local_redis_pid(redis_url: str, process_id: int) -> int | None:
    """Redis's pid (``INFO server`` process_id) when that Redis runs on this machine and
    /proc shows it as redis-server; None for a remote one or one in another pid namespace."""
    parts = urlsplit(redis_url)
    if parts.scheme != "unix" and parts.hostname not in ("127.0.0.1", "localhost", "::1"):
        return None
    try:
        with open(f"/proc/{process_id}/comm", encoding="utf-8") as comm:
            return process_id if comm.read().strip().startswith("redis-server") else None
    except OSError:
        return None


def yardstick_us() -> float:
    """`python -m timeit "sum(range(1000))"` in µs: how fast this host runs Python now.

    Figures from different hosts, or from a neighbour's busy minute, differ by it."""
    done = subprocess.run(
        [sys.executable, "-m", "timeit", "-n", "20000", "-r", "5", "sum(range(1000))"],
        capture_output=True,
        text=True,
        check=True,
    )
    match = re.search(r"([\d.]+) (nsec|usec|msec|sec) per loop", done.stdout)
    if match is None:
        raise RuntimeError(f"timeit printed no timing: {done.stdout!r}")
    scale = {"nsec": 1e-3, "usec": 1.0, "msec": 1e3, "sec": 1e6}[match[2]]
    return float(match[1]) * scale


def cpu_model() -> str:
    """The CPU's model name, where Linux tells it: runs on different hosts differ by it."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "CPU model unknown"
