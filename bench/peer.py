"""The servers a benchmark runs against: kizuna in a few configurations, and its peers.

A peer is a command that starts a server on a given port plus the name of the load
generator's protocol adapter that talks to it (``kizuna``, ``kizuna-sse``, ``guide`` or
``socketio``; see bench/loadgen/loadgen.js). Adding a peer is adding one :class:`Peer`
to :data:`PEERS` (and, for a new wire protocol, one adapter in the generator).

Every server is started fresh for each scenario, pinned to the server core, and
stopped afterwards, so no scenario inherits another one's memory or connections.
A multi-node scenario starts several processes of one Redis-backed peer on one
private Redis (:func:`running_nodes`).
"""

from __future__ import annotations

import contextlib
import json
import secrets
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import jwt

from bench import procs

__all__ = ["PEERS", "REDIS_TWINS", "Peer", "RunningServer", "Settings", "running", "running_nodes"]

BENCH_DIR = Path(__file__).resolve().parent
KIZUNA_CONFIG = BENCH_DIR / "kizuna-bench.toml"
JWT_SECRET = "bench-secret-" + "0123456789abcdef" * 3  # HS256 needs at least 32 bytes


@dataclass(frozen=True)
class Settings:
    """Where to pin, where to write logs."""

    out: Path
    server_cpu: int | None = 0
    loadgen_cpu: int | None = 1


@dataclass
class RunningServer:
    """A started peer: what the load generator needs to reach it and to measure it."""

    peer: Peer
    port: int
    proc: subprocess.Popen[bytes]
    helpers: list[subprocess.Popen[bytes]] = field(default_factory=list)
    nodes: list[RunningServer] = field(default_factory=list)
    """Further nodes of the same peer on the same Redis (multi-node scenarios)."""
    idle_nodes: list[RunningServer] = field(default_factory=list)
    """Nodes that get no clients at all: the witnesses that traffic goes only where needed."""
    redis_port: int | None = None

    @property
    def pid(self) -> int:
        return self.proc.pid

    @property
    def url(self) -> str:
        return f"{self.peer.scheme}://127.0.0.1:{self.port}{self.peer.path}"

    @property
    def http_base(self) -> str:
        """Where the server's HTTP endpoints are (kizuna's SSE stream, for one)."""
        return f"http://127.0.0.1:{self.port}"

    @property
    def urls(self) -> list[str]:
        """Every node's URL, this one first (the publisher's node in multi-node scenarios)."""
        return [self.url, *(node.url for node in self.nodes)]

    @property
    def http_bases(self) -> list[str]:
        """Every node's :attr:`http_base`, in the order of :attr:`urls`."""
        return [self.http_base, *(node.http_base for node in self.nodes)]

    @property
    def cpu_pids(self) -> list[int]:
        """The server and what serves with it (Redis): their CPU is the system's cost."""
        return [self.proc.pid, *(n.pid for n in self.nodes), *(h.pid for h in self.helpers)]

    @property
    def redis_pids(self) -> list[int]:
        """The Redis part of :attr:`cpu_pids`, reported on its own."""
        return [h.pid for h in self.helpers]


Command = Callable[[int, dict[str, int]], tuple[list[str], dict[str, str]]]


