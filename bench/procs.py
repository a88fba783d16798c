"""Processes for the benchmarks: start pinned, wait for a port, read /proc, stop.

Everything a scenario measures runs as a real process on 127.0.0.1: the server
under test (pinned to one core with ``taskset``), a private ``redis-server`` on a
free port when a peer needs one (never the machine's 6379), the Node load
generator (pinned to another core) and, on request, ``py-spy``.
"""

from __future__ import annotations

import os
import resource
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path

__all__ = [
    "NOFILE",
    "busy_cores",
    "cpu_seconds",
    "free_port",
    "pinned",
    "raise_nofile",
    "rss_kb",
    "start",
    "stop",
    "wait_for_port",
]

NOFILE = 65536
"""File descriptors each benchmark process may open: 10k connections need more than 1024."""


def free_port() -> int:
    """A TCP port that was free on 127.0.0.1 a moment ago."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for_port(port: int, proc: subprocess.Popen[bytes], timeout: float = 20.0) -> None:
    """Wait until something accepts on ``port``; fail fast if ``proc`` died."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{proc.args!r} exited with {proc.returncode} before listening")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"nothing listening on 127.0.0.1:{port} after {timeout}s")


def raise_nofile() -> None:
    """Raise RLIMIT_NOFILE (run in the child before exec; the harness runs as root)."""
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (NOFILE, max(hard, NOFILE)))
    except (ValueError, OSError):  # not root: take what the hard limit allows
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def pinned(cpu: int | None, argv: Sequence[str]) -> list[str]:
    """``argv`` under ``taskset -c CPU`` (taskset execs, so the pid is the program's own)."""
    if cpu is None or shutil.which("taskset") is None:
        return list(argv)
    return ["taskset", "-c", str(cpu), *argv]


def start(
    argv: Sequence[str],
    *,
    log: Path,
    env: dict[str, str] | None = None,
    cwd: Path | None = None,
    stdout: int | None = None,
) -> subprocess.Popen[bytes]:
    """Start ``argv`` with a raised fd limit; stderr (and stdout unless piped) go to ``log``.

    ``KIZUNA_*`` variables of the caller's shell are not passed on: they would change
    what is measured without showing in the command the results report.
    """
    log.parent.mkdir(parents=True, exist_ok=True)
    inherited = {k: v for k, v in os.environ.items() if not k.startswith("KIZUNA_")}
    with log.open("ab") as sink:
        return subprocess.Popen(
            list(argv),
            env={**inherited, **(env or {})},
            cwd=cwd,
            stdin=subprocess.DEVNULL,
            stdout=sink if stdout is None else stdout,
            stderr=sink,
            preexec_fn=raise_nofile,
        )


def stop(proc: subprocess.Popen[bytes] | None, timeout: float = 5.0) -> None:
    """SIGTERM, then SIGKILL if it does not exit within ``timeout``."""
    if proc is None or proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def rss_kb(pid: int) -> int:
    """Resident set size of ``pid`` in kB (VmRSS of /proc/PID/status)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for pid {pid}")


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of ``pid`` so far (/proc/PID/stat, fields 14 and 15)."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    fields = stat[stat.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _cpu_jiffies() -> tuple[int, int]:
    """(busy, total) jiffies of the whole machine, from the first line of /proc/stat."""
    values = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = values[3] + values[4]  # idle + iowait
    return sum(values) - idle, sum(values)


def busy_cores(interval: float = 1.0) -> float:
    """How many cores' worth of CPU the whole machine used during ``interval`` seconds.

    Sampled while no benchmark process is working, it is the neighbours' load: what a
    shared machine will take from the next measurement.
    """
    busy0, total0 = _cpu_jiffies()
    time.sleep(interval)
    busy1, total1 = _cpu_jiffies()
    cores = os.cpu_count() or 1
    return cores * (busy1 - busy0) / max(1, total1 - total0)
