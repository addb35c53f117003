"""Contiguous reservation (the pre-PagedAttention baseline of Orca-style servers).

Each request gets one region of a linear KV slot space at admission, sized by a reservation
policy (PagedAttention paper, Kwon et al., SOSP 2023, Sec. 6 baselines):

* ``max``: ``max_seq_len`` slots;
* ``pow2``: the next power of two >= the true final length, capped at ``max_seq_len``;
* ``oracle``: exactly the true final length.

Placement is first fit (default) or best fit over the free extents, so external
fragmentation comes from the arrival and finish pattern. Facade over
:mod:`simulator.memory.kernels._contiguous`.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from servesim.simulator.errors import InvariantError
from servesim.simulator.memory.base import KVCacheManager, MemoryStats, as_i64, make_memory_stats
from servesim.simulator.memory.kernels import _contiguous

_C_TOKENS = _contiguous.C_TOKENS
_C_RESERVED = _contiguous.C_RESERVED
_C_INTERNAL = _contiguous.C_INTERNAL
_C_FREE = _contiguous.C_FREE


class ContiguousKVCache(KVCacheManager):
    """One contiguous region per request, reserved at admission (see module docstring).

    Args:
        capacity_tokens: slots of the linear space.
        max_seqs: seq ids are ``0 .. max_seqs - 1``.
        max_seq_len: longest sequence in tokens (the ``max`` policy's reservation).
        reservation: ``"max"``, ``"pow2"`` or ``"oracle"``.
        placement: ``"first_fit"`` or ``"best_fit"``.
    """

    kind = "contiguous"
    block_size_tokens = 1

    def __init__(
        self,
        *,
        capacity_tokens: int,
        max_seqs: int,
        max_seq_len: int,
        reservation: str,
        placement: str,
    ) -> None:
        self.capacity_tokens = capacity_tokens
        self.max_seqs = max_seqs
        self.max_seq_len = max_seq_len
        self.reservation = reservation
        self.placement = placement
        self._best_fit = placement == "best_fit"
        self._arena, self._st = _contiguous.make_state(
            capacity_tokens, max_seqs, best_fit=self._best_fit
        )
        self._counters = self._st.counters
        self._live = self._st.seq_live
        self._out5 = np.zeros(5, dtype=np.int64)
        self._prefix_query_tokens = 0
        self._prefix_hit_tokens = 0
        self._num_copies = 0

    def _check_seq(self, seq_id: int, *, live: bool) -> None:
        if not 0 <= seq_id < self.max_seqs:
            raise ValueError(f"seq_id must be in [0, {self.max_seqs}), got {seq_id}")
        if bool(self._live[seq_id]) != live:
            state = "not live" if live else "already live"
            raise ValueError(f"seq_id {seq_id} is {state}")

    def reservation_slots(self, prompt_tokens: int, final_tokens: int) -> int:
        """Region size the policy reserves for a request of ``final_tokens`` tokens."""
        if self.reservation == "max":
            return self.max_seq_len
        if self.reservation == "pow2":
            return min(1 << max(final_tokens - 1, 0).bit_length(), self.max_seq_len)
        return final_tokens

    @property
    def num_free_slots(self) -> int:
        """Free slots (all extents, whatever their size)."""
        return int(self._counters[_C_FREE])

    @property
    def free_extents(self) -> list[tuple[int, int]]:
        """Free ``(start, length)`` extents in address order (for tests)."""
        st = self._st
        n = int(st.n_ext[0])
        return list(zip(st.ext_start[:n].tolist(), st.ext_len[:n].tolist(), strict=True))

    def fits_ever(
        self, prompt_tokens: int, final_tokens: int, num_seqs: int = 1, shared_prompt: bool = True
    ) -> bool:
        """Every sequence's reservation fits the whole space and covers its final length
        (contiguous reservations share nothing)."""
        res = self.reservation_slots(prompt_tokens, final_tokens)
        return final_tokens <= res and max(num_seqs, 1) * res <= self.capacity_tokens

    def fits_ever_many(
        self, prompt_tokens: npt.NDArray[np.int64], final_tokens: npt.NDArray[np.int64]
    ) -> npt.NDArray[np.bool_]:
        """:meth:`fits_ever` of many single-sequence requests at once (vectorised)."""
        f = np.asarray(final_tokens, dtype=np.int64)
        if self.reservation == "max":
            res = np.full(f.shape, self.max_seq_len, dtype=np.int64)
        elif self.reservation == "pow2":
            x = np.maximum(f - 1, 0)
            bits = np.zeros_like(x)
            while (x > 0).any():  # int.bit_length, at most 63 rounds
                bits += x > 0
                x >>= 1
            res = np.minimum(np.left_shift(1, bits), self.max_seq_len)
        else:
            res = f
        return (f <= res) & (res <= self.capacity_tokens)

    def match_prefix(
        self, block_ids: npt.NDArray[np.int64] | None, block_tokens: int, prompt_tokens: int
    ) -> int:
        """No prefix sharing: always 0."""
        return 0

    def admit(
        self,
        seq_id: int,
        *,
        prompt_tokens: int,
        final_tokens: int,
        block_ids: npt.NDArray[np.int64] | None = None,
        block_tokens: int = 1,
        now_s: float,
    ) -> int | None:
        """Reserve the request's region now; 0 on success, None if no extent is big enough."""
        self._check_seq(seq_id, live=False)
        self._check_admit_lengths(prompt_tokens, final_tokens)
        size = self.reservation_slots(prompt_tokens, final_tokens)
        if size < prompt_tokens:
            return None
        start = _contiguous.reserve(self._arena, seq_id, size, 0, final_tokens)
        if start < 0:
            return None
        self._prefix_query_tokens += prompt_tokens
        return 0

    def slots_needed(self, seq_ids: npt.ArrayLike, new_total_tokens: npt.ArrayLike) -> int:
        """Always 0: growth happens inside the reservation."""
        return 0

    def grow(
        self, seq_ids: npt.ArrayLike, new_total_tokens: npt.ArrayLike, *, now_s: float
    ) -> bool:
        """True if every new total fits its reservation (then they are recorded)."""
        ids = as_i64(seq_ids)
        totals = as_i64(new_total_tokens)
        status = _contiguous.grow(self._arena, ids, totals)
        if status < 0:
            if status == _contiguous.BAD_SHAPE:
                raise ValueError(f"seq_ids {ids.shape} and new_total_tokens {totals.shape} differ")
            raise ValueError(f"grow on a seq id that is not live: {ids.tolist()}")
        return status == _contiguous.OK

    def free(
        self,
        seq_id: int,
        *,
        now_s: float,
        finished: bool = True,
        block_ids: npt.NDArray[np.int64] | None = None,
        block_tokens: int = 1,
        total_tokens: int = 0,
    ) -> None:
        """Return the region to the free extents."""
        self._check_seq(seq_id, live=True)
        _contiguous.release(self._arena, seq_id)

    def fork(self, parent_seq_id: int, child_seq_id: int, *, now_s: float) -> bool:
        """Copy the parent into a new region of the same size; False if none is free."""
        self._check_seq(parent_seq_id, live=True)
        self._check_seq(child_seq_id, live=False)
        st = self._st
        start = _contiguous.reserve(
            self._arena,
            child_seq_id,
            int(st.seq_res[parent_seq_id]),
            int(st.seq_tokens[parent_seq_id]),
            int(st.seq_final[parent_seq_id]),
        )
        if start < 0:
            return False
        self._num_copies += 1
        return True

    def stats(self, *, min_pending_slots: int = 0) -> MemoryStats:
        """Categories; free extents smaller than ``min_pending_slots`` are external frag.

        O(1) but for external fragmentation, a scan of the free extents when
        ``min_pending_slots > 1`` (every extent holds at least one slot).
        """
        c = self._counters.tolist()
        external = 0
        if min_pending_slots > 1:
            external = int(_contiguous.external_slots(self._arena, int(min_pending_slots)))
        return make_memory_stats(
            self.capacity_tokens,
            c[_C_TOKENS],
            c[_C_RESERVED],
            c[_C_INTERNAL],
            external,
            0,
            c[_C_FREE] - external,
            self._prefix_query_tokens,
            0,
            0,
            self._num_copies,
        )

    def block_table(self, seq_id: int) -> npt.NDArray[np.int32]:
        """The region as 1-token blocks: ``start .. start + tokens - 1``."""
        self._check_seq(seq_id, live=True)
        st = self._st
        start = int(st.seq_start[seq_id])
        return np.arange(start, start + int(st.seq_tokens[seq_id]), dtype=np.int32)

    def region(self, seq_id: int) -> tuple[int, int]:
        """``(start, reserved_slots)`` of a live sequence."""
        self._check_seq(seq_id, live=True)
        return int(self._st.seq_start[seq_id]), int(self._st.seq_res[seq_id])

    def is_live(self, seq_id: int) -> bool:
        """Whether ``seq_id`` is admitted."""
        return bool(self._st.seq_live[seq_id])

    def num_tokens(self, seq_id: int) -> int:
        """Tokens the sequence holds slots for."""
        return int(self._st.seq_tokens[seq_id])

    def check_invariants(self) -> None:
        """Regions and free extents tile the space exactly once (raises InvariantError)."""
        st = self._st
        spans = [(int(st.ext_start[i]), int(st.ext_len[i]), -1) for i in range(st.n_ext[0])]
        for s in np.flatnonzero(st.seq_live):
            if st.seq_tokens[s] > st.seq_res[s]:
                raise InvariantError(f"seq {s} holds more tokens than it reserved")
            spans.append((int(st.seq_start[s]), int(st.seq_res[s]), int(s)))
        spans.sort()
        pos = 0
        prev_free = False
        for start, length, owner in spans:
            if start != pos or length <= 0:
                raise InvariantError(f"gap or overlap at slot {pos} (span {start}+{length})")
            if owner == -1 and prev_free:
                raise InvariantError(f"adjacent free extents not coalesced at {start}")
            prev_free = owner == -1
            pos += length
        if pos != self.capacity_tokens:
            raise InvariantError(f"spans cover {pos} != {self.capacity_tokens} slots")
        s = self.stats(min_pending_slots=7)
        _contiguous.recount_slots(self._arena, 7, self._out5)
        got = (s.token_slots, s.reserved_slots, s.internal_frag_slots, s.external_frag_slots)
        if (*got, s.free_slots) != tuple(self._out5.tolist()):
            raise InvariantError(f"category counters {got} != recount {self._out5.tolist()}")
        total = (
            s.token_slots
            + s.reserved_slots
            + s.internal_frag_slots
            + s.external_frag_slots
            + s.cached_slots
            + s.free_slots
        )
        if total != s.capacity_slots:
            raise InvariantError(f"memory categories sum to {total} != {s.capacity_slots}")