@dataclass(frozen=True)
class Peer:
    name: str
    protocol: str
    """The load generator's adapter: ``kizuna`` (native protocol), ``kizuna-batch`` (the same,
    the publisher packing each millisecond's publishes into one frame), ``kizuna-sse`` (SSE
    subscribers, a native publisher), ``guide`` (section 5) or ``socketio`` (section 3)."""
    command: Command
    """(port, helper ports) -> (argv, extra environment)."""
    description: str
    fanout_channel: str
    idle_prefix: str
    path: str = "/"
    scheme: str = "ws"
    """``ws``, or ``http`` for Socket.IO (whose client takes the namespace's HTTP URL)."""
    jwt: bool = False
    """Send a JWT (kizuna's native and SSE adapters always do)."""
    rate_scale: float = 1.0
    """This peer's fan-out ladder and overload rate are the plan's times this factor (unless
    given on the command line): Socket.IO servers deliver an order of magnitude less, and a
    ladder that starts above their limit would measure nothing."""
    python: bool = False
    """A Python process: py-spy can profile it."""
    npm_dir: Path | None = None
    """Node dependencies to install (``npm ci``) before the first start."""
    redis: bool = False
    """Needs a private redis-server (started on a free port, pinned with the server)."""
    jwt_secret: str = JWT_SECRET
    """The HS256 secret the generator signs tokens with (a deployment's own, for --url)."""
    fixed_token: str | None = None
    """A token to use as is instead of signing one (``--token``: one shared by all)."""

    @property
    def authenticated(self) -> bool:
        """Its clients carry a JWT (kizuna's endpoints; the guide's peers have no auth)."""
        return self.jwt or self.protocol in ("kizuna", "kizuna-sse", "kizuna-batch")

    def token(self, sub: str = "bench") -> str:
        if not self.authenticated:
            return ""
        if self.fixed_token is not None:
            return self.fixed_token
        now = int(time.time())
        claims = {"sub": sub, "iat": now, "exp": now + 3600}
        return jwt.encode(claims, self.jwt_secret, algorithm="HS256")

    def tokens(self, count: int) -> list[str]:
        """One token per connection (its own ``sub``), for the connect scenario.

        Distinct tokens keep a server from answering the 5,000th verification from a
        cache filled by the first; with ``fixed_token`` there is only that one.
        Empty for protocols without authentication.
        """
        if not self.authenticated:
            return []
        if self.fixed_token is not None:
            return [self.fixed_token]
        return [self.token(f"bench-{i}") for i in range(count)]


def _kizuna_command(port: int, _: dict[str, int]) -> tuple[list[str], dict[str, str]]:
    script = Path(sys.executable).with_name("kizuna")
    prefix = [str(script)] if script.exists() else [sys.executable, "-m", "kizuna.cli"]
    argv = [
        *prefix,
        "serve",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--grpc-port",
        "0",
        "--jwt-secret",
        JWT_SECRET,
        "--log-level",
        "warning",
        "--config",
        str(KIZUNA_CONFIG),
    ]
    return argv, {}


GC_TUNED = (
    "import gc, sys; gc.freeze(); gc.set_threshold(100_000, 50, 1000); "
    "from kizuna.cli import main; sys.exit(main(sys.argv[1:]))"
)
"""kizuna with the cyclic GC tamed (an experiment for DESIGN.md's note on GC and p99)."""


def _kizuna_gc_command(port: int, helpers: dict[str, int]) -> tuple[list[str], dict[str, str]]:
    argv, env = _kizuna_command(port, helpers)
    return [sys.executable, "-c", GC_TUNED, *argv[argv.index("serve") :]], env


# Tracing on at kizuna's default 10 % sampling, exporting OTLP/HTTP to a sink that discards
# (a thread in the same process: its cost is counted against kizuna, so this overstates).
OBSERVED = (
    "import os, sys, threading; "
    "from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer\n"
    "class Sink(BaseHTTPRequestHandler):\n"
    "    def do_POST(self):\n"
    "        self.rfile.read(int(self.headers['Content-Length']))\n"
    "        self.send_response(200); self.send_header('Content-Length', '0'); self.end_headers()\n"
    "    def log_message(self, *a): pass\n"
    "sink = ThreadingHTTPServer(('127.0.0.1', 0), Sink)\n"
    "threading.Thread(target=sink.serve_forever, daemon=True).start()\n"
    "os.environ['OTEL_EXPORTER_OTLP_ENDPOINT'] = f'http://127.0.0.1:{sink.server_address[1]}'\n"
    "os.environ['OTEL_TRACES_SAMPLER'] = 'parentbased_traceidratio'\n"
    "os.environ['OTEL_TRACES_SAMPLER_ARG'] = '0.1'\n"
    "from kizuna.cli import main; sys.exit(main(sys.argv[1:]))"
)


def _kizuna_observed_command(
    port: int, helpers: dict[str, int]
) -> tuple[list[str], dict[str, str]]:
    argv, env = _kizuna_command(port, helpers)
    return [sys.executable, "-c", OBSERVED, *argv[argv.index("serve") :]], env


def _kizuna_bare_command(port: int, helpers: dict[str, int]) -> tuple[list[str], dict[str, str]]:
    argv, env = _kizuna_command(port, helpers)
    return [*argv, "--no-metrics"], env


def _py_websockets_command(port: int, _: dict[str, int]) -> tuple[list[str], dict[str, str]]:
    script = BENCH_DIR / "peers" / "py_websockets_server.py"
    return [sys.executable, str(script), "--port", str(port)], {}


