"""The one request representation every generator and reader produces: :class:`Workload`.

A workload is columnar: one numpy array per request attribute, so a million requests are a
few arrays, not a million Python objects. Row ``i`` is request ``i`` (``request_id == i``).

Ordering rules (checked by :meth:`Workload.check`):

* open arrivals (``depends_on == -1``) appear in non-decreasing ``arrival_s`` order;
* a dependent request comes after the request it depends on (``depends_on[i] < i``) and its
  ``arrival_s`` is NaN: it arrives ``think_time_s`` after that request *finishes*.

Prefix identity is a CSR list of chained block ids per request::

    prefix_offsets   [0,        3,           5, ...]          int64[n + 1]
    prefix_block_ids [7, 8, 9,  7, 12,  ...]                 int64[total]
                      \\ req 0 / \\ req 1 /

Block ``j`` of request ``i`` covers tokens ``[j * block_tokens, (j + 1) * block_tokens)`` of
its sequence. The first ``ceil(prompt_tokens / block_tokens)`` ids cover the prompt;
generators that know the answer (multi-turn, tree-of-thought) append the ids of the output
blocks too, so a cache that keeps finished sequences can reuse them. Two requests whose
block ``j`` ids are equal share tokens ``[0, (j + 1) * block_tokens)`` (the ids are chained,
as in vLLM and Mooncake). A trailing partial block gets an id of its own.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import numpy.typing as npt
import pandas as pd

from servesim.hwmodels.errors import InvariantError

# Column name -> dtype of every per-request array (the schema of to_frame and of the
# servesim trace format).
COLUMNS: dict[str, type] = {
    "request_id": np.int64,
    "arrival_s": np.float64,
    "prompt_tokens": np.int64,
    "output_tokens": np.int64,
    "session_id": np.int64,
    "turn": np.int32,
    "num_samples": np.int32,
    "beam_width": np.int32,
    "depends_on": np.int64,
    "think_time_s": np.float64,
}


@dataclass(frozen=True, slots=True, kw_only=True)
class Workload:
    """A set of requests as columnar arrays (see the module docstring for the rules).

    Attributes:
        name: short label (generator kind or trace file stem).
        request_id: int64[n], equal to ``arange(n)``.
        arrival_s: float64[n]; NaN for dependent requests.
        prompt_tokens: int64[n], >= 1.
        output_tokens: int64[n], >= 1 (known to the simulator; only oracle policies use it).
        session_id: int64[n]; -1 = none.
        turn: int32[n]; 0 for single-turn requests.
        num_samples: int32[n]; parallel-sampling fan-out ``n`` (1 = none).
        beam_width: int32[n]; 1 = no beam search.
        depends_on: int64[n]; -1 = open arrival, else the request whose finish this waits on.
        think_time_s: float64[n]; delay after ``depends_on`` finishes.
        block_tokens: tokens per prefix block (Mooncake 512); 0 = no prefix identity.
        prefix_offsets: int64[n + 1], CSR offsets into ``prefix_block_ids``.
        prefix_block_ids: int64[total], chained block ids.
        source: provenance (generator parameters or trace path).
        notes: human-readable remarks from readers, e.g. how many failed rows were dropped.
    """

    name: str
    request_id: npt.NDArray[np.int64]
    arrival_s: npt.NDArray[np.float64]
    prompt_tokens: npt.NDArray[np.int64]
    output_tokens: npt.NDArray[np.int64]
    session_id: npt.NDArray[np.int64]
    turn: npt.NDArray[np.int32]
    num_samples: npt.NDArray[np.int32]
    beam_width: npt.NDArray[np.int32]
    depends_on: npt.NDArray[np.int64]
    think_time_s: npt.NDArray[np.float64]
    block_tokens: int
    prefix_offsets: npt.NDArray[np.int64]
    prefix_block_ids: npt.NDArray[np.int64]
    source: str
    notes: tuple[str, ...] = field(default=())

    def __post_init__(self) -> None:
        n = len(self.request_id)
        for col, dtype in COLUMNS.items():
            arr = getattr(self, col)
            if not isinstance(arr, np.ndarray) or arr.dtype != dtype or arr.shape != (n,):
                raise ValueError(
                    f"Workload {self.name!r}: {col} must be a {np.dtype(dtype).name} array of "
                    f"shape ({n},), got {getattr(arr, 'dtype', type(arr))} "
                    f"{getattr(arr, 'shape', '')}"
                )
        if self.prefix_offsets.dtype != np.int64 or self.prefix_offsets.shape != (n + 1,):
            raise ValueError(f"Workload {self.name!r}: prefix_offsets must be int64[{n + 1}]")
        if self.prefix_block_ids.dtype != np.int64 or self.prefix_block_ids.ndim != 1:
            raise ValueError(f"Workload {self.name!r}: prefix_block_ids must be 1-D int64")
        if self.block_tokens < 0:
            raise ValueError(f"Workload {self.name!r}: block_tokens must be >= 0")

    # ------------------------------------------------------------------ construction

    @classmethod
    def from_arrays(
        cls,
        *,
        name: str,
        arrival_s: npt.ArrayLike,
        prompt_tokens: npt.ArrayLike,
        output_tokens: npt.ArrayLike,
        source: str,
        session_id: npt.ArrayLike | None = None,
        turn: npt.ArrayLike | None = None,
        num_samples: npt.ArrayLike | int = 1,
        beam_width: npt.ArrayLike | int = 1,
        depends_on: npt.ArrayLike | None = None,
        think_time_s: npt.ArrayLike | None = None,
        block_tokens: int = 0,
        prefix_offsets: npt.ArrayLike | None = None,
        prefix_block_ids: npt.ArrayLike | None = None,
        notes: tuple[str, ...] = (),
    ) -> Workload:
        """Build a workload, filling the optional columns with their neutral values.

        Args:
            name: label.
            arrival_s: float[n] arrival times (NaN where ``depends_on >= 0``).
            prompt_tokens: int[n].
            output_tokens: int[n].
            source: provenance string.
            session_id: int[n] or None (all -1).
            turn: int[n] or None (all 0).
            num_samples: int[n] or a scalar for all.
            beam_width: int[n] or a scalar for all.
            depends_on: int[n] or None (all -1, open arrivals).
            think_time_s: float[n] or None (all 0).
            block_tokens: tokens per prefix block, 0 when there are no prefix ids.
            prefix_offsets: int[n + 1] or None (no ids).
            prefix_block_ids: int[total] or None (no ids).
            notes: remarks for the user.

        Returns:
            The workload (not yet :meth:`check`-ed; call it when the input is untrusted).
        """
        arrival = np.ascontiguousarray(arrival_s, dtype=np.float64)
        n = len(arrival)

        def col(value: Any, dtype: type, default: float) -> np.ndarray:
            if value is None:
                return np.full(n, default, dtype=dtype)
            if np.isscalar(value):
                return np.full(n, value, dtype=dtype)
            return np.ascontiguousarray(value, dtype=dtype)

        if prefix_offsets is None:
            offsets = np.zeros(n + 1, dtype=np.int64)
            ids = np.zeros(0, dtype=np.int64)
        else:
            offsets = np.ascontiguousarray(prefix_offsets, dtype=np.int64)
            ids = np.ascontiguousarray(prefix_block_ids, dtype=np.int64)
        return cls(
            name=name,
            request_id=np.arange(n, dtype=np.int64),
            arrival_s=arrival,
            prompt_tokens=col(prompt_tokens, np.int64, 0),
            output_tokens=col(output_tokens, np.int64, 0),
            session_id=col(session_id, np.int64, -1),
            turn=col(turn, np.int32, 0),
            num_samples=col(num_samples, np.int32, 1),
            beam_width=col(beam_width, np.int32, 1),
            depends_on=col(depends_on, np.int64, -1),
            think_time_s=col(think_time_s, np.float64, 0.0),
            block_tokens=int(block_tokens),
            prefix_offsets=offsets,
            prefix_block_ids=ids,
            source=source,
            notes=tuple(notes),
        )

    # ------------------------------------------------------------------ access

    def __len__(self) -> int:
        return len(self.request_id)

    @property
    def num_requests(self) -> int:
        """Number of requests."""
        return len(self.request_id)

    @property
    def has_prefix_ids(self) -> bool:
        """Whether the requests carry prefix block ids."""
        return self.block_tokens > 0 and len(self.prefix_block_ids) > 0

    @property
    def is_open_loop(self) -> bool:
        """True when no request depends on another's completion."""
        return bool(np.all(self.depends_on < 0))

    def block_ids(self, i: int) -> npt.NDArray[np.int64]:
        """All block ids of request ``i`` (prompt, then output blocks where known)."""
        return self.prefix_block_ids[self.prefix_offsets[i] : self.prefix_offsets[i + 1]]

    def prompt_block_ids(self, i: int) -> npt.NDArray[np.int64]:
        """Block ids covering the prompt of request ``i`` (the last one may be partial)."""
        if self.block_tokens <= 0:
            return self.prefix_block_ids[:0]
        start = self.prefix_offsets[i]
        count = min(
            -(-int(self.prompt_tokens[i]) // self.block_tokens),
            int(self.prefix_offsets[i + 1] - start),
        )
        return self.prefix_block_ids[start : start + count]

    def num_prompt_blocks(self) -> npt.NDArray[np.int64]:
        """int64[n]: how many of each request's ids cover its prompt."""
        if self.block_tokens <= 0:
            return np.zeros(len(self), dtype=np.int64)
        listed = np.diff(self.prefix_offsets)
        return np.minimum(-(-self.prompt_tokens // self.block_tokens), listed)

    def to_frame(self) -> pd.DataFrame:
        """One row per request with the :data:`COLUMNS` (prefix ids are not included).

        ``df.attrs`` holds ``name``, ``source`` and ``block_tokens``.
        """
        df = pd.DataFrame({col: getattr(self, col) for col in COLUMNS})
        df.attrs.update(name=self.name, source=self.source, block_tokens=self.block_tokens)
        return df

    # ------------------------------------------------------------------ transforms

    def select(self, mask_or_idx: npt.ArrayLike) -> Workload:
        """Return the requests picked by a boolean mask or an increasing index array.

        Request ids are renumbered ``0..m-1`` and ``depends_on`` is remapped.

        Raises:
            ValueError: if an index is out of range or not increasing, or a selected request
                depends on one that is not selected.
        """
        sel = np.asarray(mask_or_idx)
        n = len(self)
        if sel.dtype == bool:
            if sel.shape != (n,):
                raise ValueError(f"mask has shape {sel.shape}, expected ({n},)")
            idx = np.flatnonzero(sel)
        else:
            idx = sel.astype(np.int64, copy=False)
            if idx.size and (idx.min() < 0 or idx.max() >= n or np.any(np.diff(idx) <= 0)):
                raise ValueError("select: indices must be increasing and within [0, n)")
        new_index = np.full(n, -1, dtype=np.int64)
        new_index[idx] = np.arange(len(idx), dtype=np.int64)
        dep = self.depends_on[idx]
        has_dep = dep >= 0
        new_dep = np.full(len(idx), -1, dtype=np.int64)
        new_dep[has_dep] = new_index[dep[has_dep]]
        if np.any(new_dep[has_dep] < 0):
            raise ValueError("select: a selected request depends on a request not selected")
        starts = self.prefix_offsets[idx]
        counts = self.prefix_offsets[idx + 1] - starts
        offsets = np.zeros(len(idx) + 1, dtype=np.int64)
        np.cumsum(counts, out=offsets[1:])
        gather = segment_arange(counts) + np.repeat(starts, counts)
        return replace(
            self,
            request_id=np.arange(len(idx), dtype=np.int64),
            arrival_s=self.arrival_s[idx],
            prompt_tokens=self.prompt_tokens[idx],
            output_tokens=self.output_tokens[idx],
            session_id=self.session_id[idx],
            turn=self.turn[idx],
            num_samples=self.num_samples[idx],
            beam_width=self.beam_width[idx],
            depends_on=new_dep,
            think_time_s=self.think_time_s[idx],
            prefix_offsets=offsets,
            prefix_block_ids=self.prefix_block_ids[gather],
        )

    def check(self) -> None:
        """Verify the ordering and value rules of the module docstring.

        Raises:
            InvariantError: naming the first rule broken.
        """
        n = len(self)
        if not np.array_equal(self.request_id, np.arange(n)):
            raise InvariantError(f"{self.name}: request_id must be 0..n-1")
        if n and (self.prompt_tokens.min() < 1 or self.output_tokens.min() < 1):
            raise InvariantError(f"{self.name}: prompt_tokens and output_tokens must be >= 1")
        if n and (self.num_samples.min() < 1 or self.beam_width.min() < 1):
            raise InvariantError(f"{self.name}: num_samples and beam_width must be >= 1")
        dep = self.depends_on
        is_dep = dep >= 0
        if np.any(dep[is_dep] >= np.flatnonzero(is_dep)):
            raise InvariantError(f"{self.name}: depends_on must point to an earlier request")
        if np.any(dep < -1):
            raise InvariantError(f"{self.name}: depends_on must be -1 or a request id")
        open_arr = self.arrival_s[~is_dep]
        if np.any(~np.isfinite(open_arr)):
            raise InvariantError(f"{self.name}: open arrivals need a finite arrival_s")
        if np.any(np.diff(open_arr) < 0):
            raise InvariantError(f"{self.name}: open arrivals must be sorted by arrival_s")
        if np.any(self.think_time_s < 0):
            raise InvariantError(f"{self.name}: think_time_s must be >= 0")
        off = self.prefix_offsets
        if off[0] != 0 or off[-1] != len(self.prefix_block_ids) or np.any(np.diff(off) < 0):
            raise InvariantError(f"{self.name}: prefix_offsets is not a valid CSR index")
        if self.block_tokens == 0 and len(self.prefix_block_ids):
            raise InvariantError(f"{self.name}: prefix ids given but block_tokens == 0")


def segment_arange(lengths: npt.NDArray[np.int64]) -> npt.NDArray[np.int64]:
    """Concatenate ``arange(l)`` for each ``l`` in ``lengths``, vectorised.

    >>> segment_arange(np.array([2, 0, 3])).tolist()
    [0, 1, 0, 1, 2]
    """
    lengths = np.asarray(lengths, dtype=np.int64)
    total = int(lengths.sum())
    ends = np.cumsum(lengths)
    return np.arange(total, dtype=np.int64) - np.repeat(ends - lengths, lengths)
