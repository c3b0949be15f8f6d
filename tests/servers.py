"""Private redis-server processes for fault tests: started on a free loopback port,
stopped (or paused, or killed) by their own PID, never the shared instance."""

from __future__ import annotations

import contextlib
import functools
import glob
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass(frozen=True)
class Tls:
    """A throwaway CA and a server certificate for 127.0.0.1 signed by it (openssl)."""

    ca: str
    cert: str
    key: str

    @classmethod
    def make(cls, folder: str) -> Tls:
        def run(*args: str) -> None:
            subprocess.run(["openssl", *args], check=True, capture_output=True, cwd=folder)

        run("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj",
            "/CN=quota test CA", "-keyout", "ca.key", "-out", "ca.crt")  # fmt: skip
        run("req", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=127.0.0.1",
            "-keyout", "redis.key", "-out", "redis.csr")  # fmt: skip
        with open(os.path.join(folder, "san.ext"), "w") as f:
            f.write("subjectAltName=IP:127.0.0.1\n")
        run("x509", "-req", "-in", "redis.csr", "-CA", "ca.crt", "-CAkey", "ca.key",
            "-CAcreateserial", "-days", "2", "-extfile", "san.ext",
            "-out", "redis.crt")  # fmt: skip
        path = functools.partial(os.path.join, folder)
        return cls(path("ca.crt"), path("redis.crt"), path("redis.key"))

    def server_args(self) -> list[str]:
        return ["--tls-cert-file", self.cert, "--tls-key-file", self.key,
                "--tls-ca-cert-file", self.ca, "--tls-auth-clients", "no"]  # fmt: skip


#: The ACL user the secured servers' tests give the gate, and its password.
ACL_USER, ACL_PASSWORD = "quota", "quota-secret"
#: The default user's password on the secured servers (the harness's own commands).
ADMIN_PASSWORD = "admin-secret"