def _py_uvicorn_command(port: int, _: dict[str, int]) -> tuple[list[str], dict[str, str]]:
    script = BENCH_DIR / "peers" / "py_uvicorn_server.py"
    return [sys.executable, str(script), "--port", str(port)], {}


def _kizuna_redis_command(port: int, helpers: dict[str, int]) -> tuple[list[str], dict[str, str]]:
    argv, env = _kizuna_command(port, helpers)
    return [*argv, "--broker", f"redis://127.0.0.1:{helpers['redis']}/0"], env


def _py_websockets_redis_command(
    port: int, helpers: dict[str, int]
) -> tuple[list[str], dict[str, str]]:
    script = BENCH_DIR / "peers" / "py_websockets_redis_server.py"
    argv = [sys.executable, str(script), "--port", str(port)]
    return [*argv, "--redis-port", str(helpers["redis"])], {}


def _py_socketio_command(port: int, _: dict[str, int]) -> tuple[list[str], dict[str, str]]:
    script = BENCH_DIR / "peers" / "py_socketio_server.py"
    return [sys.executable, str(script), "--port", str(port)], {}


def _node_command(directory: str, *preload: str) -> Command:
    def command(port: int, helpers: dict[str, int]) -> tuple[list[str], dict[str, str]]:
        base = BENCH_DIR / "peers" / directory
        argv = ["node"]
        for module in preload:
            argv += ["-r", str(base / module)]
        argv.append(str(base / "server.js"))
        env = {"BENCH_PORT": str(port)}
        if "redis" in helpers:
            env["BENCH_REDIS_PORT"] = str(helpers["redis"])
        return argv, env

    return command


