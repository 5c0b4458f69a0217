"""Process groups as the benchmark sees them: every server it starts leads its own session, so a
server with its worker processes is one group; CPU time and RSS are summed over the group, read
from /proc. Also the machine's busy time, and waiting until everything watched is idle."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from collections.abc import Iterable, Mapping
from pathlib import Path

TICK_S = 1.0 / os.sysconf("SC_CLK_TCK")  # /proc times are in clock ticks (usually 10 ms)


def _stat_fields(pid: int) -> list[str] | None:
    """Fields of /proc/<pid>/stat after the command name (which may hold spaces)."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return raw[raw.rindex(")") + 2 :].split()


def group_pids(pgid: int) -> list[int]:
    pids = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            fields = _stat_fields(int(entry))
            if fields is not None and int(fields[2]) == pgid:  # field 5, pgrp
                pids.append(int(entry))
    return pids


def group_cpu_s(pgid: int) -> float:
    """User + system CPU seconds of every live process in the group (fields 14 and 15)."""
    ticks = 0
    for pid in group_pids(pgid):
        fields = _stat_fields(pid)
        if fields is not None:
            ticks += int(fields[11]) + int(fields[12])
    return ticks * TICK_S


def group_rss_mib(pgid: int) -> float:
    kib = 0
    for pid in group_pids(pgid):
        try:
            status = Path(f"/proc/{pid}/status").read_text()
        except OSError:
            continue
        kib += next((int(line.split()[1]) for line in status.splitlines() if line.startswith("VmRSS:")), 0)
    return kib / 1024


def machine_busy_s() -> float:
    """CPU seconds the whole machine spent not idle (all cores), from /proc/stat."""
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = fields[3] + fields[4]  # idle + iowait
    return (sum(fields[:8]) - idle) * TICK_S


def wait_idle(pgids: Iterable[int], *, below: float = 0.05, quiet_s: float = 1.0, timeout_s: float = 60.0) -> float:
    """Wait until the groups together use less than `below` cores for quiet_s in a row (a saturated
    server keeps draining its backlog after the load stops). Returns the seconds waited."""
    groups = list(pgids)
    started = time.monotonic()
    step = 0.25
    quiet = 0.0
    last = sum(group_cpu_s(g) for g in groups)
    while time.monotonic() - started < timeout_s:
        time.sleep(step)
        now = sum(group_cpu_s(g) for g in groups)
        quiet = quiet + step if (now - last) / step < below else 0.0
        last = now
        if quiet >= quiet_s:
            break
    return time.monotonic() - started


def spawn(args: list[str], env: Mapping[str, str], log: Path, cwd: Path | None = None) -> subprocess.Popen[bytes]:
    """Start a session leader with exactly `env`; output goes to `log`."""
    with open(log, "ab") as out:
        return subprocess.Popen(
            args, env=dict(env), cwd=cwd, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
            start_new_session=True,
        )  # fmt: skip


def stop_group(proc: subprocess.Popen[bytes], timeout_s: float = 15.0) -> None:
    """SIGTERM the group led by proc (by its PID), then SIGKILL whatever is left of it."""
    pgid = proc.pid
    if proc.poll() is None:
        _signal_group(pgid, signal.SIGTERM)
        try:
            proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            _signal_group(pgid, signal.SIGKILL)
            proc.wait()
    if group_pids(pgid):
        _signal_group(pgid, signal.SIGKILL)


def _signal_group(pgid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pgid, sig)
