"""Synthetic workloads: arrivals x lengths x shared-prefix structure, vectorised with numpy.

Every generator builds the same intermediate shape, a *forest* of requests:

* a **unit** is what the arrival process schedules: a single request, a chat session or a
  tree of thoughts. Units are contiguous in request order; inside a unit, a parent comes
  before its children (turn order for chats, breadth-first for trees).
* a request adds ``new_tokens`` to the context it inherits. A root inherits its pooled system
  prompt (``shared_tokens``); a child inherits its parent's whole sequence (prompt + output).
  So ``prompt_tokens = inherited + new_tokens`` and a child's block ``j`` equals its
  parent's block ``j`` for every block the parent's sequence fills completely.

Block ids (see :mod:`workloads.request`) come from counters, never hashing: pooled prompts
take ``0 .. pool_total - 1``, then every request takes fresh ids for the blocks it does not
inherit, in request order. Each random part draws from its own named stream, so e.g.
changing the arrival process leaves the lengths unchanged.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import numpy.typing as npt

from servesim.hwmodels.errors import ConfigError
from servesim.hwmodels.rng import make_rng
from servesim.workloads.arrivals import sample_arrivals
from servesim.workloads.lengths import clip_total, sample_lengths, sample_prompt_output
from servesim.workloads.request import Workload, segment_arange

if TYPE_CHECKING:
    from servesim.workloads.config import ArrivalsCfg, SamplingCfg, WorkloadCfg


@dataclass(frozen=True, slots=True, kw_only=True)
class _Forest:
    """Requests before arrival times are attached (all arrays have one entry per request)."""

    unit: npt.NDArray[np.int64]  # unit (session / tree / request) index, non-decreasing
    parent: npt.NDArray[np.int64]  # index of the parent request, -1 for a unit's root
    depth: npt.NDArray[np.int32]  # 0 for roots; the turn in a chat
    pool: npt.NDArray[np.int64]  # pooled prompt of the root, -1 = none (roots only)
    prompt_tokens: npt.NDArray[np.int64]
    output_tokens: npt.NDArray[np.int64]
    think_time_s: npt.NDArray[np.float64]  # pause after the parent finishes (children)


def generate(cfg: WorkloadCfg, *, seed: int, base_dir: Path | None = None) -> Workload:
    """Build a synthetic workload from a validated :class:`~workloads.config.WorkloadCfg`.

    Args:
        cfg: config with ``arrivals``, ``lengths`` and ``num_requests`` set.
        seed: scenario seed.
        base_dir: resolves relative paths of empirical length specs.

    Returns:
        The workload, ordered as :mod:`workloads.request` requires.
    """
    assert cfg.arrivals is not None and cfg.lengths is not None and cfg.num_requests
    prefixes = cfg.prefixes
    n = cfg.num_requests
    rng_prompt = make_rng(seed, "workload.prompt_tokens")
    rng_output = make_rng(seed, "workload.output_tokens")
    rng_prefix = make_rng(seed, "workload.prefixes")
    rng_think = make_rng(seed, "workload.think_time")

    # Pool of shared prompts: lengths and, per root, which one it uses.
    pool_tokens = np.zeros(0, dtype=np.int64)
    if prefixes.kind == "system_prompts":
        pool_tokens = sample_lengths(
            prefixes.prompt_tokens, prefixes.num_prompts, rng_prefix, base_dir=base_dir
        )
    elif prefixes.kind == "few_shot":
        pool_tokens = np.array([prefixes.prefix_tokens], dtype=np.int64)
    elif prefixes.kind in ("multi_turn", "tree_of_thought") and prefixes.system_prompt_tokens:
        pool_tokens = np.array([prefixes.system_prompt_tokens], dtype=np.int64)
    max_total = cfg.lengths.max_total_tokens
    if max_total is not None and len(pool_tokens) and pool_tokens.max() + 2 > max_total:
        raise ConfigError(
            f"lengths.max_total_tokens={max_total} leaves no room after a shared prefix of "
            f"{int(pool_tokens.max())} tokens (needs at least 1 prompt + 1 output token more)"
        )

    # Generate units in batches until there are n requests (children whose sequence would
    # exceed the context window are dropped, so a batch can fall short).
    parts: list[_Forest] = []
    have = 0
    num_units = 0
    while have < n:
        batch = _batch(
            cfg,
            n - have,
            num_units,
            pool_tokens,
            rng_prompt,
            rng_output,
            rng_prefix,
            rng_think,
            base_dir,
        )
        parts.append(batch)
        have += len(batch.unit)
        num_units = int(batch.unit[-1]) + 1
    forest = _concat(parts, n)

    block_tokens = prefixes.block_tokens
    offsets, ids = _block_ids(
        forest,
        pool_tokens,
        block_tokens,
        append_output=prefixes.kind in ("multi_turn", "tree_of_thought"),
    )
    arrival_s, depends_on, think_s = _schedule(
        forest, cfg.arrivals, make_rng(seed, "workload.arrivals")
    )
    is_grouped = prefixes.kind in ("multi_turn", "tree_of_thought")
    wl = Workload.from_arrays(
        name=cfg.name or f"{cfg.arrivals.process}-{prefixes.kind}",
        arrival_s=arrival_s,
        prompt_tokens=forest.prompt_tokens,
        output_tokens=forest.output_tokens,
        session_id=forest.unit if is_grouped else None,
        turn=forest.depth,
        depends_on=depends_on,
        think_time_s=think_s,
        block_tokens=block_tokens,
        prefix_offsets=offsets,
        prefix_block_ids=ids,
        source=f"synthetic seed={seed} {cfg.model_dump_json(exclude_none=True)}",
    )
    return apply_sampling(wl, cfg.sampling)


def _batch(
    cfg: WorkloadCfg,
    want: int,
    first_unit: int,
    pool_tokens: npt.NDArray[np.int64],
    rng_prompt: np.random.Generator,
    rng_output: np.random.Generator,
    rng_prefix: np.random.Generator,
    rng_think: np.random.Generator,
    base_dir: Path | None,
) -> _Forest:
    """One batch of units holding about ``want`` requests (maybe fewer after clipping)."""
    prefixes = cfg.prefixes
    lengths = cfg.lengths
    assert lengths is not None
    kind = prefixes.kind
    # Unit shapes: nodes per unit, parent offsets within a unit, depth of each node.
    if kind == "multi_turn":
        mean_turns = (prefixes.min_turns + prefixes.max_turns) / 2
        num_units = int(np.ceil(want / mean_turns)) + 1
        turns = rng_prefix.integers(
            prefixes.min_turns, prefixes.max_turns, size=num_units, endpoint=True
        )
        sizes = turns
        depth = segment_arange(turns)
        local_parent = depth - 1  # the previous turn
    elif kind == "tree_of_thought":
        b, d = prefixes.branching, prefixes.depth
        level_sizes = b ** np.arange(d + 1)
        tree_depth = np.repeat(np.arange(d + 1), level_sizes)
        # Breadth-first numbering: node k (k >= 1) has parent (k - 1) // b.
        tree_parent = np.concatenate(([-1], (np.arange(1, len(tree_depth)) - 1) // b))
        num_units = int(np.ceil(want / len(tree_depth)))
        sizes = np.full(num_units, len(tree_depth), dtype=np.int64)
        depth = np.tile(tree_depth, num_units)
        local_parent = np.tile(tree_parent, num_units)
    else:
        num_units = want
        sizes = np.ones(num_units, dtype=np.int64)
        depth = np.zeros(num_units, dtype=np.int64)
        local_parent = np.full(num_units, -1, dtype=np.int64)

    total = int(sizes.sum())
    unit_start = np.cumsum(sizes) - sizes
    unit_local = np.repeat(np.arange(num_units, dtype=np.int64), sizes)
    parent = np.where(local_parent >= 0, unit_start[unit_local] + local_parent, -1)

    no_clip = lengths.model_copy(update={"max_total_tokens": None})
    new_tokens, output = sample_prompt_output(
        no_clip, total, rng_prompt, rng_output, base_dir=base_dir
    )
    # Pooled prompt per root: Zipf popularity over ranks (rank 0 the most popular).
    pool = np.full(total, -1, dtype=np.int64)
    roots = np.flatnonzero(parent < 0)
    if len(pool_tokens) > 1:
        a = prefixes.zipf_a
        weights = np.arange(1, len(pool_tokens) + 1, dtype=np.float64) ** -a
        cdf = np.cumsum(weights / weights.sum())
        pick = np.searchsorted(cdf, rng_prefix.random(len(roots)) * cdf[-1], side="right")
        pool[roots] = np.minimum(pick, len(pool_tokens) - 1)
    elif len(pool_tokens) == 1:
        pool[roots] = 0

    # Think time before each child is sent.
    think = np.zeros(total, dtype=np.float64)
    children = parent >= 0
    if kind == "multi_turn":
        think[children] = _think_times(
            prefixes.think_time_s, prefixes.think_time_cv, int(children.sum()), rng_think
        )
    elif kind == "tree_of_thought":
        think[children] = prefixes.think_time_s

    # Prompt = inherited context + new tokens; children inherit the parent's whole sequence.
    # Parents precede children, so one pass per depth level resolves every prompt.
    prompt = new_tokens.copy()
    if len(pool_tokens):
        prompt[roots] += pool_tokens[pool[roots]]
    max_total = lengths.max_total_tokens
    if max_total is not None:
        # Roots are clipped into the window (the new message first, keeping the shared prefix).
        inherited = prompt[roots] - new_tokens[roots]
        root_prompt, root_out = clip_total(prompt[roots], output[roots], max_total)
        prompt[roots] = np.maximum(root_prompt, inherited + 1)
        output[roots] = np.maximum(np.minimum(root_out, max_total - prompt[roots]), 1)
    for level in range(1, int(depth.max()) + 1 if total else 0):
        nodes = np.flatnonzero(depth == level)
        par = parent[nodes]
        prompt[nodes] = prompt[par] + output[par] + new_tokens[nodes]

    keep = np.ones(total, dtype=bool)
    if max_total is not None:
        # Sequences only grow from parent to child, so this drops whole subtrees (the rest
        # of a chat whose context is full).
        keep = prompt + output <= max_total
    forest = _Forest(
        unit=unit_local + first_unit,
        parent=parent,
        depth=depth.astype(np.int32),
        pool=pool,
        prompt_tokens=prompt,
        output_tokens=output,
        think_time_s=think,
    )
    return _take(forest, keep)


def _take(forest: _Forest, keep: npt.NDArray[np.bool_]) -> _Forest:
    """Rows where ``keep`` (closed under parents), with parent indices remapped."""
    if keep.all():
        return forest
    new_index = np.cumsum(keep) - 1
    parent = forest.parent[keep]
    parent = np.where(parent >= 0, new_index[np.maximum(parent, 0)], -1)
    return _Forest(
        unit=forest.unit[keep],
        parent=parent,
        depth=forest.depth[keep],
        pool=forest.pool[keep],
        prompt_tokens=forest.prompt_tokens[keep],
        output_tokens=forest.output_tokens[keep],
        think_time_s=forest.think_time_s[keep],
    )


def _concat(parts: list[_Forest], n: int) -> _Forest:
    """Join batches (shifting parent indices) and keep the first ``n`` requests."""
    shift = 0
    parents = []
    for part in parts:
        parents.append(np.where(part.parent >= 0, part.parent + shift, -1))
        shift += len(part.unit)

    def cat(name: str) -> np.ndarray:
        return np.concatenate([getattr(p, name) for p in parts])[:n]

    forest = _Forest(
        unit=cat("unit"),
        parent=np.concatenate(parents)[:n],
        depth=cat("depth"),
        pool=cat("pool"),
        prompt_tokens=cat("prompt_tokens"),
        output_tokens=cat("output_tokens"),
        think_time_s=cat("think_time_s"),
    )
    # Renumber units densely (dropped roots leave gaps).
    _, dense = np.unique(forest.unit, return_inverse=True)
    return replace(forest, unit=dense.astype(np.int64))


def _block_ids(
    forest: _Forest,
    pool_tokens: npt.NDArray[np.int64],
    block_tokens: int,
    *,
    append_output: bool,
) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int64]]:
    """CSR prefix ids of every request (see the module docstring for the numbering).

    Each request's ids are a few runs of consecutive integers ("segments"): its pooled
    prompt's run, the runs it inherits from its ancestors, and one fresh run. Work is done on
    segments (a handful per request) and the ids are materialised in one cumulative sum, so
    no per-block gather is needed::

        root  r: [pool 0..3] [fresh 10..14]
        child c: [pool 0..3] [10..13]  [fresh 15..20]     (parent's full blocks only)
    """
    n = len(forest.unit)
    if block_tokens == 0:
        return np.zeros(n + 1, dtype=np.int64), np.zeros(0, dtype=np.int64)
    b = block_tokens
    seq = forest.prompt_tokens + (forest.output_tokens if append_output else 0)
    counts = -(-seq // b)
    offsets = np.zeros(n + 1, dtype=np.int64)
    np.cumsum(counts, out=offsets[1:])

    # Inherited full blocks: from the pool for roots, from the parent's sequence otherwise
    # (a partial block mixes in the request's own tokens, so it is never inherited).
    pool_blocks = pool_tokens // b
    pool_start = np.cumsum(pool_blocks) - pool_blocks
    is_root = forest.parent < 0
    parent = np.maximum(forest.parent, 0)
    parent_seq = forest.prompt_tokens[parent] + forest.output_tokens[parent]
    root_shared = np.zeros(n, dtype=np.int64)
    if len(pool_tokens):
        has_pool = forest.pool >= 0
        root_shared[has_pool] = pool_blocks[forest.pool[has_pool]]
    shared = np.where(is_root, root_shared, parent_seq // b)
    # Fresh ids for everything not inherited, numbered in request order after the pool.
    fresh = counts - shared
    fresh_start = int(pool_blocks.sum()) + np.cumsum(fresh) - fresh

    # Segments per request, level by level: (base id, length) with a CSR index per level.
    level_nodes: list[npt.NDArray[np.int64]] = []
    level_off: list[npt.NDArray[np.int64]] = []
    level_base: list[npt.NDArray[np.int64]] = []
    level_len: list[npt.NDArray[np.int64]] = []
    pos_in_level = np.zeros(n, dtype=np.int64)
    max_depth = int(forest.depth.max()) if n else -1
    for level in range(max_depth + 1):
        nodes = np.flatnonzero(forest.depth == level)
        pos_in_level[nodes] = np.arange(len(nodes))
        if level == 0:
            inh_count = (shared[nodes] > 0).astype(np.int64)
            inh_owner = np.flatnonzero(inh_count)
            inh_base = pool_start[forest.pool[nodes[inh_owner]]] if len(pool_tokens) else inh_owner
            inh_len = shared[nodes[inh_owner]]
            inh_rank = np.zeros(len(inh_owner), dtype=np.int64)
        else:
            # Copy the parent's segments, truncated to the blocks the child inherits.
            p_off, p_base, p_len = level_off[-1], level_base[-1], level_len[-1]
            ppos = pos_in_level[forest.parent[nodes]]
            nseg = p_off[ppos + 1] - p_off[ppos]
            rank = segment_arange(nseg)
            src = np.repeat(p_off[ppos], nseg) + rank
            owner = np.repeat(np.arange(len(nodes)), nseg)
            seg_len = p_len[src]
            before = np.cumsum(seg_len) - seg_len
            before -= np.repeat(before[np.cumsum(nseg) - nseg], nseg) if len(before) else 0
            room = shared[nodes][owner] - before
            keep = room > 0
            inh_owner = owner[keep]
            inh_base = p_base[src][keep]
            inh_len = np.minimum(seg_len[keep], room[keep])
            inh_rank = rank[keep]
            inh_count = np.bincount(inh_owner, minlength=len(nodes))
        has_fresh = (fresh[nodes] > 0).astype(np.int64)
        num = inh_count + has_fresh
        off = np.zeros(len(nodes) + 1, dtype=np.int64)
        np.cumsum(num, out=off[1:])
        base = np.empty(int(off[-1]), dtype=np.int64)
        length = np.empty(int(off[-1]), dtype=np.int64)
        slot = off[inh_owner] + inh_rank
        base[slot], length[slot] = inh_base, inh_len
        fr = np.flatnonzero(has_fresh)
        slot = off[fr] + inh_count[fr]
        base[slot], length[slot] = fresh_start[nodes[fr]], fresh[nodes[fr]]
        level_nodes.append(nodes)
        level_off.append(off)
        level_base.append(base)
        level_len.append(length)

    # Gather all levels into request order.
    seg_count = np.zeros(n, dtype=np.int64)
    for nodes, off in zip(level_nodes, level_off, strict=True):
        seg_count[nodes] = np.diff(off)
    seg_off = np.cumsum(seg_count) - seg_count
    seg_base = np.empty(int(seg_count.sum()), dtype=np.int64)
    seg_len = np.empty_like(seg_base)
    for nodes, off, base, length in zip(level_nodes, level_off, level_base, level_len, strict=True):
        k = np.diff(off)
        dst = np.repeat(seg_off[nodes], k) + segment_arange(k)
        seg_base[dst], seg_len[dst] = base, length
    return offsets, _expand_runs(seg_base, seg_len)


def _expand_runs(
    base: npt.NDArray[np.int64], length: npt.NDArray[np.int64]
) -> npt.NDArray[np.int64]:
    """Concatenate ``arange(base[s], base[s] + length[s])`` over segments, as one cumsum."""
    total = int(length.sum())
    if total == 0:
        return np.zeros(0, dtype=np.int64)
    nonempty = length > 0
    base, length = base[nonempty], length[nonempty]
    steps = np.ones(total, dtype=np.int64)
    starts = np.cumsum(length) - length
    steps[0] = base[0]
    # At a segment start, jump from the previous segment's last id to this one's base.
    steps[starts[1:]] = base[1:] - (base[:-1] + length[:-1] - 1)
    return np.cumsum(steps, out=steps)


def _schedule(
    forest: _Forest, arrivals: ArrivalsCfg, rng: np.random.Generator
) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.int64], npt.NDArray[np.float64]]:
    """Arrival times of unit roots, and the dependencies of everything else.

    Returns:
        ``(arrival_s, depends_on, think_time_s)``, one entry per request.
    """
    n = len(forest.unit)
    arrival_s = np.full(n, np.nan)
    depends_on = forest.parent.copy()
    think_s = forest.think_time_s.copy()
    roots = np.flatnonzero(forest.parent < 0)
    num_units = len(roots)
    if arrivals.process != "closed_loop":
        arrival_s[roots] = sample_arrivals(arrivals, num_units, rng)
        return arrival_s, depends_on, think_s
    # Closed loop: unit u runs on client u % C, after that client's previous unit finishes.
    # NOTE: for a tree the client waits on the unit's last-listed request.
    c = arrivals.num_clients
    unit_last = np.concatenate((roots[1:], [n])) - 1
    first = roots[:c]
    arrival_s[first] = np.arange(len(first)) * (arrivals.ramp_up_s / c)
    later = roots[c:]
    depends_on[later] = unit_last[: max(num_units - c, 0)]
    think_s[later] = _think_times(arrivals.think_time_s, arrivals.think_time_cv, len(later), rng)
    return arrival_s, depends_on, think_s


def _think_times(
    mean_s: float, cv: float, n: int, rng: np.random.Generator
) -> npt.NDArray[np.float64]:
    """Constant pauses (cv == 0) or Gamma pauses with the given mean and CV."""
    if cv == 0 or mean_s == 0:
        return np.full(n, mean_s, dtype=np.float64)
    shape = 1.0 / cv**2
    return rng.gamma(shape, mean_s / shape, size=n)


def assign_arrivals(wl: Workload, arrivals: ArrivalsCfg, *, seed: int) -> Workload:
    """Give a length-only trace synthetic arrival times (or closed-loop dependencies).

    Args:
        wl: workload of independent requests (no dependencies).
        arrivals: the arrival process.
        seed: scenario seed (stream ``workload.arrivals``).
    """
    n = len(wl)
    forest = _Forest(
        unit=np.arange(n, dtype=np.int64),
        parent=np.full(n, -1, dtype=np.int64),
        depth=np.zeros(n, dtype=np.int32),
        pool=np.full(n, -1, dtype=np.int64),
        prompt_tokens=wl.prompt_tokens,
        output_tokens=wl.output_tokens,
        think_time_s=np.zeros(n),
    )
    arrival_s, depends_on, think_s = _schedule(
        forest, arrivals, make_rng(seed, "workload.arrivals")
    )
    return replace(
        wl,
        arrival_s=arrival_s,
        depends_on=depends_on,
        think_time_s=think_s,
        source=f"{wl.source} + arrivals {arrivals.model_dump_json()} seed={seed}",
    )


def apply_sampling(wl: Workload, sampling: SamplingCfg) -> Workload:
    """Set every request's parallel-sampling ``n`` and beam width."""
    if sampling.n == 1 and sampling.beam_width == 1:
        return wl
    return replace(
        wl,
        num_samples=np.full(len(wl), sampling.n, dtype=np.int32),
        beam_width=np.full(len(wl), sampling.beam_width, dtype=np.int32),
    )
