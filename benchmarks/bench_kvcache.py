"""Operations per second of the KV-cache managers: numba kernels vs their pure-Python twins.

Each manager runs one long random trace of admit / grow / free operations on 256 sequence
slots. The numba side executes the whole trace in one kernel call (``run_trace``), so the
figure is the allocator core's speed, not the facade's; the twin (``tests/reference``) runs
a prefix of the same trace through its Python API, and both must produce identical results
on that prefix. Skipped ops (admit of a live slot, grow/free of an empty one) are not counted.

A second section times the facade calls the serving engine makes every step (``grow``,
``slots_needed``, ``stats``, ``num_free_slots``, ``admit`` + ``free``), in microseconds per call,
at 20 and 256 live sequences (448 Ki token slots, B = 16, ``max_seq_len`` 32768): CPU time
(``time.process_time``), best of 20 blocks, so other load on the machine inflates it less.

Both sides of the trace section are timed best of ``--repeat`` (default 3) runs, alternating
in one process, so load on the machine moves the ratio less.

Usage: ``.venv/bin/python benchmarks/bench_kvcache.py [--ops 2000000] [--twin-ops 100000]
[--repeat 3] [--skip-trace] [--skip-micro]``
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from reference.kv_cache import make_ref

from servesim.hwmodels.rng import make_rng
from servesim.simulator.memory import make_kv_manager
from servesim.simulator.memory.kernels import _blocks, _contiguous

MAX_SEQS = 256
MAX_SEQ_LEN = 2048
BLOCK = 16
CAPACITY_TOKENS = 96 * 1024  # ~ 48 max-length sequences: real memory pressure
NUM_FAMILIES = 32  # shared system prompts, so the radix tree gets hits


def make_trace(num_ops: int, seed: int = 0):
    """Random trace: 8% admit, 86% grow (1..16 tokens), 6% free, on random seq slots."""
    rng = make_rng(seed, "bench-kvcache")
    op = rng.choice(3, size=num_ops, p=[0.08, 0.86, 0.06])
    seq = rng.integers(0, MAX_SEQS, size=num_ops)
    prompt = rng.integers(16, 1024, size=num_ops)
    grow_by = rng.integers(1, 17, size=num_ops)
    arg = np.where(op == 0, prompt, grow_by)
    # page keys: each admit gets a fresh identity; the first `shared` pages come from a family
    pages = MAX_SEQ_LEN // BLOCK
    num_admits = int((op == 0).sum())
    keys = np.arange(num_admits * pages, dtype=np.int64).reshape(num_admits, pages) + 10**9
    family = rng.integers(0, NUM_FAMILIES, size=num_admits)
    shared = rng.integers(0, 48, size=num_admits)
    base = np.arange(pages, dtype=np.int64)[None, :] + family[:, None] * 10_000
    keys = np.where(np.arange(pages)[None, :] < shared[:, None], base, keys).reshape(-1)
    # a free uses the identity of the seq's latest admit
    key_off = np.zeros(num_ops, dtype=np.int64)
    last = np.zeros(MAX_SEQS, dtype=np.int64)
    a = 0
    for i in range(num_ops):  # one pass in Python; trace building is not timed
        if op[i] == 0:
            last[seq[i]] = a * pages
            a += 1
        key_off[i] = last[seq[i]]
    ops = np.stack([op, seq, arg, key_off, np.full(num_ops, pages)], axis=1).astype(np.int64)
    return ops, keys


def run_twin_blocks(ref, ops, keys, paged: bool) -> np.ndarray:
    out = np.zeros(len(ops), dtype=np.int64)
    for i, (op, s, arg, k0, kn) in enumerate(ops.tolist()):
        ids = None if paged else keys[k0 : k0 + kn]
        if op == 0:
            if ref.is_live(s):
                out[i] = -2
                continue
            hit = ref.admit(
                s,
                prompt_tokens=arg,
                final_tokens=arg,
                block_ids=ids,
                block_tokens=BLOCK,
                now_s=float(i),
            )
            out[i] = -1 if hit is None else hit // BLOCK
            if hit is not None:
                ref.grow([s], [arg], now_s=float(i))
        elif not ref.is_live(s):
            out[i] = -2
        elif op == 1:
            total = min(ref.num_tokens(s) + arg, MAX_SEQ_LEN)
            out[i] = 0 if ref.grow([s], [total], now_s=float(i)) else 1
        else:
            ref.free(
                s, now_s=float(i), block_ids=ids, block_tokens=BLOCK, total_tokens=ref.num_tokens(s)
            )
    return out


def run_twin_contig(ref, ops) -> np.ndarray:
    out = np.zeros(len(ops), dtype=np.int64)
    for i, (op, s, arg, size, _) in enumerate(ops.tolist()):
        if op == 0:
            if ref.is_live(s):
                out[i] = -2
                continue
            ok = ref.admit(s, prompt_tokens=arg, final_tokens=size, now_s=float(i))
            out[i] = -1 if ok is None else ref.region(s)[0]
            if ok is not None:
                ref.grow([s], [arg], now_s=float(i))
        elif not ref.is_live(s):
            out[i] = -2
        elif op == 1:
            total = min(ref.num_tokens(s) + arg, ref.region(s)[1])
            out[i] = 0 if ref.grow([s], [total], now_s=float(i)) else 1
        else:
            ref.free(s, now_s=float(i))
    return out


def bench(kind: str, ops: np.ndarray, keys: np.ndarray, twin_ops: int, repeat: int = 3) -> dict:
    cfg = {
        "capacity_tokens": CAPACITY_TOKENS,
        "block_size_tokens": BLOCK,
        "max_seqs": MAX_SEQS,
        "max_seq_len": MAX_SEQ_LEN,
    }
    if kind == "contiguous":
        cfg["reservation"] = "pow2"
        m = make_kv_manager(kind, **cfg)
        ops = ops.copy()
        # column 3 becomes the reservation for a final length of prompt + 256 tokens
        final = np.minimum(ops[:, 2] + 256, MAX_SEQ_LEN)
        ops[:, 3] = [m.reservation_slots(0, int(f)) for f in final]

        def fast(o):
            mm = make_kv_manager(kind, **cfg)
            r = np.zeros(len(o), dtype=np.int64)
            _contiguous.run_trace(mm._arena, o, r)
            return r

        def slow(o):
            ref = make_ref(kind, **{**cfg, "reservation": "oracle"})
            return run_twin_contig(ref, o)
    else:
        paged = kind == "paged"
        if paged:
            ops = ops.copy()
            ops[:, 4] = 0  # no prompt identity: plain paging

        def fast(o):
            mm = make_kv_manager(kind, **cfg)
            r = np.zeros(len(o), dtype=np.int64)
            _blocks.run_trace(mm._arena, o, keys, r)
            return r

        def slow(o):
            return run_twin_blocks(make_ref(kind, **cfg), o, keys, paged)

    fast(ops[:1000])  # compile (or load from cache) outside the timing
    t_fast = t_slow = float("inf")
    for _ in range(repeat):  # best of `repeat` for each side, alternating, same process
        t0 = time.perf_counter()
        r_fast = fast(ops)
        t_fast = min(t_fast, time.perf_counter() - t0)
        t0 = time.perf_counter()
        r_slow = slow(ops[:twin_ops])
        t_slow = min(t_slow, time.perf_counter() - t0)
    if not np.array_equal(r_fast[:twin_ops], r_slow):
        raise SystemExit(f"{kind}: numba and twin results differ")
    n_fast = int((r_fast != -2).sum())
    n_slow = int((r_slow != -2).sum())
    return {
        "kind": kind,
        "ops_fast": n_fast,
        "fast_per_s": n_fast / t_fast,
        "ops_slow": n_slow,
        "slow_per_s": n_slow / t_slow,
        "no_room": int(((r_fast == -1) | (r_fast == 1)).sum()),
    }


MICRO_CAPACITY = 448 * 1024
MICRO_MAX_SEQ_LEN = 32768
MICRO_PROMPT = 256


def _per_call_us(fn, calls: int, blocks: int = 20) -> float:
    """CPU microseconds per ``fn()`` call, best of ``blocks`` blocks of ``calls`` calls."""
    best = float("inf")
    for _ in range(blocks):
        t0 = time.process_time()
        for _ in range(calls):
            fn()
        best = min(best, (time.process_time() - t0) / calls)
    return best * 1e6


def micro(kind: str, live: int) -> dict[str, float]:
    """Per-call cost of the engine's per-step facade calls with ``live`` running sequences."""
    cfg = {
        "capacity_tokens": MICRO_CAPACITY,
        "block_size_tokens": BLOCK,
        "max_seqs": 512,
        "max_seq_len": MICRO_MAX_SEQ_LEN,
    }
    if kind == "contiguous":
        cfg["reservation"] = "oracle"
    kv = make_kv_manager(kind, **cfg)
    ids = np.arange(live, dtype=np.int64)
    final = MICRO_PROMPT + 1024
    pages = MICRO_PROMPT // BLOCK + 64
    for s in range(live):  # 4 shared prompts, so radix holds a tree
        block_ids = np.arange(pages, dtype=np.int64) + 1000 * (s % 4)
        kv.admit(
            s,
            prompt_tokens=MICRO_PROMPT,
            final_tokens=final,
            block_ids=block_ids,
            block_tokens=BLOCK,
            now_s=0.0,
        )
    totals = np.full(live, MICRO_PROMPT, dtype=np.int64)
    kv.grow(ids, totals, now_s=0.0)
    calls, blocks = 50, 20
    steps = iter([totals + 1 + k for k in range(calls * (blocks + 1))])  # decode: +1 a step

    def grow() -> None:
        kv.grow(ids, next(steps), now_s=1.0)

    out = {"grow": _per_call_us(grow, calls, blocks)}
    nxt = totals + calls * (blocks + 1) + 1
    out["slots_needed"] = _per_call_us(lambda: kv.slots_needed(ids, nxt), 500)
    out["stats"] = _per_call_us(lambda: kv.stats(min_pending_slots=300), 500)
    out["num_free_slots"] = _per_call_us(lambda: kv.num_free_slots, 500)
    block_ids = np.arange(pages, dtype=np.int64) + 1000

    def admit_free() -> None:
        kv.admit(
            live,
            prompt_tokens=MICRO_PROMPT,
            final_tokens=final,
            block_ids=block_ids,
            block_tokens=BLOCK,
            now_s=2.0,
        )
        kv.free(live, now_s=2.0, block_ids=block_ids, block_tokens=BLOCK, total_tokens=0)

    out["admit+free"] = _per_call_us(admit_free, 200)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ops", type=int, default=2_000_000)
    parser.add_argument("--twin-ops", type=int, default=100_000)
    parser.add_argument("--repeat", type=int, default=3, help="trace: best of N runs a side")
    parser.add_argument("--skip-trace", action="store_true")
    parser.add_argument("--skip-micro", action="store_true")
    args = parser.parse_args()
    kinds = ("contiguous", "paged", "radix")
    if not args.skip_trace:
        ops, keys = make_trace(args.ops)
        rows = [bench(k, ops, keys, args.twin_ops, args.repeat) for k in kinds]
        print(
            f"{'manager':<11} {'numba ops':>10} {'numba ops/s':>12} {'twin ops':>9} "
            f"{'twin ops/s':>11} {'speedup':>8} {'no-room':>8}"
        )
        for r in rows:
            print(
                f"{r['kind']:<11} {r['ops_fast']:>10,} {r['fast_per_s']:>12,.0f} "
                f"{r['ops_slow']:>9,} {r['slow_per_s']:>11,.0f} "
                f"{r['fast_per_s'] / r['slow_per_s']:>7.1f}x {r['no_room']:>8,}"
            )
    if not args.skip_micro:
        names = ("grow", "slots_needed", "stats", "num_free_slots", "admit+free")
        print("\nfacade calls, us per call (CPU time, best of 20 blocks)")
        print(f"{'manager':<11} {'live':>5} " + " ".join(f"{n:>14}" for n in names))
        for kind in kinds:
            for live in (20, 256):
                micro(kind, live)  # warm-up: compile or load the kernels
                r = micro(kind, live)
                print(f"{kind:<11} {live:>5} " + " ".join(f"{r[n]:>14.2f}" for n in names))


if __name__ == "__main__":
    main()