class RedisServer:
    """One redis-server of our own. ``persist`` turns on AOF (appendfsync always).
    ``secured``: AUTH for the default user (ADMIN_PASSWORD), an ACL user (ACL_USER),
    and, with ``tls``, a TLS port beside the plain one."""

    def __init__(
        self,
        *,
        persist: bool = False,
        extra: Sequence[str] = (),
        secured: bool = False,
        tls: Tls | None = None,
    ) -> None:
        self.port = free_port()
        self.tls_port = free_port() if tls else 0
        self.dir = tempfile.mkdtemp(prefix="quota-redis-")
        self.persist = persist
        self.extra = list(extra)
        self.secured = secured
        self.tls = tls
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def client_url(self) -> str:
        """The gate's URL: the ACL user's, over TLS (the CA in the URL) when there is TLS."""
        user = f"{ACL_USER}:{ACL_PASSWORD}@" if self.secured else ""
        if self.tls:
            return f"rediss://{user}127.0.0.1:{self.tls_port}/0?ssl_ca_certs={self.tls.ca}"
        return f"redis://{user}127.0.0.1:{self.port}/0"

    def client(self) -> redis.Redis:
        # No retry: a test's command is sent once (redis-py retries timeouts by default).
        return redis.Redis(
            port=self.port,
            decode_responses=True,
            socket_timeout=5,
            retry=Retry(NoBackoff(), 0),
            password=ADMIN_PASSWORD if self.secured else None,
        )

    def start(self) -> RedisServer:
        args = ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1"]
        args += ["--dir", self.dir, "--save", "", "--daemonize", "no", "--loglevel", "warning"]
        args += ["--enable-debug-command", "local"]
        args += ["--appendonly", "yes", "--appendfsync", "always"] if self.persist else []
        if self.secured:
            args += ["--requirepass", ADMIN_PASSWORD, "--masterauth", ADMIN_PASSWORD]
            args += ["--user", ACL_USER, "on", f">{ACL_PASSWORD}", "~*", "&*", "+@all"]
        if self.tls:
            args += ["--tls-port", str(self.tls_port), *self.tls.server_args()]
        self.proc = subprocess.Popen([*args, *self.extra], stdout=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while True:
            try:
                with self.client() as c:
                    c.ping()
                return self
            except redis.exceptions.ConnectionError:
                if time.monotonic() > deadline or self.proc.poll() is not None:
                    raise RuntimeError(f"redis-server on {self.port} did not start") from None
                time.sleep(0.02)

    def kill(self) -> None:
        """SIGKILL: what a crash does."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGCONT)  # a paused server cannot stop
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.kill()

    def pause(self) -> None:
        assert self.proc is not None
        os.kill(self.proc.pid, signal.SIGSTOP)

    def resume(self) -> None:
        assert self.proc is not None
        os.kill(self.proc.pid, signal.SIGCONT)

    def restart(self) -> None:
        """Kill and start again on the same port (empty unless ``persist``)."""
        self.kill()
        self.start()

    def cleanup(self) -> None:
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)


def _pg_bin(name: str) -> str:
    found = shutil.which(name)
    if found:
        return found
    for path in sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"), reverse=True):
        return path
    raise RuntimeError(f"{name} not found: install PostgreSQL's server binaries")


class PostgresServer:
    """A PostgreSQL cluster of our own, on a free loopback port: to stop, kill or freeze
    (SIGSTOP of the postmaster and every backend) without touching the shared one."""

    def __init__(self) -> None:
        self.port = free_port()
        self.dir = tempfile.mkdtemp(prefix="quota-pg-")
        self.data = os.path.join(self.dir, "data")
        # As root the server must run as another user (initdb refuses root).
        self.user = "postgres" if os.geteuid() == 0 else None
        if self.user:
            shutil.chown(self.dir, self.user)
        self.proc: subprocess.Popen[bytes] | None = None
        subprocess.run(
            [_pg_bin("initdb"), "-D", self.data, "-U", "postgres", "--auth=trust", "-E", "UTF8"],
            check=True,
            stdout=subprocess.DEVNULL,
            user=self.user,
            cwd="/",
        )

    def url(self, database: str = "quota_faults_test") -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{database}"

    def start(self) -> PostgresServer:
        args = [_pg_bin("postgres"), "-D", self.data, "-p", str(self.port), "-k", self.dir]
        args += ["-c", "listen_addresses=127.0.0.1", "-c", "fsync=off"]
        self.proc = subprocess.Popen(
            args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, user=self.user, cwd="/"
        )
        deadline = time.monotonic() + 20
        while True:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1):
                    pass
                ready = subprocess.run(
                    [_pg_bin("pg_isready"), "-h", "127.0.0.1", "-p", str(self.port)],
                    stdout=subprocess.DEVNULL,
                    check=False,
                )
                if ready.returncode == 0:
                    return self
            except OSError:
                pass
            if time.monotonic() > deadline or self.proc.poll() is not None:
                raise RuntimeError(f"postgres on {self.port} did not start")
            time.sleep(0.1)

    def _pids(self) -> list[int]:
        """The postmaster and its children (backends, background workers)."""
        assert self.proc is not None
        pids = [self.proc.pid]
        for stat in glob.glob("/proc/[0-9]*/stat"):
            try:
                with open(stat) as f:
                    fields = f.read().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == self.proc.pid:
                pids.append(int(stat.split("/")[2]))
        return pids

    def freeze(self) -> None:
        self._signal(signal.SIGSTOP)

    def thaw(self) -> None:
        self._signal(signal.SIGCONT)

    def _signal(self, sig: signal.Signals) -> None:
        for pid in self._pids():
            with contextlib.suppress(ProcessLookupError):  # a backend that just ended
                os.kill(pid, sig)

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            for pid in self._pids():
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGCONT)
            self.proc.send_signal(signal.SIGQUIT)  # immediate shutdown, children too
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def cleanup(self) -> None:
        self.kill()
        shutil.rmtree(self.dir, ignore_errors=True)


def free_cluster_port() -> int:
    """A free port whose cluster bus port (+10000) is free too."""
    while True:
        port = free_port()
        if port + 10000 > 65535:
            continue
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port + 10000))
            except OSError:
                continue
        return port


class ClusterServers:
    """A Redis Cluster of our own: ``primaries`` primaries with ``replicas`` replicas
    each, on free loopback ports, made by ``redis-cli --cluster create``; a small
    cluster-node-timeout, so that a replica takes over a killed primary in ~1-2 s."""

    def __init__(
        self,
        primaries: int = 3,
        replicas: int = 1,
        node_timeout_ms: int = 1000,
        *,
        secured: bool = False,
        tls: Tls | None = None,
    ) -> None:
        extra = ["--cluster-enabled", "yes", "--cluster-node-timeout", str(node_timeout_ms)]
        extra += ["--cluster-config-file", "nodes.conf", "--appendonly", "no"]
        extra += ["--repl-diskless-sync-delay", "0"]  # replicas in sync at once, not 5 s on
        if tls:  # clients, the bus and replication over TLS; the plain port for the harness
            extra += ["--tls-cluster", "yes", "--tls-replication", "yes"]
        self.nodes: list[RedisServer] = []
        for _ in range(primaries * (1 + replicas)):
            node = RedisServer(extra=extra, secured=secured, tls=tls)
            node.port = free_cluster_port()
            if tls:  # the nodes meet at the TLS port: its bus is 10000 above it
                node.tls_port = free_cluster_port()
                node.extra = [*extra, "--cluster-port", str(node.tls_port + 10000)]
            self.nodes.append(node)
        self.replicas = replicas
        self.secured, self.tls = secured, tls

    @property
    def url(self) -> str:
        user = f"{ACL_USER}:{ACL_PASSWORD}@" if self.secured else ""
        if self.tls:
            hosts = ",".join(f"127.0.0.1:{n.tls_port}" for n in self.nodes[:3])
            return f"rediss+cluster://{user}{hosts}?ssl_ca_certs={self.tls.ca}"
        return f"redis+cluster://{user}" + ",".join(f"127.0.0.1:{n.port}" for n in self.nodes[:3])

    def start(self) -> ClusterServers:
        for node in self.nodes:
            node.start()
        auth = ["-a", ADMIN_PASSWORD, "--no-auth-warning"] if self.secured else []
        if self.tls:
            auth += ["--tls", "--cacert", self.tls.ca]
            addresses = [f"127.0.0.1:{n.tls_port}" for n in self.nodes]
        else:
            addresses = [f"127.0.0.1:{n.port}" for n in self.nodes]
        replicas = ["--cluster-replicas", str(self.replicas), "--cluster-yes"]
        subprocess.run(
            ["redis-cli", *auth, "--cluster", "create", *addresses, *replicas],
            check=True,
            stdout=subprocess.DEVNULL,
        )
        self.wait_ok()
        return self

    def wait_ok(self, seconds: float = 30.0) -> None:
        """Until every running node says the cluster is ok and agrees on the slot map,
        and every replica is in sync with its primary."""
        deadline = time.monotonic() + seconds
        while True:
            try:
                if self._agree():
                    return
            except redis.exceptions.RedisError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError("the test cluster did not become ok")
            time.sleep(0.1)

    def _agree(self) -> bool:
        maps = set()
        for node in self.running():
            with node.client() as c:
                if "cluster_state:ok" not in c.execute_command("CLUSTER", "INFO"):
                    return False
                replication = c.info("replication")
                if replication["role"] == "slave" and replication["master_link_status"] != "up":
                    return False
                slots = c.execute_command("CLUSTER", "SLOTS")
                maps.add(str(sorted((s[0], s[1], s[2][1]) for s in slots)))
        return len(maps) == 1

    def running(self) -> list[RedisServer]:
        return [n for n in self.nodes if n.proc is not None and n.proc.poll() is None]

    def role(self, node: RedisServer) -> str:
        with node.client() as c:
            return str(c.execute_command("ROLE")[0])

    def primaries(self) -> list[RedisServer]:
        return [n for n in self.running() if self.role(n) == "master"]

    def replica_of(self, primary: RedisServer) -> RedisServer:
        for node in self.running():
            with node.client() as c:
                role = c.execute_command("ROLE")
            if role[0] == "slave" and int(role[2]) == primary.port:
                return node
        raise RuntimeError(f"no replica of {primary.port}")

    def owner(self, key: str) -> RedisServer:
        """The primary that owns ``key``'s slot now."""
        with self.running()[0].client() as c:
            slot = int(c.execute_command("CLUSTER", "KEYSLOT", key))
            for start, end, primary, *_ in c.execute_command("CLUSTER", "SLOTS"):
                if start <= slot <= end:
                    return next(n for n in self.nodes if n.port == int(primary[1]))
        raise RuntimeError(f"no node owns {key}")

    def cleanup(self) -> None:
        for node in self.nodes:
            node.cleanup()


class SentinelServers:
    """A primary, a replica and three sentinels of our own (Redis high availability
    without Cluster), on free loopback ports; quorum 2, a primary is down after 1 s."""

    NAME = "quotaprimary"

    def __init__(self, *, secured: bool = False, tls: Tls | None = None) -> None:
        self.primary = RedisServer(secured=secured, tls=tls)
        self.replica = RedisServer(secured=secured, tls=tls)
        self.sentinel_ports = [free_port() for _ in range(3)]
        self.sentinel_tls_ports = [free_port() if tls else 0 for _ in range(3)]
        self.dir = tempfile.mkdtemp(prefix="quota-sentinel-")
        self.sentinels: list[subprocess.Popen[bytes]] = []
        self.secured, self.tls = secured, tls

    @property
    def url(self) -> str:
        """The gate's: the ACL user, TLS to the sentinels and the primary, when secured."""
        user = f"{ACL_USER}:{ACL_PASSWORD}@" if self.secured else ""
        query = [f"sentinel_password={ADMIN_PASSWORD}"] if self.secured else []
        if self.tls:
            hosts = ",".join(f"127.0.0.1:{p}" for p in self.sentinel_tls_ports)
            query.append(f"ssl_ca_certs={self.tls.ca}")
            scheme = "rediss+sentinel"
        else:
            hosts = ",".join(f"127.0.0.1:{p}" for p in self.sentinel_ports)
            scheme = "redis+sentinel"
        return f"{scheme}://{user}{hosts}/{self.NAME}" + (f"?{'&'.join(query)}" if query else "")

    def client_port(self, node: RedisServer) -> int:
        """The port clients (and the sentinels) reach ``node`` at."""
        return node.tls_port or node.port

    def start(self) -> SentinelServers:
        self.primary.start()
        self.replica.extra = ["--replicaof", "127.0.0.1", str(self.client_port(self.primary))]
        if self.tls:
            self.replica.extra += ["--tls-replication", "yes"]
            self.primary.extra += ["--tls-replication", "yes"]  # once it is a replica
        self.replica.start()
        for port, tls_port in zip(self.sentinel_ports, self.sentinel_tls_ports, strict=True):
            conf = os.path.join(self.dir, f"sentinel-{port}.conf")
            lines = [f"port {port}", "bind 127.0.0.1", f"dir {self.dir}"]
            lines.append(
                f"sentinel monitor {self.NAME} 127.0.0.1 {self.client_port(self.primary)} 2"
            )
            lines.append(f"sentinel down-after-milliseconds {self.NAME} 1000")
            lines.append(f"sentinel failover-timeout {self.NAME} 5000")
            if self.secured:
                lines += [
                    f"requirepass {ADMIN_PASSWORD}",
                    f"sentinel auth-pass {self.NAME} {ADMIN_PASSWORD}",
                ]
            if self.tls:
                lines += [f"tls-port {tls_port}", "tls-replication yes"]
                lines += [
                    f"{k[2:]} {v}" for k, v in zip(*[iter(self.tls.server_args())] * 2, strict=True)
                ]
            with open(conf, "w") as f:
                f.write("\n".join(lines) + "\n")
            self.sentinels.append(
                subprocess.Popen(
                    ["redis-server", conf, "--sentinel", "--loglevel", "warning"],
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                )
            )
        self.wait_ready()
        return self

    def sentinel(self, port: int) -> redis.Redis:
        password = ADMIN_PASSWORD if self.secured else None
        return redis.Redis(port=port, decode_responses=True, socket_timeout=5, password=password)

    def primary_port(self) -> int | None:
        """The primary the sentinels agree on (None while they do not)."""
        seen = set()
        for port in self.sentinel_ports:
            try:
                with self.sentinel(port) as s:
                    addr = s.execute_command("SENTINEL", "GET-MASTER-ADDR-BY-NAME", self.NAME)
            except redis.exceptions.RedisError:
                return None
            seen.add(int(addr[1]) if addr else None)
        return seen.pop() if len(seen) == 1 else None

    def wait_ready(self, seconds: float = 30.0) -> None:
        """Until every sentinel knows the primary, its replica and the other sentinels,
        and the replica is in sync."""
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            try:
                current = self.primary_port()
                ready = current is not None
                for port in self.sentinel_ports:
                    with self.sentinel(port) as s:
                        fields = s.sentinel_master(self.NAME)
                        ready = ready and int(fields["num-other-sentinels"]) == 2
                        ready = ready and int(fields["num-slaves"]) >= 1
                standby = (
                    self.replica if current == self.client_port(self.primary) else self.primary
                )
                with standby.client() as c:
                    ready = ready and c.info("replication").get("master_link_status") == "up"
                if ready:
                    return
            except redis.exceptions.RedisError:
                pass
            time.sleep(0.1)
        raise RuntimeError("the test sentinels did not become ready")

    def node(self, port: int) -> RedisServer:
        return self.primary if self.client_port(self.primary) == port else self.replica

    def cleanup(self) -> None:
        for proc in self.sentinels:
            if proc.poll() is None:
                proc.terminate()
                proc.wait(10)
        self.primary.cleanup()
        self.replica.cleanup()
        shutil.rmtree(self.dir, ignore_errors=True)
