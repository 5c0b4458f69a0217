"""What grows in a gateway process: tracemalloc snapshots taken while it serves, and their diff.

    BENCH_MEMTRACE_DIR=/tmp/mt python -m bench.memtrace serve --port 8080 ...   # gateway.cli's arguments
    python -m bench.memtrace diff /tmp/mt [--skip-s 120] [--top 25]

`serve` runs `gateway.cli serve` with a daemon thread that starts tracemalloc after
BENCH_MEMTRACE_START_S seconds (20: the imports and the start are not traced; under tracemalloc
they took minutes), BENCH_MEMTRACE_FRAMES frames a trace (8), and then, every
BENCH_MEMTRACE_EVERY_S seconds (30), collects garbage, dumps a snapshot to
`<dir>/<pid>-<n>.tracemalloc` and appends a line to `<dir>/<pid>.jsonl`: RSS (anonymous and file
pages apart), glibc's heap (in use and free inside it), the bytes tracemalloc sees, and live
objects by type. With `--workers N` the setup runs in every
worker too (multiprocessing's spawn imports this module again in each child). `bench.soak
--memtrace DIR` starts the soak's gateway this way.

`diff` compares, per process, the first snapshot taken after `--skip-s` (the warm-up) with the
last: the allocation sites whose live bytes grew most, the object types whose counts grew, and RSS
beside the traced bytes (RSS rising with the traced bytes flat is the allocator or native code,
not Python objects). tracemalloc slows the process severalfold: drive it at a rate it can carry.
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import json
import os
import sys
import threading
import time
import tracemalloc
from collections import Counter
from pathlib import Path

ENV_DIR = "BENCH_MEMTRACE_DIR"


def _status_kib() -> dict[str, int]:
    """RSS, and its anonymous and file-backed parts (prometheus' multiprocess files are mapped)."""
    out = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        name, _, value = line.partition(":")
        if name in ("VmRSS", "RssAnon", "RssFile", "RssShmem"):
            out[name] = int(value.split()[0])
    return out


class _MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in
                ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks",
                 "keepcost")]  # fmt: skip


