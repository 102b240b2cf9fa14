"""pytest plugin: a local Redis Cluster of three masters, started with redis-server in cluster mode.

    cluster = LocalCluster(binary, tmp_dir).start()   # three masters, every slot served
    cluster.url        # 'redis+cluster://127.0.0.1:p1,127.0.0.1:p2,127.0.0.1:p3'
    cluster.node_urls  # one plain redis:// URL per master (to ask a node directly)
    cluster.stop()

No redis-cli needed: the nodes are joined from Python, as ``redis-cli --cluster
create`` does it: each master gets a contiguous third of the 16,384 slots
(``CLUSTER ADDSLOTS``) and a distinct config epoch, then the first meets the others
(``CLUSTER MEET``), and ``start()`` waits (bounded) until every node says
``cluster_state:ok``, knows three nodes and sees all slots served. No replicas: a
test of failover would need them; these test the queue on several shards.

A cluster node listens on two ports: its own, and its port + 10000 for the cluster
bus, so both must be free (``--cluster-port`` would free us of that, but arrived
only in Redis 7.0).

Fixture: ``redis_cluster`` (module scope: one cluster per test module, about a
second to start). Tests that use it get the ``real_redis`` marker; without
``redis-server`` they skip (fail under ``REQUIRE_REDIS=1``, as in CI).
"""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis as redis_sync
from _redis_server import RedisServer, redis_server_binary

SLOTS = 16384
READY_TIMEOUT_S = 20.0
BUS_OFFSET = 10000  # Redis's cluster bus listens on port + 10000


class LocalCluster:
    """``masters`` redis-server processes in cluster mode on loopback, slots split evenly."""

    def __init__(self, binary: str, dir: Path, *, masters: int = 3) -> None:
        self.binary = binary
        self.dir = Path(dir)
        self.masters = masters
        self.servers: list[RedisServer] = []

    def __repr__(self) -> str:
        ports = ",".join(str(s.port) for s in self.servers) or "not started"
        return f"<LocalCluster masters={self.masters} ports={ports}>"

    @property
    def ports(self) -> list[int]:
        return [server.port for server in self.servers]

    @property
    def url(self) -> str:
        """The URL ``course_lib.redis.connect()`` takes: every node as a seed."""
        return "redis+cluster://" + ",".join(f"127.0.0.1:{port}" for port in self.ports)

    @property
    def node_urls(self) -> list[str]:
        return [f"redis://127.0.0.1:{port}/0" for port in self.ports]

    def slot_ranges(self) -> list[tuple[int, int]]:
        """The slots of each master, in ``ports`` order (first, last), as assigned."""
        edges = [SLOTS * i // self.masters for i in range(self.masters + 1)]
        return [(edges[i], edges[i + 1] - 1) for i in range(self.masters)]

    def start(self) -> LocalCluster:
        """Start every node, split the slots, join them; RuntimeError with a log if not ok."""
        try:
            for index in range(self.masters):
                folder = self.dir / f"node{index}"
                folder.mkdir(parents=True, exist_ok=True)
                server = RedisServer(self.binary, folder, port=_free_port_pair(), extra_args=[
                    "--cluster-enabled", "yes",
                    "--cluster-config-file", "nodes.conf",  # in --dir, the node's folder
                    "--cluster-node-timeout", "5000",
                ])  # fmt: skip
                self.servers.append(server)
                server.start()
            self._join()
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        for server in self.servers:
            server.stop()

    def __enter__(self) -> LocalCluster:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def _join(self) -> None:
        clients = [redis_sync.Redis(host="127.0.0.1", port=port, socket_timeout=5)
                   for port in self.ports]
        try:
            for epoch, (client, (first, last)) in enumerate(
                    zip(clients, self.slot_ranges(), strict=True), start=1):
                client.execute_command("CLUSTER", "ADDSLOTS", *range(first, last + 1))
                # Distinct epochs now, as redis-cli does: no collision to settle later.
                client.execute_command("CLUSTER", "SET-CONFIG-EPOCH", epoch)
            for port in self.ports[1:]:
                clients[0].execute_command("CLUSTER", "MEET", "127.0.0.1", port)
            self._wait_ok(clients)
        finally:
            for client in clients:
                client.close()

    def _wait_ok(self, clients: list[redis_sync.Redis]) -> None:
        deadline = time.monotonic() + READY_TIMEOUT_S
        while True:
            infos = [_cluster_info(client) for client in clients]
            if all(info.get("cluster_state") == "ok"
                   and info.get("cluster_known_nodes") == str(self.masters)
                   and info.get("cluster_slots_ok") == str(SLOTS) for info in infos):
                return
            if time.monotonic() > deadline:
                logs = "\n".join(f"--- node {s.port}:\n{s.log_tail(10)}" for s in self.servers)
                raise RuntimeError(f"{self!r} not ok within {READY_TIMEOUT_S:g} s: {infos}\n"
                                   f"{logs}")
            time.sleep(0.05)


def _cluster_info(client: redis_sync.Redis) -> dict[str, str]:
    text = client.execute_command("CLUSTER", "INFO")
    text = text.decode() if isinstance(text, bytes) else text
    return dict(line.split(":", 1) for line in text.split() if ":" in line)


def _free_port_pair() -> int:
    """A free loopback port whose cluster-bus port (port + 10000) is free too."""
    for _ in range(200):
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        if port + BUS_OFFSET > 65535:
            continue
        with socket.socket() as bus:
            try:
                bus.bind(("127.0.0.1", port + BUS_OFFSET))
            except OSError:
                continue
        return port
    raise RuntimeError("no free port pair (port, port + 10000) on 127.0.0.1")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "redis_cluster" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.real_redis)


@pytest.fixture(scope="module")
def redis_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    """A running three-master cluster, shared by the tests of one module; empty it yourself."""
    cluster = LocalCluster(redis_server_binary(), tmp_path_factory.mktemp("redis-cluster"))
    with cluster:
        yield cluster
