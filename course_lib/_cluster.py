"""``connect()`` for a Redis Cluster: ``redis+cluster://`` URLs (see ``course_lib.redis``).

    r = await connect("redis+cluster://:pw@10.0.0.1:7000,10.0.0.2:7000")  # a RedisCluster

Apart from ``redis.py`` to keep each module short; ``course_lib.redis`` is the API.
"""

from __future__ import annotations

__all__ = ["cluster_seeds", "connect_cluster"]

import asyncio
from typing import Any
from urllib.parse import unquote, urlsplit

import redis.asyncio
import redis.asyncio.cluster
import redis.exceptions

from .redis import (
    _CLUSTER_SCHEMES,
    _EXPECTED,
    CONNECT_TIMEOUT_S,
    RedisUnavailable,
    _check_url,
    _scrub,
    mask_url,
)


def cluster_seeds(url: str) -> tuple[list[tuple[str, int]], str]:
    """The seed nodes of a ``redis+cluster://`` URL, and the single-node URL of the first.

        cluster_seeds("redis+cluster://:pw@a:7000,b:7001/0?protocol=3")
        # ([('a', 7000), ('b', 7001)], 'redis://:pw@a:7000/0?protocol=3')

    ValueError (naming the masked URL) when it is not one, or a seed has no port.
    """
    shown = mask_url(url)
    scheme, sep, rest = url.partition("://")
    plain = _CLUSTER_SCHEMES.get(scheme.lower())
    if plain is None or not sep:
        raise ValueError(f"malformed Redis URL {shown!r}: not a redis+cluster:// URL; "
                         f"{_EXPECTED}")
    # The user-info ends at the last '@' (as urllib reads it); the seeds end at the
    # first '/', '?' or '#' after it.
    userinfo, at, hostpart = rest.rpartition("@")
    cut = min((i for i in (hostpart.find(c) for c in "/?#") if i >= 0), default=len(hostpart))
    seeds_text, tail = hostpart[:cut], hostpart[cut:]
    seeds: list[tuple[str, int]] = []
    first = ""
    for seed in seeds_text.split(","):
        single = f"{plain}://{userinfo}{at}{seed.strip()}{tail}"
        try:
            _check_url(single)  # the port, the database, a password not encoded...
        except ValueError as exc:
            reason = str(exc).split(": ", 1)[1].rsplit("; expected", 1)[0]
            raise ValueError(f"malformed Redis URL {shown!r}: seed {seed.strip()!r}: "
                             f"{_scrub(reason, url)}; {_EXPECTED}") from None
        parts = urlsplit(single)
        if parts.port is None:  # a cluster has no usual port to fall back on
            raise ValueError(f"malformed Redis URL {shown!r}: seed {seed.strip()!r} has no "
                             f"port; {_EXPECTED}")
        if unquote(parts.path).strip("/") not in ("", "0"):
            raise ValueError(f"malformed Redis URL {shown!r}: a cluster has only database 0; "
                             f"{_EXPECTED}")
        seeds.append((parts.hostname or "", parts.port))
        first = first or single
    return seeds, first


async def connect_cluster(url: str, *, ping: bool, **kw: Any) -> redis.asyncio.RedisCluster:
    """``connect()`` for a ``redis+cluster://`` URL: a RedisCluster, pinged within bounds."""
    shown = mask_url(url)
    seeds, first = cluster_seeds(url)
    kw.setdefault("socket_connect_timeout", CONNECT_TIMEOUT_S)
    nodes = [redis.asyncio.cluster.ClusterNode(host, port) for host, port in seeds[1:]]
    try:
        client = redis.asyncio.RedisCluster.from_url(first, startup_nodes=nodes, **kw)
    except (ValueError, redis.exceptions.RedisClusterException) as exc:
        reason = _scrub(str(exc), url)
        raise ValueError(f"malformed Redis URL {shown!r}: {reason}; {_EXPECTED}") from None
    protocol = client.connection_kwargs.get("protocol")
    if str(protocol) not in ("2", "3"):
        await client.aclose()
        raise ValueError(f"malformed Redis URL {shown!r}: protocol must be 2 or 3, "
                         f"not {_scrub(str(protocol), url)!r}; {_EXPECTED}")
    if ping:
        # As for one server: the first command reads the slot map from a seed
        # (connects, CLUSTER SLOTS), then PING goes to every master; the whole gets
        # socket_connect_timeout + CONNECT_TIMEOUT_S, whatever the retries.
        bound_s = (kw.get("socket_connect_timeout") or 0) + CONNECT_TIMEOUT_S
        try:
            async with asyncio.timeout(bound_s) as scope:
                await client.ping()
        except BaseException as exc:
            await client.aclose()
            if not isinstance(exc, (redis.exceptions.RedisError, OSError,
                                    redis.exceptions.RedisClusterException)):
                raise
            cause = _scrub(str(exc) or type(exc).__name__, url)
            if scope.expired():
                cause = (f"it did not answer within {bound_s:g} s (no seed reachable and "
                         "answering, or a node that accepts connections and never replies)")
            raise RedisUnavailable(shown, cause) from None
    return client