def _malloc_kib() -> dict[str, int]:
    """glibc's heap: bytes taken from the system in its arenas, in use, and free inside them (RSS
    that grows with 'in use' flat is fragmentation, not a leak); {} where mallinfo2 is missing."""
    try:
        fn = ctypes.CDLL(None).mallinfo2
    except (AttributeError, OSError):
        return {}
    fn.restype = _MallInfo2
    m = fn()
    return {"malloc_arena": m.arena // 1024, "malloc_mmap": m.hblkhd // 1024, "malloc_in_use": m.uordblks // 1024,
            "malloc_free": m.fordblks // 1024}  # fmt: skip


def _sample(out: Path, seq: int, t0: float) -> None:
    gc.collect()
    snapshot = tracemalloc.take_snapshot()
    snapshot.dump(str(out / f"{os.getpid()}-{seq:04d}.tracemalloc"))
    types = Counter(type(o).__qualname__ for o in gc.get_objects())
    current, peak = tracemalloc.get_traced_memory()
    line = {
        "pid": os.getpid(), "seq": seq, "t_s": round(time.monotonic() - t0, 1), "rss_kib": _status_kib()["VmRSS"],
        "kib": _status_kib() | _malloc_kib(), "threads": threading.active_count(),
        "traced_bytes": current, "traced_peak_bytes": peak,
        "tracemalloc_own_bytes": tracemalloc.get_tracemalloc_memory(),
        "gc_objects": sum(types.values()), "types": dict(types.most_common(200)),
    }  # fmt: skip
    with open(out / f"{os.getpid()}.jsonl", "a", encoding="utf-8") as f:
        f.write(json.dumps(line) + "\n")


def _sampler(out: Path, every_s: float, start_s: float, frames: int) -> None:
    t0 = time.monotonic()
    # Tracing starts once the process has imported everything and started: under tracemalloc the
    # imports alone took minutes on a loaded machine (what they allocate stays put anyway).
    time.sleep(start_s)
    tracemalloc.start(frames)
    seq = 0
    while True:
        time.sleep(every_s)
        try:
            _sample(out, seq, t0)
        except Exception as exc:  # a bench helper: say so and keep the gateway serving
            print(f"memtrace: sample failed: {exc!r}", file=sys.stderr, flush=True)
        seq += 1


def start_from_env() -> bool:
    """Start tracing and sampling in this process when BENCH_MEMTRACE_DIR is set."""
    where = os.environ.get(ENV_DIR)
    if not where or tracemalloc.is_tracing():
        return False
    out = Path(where)
    out.mkdir(parents=True, exist_ok=True)
    every = float(os.environ.get("BENCH_MEMTRACE_EVERY_S", "30"))
    start = float(os.environ.get("BENCH_MEMTRACE_START_S", "20"))
    frames = int(os.environ.get("BENCH_MEMTRACE_FRAMES", "8"))
    threading.Thread(target=_sampler, args=(out, every, start, frames), name="memtrace", daemon=True).start()
    return True


# --- diff -----------------------------------------------------------------------------------------


def _series(path: Path) -> list[dict[str, object]]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def diff(folder: Path, skip_s: float, top: int) -> str:
    out: list[str] = []
    for series_file in sorted(folder.glob("*.jsonl")):
        pid = series_file.stem
        series = _series(series_file)
        after = [s for s in series if float(str(s["t_s"])) >= skip_s]
        if len(after) < 2:
            out.append(f"pid {pid}: fewer than two samples after {skip_s:g} s")
            continue
        first, last = after[0], after[-1]
        minutes = (float(str(last["t_s"])) - float(str(first["t_s"]))) / 60
        out.append(f"== pid {pid}: {first['t_s']} s -> {last['t_s']} s ({minutes:.1f} min)")
        for name, per_mib in (("rss_kib", 1024), ("traced_bytes", 1 << 20), ("tracemalloc_own_bytes", 1 << 20)):
            a, b = (float(str(s[name])) / per_mib for s in (first, last))
            out.append(f"  {name:<22} {a:9.1f} -> {b:9.1f} MiB ({b - a:+.2f}, {(b - a) / minutes:+.3f} MiB/min)")
        kib_a, kib_b = first.get("kib", {}), last.get("kib", {})
        assert isinstance(kib_a, dict) and isinstance(kib_b, dict)
        out.append("  KiB: " + ", ".join(f"{k} {kib_a.get(k, 0)} -> {v} ({v - kib_a.get(k, 0):+d})"
                                       for k, v in kib_b.items()))  # fmt: skip
        out.append("  series (t s, RSS MiB, traced MiB): " + ", ".join(
            f"{s['t_s']}/{int(str(s['rss_kib'])) / 1024:.1f}/{int(str(s['traced_bytes'])) / (1 << 20):.1f}"
            for s in series))  # fmt: skip
        t_first, t_last = first["types"], last["types"]
        assert isinstance(t_first, dict) and isinstance(t_last, dict)
        grown = sorted(((n - t_first.get(k, 0), k, n) for k, n in t_last.items()), reverse=True)[:15]
        out.append("  object types grown: " + ", ".join(f"{k} +{d} ({n})" for d, k, n in grown if d > 0))
        snaps = [folder / f"{pid}-{int(str(s['seq'])):04d}.tracemalloc" for s in (first, last)]
        a_snap, b_snap = (tracemalloc.Snapshot.load(str(p)) for p in snaps)
        ignore = [tracemalloc.Filter(False, tracemalloc.__file__), tracemalloc.Filter(False, __file__)]
        stats = b_snap.filter_traces(ignore).compare_to(a_snap.filter_traces(ignore), "traceback")
        out.append(f"  top {top} allocation sites by growth of live bytes:")
        for st in stats[:top]:
            out.append(f"  {st.size_diff / 1024:+10.1f} KiB {st.count_diff:+8d} blocks  (now {st.size / 1024:.1f} KiB)")
            for frame in list(st.traceback)[:6]:
                out.append(f"        {frame.filename}:{frame.lineno}")
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["serve"]:
        from gateway.cli import main as gateway_main

        return int(gateway_main(argv) or 0)
    p = argparse.ArgumentParser(prog="python -m bench.memtrace", description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="command", required=True)
    sub.add_parser("serve", help="gateway.cli serve with tracemalloc on (arguments as gateway serve's)")
    d = sub.add_parser("diff", help="what grew between the first snapshot after the warm-up and the last")
    d.add_argument("folder", type=Path)
    d.add_argument("--skip-s", type=float, default=120.0, help="ignore samples taken before this (warm-up)")
    d.add_argument("--top", type=int, default=25)
    args = p.parse_args(argv)
    print(diff(args.folder, args.skip_s, args.top))
    return 0


# In every process that imports this module with the variable set: the `serve` process and, with
# --workers N, each worker (spawned children import the parent's main module again).
start_from_env()

if __name__ == "__main__":
    sys.exit(main())