PEERS: dict[str, Peer] = {
    peer.name: peer
    for peer in [
        Peer(
            name="kizuna",
            protocol="kizuna",
            command=_kizuna_command,
            description="kizuna serve, memory broker, namespace `bench` "
            "(no history, no presence, no join/leave)",
            fanout_channel="bench:fanout",
            idle_prefix="bench:room-",
            path="/connection/websocket",
            python=True,
        ),
        Peer(
            name="kizuna-history",
            protocol="kizuna",
            command=_kizuna_command,
            description="kizuna serve, memory broker, namespace `hist` "
            "(history 100, no presence, no join/leave)",
            fanout_channel="hist:fanout",
            idle_prefix="hist:room-",
            path="/connection/websocket",
            python=True,
        ),
        Peer(
            name="kizuna-gc",
            protocol="kizuna",
            command=_kizuna_gc_command,
            description="as `kizuna`, started with gc.freeze() and "
            "gc.set_threshold(100000, 50, 1000) (an experiment, not a product setting)",
            fanout_channel="bench:fanout",
            idle_prefix="bench:room-",
            path="/connection/websocket",
            python=True,
        ),
        Peer(
            name="kizuna-bare",
            protocol="kizuna",
            command=_kizuna_bare_command,
            description="as `kizuna`, with metrics off (--no-metrics) and tracing off",
            fanout_channel="bench:fanout",
            idle_prefix="bench:room-",
            path="/connection/websocket",
            python=True,
        ),
        Peer(
            name="kizuna-observed",
            protocol="kizuna",
            command=_kizuna_observed_command,
            description="as `kizuna`, with metrics on and OpenTelemetry tracing at 10 % "
            "sampling, exported over OTLP/HTTP to a discarding sink in the same process",
            fanout_channel="bench:fanout",
            idle_prefix="bench:room-",
            path="/connection/websocket",
            python=True,
        ),
        Peer(
            name="kizuna-chat",
            protocol="kizuna",
            command=_kizuna_command,
            description="kizuna serve, memory broker, default namespace `chat` "
            "(history 100, presence, join/leave)",
            fanout_channel="chat:fanout",
            idle_prefix="chat:room-",
            path="/connection/websocket",
            python=True,
        ),
        Peer(
            name="kizuna-sse",
            protocol="kizuna-sse",
            command=_kizuna_command,
            description="as `kizuna` (namespace `bench`), but the subscribers read "
            "`GET /connection/sse?channels=…` (Server-Sent Events, token in an Authorization "
            "header); the publisher stays on the native WebSocket",
            fanout_channel="bench:fanout",
            idle_prefix="bench:room-",
            path="/connection/websocket",
            python=True,
        ),
        Peer(
            name="kizuna-socketio",
            protocol="socketio",
            command=_kizuna_command,
            description="kizuna's Socket.IO endpoint (`/socket.io/`, namespace `/chat` = "
            "kizuna namespace `chat`: history 100, presence, join/leave as `userJoined`), "
            "socket.io-client over WebSocket only, JWT in `auth.token`; rates ÷ 10",
            fanout_channel="fanout",
            idle_prefix="room-",
            path="/chat",
            scheme="http",
            python=True,
            jwt=True,
            rate_scale=0.1,
        ),
        Peer(
            name="py-socketio",
            protocol="socketio",
            command=_py_socketio_command,
            description="python-socketio 5 AsyncServer (ASGI app on uvicorn, uvloop), the "
            "guide's section 3 chat: namespace `/chat`, rooms, `userJoined`, `newMessage`; "
            "no authentication; rates ÷ 10",
            fanout_channel="fanout",
            idle_prefix="room-",
            path="/chat",
            scheme="http",
            python=True,
            rate_scale=0.1,
        ),
        Peer(
            name="py-websockets",
            protocol="guide",
            command=_py_websockets_command,
            description="websockets 17 (asyncio API, uvloop), websockets.broadcast(), "
            "the guide's JSON protocol",
            fanout_channel="chat:fanout",
            idle_prefix="room-",
            python=True,
        ),
        Peer(
            name="py-uvicorn",
            protocol="guide",
            command=_py_uvicorn_command,
            description="py-websockets' server as an ASGI app on uvicorn (httptools, uvloop, "
            "websockets-sansio), as kizuna is served: what uvicorn and ASGI cost by themselves",
            fanout_channel="chat:fanout",
            idle_prefix="room-",
            python=True,
        ),
        Peer(
            name="node-ws-local",
            protocol="guide",
            command=_node_command("node-ws-local"),
            description="the guide's Node.js ws server with in-process fan-out (no Redis)",
            fanout_channel="chat:fanout",
            idle_prefix="room-",
            npm_dir=BENCH_DIR / "peers" / "node-ws-local",
        ),
        Peer(
            name="seed-node",
            protocol="guide",
            command=_node_command("seed-node", "bench-shim.js"),
            description="the guide's Node.js ws + ioredis server, verbatim (section 5), "
            "with a private redis-server",
            fanout_channel="chat:fanout",
            idle_prefix="room-",
            npm_dir=BENCH_DIR / "peers" / "seed-node",
            redis=True,
        ),
        # --- Redis-backed peers (multi-node scenario `xnode`; `channels`) ---------------
        Peer(
            name="kizuna-redis",
            protocol="kizuna",
            command=_kizuna_redis_command,
            description="kizuna serve, Redis broker (`--broker redis://…`, a private "
            "redis-server), namespace `bench` (no history, no presence, no join/leave)",
            fanout_channel="bench:fanout",
            idle_prefix="bench:room-",
            path="/connection/websocket",
            python=True,
            redis=True,
        ),
        Peer(
            name="kizuna-batched",
            protocol="kizuna-batch",
            command=_kizuna_command,
            description="as `kizuna`, its publisher packing each millisecond's publishes "
            "into one frame (newline-delimited commands; answered in one frame)",
            fanout_channel="bench:fanout",
            idle_prefix="bench:room-",
            path="/connection/websocket",
            python=True,
        ),
        Peer(
            name="kizuna-redis-batched",
            protocol="kizuna-batch",
            command=_kizuna_redis_command,
            description="as `kizuna-redis`, its publisher packing each millisecond's "
            "publishes into one frame",
            fanout_channel="bench:fanout",
            idle_prefix="bench:room-",
            path="/connection/websocket",
            python=True,
            redis=True,
        ),
        Peer(
            name="py-websockets-redis",
            protocol="guide",
            command=_py_websockets_redis_command,
            description="py-websockets with fan-out through Redis Pub/Sub (redis-py asyncio, "
            "hiredis): PUBLISH per message, one Pub/Sub connection per process subscribed "
            "to the channels it has subscribers for, websockets.broadcast()",
            fanout_channel="chat:fanout",
            idle_prefix="room-",
            python=True,
            redis=True,
        ),
    ]
}

REDIS_TWINS = {
    "kizuna": "kizuna-redis",
    "kizuna-batched": "kizuna-redis-batched",
    "py-websockets": "py-websockets-redis",
}
"""The same server with a Redis broker: what a multi-node scenario runs for a peer without."""


