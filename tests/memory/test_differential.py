"""Differential stateful tests: each numba-backed manager vs its pure-Python twin.

Both receive identical operations; every result, block table, free list / extent list and
``MemoryStats`` must match, and ``check_invariants`` runs after every step.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule
from reference.kv_cache import make_ref

from servesim.simulator.memory import make_kv_manager

MAX_SEQS = 8
MAX_SEQ_LEN = 48


def machine_for(kind: str, *, page: int, block_tokens: int, capacity: int, **extra):
    """Build a RuleBasedStateMachine class for one manager configuration."""
    cfg = dict(
        capacity_tokens=capacity,
        block_size_tokens=page,
        max_seqs=MAX_SEQS,
        max_seq_len=MAX_SEQ_LEN,
        **extra,
    )

    class Machine(RuleBasedStateMachine):
        def __init__(self) -> None:
            super().__init__()
            self.fast = make_kv_manager(kind, **cfg)
            self.ref = make_ref(kind, **cfg)
            self.ids: dict[int, np.ndarray] = {}  # live seq -> identity ids (prompt+output)
            self.final: dict[int, int] = {}
            self.counter = 0
            self.now_s = 0.0

        def _identity(self, family: int, shared_ids: int) -> np.ndarray:
            self.counter += 1
            n = -(-MAX_SEQ_LEN // block_tokens)
            ids = np.arange(n, dtype=np.int64) + 1_000_000 * self.counter
            ids[:shared_ids] = np.arange(shared_ids) + 1000 * family
            return ids

        def _tick(self, dt: int) -> float:
            self.now_s += dt * 0.5
            return self.now_s

        def _free_seq(self) -> int | None:
            free = [s for s in range(MAX_SEQS) if s not in self.ids]
            return free[0] if free else None

        @rule(
            prompt=st.integers(1, MAX_SEQ_LEN - 1),
            extra=st.integers(0, 16),
            family=st.integers(0, 2),
            shared=st.integers(0, MAX_SEQ_LEN),
            dt=st.integers(0, 2),
        )
        def admit(self, prompt, extra, family, shared, dt) -> None:
            s = self._free_seq()
            if s is None:
                return
            final = min(prompt + extra, MAX_SEQ_LEN)
            ids = self._identity(family, shared // block_tokens)
            now = self._tick(dt)
            assert self.fast.match_prefix(ids, block_tokens, prompt) == self.ref.match_prefix(
                ids, block_tokens, prompt
            )
            kw = {
                "prompt_tokens": prompt,
                "final_tokens": final,
                "block_ids": ids,
                "block_tokens": block_tokens,
                "now_s": now,
            }
            got = self.fast.admit(s, **kw)
            want = self.ref.admit(s, **kw)
            assert got == want
            if want is not None:
                self.ids[s] = ids
                self.final[s] = final
                ok = self.fast.grow([s], [prompt], now_s=now)
                assert ok == self.ref.grow([s], [prompt], now_s=now)
                assert ok, "admit OK must guarantee grow to the prompt"

        @precondition(lambda self: self.ids)
        @rule(data=st.data(), dt=st.integers(0, 2))
        def grow(self, data, dt) -> None:
            live = sorted(self.ids)
            seqs = data.draw(st.lists(st.sampled_from(live), min_size=1, unique=True))
            totals = [
                min(self.ref.num_tokens(s) + data.draw(st.integers(0, 6)), MAX_SEQ_LEN)
                for s in seqs
            ]
            now = self._tick(dt)
            need = self.fast.slots_needed(np.array(seqs), np.array(totals))
            assert need == self.ref.slots_needed(seqs, totals)
            got = self.fast.grow(np.array(seqs), np.array(totals), now_s=now)
            assert got == self.ref.grow(seqs, totals, now_s=now)

        @precondition(lambda self: self.ids)
        @rule(data=st.data(), dt=st.integers(0, 2), finished=st.booleans())
        def free(self, data, dt, finished) -> None:
            s = data.draw(st.sampled_from(sorted(self.ids)))
            ids = self.ids.pop(s)
            total = self.ref.num_tokens(s) - data.draw(st.integers(0, 1))
            now = self._tick(dt)
            kw = {
                "now_s": now,
                "finished": finished,
                "block_ids": ids,
                "block_tokens": block_tokens,
                "total_tokens": max(total, 0),
            }
            self.fast.free(s, **kw)
            self.ref.free(s, **kw)

        @precondition(lambda self: self.ids)
        @rule(data=st.data(), dt=st.integers(0, 2))
        def cache(self, data, dt) -> None:
            """Cache a running seq's computed full pages (after a prefill chunk or when
            decode fills a page), as the engine does."""
            s = data.draw(st.sampled_from(sorted(self.ids)))
            total = self.ref.num_tokens(s) - data.draw(st.integers(0, 5))
            now = self._tick(dt)
            kw = {
                "now_s": now,
                "block_ids": self.ids[s],
                "block_tokens": block_tokens,
                "total_tokens": max(total, 0),
            }
            self.fast.cache_computed(s, **kw)
            self.ref.cache_computed(s, **kw)

        @precondition(lambda self: self.ids)
        @rule(data=st.data())
        def fork(self, data) -> None:
            child = self._free_seq()
            if child is None:
                return
            parent = data.draw(st.sampled_from(sorted(self.ids)))
            got = self.fast.fork(parent, child, now_s=self.now_s)
            assert got == self.ref.fork(parent, child, now_s=self.now_s)
            if got:
                ids = self._identity(0, 0)
                n = self.ref.num_tokens(parent) // block_tokens
                ids[:n] = self.ids[parent][:n]
                self.ids[child] = ids

        @invariant()
        def same_state(self) -> None:
            self.fast.check_invariants()
            for s in self.ids:
                assert list(self.fast.block_table(s)) == self.ref.block_table(s)
            assert self.fast.num_free_slots == self.ref.num_free_slots
            for pending in (0, 5, 17):
                assert self.fast.stats(min_pending_slots=pending) == self.ref.stats(
                    min_pending_slots=pending
                )
            if kind == "contiguous":
                assert self.fast.free_extents == self.ref.free_extents
            else:
                assert self.fast.free_block_ids == self.ref.free_block_ids
            if kind == "radix" or extra.get("prefix_caching"):
                assert self.fast.num_tree_nodes == self.ref.num_tree_nodes
                assert self.fast.tree_tokens == self.ref.tree_tokens

    return Machine


CONFIGS = {
    "contiguous-max": {"kind": "contiguous", "page": 1, "block_tokens": 1, "capacity": 160},
    "contiguous-pow2-best": {
        "kind": "contiguous",
        "page": 1,
        "block_tokens": 1,
        "capacity": 150,
        "reservation": "pow2",
        "placement": "best_fit",
    },
    "contiguous-oracle": {
        "kind": "contiguous",
        "page": 1,
        "block_tokens": 1,
        "capacity": 120,
        "reservation": "oracle",
    },
    "paged-b4": {
        "kind": "paged",
        "page": 4,
        "block_tokens": 4,
        "capacity": 64,
        "watermark_frac": 0.07,
    },
    "paged-b1": {
        "kind": "paged",
        "page": 1,
        "block_tokens": 1,
        "capacity": 40,
        "watermark_frac": 0.0,
    },
    "paged-apc-b4-ids4": {
        "kind": "paged",
        "page": 4,
        "block_tokens": 4,
        "capacity": 64,
        "watermark_frac": 0.07,
        "prefix_caching": True,
    },
    "paged-apc-b1-tokens": {
        "kind": "paged",
        "page": 1,
        "block_tokens": 1,
        "capacity": 40,
        "watermark_frac": 0.0,
        "prefix_caching": True,
    },
    "paged-apc-b2-ids8": {
        "kind": "paged",
        "page": 2,
        "block_tokens": 8,
        "capacity": 56,
        "watermark_frac": 0.0,
        "prefix_caching": True,
    },
    "radix-b4-ids4": {
        "kind": "radix",
        "page": 4,
        "block_tokens": 4,
        "capacity": 64,
        "watermark_frac": 0.07,
    },
    "radix-b4-tokens": {
        "kind": "radix",
        "page": 4,
        "block_tokens": 1,
        "capacity": 64,
        "watermark_frac": 0.0,
    },
    "radix-b1-tokens": {
        "kind": "radix",
        "page": 1,
        "block_tokens": 1,
        "capacity": 48,
        "watermark_frac": 0.0,
    },
    "radix-b2-ids8": {
        "kind": "radix",
        "page": 2,
        "block_tokens": 8,
        "capacity": 56,
        "watermark_frac": 0.0,
    },
}


def _run(name: str, *, max_examples: int, steps: int) -> None:
    cfg = dict(CONFIGS[name])
    machine = machine_for(cfg.pop("kind"), **cfg)
    machine.TestCase.settings = settings(
        max_examples=max_examples,
        stateful_step_count=steps,
        deadline=None,
        derandomize=True,
        suppress_health_check=list(HealthCheck),
    )
    machine.TestCase().runTest()


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_matches_twin(name: str) -> None:
    """~30 runs x 40 steps: several hundred admitted sequences per manager."""
    _run(name, max_examples=30, steps=40)


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_matches_twin_long(name: str) -> None:
    """Tens of thousands of sequences per manager."""
    _run(name, max_examples=600, steps=120)
