"""The one interface every KV-cache manager implements, and the memory-category report.

The serving engine talks to a manager only through :class:`KVCacheManager`. Sequences are
identified by dense small ints ``seq_id`` in ``[0, max_seqs)`` that the engine recycles.
"No room right now" is a return value (``None`` / ``False``), never an exception; misuse
(unknown or already-live ``seq_id``, a length beyond ``max_seq_len``) raises ``ValueError``.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, fields

import numpy as np
import numpy.typing as npt


@dataclass(frozen=True, slots=True, kw_only=True)
class MemoryStats:
    """Where the KV capacity goes at one instant (PagedAttention paper, Fig. 2 categories).

    All sizes are token slots. The six categories ``token_slots + reserved_slots +
    internal_frag_slots + external_frag_slots + cached_slots + free_slots`` sum to
    ``capacity_slots``. The last four fields are cumulative counters.
    """

    capacity_slots: int
    token_slots: int  # slots holding K/V of a live sequence's tokens (held = grown to)
    reserved_slots: int  # contiguous: reserved for a live request's future tokens
    internal_frag_slots: int  # allocated, never to hold a token (over-reservation, block tails)
    external_frag_slots: int  # free, but in gaps too small for the smallest pending request
    cached_slots: int  # radix: held only by the tree (finished requests' prefixes), evictable
    free_slots: int
    prefix_query_tokens: int  # sum of prompt tokens looked up at admission
    prefix_hit_tokens: int  # of those, served from the cache (hit rate = hit / query)
    evicted_tokens: int
    num_cow_copies: int

    @property
    def used_slots(self) -> int:
        """Slots not free (tokens + reservations + internal fragmentation + cached)."""
        return self.capacity_slots - self.free_slots - self.external_frag_slots

    @property
    def prefix_hit_frac(self) -> float:
        """SGLang's cache hit rate: cached prompt tokens over prompt tokens looked up."""
        if self.prefix_query_tokens == 0:
            return 0.0
        return self.prefix_hit_tokens / self.prefix_query_tokens


_I64 = np.dtype(np.int64)
_NDARRAY = np.ndarray


def as_i64(a: npt.ArrayLike) -> npt.NDArray[np.int64]:
    """``a`` as a 1-D int64 array; an int64 1-D array passes through (no copy, ~50 ns)."""
    if type(a) is not _NDARRAY or a.dtype is not _I64 or a.ndim != 1:  # type: ignore[union-attr]
        return np.ascontiguousarray(a, dtype=np.int64).reshape(-1)
    return a  # type: ignore[return-value]


def _memory_stats_maker():  # type: ignore[no-untyped-def]
    """Build :func:`make_memory_stats` from the slot descriptors of :class:`MemoryStats`."""
    names = [f.name for f in fields(MemoryStats)]
    setters = [MemoryStats.__dict__[n].__set__ for n in names]
    s0, s1, s2, s3, s4, s5, s6, s7, s8, s9, s10 = setters
    new = object.__new__

    def make_memory_stats(
        capacity_slots: int,
        token_slots: int,
        reserved_slots: int,
        internal_frag_slots: int,
        external_frag_slots: int,
        cached_slots: int,
        free_slots: int,
        prefix_query_tokens: int,
        prefix_hit_tokens: int,
        evicted_tokens: int,
        num_cow_copies: int,
    ) -> MemoryStats:
        """``MemoryStats(...)`` with the fields in declaration order, positionally.

        NOTE(speed): the frozen dataclass ``__init__`` costs ~3-5 us (keyword parsing and an
        ``object.__setattr__`` per field); setting the slots through their descriptors is
        ~1 us. The managers build one per ``stats()`` call, once or more per engine step.
        """
        o = new(MemoryStats)
        s0(o, capacity_slots)
        s1(o, token_slots)
        s2(o, reserved_slots)
        s3(o, internal_frag_slots)
        s4(o, external_frag_slots)
        s5(o, cached_slots)
        s6(o, free_slots)
        s7(o, prefix_query_tokens)
        s8(o, prefix_hit_tokens)
        s9(o, evicted_tokens)
        s10(o, num_cow_copies)
        return o

    assert tuple(names) == make_memory_stats.__code__.co_varnames[:11]
    return make_memory_stats


make_memory_stats = _memory_stats_maker()