def _locked_versions(lockfile: Path) -> dict[str, str]:
    packages = json.loads(lockfile.read_text()).get("packages", {})
    return {name: meta.get("version", "") for name, meta in packages.items() if name}


def _installed_as_locked(directory: Path) -> bool:
    """node_modules holds what package-lock.json locks (npm's own record of the install)."""
    installed = directory / "node_modules" / ".package-lock.json"
    if not installed.exists():
        return False
    return _locked_versions(installed) == _locked_versions(directory / "package-lock.json")


def npm_ci(directory: Path) -> None:
    """Install a Node package's locked dependencies (node_modules is git-ignored).

    Again whenever the lock changed (a dependency added since the last install), not only
    when node_modules is missing.
    """
    if _installed_as_locked(directory):
        return
    npm = shutil.which("npm")
    if npm is None:
        raise RuntimeError("npm not found: Node.js 20+ and npm are needed for the benchmarks")
    subprocess.run(
        [npm, "ci", "--no-audit", "--no-fund", "--loglevel=error"], cwd=directory, check=True
    )


@contextlib.contextmanager
def running(peer: Peer, settings: Settings, label: str) -> Iterator[RunningServer]:
    """Start ``peer`` (and its Redis) pinned to the server core; stop both afterwards."""
    if peer.npm_dir is not None:
        npm_ci(peer.npm_dir)
    logs = settings.out / "logs"
    helpers: list[subprocess.Popen[bytes]] = []
    helper_ports: dict[str, int] = {}
    proc = None
    try:
        if peer.redis:
            redis, helper_ports["redis"] = _start_redis(settings, label)
            helpers.append(redis)
        port = procs.free_port()
        argv, env = peer.command(port, helper_ports)
        proc = procs.start(
            procs.pinned(settings.server_cpu, argv), env=env, log=logs / f"{label}.log"
        )
        procs.wait_for_port(port, proc)
        yield RunningServer(peer, port, proc, helpers, redis_port=helper_ports.get("redis"))
    finally:
        procs.stop(proc)
        for helper in helpers:
            procs.stop(helper)


def _start_redis(settings: Settings, label: str) -> tuple[subprocess.Popen[bytes], int]:
    """A private redis-server on a free port (never the machine's 6379), pinned with the server."""
    binary = shutil.which("redis-server")
    if binary is None:
        raise RuntimeError("redis-server not found (apt-get install redis-server)")
    port = procs.free_port()
    directory = settings.out / "redis" / secrets.token_hex(4)
    directory.mkdir(parents=True)
    argv = [binary, "--port", str(port), "--bind", "127.0.0.1"]
    argv += ["--save", "", "--appendonly", "no", "--dir", str(directory)]
    log = settings.out / "logs" / f"{label}-redis.log"
    redis = procs.start(procs.pinned(settings.server_cpu, argv), log=log)
    try:
        procs.wait_for_port(port, redis)
    except BaseException:
        procs.stop(redis)
        raise
    return redis, port


@contextlib.contextmanager
def running_nodes(
    peer: Peer, settings: Settings, label: str, nodes: int, idle: int = 0
) -> Iterator[RunningServer]:
    """Start ``nodes`` + ``idle`` processes of ``peer`` sharing one private Redis.

    All of them, and Redis, are pinned to the server core. The result is the first
    node, with the others in ``nodes`` and the idle ones (which the load generator
    never connects to) in ``idle_nodes``; its ``cpu_pids`` are the active nodes' and
    Redis's.
    """
    if not peer.redis:
        raise ValueError(f"{peer.name} has no Redis broker: it cannot run on several nodes")
    if peer.npm_dir is not None:
        npm_ci(peer.npm_dir)
    started: list[RunningServer] = []
    redis = None
    try:
        redis, redis_port = _start_redis(settings, label)
        for i in range(nodes + idle):
            port = procs.free_port()
            argv, env = peer.command(port, {"redis": redis_port})
            log = settings.out / "logs" / f"{label}-node{i + 1}.log"
            proc = procs.start(procs.pinned(settings.server_cpu, argv), env=env, log=log)
            started.append(RunningServer(peer, port, proc))
            procs.wait_for_port(port, proc)
        first, *others = started
        first.helpers = [redis]
        first.redis_port = redis_port
        first.nodes = others[: nodes - 1]
        first.idle_nodes = others[nodes - 1 :]
        yield first
    finally:
        for server in started:
            procs.stop(server.proc)
        procs.stop(redis)
