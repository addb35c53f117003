"""KV-cache managers behind one interface: contiguous reservation, paged blocks, radix tree.

Use :func:`make_kv_manager`; the engine talks to the result through
:class:`~simulator.memory.base.KVCacheManager`.
"""

from __future__ import annotations

from servesim.simulator.errors import ConfigError
from servesim.simulator.memory.base import KVCacheManager, MemoryStats, phys_slot
from servesim.simulator.memory.contiguous import ContiguousKVCache
from servesim.simulator.memory.paged import PagedKVCache
from servesim.simulator.memory.radix import RadixKVCache

__all__ = [
    "KINDS",
    "ContiguousKVCache",
    "KVCacheManager",
    "MemoryStats",
    "PagedKVCache",
    "RadixKVCache",
    "make_kv_manager",
    "phys_slot",
]

KINDS = ("contiguous", "paged", "radix")
RESERVATIONS = ("max", "pow2", "oracle")
PLACEMENTS = ("first_fit", "best_fit")
MAX_BLOCK_SIZE_TOKENS = 256


def _positive(name: str, value: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(f"{name} must be an int >= 1, got {value!r}")


def make_kv_manager(
    kind: str,
    *,
    capacity_tokens: int,
    block_size_tokens: int = 16,
    max_seqs: int,
    max_seq_len: int,
    reservation: str = "max",
    placement: str = "first_fit",
    watermark_frac: float = 0.01,
    prefix_caching: bool = False,
    use_numba: bool = True,
) -> KVCacheManager:
    """Build a KV-cache manager.

    Args:
        kind: ``"contiguous"``, ``"paged"`` or ``"radix"``.
        capacity_tokens: KV token slots (paged/radix round down to whole blocks).
        block_size_tokens: paged block / radix page size, 1..256 (ignored by contiguous).
        max_seqs: number of seq ids, ``0 .. max_seqs - 1``.
        max_seq_len: longest sequence in tokens.
        reservation: contiguous policy ``"max"``, ``"pow2"`` or ``"oracle"``.
        placement: contiguous placement ``"first_fit"`` or ``"best_fit"``.
        watermark_frac: paged/radix fraction of blocks kept free at admission, in [0, 1).
        prefix_caching: paged only: vLLM v1's automatic prefix caching (radix always
            caches prefixes; contiguous cannot).
        use_numba: must be True; the pure-Python twins live in ``tests/reference`` (set
            ``NUMBA_DISABLE_JIT=1`` to run the kernels as plain Python).

    Raises:
        ConfigError: a bad name or value (the message names the field and what is valid).
    """
    if kind not in KINDS:
        raise ConfigError(f"kind must be one of {', '.join(KINDS)}; got {kind!r}")
    _positive("capacity_tokens", capacity_tokens)
    _positive("max_seqs", max_seqs)
    _positive("max_seq_len", max_seq_len)
    if not use_numba:
        raise ConfigError(
            "use_numba=False is not supported: the pure-Python twins are test references "
            "(tests/reference); set NUMBA_DISABLE_JIT=1 to run the kernels as Python"
        )
    if prefix_caching and kind != "paged":
        raise ConfigError(
            f"prefix_caching=True needs kind 'paged' (radix always caches prefixes, "
            f"contiguous cannot); got kind {kind!r}"
        )
    if kind == "contiguous":
        if reservation not in RESERVATIONS:
            raise ConfigError(
                f"reservation must be one of {', '.join(RESERVATIONS)}; got {reservation!r}"
            )
        if placement not in PLACEMENTS:
            raise ConfigError(
                f"placement must be one of {', '.join(PLACEMENTS)}; got {placement!r}"
            )
        return ContiguousKVCache(
            capacity_tokens=capacity_tokens,
            max_seqs=max_seqs,
            max_seq_len=max_seq_len,
            reservation=reservation,
            placement=placement,
        )
    _positive("block_size_tokens", block_size_tokens)
    if block_size_tokens > MAX_BLOCK_SIZE_TOKENS:
        raise ConfigError(
            f"block_size_tokens must be in 1..{MAX_BLOCK_SIZE_TOKENS}, got {block_size_tokens}"
        )
    if capacity_tokens < block_size_tokens:
        raise ConfigError(
            f"capacity_tokens ({capacity_tokens}) must hold at least one block of "
            f"block_size_tokens={block_size_tokens}"
        )
    if not 0.0 <= watermark_frac < 1.0:
        raise ConfigError(f"watermark_frac must be in [0, 1), got {watermark_frac!r}")
    if kind == "paged":
        return PagedKVCache(
            capacity_tokens=capacity_tokens,
            block_size_tokens=block_size_tokens,
            max_seqs=max_seqs,
            max_seq_len=max_seq_len,
            watermark_frac=watermark_frac,
            prefix_caching=prefix_caching,
        )
    return RadixKVCache(
        capacity_tokens=capacity_tokens,
        block_size_tokens=block_size_tokens,
        max_seqs=max_seqs,
        max_seq_len=max_seq_len,
        watermark_frac=watermark_frac,
    )
