"""A private Redis Cluster on free ports in a temporary folder: redis-server nodes with
cluster mode on, joined by `redis-cli --cluster create`, for tests and benchmarks.

    python -m harness.redis_cluster --primaries 3 --replicas 1   # runs until Ctrl-C

Each node keeps nothing on disk beyond its cluster config. `cluster-require-full-coverage no`
keeps the healthy shards serving while one has no primary (the service's setting too, see
docs/scaling.md); a short node timeout makes a failover take about two seconds.
"""

from __future__ import annotations

import argparse
import random
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import redis
from redis.cluster import RedisCluster

NODE_TIMEOUT_MS = 1000


@dataclass
class Node:
    port: int
    folder: Path
    proc: subprocess.Popen[bytes] | None = None

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def client(self) -> redis.Redis:
        return redis.Redis(port=self.port, socket_timeout=2, decode_responses=True)

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None


@dataclass
class RedisClusterServer:
    folder: Path
    primaries: int = 3
    replicas: int = 1
    nodes: list[Node] = field(default_factory=list)

    @property
    def seeds(self) -> str:
        """The REDIS_CLUSTER_NODES value: every node, so any live one can answer."""
        return ",".join(node.address for node in self.nodes)

    def start(self, timeout_s: float = 30.0) -> RedisClusterServer:
        for tool in ("redis-server", "redis-cli"):
            if shutil.which(tool) is None:
                raise RuntimeError(f"{tool} is not on PATH (Debian: apt-get install -y redis-server)")
        count = self.primaries * (1 + self.replicas)
        for index in range(count):
            folder = self.folder / f"node-{index}"
            folder.mkdir(parents=True)
            self.nodes.append(self._spawn_on_a_free_port(folder, timeout_s))
        if self.primaries == 1:
            # redis-cli refuses a cluster of fewer than 3 primaries: assign by hand.
            self._one_primary(timeout_s)
        else:
            subprocess.run(
                [
                    "redis-cli",
                    "--cluster",
                    "create",
                    *(node.address for node in self.nodes),
                    "--cluster-replicas",
                    str(self.replicas),
                    "--cluster-yes",
                ],
                check=True,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
                timeout=timeout_s,
            )
        self.wait_healthy(timeout_s)
        return self

    def _one_primary(self, timeout_s: float) -> None:
        primary, *replicas = self.nodes
        admin = primary.client()
        admin.execute_command("CLUSTER", "ADDSLOTSRANGE", 0, 16383)
        primary_id = admin.execute_command("CLUSTER", "MYID")
        for replica in replicas:
            admin.execute_command("CLUSTER", "MEET", "127.0.0.1", replica.port)
        deadline = time.monotonic() + timeout_s
        for replica in replicas:
            while True:
                try:
                    replica.client().execute_command("CLUSTER", "REPLICATE", primary_id)
                    break
                except redis.ResponseError:  # it has not heard of the primary yet
                    if time.monotonic() > deadline:
                        raise
                    time.sleep(0.1)

    def _spawn_on_a_free_port(self, folder: Path, timeout_s: float) -> Node:
        """A node on a port found free; if something took the port (or its bus port) before
        redis-server bound it, the server exits at once and another pair is tried."""
        for _ in range(5):
            node = Node(_free_cluster_port(), folder)
            self._spawn(node)
            try:
                _wait_ping(node, timeout_s)
                return node
            except RuntimeError:
                if node.proc is not None and node.proc.poll() is None:
                    raise
        raise RuntimeError(f"no redis-server could bind a free port pair in {folder}")

    def _spawn(self, node: Node) -> None:
        node.proc = subprocess.Popen(
            [
                "redis-server",
                "--port",
                str(node.port),
                "--bind",
                "127.0.0.1",
                "--cluster-enabled",
                "yes",
                "--cluster-config-file",
                str(node.folder / "nodes.conf"),
                "--cluster-node-timeout",
                str(NODE_TIMEOUT_MS),
                "--cluster-require-full-coverage",
                "no",
                # A replica's first full sync starts at once, not after the default 5 s.
                "--repl-diskless-sync-delay",
                "0",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                str(node.folder),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )

    def wait_healthy(self, timeout_s: float = 30.0) -> None:
        """Every slot served by a live primary, with the replicas asked for attached."""
        deadline = time.monotonic() + timeout_s
        problem = "not checked"
        while time.monotonic() < deadline:
            problem = self._problem()
            if problem == "":
                return
            time.sleep(0.1)
        raise RuntimeError(f"the cluster did not become healthy: {problem}")

    def _problem(self) -> str:
        live = [node for node in self.nodes if node.alive()]
        try:
            for node in live:
                info = node.client().execute_command("CLUSTER", "INFO")
                text = info if isinstance(info, str) else str(info)
                if "cluster_state:ok" not in text:
                    return f"{node.address} says the cluster is not ok"
            primaries = self.primary_ports()
        except redis.RedisError as exc:
            return str(exc)
        if len(primaries) != self.primaries:
            return f"{len(primaries)} live primaries, expected {self.primaries}"
        try:
            replicas = 0
            for node in live:
                info = node.client().info("replication")
                if info.get("role") == "slave":
                    if info.get("master_link_status") != "up":
                        return f"replica {node.address} is not in sync with its primary"
                    replicas += 1
        except redis.RedisError as exc:
            return str(exc)
        if replicas < len(primaries) * self.replicas:
            return f"{replicas} replicas in sync, expected {len(primaries) * self.replicas}"
        return ""

    def client(self) -> RedisCluster:
        live = next(node for node in self.nodes if node.alive())
        return RedisCluster(host="127.0.0.1", port=live.port, decode_responses=True, socket_timeout=2)

    def primary_ports(self) -> set[int]:
        """Ports of the live primaries that hold slots, as the live nodes see them."""
        live = next(node for node in self.nodes if node.alive())
        ports = set()
        for line in live.client().execute_command("CLUSTER", "NODES").splitlines():
            parts = line.split()
            flags, slots = parts[2].split(","), parts[8:]
            if "master" in flags and "fail" not in flags and "fail?" not in flags and slots:
                ports.add(int(parts[1].split("@")[0].rsplit(":", 1)[1]))
        return {port for port in ports if self.node(port).alive()}

    def owner(self, key: str) -> int:
        """The port of the primary serving the slot of ``key`` now."""
        live = next(node for node in self.nodes if node.alive())
        slot = live.client().execute_command("CLUSTER", "KEYSLOT", key)
        for start, end, primary, *_ in live.client().execute_command("CLUSTER", "SLOTS"):
            if start <= slot <= end:
                return int(primary[1])
        raise LookupError(f"slot {slot} has no primary")

    def node(self, port: int) -> Node:
        return next(node for node in self.nodes if node.port == port)

    def kill(self, port: int) -> None:
        node = self.node(port)
        if node.proc is not None and node.proc.poll() is None:
            node.proc.send_signal(signal.SIGKILL)
            node.proc.wait(10)

    def restart(self, port: int, timeout_s: float = 30.0) -> None:
        """Start a killed node again: it rejoins from its cluster config (as a replica of
        the primary that took its slots over) and syncs."""
        node = self.node(port)
        assert not node.alive(), f"node {port} is running"
        self._spawn(node)
        _wait_ping(node, timeout_s)
        self.wait_healthy(timeout_s)

    def stop(self) -> None:
        for node in self.nodes:
            if node.proc is not None and node.proc.poll() is None:
                node.proc.kill()
                node.proc.wait(10)


def _free_cluster_port() -> int:
    """A port whose cluster bus port (port + 10000) is free too, both below Linux's
    ephemeral range (32768 and up): a port the system hands out to an outgoing connection,
    or to a test's service, can then never take one between this check and the bind."""
    for _ in range(200):
        port = random.randint(20_000, 22_767)
        if _free(port) and _free(port + 10_000):
            return port
    raise RuntimeError("no free port pair for a cluster node")


def _free(port: int) -> bool:
    with socket.socket() as probe:
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _wait_ping(node: Node, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            if node.client().ping():
                return
        except redis.RedisError:
            if node.proc is not None and node.proc.poll() is not None:
                break  # it exited: its port was taken
            time.sleep(0.05)
    raise RuntimeError(f"redis-server on port {node.port} did not start")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--primaries", type=int, default=3)
    parser.add_argument("--replicas", type=int, default=1)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="coupon-cluster-") as folder:
        cluster = RedisClusterServer(Path(folder), args.primaries, args.replicas).start()
        print(f"REDIS_CLUSTER_NODES={cluster.seeds}", flush=True)
        try:
            signal.sigwait({signal.SIGINT, signal.SIGTERM})
        finally:
            cluster.stop()


if __name__ == "__main__":
    main()
