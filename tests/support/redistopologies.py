"""Redis beyond one node, for integration tests: a real Redis Cluster and a real Sentinel set.

Fixture `redis_cluster` yields a `RedisClusterSet`: three primaries and a replica each
(`redis-server --cluster-enabled yes`, joined with `redis-cli --cluster create`), every node on
free loopback ports (its client port and its cluster-bus port). Fixture `redis_sentinels` yields
a `RedisSentinelSet`: one primary, one replica (`--replicaof`) and three Sentinels
(`redis-server <conf> --sentinel`) watching it as master `sluice`. Both come from Debian's
`redis-server` and `redis-tools`; both are tuned to notice a dead primary within about a second
(`cluster-node-timeout`, `down-after-milliseconds`), so a failover test waits seconds, not
minutes. `kill_primary()` SIGKILLs a primary once its replica has all of its writes, and
`wait_failover()` returns once a replica has taken over.

Missing binaries fail under CI and skip elsewhere, as for `tests.support.redis`.
"""

from __future__ import annotations

import pathlib
import subprocess
import time
from collections.abc import Callable, Iterator

import pytest

from tests.support.controlplane import free_ports
from tests.support.processes import binary
from tests.support.proxy import free_port
from tests.support.redis import RedisServer

READY_TIMEOUT_SECONDS = 90.0  # Sentinels meet by hello messages every 2 s: slow under load
MASTER = "sluice"


def wait_for(what: str, check: Callable[[], bool], timeout: float = READY_TIMEOUT_SECONDS) -> None:
    """Poll `check()` until it is true; RuntimeError naming `what` after `timeout`."""
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out waiting for {what}")
        time.sleep(0.1)


def info(server: RedisServer, section: str) -> dict[str, str]:
    """`INFO section` (or `CLUSTER INFO` for "cluster") as a dict; empty when it does not answer."""
    command = ("CLUSTER", "INFO") if section == "cluster" else ("INFO", section)
    try:
        raw = server.command(*command)
    except OSError:
        return {}
    lines = raw.decode(errors="replace").splitlines()
    return dict(line.split(":", 1) for line in lines if ":" in line and not line.startswith("#"))


def wait_replicated(primary: RedisServer, nodes: list[RedisServer]) -> None:
    """Return once `primary`'s replicas (among `nodes`) have all of its writes, so that killing
    it loses nothing (`WAIT` would not do: it waits only for its own connection's writes)."""
    offset = int(info(primary, "replication")["master_repl_offset"])

    def caught_up() -> bool:
        states = [info(n, "replication") for n in nodes if n is not primary]
        mine = [s for s in states if s.get("master_port") == str(primary.port)]
        return bool(mine) and all(int(s.get("slave_repl_offset", -1)) >= offset for s in mine)

    wait_for("the replicas to catch up", caught_up)


class RedisClusterSet:
    """Six `redis-server`s as one cluster: three primaries, one replica each."""

    def __init__(self, nodes: list[RedisServer]) -> None:
        self.nodes = nodes

    @property
    def url(self) -> str:
        """One node's URL: the proxy learns the rest of the cluster from it."""
        return self.nodes[0].url

    def running(self) -> list[RedisServer]:
        return [n for n in self.nodes if n.process is not None and n.process.poll() is None]

    def primaries(self) -> list[RedisServer]:
        return [n for n in self.running() if info(n, "replication").get("role") == "master"]

    def keys(self) -> int:
        """Keys held by the live primaries, that is by the cluster."""
        return sum(n.dbsize() for n in self.primaries())

    def create(self, cli: str) -> RedisClusterSet:
        addresses = [f"127.0.0.1:{n.port}" for n in self.nodes]
        subprocess.run(
            [cli, "--cluster", "create", *addresses, "--cluster-replicas", "1", "--cluster-yes"],
            check=True,
            capture_output=True,
            timeout=READY_TIMEOUT_SECONDS,
        )
        wait_for("the cluster to be ready", self.healthy)
        return self

    def healthy(self) -> bool:
        """Every live node says the cluster is ok, and each of three primaries has a replica
        in sync (so a failover has someone to promote)."""
        nodes = self.running()
        if any(info(n, "cluster").get("cluster_state") != "ok" for n in nodes):
            return False
        primaries = self.primaries()
        replicas = [info(p, "replication").get("connected_slaves") for p in primaries]
        return len(primaries) == 3 and replicas == ["1"] * 3

    def kill_primary(self) -> RedisServer:
        """SIGKILL the primary holding the most keys, once its replica has every write."""
        victim = max(self.primaries(), key=lambda n: n.dbsize())
        wait_replicated(victim, self.running())
        victim.kill()
        return victim

    def wait_failover(self) -> None:
        def promoted() -> bool:
            nodes = self.running()
            states = [info(n, "cluster").get("cluster_state") for n in nodes]
            return len(self.primaries()) == 3 and states == ["ok"] * len(nodes)

        wait_for("a replica to take over", promoted)

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()


