"""Where Redis is: one server, one behind Sentinel, or a Redis Cluster. Parses
``QUOTA_REDIS_URL`` and makes the redis-py clients for each (sync and asyncio); no
calls of its own.

A Sentinel URL names its sentinels and the primary's name:
``redis+sentinel://[user:password@]host:port[,host:port...]/<name>[?options]``
(``rediss+sentinel://`` for TLS to the primary); the credentials and options are the
primary's and its replicas'; ``sentinel_password`` in the query is the sentinels'.
The client asks the sentinels for the primary at each connect, so after a failover a
new connection reaches the new primary.

A cluster URL names its seed nodes as `limits` does:
``redis+cluster://[user:password@]host:port[,host:port...][?options]`` (or
``rediss+cluster://`` for TLS). Every node is reached with the same credentials and
options, as a ``redis://`` (``rediss://``) URL of its own (`node_url`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import redis
import redis.asyncio
import redis.asyncio.cluster
import redis.asyncio.retry
import redis.asyncio.sentinel
import redis.cluster
import redis.connection
import redis.sentinel
from redis.backoff import NoBackoff
from redis.retry import Retry

CLUSTER_SCHEMES = ("redis+cluster", "rediss+cluster")
SENTINEL_SCHEMES = ("redis+sentinel", "rediss+sentinel")
#: A client of either kind.
Client = redis.Redis | redis.cluster.RedisCluster


@dataclass(frozen=True, slots=True)
class ClusterUrl:
    """A parsed cluster URL: its seed nodes and what every node URL shares."""

    tls: bool
    userinfo: str  # "user:password@" or ""
    seeds: tuple[tuple[str, int], ...]
    query: str  # "?..." or ""

    def node_url(self, host: str, port: int) -> str:
        """The standalone URL of one node (a cluster has database 0 only)."""
        scheme = "rediss" if self.tls else "redis"
        return f"{scheme}://{self.userinfo}{host}:{port}/0{self.query}"


def is_cluster(url: str) -> bool:
    return url.split("://", 1)[0] in CLUSTER_SCHEMES


def parse_cluster_url(url: str) -> ClusterUrl:
    """The seeds and shared options of a cluster URL; ValueError names what is wrong."""
    scheme, _, rest = url.partition("://")
    if scheme not in CLUSTER_SCHEMES or not rest:
        raise ValueError(f"a cluster URL is redis+cluster://host:port[,host:port...], not {url!r}")
    netloc, _, query = rest.partition("?")
    netloc, _, path = netloc.partition("/")
    if path not in ("", "0"):
        raise ValueError(f"Redis Cluster has database 0 only: {url!r}")
    userinfo, at, hosts = netloc.rpartition("@")
    seeds = []
    for part in hosts.split(","):
        parts = urlsplit(f"//{part}")
        try:
            port = parts.port or 6379
        except ValueError:
            raise ValueError(f"bad port in cluster URL: {part!r}") from None
        if not parts.hostname:
            raise ValueError(f"a cluster URL needs host:port for each node, not {part!r}")
        seeds.append((parts.hostname, port))
    return ClusterUrl(
        tls=scheme.startswith("rediss"),
        userinfo=userinfo + at,
        seeds=tuple(seeds),
        query=f"?{query}" if query else "",
    )


def is_sentinel(url: str) -> bool:
    return url.split("://", 1)[0] in SENTINEL_SCHEMES


@dataclass(frozen=True, slots=True)
class SentinelUrl:
    """A parsed Sentinel URL: the sentinels, the primary's name, and the options of a
    connection to the primary (`redis.connection.parse_url`'s, without host and port)."""

    sentinels: tuple[tuple[str, int], ...]
    name: str
    options: dict[str, Any]
    sentinel_password: str | None


def parse_sentinel_url(url: str) -> SentinelUrl:
    """The sentinels, name and options of a Sentinel URL; ValueError says what is wrong."""
    scheme, _, rest = url.partition("://")
    if scheme not in SENTINEL_SCHEMES:
        raise ValueError(f"a Sentinel URL is redis+sentinel://host:port[,...]/name, not {url!r}")
    netloc, _, tail = rest.partition("/")
    path, _, query = tail.partition("?")
    name, _, db = path.partition("/")
    if not name:
        raise ValueError(f"a Sentinel URL names the primary after the hosts: {url!r}")
    userinfo, at, hosts = netloc.rpartition("@")
    plain = parse_cluster_url(f"redis+cluster://{hosts}")  # the same host:port list
    params = dict(p.split("=", 1) for p in query.split("&") if "=" in p)
    sentinel_password = params.pop("sentinel_password", None)
    rebuilt = "&".join(f"{k}={v}" for k, v in params.items())
    tls = "rediss" if scheme.startswith("rediss") else "redis"
    first_host, first_port = plain.seeds[0]
    options: dict[str, Any] = redis.connection.parse_url(  # type: ignore[no-untyped-call]
        f"{tls}://{userinfo}{at}{first_host}:{first_port}/{db or 0}"
        + (f"?{rebuilt}" if rebuilt else "")
    )
    for key in ("host", "port", "connection_class"):
        options.pop(key, None)
    if tls == "rediss":
        options["ssl"] = True
    return SentinelUrl(plain.seeds, name, options, sentinel_password)


def sync_client(url: str, **kwargs: Any) -> Client:
    """A redis-py client for ``url``: `RedisCluster` for a cluster URL, the primary's
    client through the sentinels for a Sentinel URL. ``kwargs`` are the connection
    options (timeouts, decode_responses, retry)."""
    if is_sentinel(url):
        s = parse_sentinel_url(url)
        sentinel = redis.sentinel.Sentinel(
            list(s.sentinels),
            sentinel_kwargs=_sentinel_kwargs(s, kwargs, Retry(NoBackoff(), 0)),
            **s.options,
            **kwargs,
        )
        primary: redis.Redis = sentinel.master_for(s.name, redis_class=redis.Redis)
        return primary
    if not is_cluster(url):
        return redis.Redis.from_url(url, **kwargs)
    c = parse_cluster_url(url)
    (host, port), rest = c.seeds[0], c.seeds[1:]
    nodes = [redis.cluster.ClusterNode(h, p) for h, p in rest]  # type: ignore[no-untyped-call]
    return redis.cluster.RedisCluster.from_url(
        c.node_url(host, port), startup_nodes=nodes, **kwargs
    )


def async_client(
    url: str, **kwargs: Any
) -> redis.asyncio.Redis | redis.asyncio.cluster.RedisCluster:
    """The asyncio twin of `sync_client`."""
    if is_sentinel(url):
        s = parse_sentinel_url(url)
        sentinel = redis.asyncio.sentinel.Sentinel(
            list(s.sentinels),
            sentinel_kwargs=_sentinel_kwargs(s, kwargs, redis.asyncio.retry.Retry(NoBackoff(), 0)),
            **s.options,
            **kwargs,
        )
        primary: redis.asyncio.Redis = sentinel.master_for(s.name, redis_class=redis.asyncio.Redis)
        return primary
    if not is_cluster(url):
        return redis.asyncio.Redis.from_url(url, **kwargs)
    c = parse_cluster_url(url)
    (host, port), rest = c.seeds[0], c.seeds[1:]
    nodes = [redis.asyncio.cluster.ClusterNode(h, p) for h, p in rest]
    return redis.asyncio.cluster.RedisCluster.from_url(
        c.node_url(host, port), startup_nodes=nodes, **kwargs
    )


def _sentinel_kwargs(s: SentinelUrl, kwargs: dict[str, Any], retry: Any) -> dict[str, Any]:
    """How to reach the sentinels: the same timeouts and TLS as the primary, their own
    password, and ``retry`` (the sync or asyncio no-retry, as redis-py wants each)."""
    out: dict[str, Any] = {
        k: kwargs[k] for k in ("socket_timeout", "socket_connect_timeout") if k in kwargs
    }
    out.update({k: v for k, v in s.options.items() if k.startswith("ssl")})
    # One try a sentinel: a discovery asks the next sentinel, and the gate's transport
    # retries the call (redis-py's default backoff would hold a caller for seconds).
    out["retry"] = retry
    if s.sentinel_password:
        out["password"] = s.sentinel_password
    return out


def primaries(client: Client) -> list[redis.Redis]:
    """A standalone client for each primary (the client itself when not a cluster):
    for what covers every node (SCAN, INFO, loading the function library)."""
    if isinstance(client, redis.cluster.RedisCluster):
        return [node.redis_connection for node in client.get_primaries()]  # type: ignore[no-untyped-call]
    return [client]


def node_of(client: Client, key: str) -> redis.Redis:
    """The standalone client of the primary that owns ``key``'s slot."""
    if isinstance(client, redis.cluster.RedisCluster):
        node = client.get_node_from_key(key)  # type: ignore[no-untyped-call]
        if node.redis_connection is None:  # created lazily by redis-py
            client.nodes_manager.initialize()
            node = client.get_node_from_key(key)  # type: ignore[no-untyped-call]
        conn: redis.Redis = node.redis_connection
        return conn
    return client