def phys_slot(
    block_table: npt.NDArray[np.int32], i: int | npt.NDArray[np.int64], block_size: int
) -> int | npt.NDArray[np.int64]:
    """Physical KV slot of logical token ``i``: ``BT[i // B] * B + i % B``.

    Args:
        block_table: int32[num_blocks_of_seq]; physical block ids of one sequence.
        i: logical token index (or an array of them), ``0 <= i < len(BT) * B``.
        block_size: tokens per block ``B``.

    Returns:
        The physical slot index (same shape as ``i``).
    """
    if isinstance(i, np.ndarray):
        return block_table[i // block_size].astype(np.int64) * block_size + i % block_size
    return int(block_table[i // block_size]) * block_size + i % block_size


class KVCacheManager(ABC):
    """A KV-cache manager: admission, growth, release, fork, prefix lookup and statistics.

    Attributes:
        kind: ``"contiguous"``, ``"paged"`` or ``"radix"``.
        capacity_tokens: total token slots managed (``MemoryStats.capacity_slots``).
        block_size_tokens: allocation granule (1 for contiguous).
    """

    kind: str
    capacity_tokens: int
    block_size_tokens: int
    #: Whether full pages are cached by prefix identity (radix; paged with prefix caching).
    caches_prefixes: bool = False
    #: Whether pages are cached when a step that computes them is scheduled (vLLM v1's
    #: ``allocate_slots`` caches the blocks it allocates for the step, so a request scheduled
    #: later in the same step hits them) rather than after the step (SGLang).
    caches_when_scheduled: bool = False

    @abstractmethod
    def fits_ever(
        self, prompt_tokens: int, final_tokens: int, num_seqs: int = 1, shared_prompt: bool = True
    ) -> bool:
        """Whether the request could be admitted into an empty cache and run to its end.

        ``num_seqs`` sequences (parallel samples or beams) each grow to ``final_tokens``;
        with ``shared_prompt`` they share the prompt's KV through ``fork``.
        """

    @abstractmethod
    def match_prefix(
        self, block_ids: npt.NDArray[np.int64] | None, block_tokens: int, prompt_tokens: int
    ) -> int:
        """Prompt tokens cached now (what ``admit`` would return); no side effects."""

    @abstractmethod
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
        """Register a sequence; return its cached prompt tokens, or None (no state change)."""

    @abstractmethod
    def grow(
        self,
        seq_ids: npt.NDArray[np.int64],
        new_total_tokens: npt.NDArray[np.int64],
        *,
        now_s: float,
    ) -> bool:
        """All-or-nothing: make each sequence hold slots for ``new_total_tokens`` tokens."""

    @abstractmethod
    def slots_needed(
        self, seq_ids: npt.NDArray[np.int64], new_total_tokens: npt.NDArray[np.int64]
    ) -> int:
        """Free slots that ``grow`` with the same arguments would consume."""

    @abstractmethod
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
        """Release a finished or preempted sequence (radix: cache its full pages)."""

    def cache_computed(
        self,
        seq_id: int,
        *,
        now_s: float,
        block_ids: npt.NDArray[np.int64] | None,
        block_tokens: int = 1,
        total_tokens: int,
    ) -> None:
        """The first ``total_tokens`` of a live sequence are computed: cache its full pages
        now so that other requests can share them (no-op unless ``caches_prefixes``)."""
        return None  # managers without a prefix cache have nothing to do

    @abstractmethod
    def fork(self, parent_seq_id: int, child_seq_id: int, *, now_s: float) -> bool:
        """Make ``child`` share all of ``parent``'s KV; False if there is no room."""

    @abstractmethod
    def stats(self, *, min_pending_slots: int = 0) -> MemoryStats:
        """Memory categories now (``min_pending_slots`` drives external fragmentation)."""

    @property
    @abstractmethod
    def num_free_slots(self) -> int:
        """Slots that ``grow`` could obtain now (radix: free + evictable cached)."""

    @abstractmethod
    def check_invariants(self) -> None:
        """Raise ``InvariantError`` if internal state is inconsistent."""

    @abstractmethod
    def block_table(self, seq_id: int) -> npt.NDArray[np.int32]:
        """Physical block ids of a live sequence (contiguous: its region as 1-token blocks)."""

    @abstractmethod
    def is_live(self, seq_id: int) -> bool:
        """Whether ``seq_id`` is currently admitted."""

    @abstractmethod
    def num_tokens(self, seq_id: int) -> int:
        """Tokens the live sequence currently holds slots for."""

    @staticmethod
    def _check_admit_lengths(prompt_tokens: int, final_tokens: int) -> None:
        """Misuse guard shared by every manager's ``admit``."""
        if prompt_tokens < 1 or final_tokens < prompt_tokens:
            raise ValueError(
                f"need 1 <= prompt_tokens <= final_tokens, got {prompt_tokens}, {final_tokens}"
            )

    def reservation_slots(self, prompt_tokens: int, final_tokens: int) -> int:
        """Slots ``admit`` must find free for this request (for ``min_pending_slots``)."""
        b = self.block_size_tokens
        return -(-prompt_tokens // b) * b

    def prefix_counters(self) -> tuple[int, int]:
        """The cumulative prefix (query, hit) tokens, to restore after an undone admission."""
        return self._prefix_query_tokens, self._prefix_hit_tokens

    def restore_prefix_counters(self, counters: tuple[int, int]) -> None:
        self._prefix_query_tokens, self._prefix_hit_tokens = counters

    def reset_prefix_stats(self) -> None:
        """Zero the cumulative prefix query/hit counters (e.g. after a warm-up)."""
        self._prefix_query_tokens = 0
        self._prefix_hit_tokens = 0

    _prefix_query_tokens: int = 0
    _prefix_hit_tokens: int = 0