class SentinelServer(RedisServer):
    """`redis-server <conf> --sentinel`: a Sentinel rewrites its own config file, so it has one."""

    def __init__(self, binary: str, workdir: pathlib.Path, port: int, primary_port: int) -> None:
        super().__init__(binary, workdir, port)
        self.config = workdir / f"sentinel-{port}.conf"
        self.config.write_text(
            f"port {port}\nbind 127.0.0.1\ndir {workdir}\nlogfile {self.log_path}\n"
            f"sentinel monitor {MASTER} 127.0.0.1 {primary_port} 2\n"
            f"sentinel down-after-milliseconds {MASTER} 1000\n"
            f"sentinel failover-timeout {MASTER} 10000\n"
        )

    def arguments(self) -> list[str]:
        return [self.binary, str(self.config), "--sentinel"]


class RedisSentinelSet:
    """A primary, its replica, and three Sentinels watching them as master `sluice`."""

    def __init__(self, data: list[RedisServer], sentinels: list[SentinelServer]) -> None:
        self.data = data
        self.sentinels = sentinels

    @property
    def url(self) -> str:
        hosts = ",".join(f"127.0.0.1:{s.port}" for s in self.sentinels)
        return f"redis+sentinel://{hosts}/{MASTER}/0"

    def primary(self) -> RedisServer | None:
        running = [n for n in self.data if n.process is not None and n.process.poll() is None]
        masters = [n for n in running if info(n, "replication").get("role") == "master"]
        return masters[0] if len(masters) == 1 else None

    def keys(self) -> int:
        primary = self.primary()
        return primary.dbsize() if primary is not None else 0

    def watched(self) -> bool:
        """Every Sentinel knows the primary, its replica and the two other Sentinels."""
        for sentinel in self.sentinels:
            try:
                raw = sentinel.command("SENTINEL", "MASTER", MASTER).decode(errors="replace")
            except OSError:
                return False
            fields = raw.split("\r\n")
            # A flat reply of alternating names and values, each as `$len` then the text.
            values = fields[2::2]
            state = dict(zip(values[::2], values[1::2], strict=False))
            if state.get("num-slaves") != "1" or state.get("num-other-sentinels") != "2":
                return False
        return True

    def kill_primary(self) -> RedisServer:
        primary = self.primary()
        assert primary is not None
        wait_replicated(primary, self.data)
        primary.kill()
        return primary

    def wait_failover(self) -> None:
        wait_for("a Sentinel failover", lambda: self.primary() is not None)

    def stop(self) -> None:
        for server in [*self.sentinels, *self.data]:
            server.stop()


@pytest.fixture
def redis_cluster(tmp_path: pathlib.Path) -> Iterator[RedisClusterSet]:
    """A fresh three-primary Redis Cluster (with a replica each) for one test."""
    server = binary("redis-server", "redis-server")
    cli = binary("redis-cli", "redis-tools")
    cluster = RedisClusterSet([])
    try:
        cluster.nodes.extend(start_cluster_node(server, tmp_path) for _ in range(6))
        yield cluster.create(cli)
    finally:
        cluster.stop()


def start_cluster_node(server: str, tmp_path: pathlib.Path, attempts: int = 3) -> RedisServer:
    """A started cluster node on two free ports (client and bus). A port found free can be
    taken before the node binds it (by another process's outgoing connection), so a node that
    cannot bind tries again on new ports."""
    for attempt in range(1, attempts + 1):
        port, bus = free_ports(2)
        node = RedisServer(server, tmp_path, port, extra=cluster_node_options(port, bus, tmp_path))
        try:
            return node.start()
        except RuntimeError:
            node.stop()
            if attempt == attempts or "Address already in use" not in node.log():
                raise
    raise ValueError(f"attempts must be at least 1, not {attempts}")


def cluster_node_options(port: int, bus: int, tmp_path: pathlib.Path) -> list[str]:
    return [
        "--cluster-enabled",
        "yes",
        "--cluster-port",
        str(bus),
        "--cluster-config-file",
        str(tmp_path / f"nodes-{port}.conf"),
        "--cluster-node-timeout",
        "1000",
        # Replicas take over however long they were cut off: tests kill at will.
        "--cluster-replica-validity-factor",
        "0",
    ]


@pytest.fixture
def redis_sentinels(tmp_path: pathlib.Path) -> Iterator[RedisSentinelSet]:
    """A fresh primary, replica and three Sentinels for one test."""
    server = binary("redis-server", "redis-server")
    primary = RedisServer(server, tmp_path, free_port())
    replica_port = free_port()
    replica = RedisServer(
        server, tmp_path, replica_port, extra=["--replicaof", "127.0.0.1", str(primary.port)]
    )
    sentinels = [SentinelServer(server, tmp_path, free_port(), primary.port) for _ in range(3)]
    topology = RedisSentinelSet([primary, replica], sentinels)
    try:
        for node in [primary, replica, *sentinels]:
            node.start()
        wait_for("the Sentinels to see the primary, its replica and each other", topology.watched)
        yield topology
    finally:
        topology.stop()
