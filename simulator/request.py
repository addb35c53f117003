"""Mutable per-request state inside a replica.

The workload itself is columnar (:class:`workloads.request.Workload`); a :class:`ReqState`
exists only while a request is queued or running on a replica, so a million-request run
never holds a million of them at once.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

# Phases of a request on a replica.
WAITING = 0  # queued, holds no KV
PREFILL = 1  # admitted; prompt (or recompute) tokens still to compute
DECODE = 2  # generating
SWAPPED = 3  # preempted by swapping its KV to host memory
DONE = 4  # finished (static batching keeps it as padding until the batch ends)

# Rejection reasons (codes stored in the results, names in the report).
REJECT_REASONS: tuple[str, ...] = (
    "",
    "exceeds_max_model_len",
    "exceeds_kv_capacity",
    "exceeds_max_num_seqs",
)
REJECT_NONE = 0
REJECT_MAX_LEN = 1
REJECT_KV = 2
REJECT_SEQS = 3  # a fan-out group wider than scheduler.max_num_seqs could never be seated


class ReqState:
    """One request (a sequence group: ``fanout`` sequences sharing a prompt) on a replica.

    Attributes:
        idx: row of the request in the workload.
        arrival_s: arrival time (dependent requests: the time they were released).
        prompt_tokens / output_tokens: lengths; every sequence generates ``output_tokens``.
        fanout: sequences in the group (parallel samples ``n`` or beam width).
        block_ids: chained prefix block ids (None = no prefix identity).
        slots: KV-manager sequence ids of the group's sequences (empty while waiting).
        prefill_target_tokens: tokens whose KV must exist before decoding (prompt, or prompt +
            generated tokens after a recompute preemption).
        computed_tokens: tokens of the prompt/recompute already in the KV cache.
        generated_tokens: tokens generated per sequence so far.
        order: admission-independent FCFS key (arrival order on this replica).
        last_token_s: when its sequences last emitted a token, kept while it holds no slots
            (preempted), so the next token's gap is measured from it.
    """

    __slots__ = (
        "arrival_s",
        "block_ids",
        "block_tokens",
        "cached_tokens",
        "computed_tokens",
        "fanout",
        "first_token_done",
        "generated_tokens",
        "idx",
        "is_beam",
        "last_token_s",
        "num_preemptions",
        "order",
        "output_tokens",
        "phase",
        "prefill_target_tokens",
        "prompt_tokens",
        "slots",
        "swapped_tokens",
    )

    def __init__(
        self,
        *,
        idx: int,
        arrival_s: float,
        prompt_tokens: int,
        output_tokens: int,
        fanout: int,
        is_beam: bool,
        block_ids: npt.NDArray[np.int64] | None,
        block_tokens: int,
        order: int,
    ) -> None:
        self.idx = idx
        self.arrival_s = arrival_s
        self.prompt_tokens = prompt_tokens
        self.output_tokens = output_tokens
        self.fanout = fanout
        self.is_beam = is_beam
        self.block_ids = block_ids
        self.block_tokens = block_tokens
        self.order = order
        self.slots: list[int] = []
        self.phase = WAITING
        self.prefill_target_tokens = prompt_tokens
        self.computed_tokens = 0
        self.cached_tokens = 0
        self.generated_tokens = 0
        self.num_preemptions = 0
        self.first_token_done = False
        self.swapped_tokens = 0
        self.last_token_s = 0.0

    @property
    def final_tokens(self) -> int:
        """Tokens one sequence holds at its end (prompt + output)."""
        return self.prompt_tokens + self.output_tokens

    @property
    def remaining_prefill_tokens(self) -> int:
        return self.prefill_target_tokens - self.computed_tokens

    def __repr__(self) -> str:  # debugging aid only
        return f"ReqState(idx={self.idx}, phase={self.phase}, computed={self.computed_tokens}, gen={self.generated_tokens})"
