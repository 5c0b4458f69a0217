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

The light mode (BENCH_MEMTRACE_FRAMES=0; `bench.soak --memtrace-light`) runs no tracemalloc: every
BENCH_MEMTRACE_EVERY_S each process writes RSS by kind of mapping (smaps_kib: glibc's main heap,
threads' arenas, stacks, other anonymous memory, files) and glibc's arenas (malloc_arenas) to
`<dir>/<pid>.jsonl`, cheaply enough for the full rate; `diff` then prints each figure first -> last.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import gc
import json
import os
import signal
import sys
import threading
import time
import tracemalloc
from collections import Counter
from pathlib import Path

from tests.processes import child_pids

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


def malloc_arenas() -> list[dict[str, int]]:
    """glibc's malloc_info(3), per arena (heap nr 0 is the main arena, on brk; the others are the
    threads' arenas, mmapped heaps of at most 64 MiB each): bytes taken from the system
    (`system`), free inside it (`free`: bins and the top chunk) and its address space. [] where
    the C library is not glibc."""
    try:
        libc = ctypes.CDLL(None)
        info, memstream, fclose, free = libc.malloc_info, libc.open_memstream, libc.fclose, libc.free
    except (AttributeError, OSError):
        return []
    memstream.restype = ctypes.c_void_p
    memstream.argtypes = [ctypes.POINTER(ctypes.c_char_p), ctypes.POINTER(ctypes.c_size_t)]
    info.argtypes = [ctypes.c_int, ctypes.c_void_p]
    fclose.argtypes = [ctypes.c_void_p]
    buf, size = ctypes.c_char_p(), ctypes.c_size_t()
    stream = memstream(ctypes.byref(buf), ctypes.byref(size))
    if not stream:
        return []
    try:
        info(0, stream)
    finally:
        fclose(stream)
    text = ctypes.string_at(buf, size.value).decode()
    free.argtypes = [ctypes.c_char_p]
    free(buf)
    return parse_malloc_info(text)


def parse_malloc_info(text: str) -> list[dict[str, int]]:
    import xml.etree.ElementTree as ET

    arenas = []
    for heap in ET.fromstring(text).iter("heap"):
        totals = {t.get("type"): int(t.get("size", "0")) for t in heap.findall("total")}
        system = {t.get("type"): int(t.get("size", "0")) for t in heap.findall("system")}
        aspace = {t.get("type"): int(t.get("size", "0")) for t in heap.findall("aspace")}
        arenas.append({
            "nr": int(heap.get("nr", "-1")), "system": system.get("current", 0), "system_max": system.get("max", 0),
            "free": totals.get("fast", 0) + totals.get("rest", 0), "aspace": aspace.get("total", 0),
        })  # fmt: skip
    return arenas


HEAP_MAX = 64 * 1024 * 1024  # glibc's HEAP_MAX_SIZE on 64-bit: a thread arena's heaps are aligned to it


def _guard(m: tuple[int, int, str, str, int]) -> bool:
    return m[2].startswith("---") and m[1] - m[0] <= 65536


def smaps_kib(pid: int | str = "self") -> dict[str, int]:
    """Resident KiB of a process by kind of mapping, from /proc/<pid>/smaps: `brk_heap` (glibc's
    main arena), `thread_arenas` (glibc's mmapped heaps: an rw mapping followed by its PROT_NONE
    reserve up to a 64 MiB boundary, or a whole aligned 64 MiB), `stacks`, `other_anon` (Python's
    obmalloc arenas, blocks glibc mmapped alone, other native mmaps), `file` (code, and
    prometheus' multiprocess files as `file_prom`); with `n_thread_arenas`."""
    maps: list[tuple[int, int, str, str, int]] = []  # start, end, perms, path, rss
    current: list[object] | None = None
    for line in Path(f"/proc/{pid}/smaps").read_text().splitlines():
        head = line.split(None, 5)
        if "-" in head[0] and len(head) >= 5 and not head[0].endswith(":"):
            start, end = (int(x, 16) for x in head[0].split("-"))
            current = [start, end, head[1], head[5].strip() if len(head) > 5 else "", 0]
            maps.append(current)  # type: ignore[arg-type]
        elif head[0] == "Rss:" and current is not None:
            current[4] = int(head[1])
    out = dict.fromkeys(("brk_heap", "thread_arenas", "stacks", "other_anon", "file", "file_prom"), 0)
    out["n_thread_arenas"] = 0
    for i, (start, end, perms, path, rss) in enumerate(maps):
        after = maps[i + 1] if i + 1 < len(maps) else None
        before = maps[i - 1] if i else None
        if path == "[heap]":
            out["brk_heap"] += rss
        elif path.startswith("[stack"):
            out["stacks"] += rss
        elif path.startswith("/"):
            out["file"] += rss
            if path.endswith(".db"):
                out["file_prom"] += rss
        elif path == "" and perms.startswith("rw"):
            reserve = after is not None and after[0] == end and after[2].startswith("---") and after[3] == ""
            # glibc maps a thread's heap at a HEAP_MAX boundary, HEAP_MAX long (rw, then its reserve;
            # the kernel may merge the rw part with an rw mapping just below): the rw mapping holds
            # that boundary. One that merely ends against another PROT_NONE mapping on a boundary
            # (a thread stack's guard page) is not a heap.
            if (reserve and after is not None and after[1] % HEAP_MAX == 0 and start <= after[1] - HEAP_MAX < end) or (
                start % HEAP_MAX == 0 and end - start == HEAP_MAX
            ):
                out["thread_arenas"] += rss
                out["n_thread_arenas"] += 1
            elif before is not None and before[1] == start and _guard(before):
                out["stacks"] += rss  # a thread's stack, above its guard page
            else:
                out["other_anon"] += rss
        elif path == "":
            out["other_anon"] += rss
        else:
            out["other_anon"] += rss  # [vdso], [vvar], [anon:...]
    return out


def _light_sample(out: Path, seq: int, t0: float) -> None:
    """RSS by kind of mapping and glibc's arenas, without tracemalloc (cheap: a few ms)."""
    arenas = malloc_arenas()
    status = _status_kib()
    line = {
        "pid": os.getpid(), "seq": seq, "t_s": round(time.monotonic() - t0, 1), "rss_kib": status["VmRSS"],
        "kib": status | _malloc_kib() | smaps_kib(), "threads": threading.active_count(),
        "thread_names": sorted(t.name for t in threading.enumerate()),
        "arenas": [{k: v // 1024 if k != "nr" else v for k, v in a.items()} for a in arenas],
    }  # fmt: skip
    with open(out / f"{os.getpid()}.jsonl", "a", encoding="utf-8") as f:
        f.write(json.dumps(line) + "\n")


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


def _light(out: Path, every_s: float, supervisor: bool) -> None:
    """The light mode: each worker process samples itself on SIGUSR2, in its main thread (a
    sampling thread of its own would get a glibc arena of its own and change what is measured);
    the `serve` process (uvicorn's supervisor) samples itself and sends the signal to every child
    that is ready for it, every `every_s`, from a thread. With one worker, the `serve` process is
    the server, and that thread's arena is in what is measured."""
    t0 = time.monotonic()
    seq = 0
    marker = out / f"{os.getpid()}.jsonl"

    def on_signal(_signum: int, _frame: object) -> None:
        nonlocal seq
        try:
            _light_sample(out, seq, t0)
        except Exception as exc:
            print(f"memtrace: sample failed: {exc!r}", file=sys.stderr, flush=True)
        seq += 1

    if not supervisor:
        signal.signal(signal.SIGUSR2, on_signal)
        marker.touch()  # from now on a SIGUSR2 samples this process instead of ending it
        return

    def tick() -> None:
        me = os.getpid()
        while True:
            time.sleep(every_s)
            on_signal(0, None)  # uvicorn's supervisor takes SIGUSR2 for itself; it serves nothing anyway
            for pid in child_pids(me):
                if (out / f"{pid}.jsonl").exists():
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, signal.SIGUSR2)

    threading.Thread(target=tick, name="memtrace-tick", daemon=True).start()


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
    if frames <= 0:
        _light(out, every, supervisor=__name__ == "__main__")
        return True
    threading.Thread(target=_sampler, args=(out, every, start, frames), name="memtrace", daemon=True).start()
    return True


# --- diff -----------------------------------------------------------------------------------------


def _series(path: Path) -> list[dict[str, object]]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


LIGHT_FIGURES = ("VmRSS", "RssAnon", "RssFile", "brk_heap", "thread_arenas", "n_thread_arenas", "other_anon",
                 "stacks", "file_prom", "malloc_arena", "malloc_in_use", "malloc_free", "malloc_mmap")  # fmt: skip


def _light_diff(series: list[dict[str, object]], first: dict[str, object], last: dict[str, object],
                minutes: float) -> list[str]:  # fmt: skip
    """A light-mode series: each figure first -> last after the warm-up, and the series itself."""
    out: list[str] = []
    kib_a, kib_b = first["kib"], last["kib"]
    assert isinstance(kib_a, dict) and isinstance(kib_b, dict)
    for name in LIGHT_FIGURES:
        a, b = kib_a.get(name, 0), kib_b.get(name, 0)
        unit = 1 if name.startswith("n_") else 1024
        out.append(f"  {name:<16} {a / unit:9.1f} -> {b / unit:9.1f} ({(b - a) / unit:+.1f}"
                   f"{'' if unit == 1 else f' MiB, {(b - a) / unit / max(minutes, 1e-9):+.3f} MiB/min'})")  # fmt: skip
    arenas = last.get("arenas", [])
    assert isinstance(arenas, list)
    out.append("  glibc arenas at the end (nr: system/free MiB): "
               + ", ".join(f"{a['nr']}: {a['system'] / 1024:.1f}/{a['free'] / 1024:.1f}" for a in arenas))  # fmt: skip
    out.append("  series (t s: RSS / brk heap / thread arenas / other anon / file, MiB):")
    for s in series:
        k = s["kib"]
        assert isinstance(k, dict)
        out.append(f"    {s['t_s']:>7}: {k['VmRSS'] / 1024:6.1f} / {k.get('brk_heap', 0) / 1024:6.1f} / "
                   f"{k.get('thread_arenas', 0) / 1024:6.1f} ({k.get('n_thread_arenas', 0)}) / "
                   f"{k.get('other_anon', 0) / 1024:6.1f} / {k.get('RssFile', 0) / 1024:5.1f}")  # fmt: skip
    return out


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
        if "traced_bytes" not in first:
            out += _light_diff(series, first, last, minutes)
            continue
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
