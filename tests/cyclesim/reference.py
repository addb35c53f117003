"""Pure-Python twin of ``hwmodels.cyclesim._engine.simulate``, written for obviousness.

Events live in ``heapq`` as ``(time, slot)`` tuples (the same total order as the kernel's binary
heap), queues are plain floats, and the arithmetic is done in the same order as the kernel so
that the results are bit-identical.
"""

from __future__ import annotations

import heapq
from dataclasses import dataclass, field

from servesim.hwmodels.cyclesim import _engine as E
from servesim.hwmodels.cyclesim.kernels import Launch, Work


@dataclass
class _Mem:
    hbm_free: float = 0.0
    l2_free: float = 0.0
    fetched_bytes: float = 0.0
    stats: dict[str, float] = field(
        default_factory=lambda: {"hbm": 0.0, "hit": 0.0, "hbm_busy": 0.0, "pipe": 0.0, "store": 0.0}
    )


class RefEngine:
    """One launch of ``work`` on the machine described by ``launch``."""

    def __init__(self, work: Work, launch: Launch) -> None:
        self.w = work
        self.p = launch
        self.mem = _Mem()
        self.key_last: dict[int, float] = {}
        self.key_ready: dict[int, float] = {}

    def access(self, now: float, t: float, key: int, nbytes: float) -> float:
        p, mem = self.p, self.mem
        hit = key == E.KEY_L2_RESIDENT
        if key >= 0 and key in self.key_last:
            hit = mem.fetched_bytes - self.key_last[key] <= p.l2_capacity_bytes
        busy = nbytes / p.l2_bytes_per_cycle
        arrival = max(t, mem.l2_free) + busy + p.l2_latency_cycles
        mem.l2_free = max(mem.l2_free, now) + busy
        if hit:
            mem.stats["hit"] += nbytes
            if key >= 0:
                arrival = max(arrival, self.key_ready.get(key, 0.0))
        else:
            busy = nbytes / p.hbm_bytes_per_cycle
            arrival = max(arrival, max(t, mem.hbm_free) + busy + p.hbm_latency_cycles)
            mem.hbm_free = max(mem.hbm_free, now) + busy
            mem.fetched_bytes += nbytes
            mem.stats["hbm"] += nbytes
            mem.stats["hbm_busy"] += busy
            if key >= 0:
                self.key_ready[key] = arrival
        if key >= 0:
            self.key_last[key] = mem.fetched_bytes
        return arrival

    def issue(self, t: float, it: int) -> float:
        """Loads of iteration ``it``: independent and lookups at ``t``, dependents after lookups."""
        w = self.w
        loads = range(int(w.iter_load_ptr[it]), int(w.iter_load_ptr[it + 1]))
        ready = lookup = t
        for ld in loads:
            if w.load_phase[ld] <= E.PHASE_LOOKUP:
                a = self.access(t, t, int(w.load_key[ld]), float(w.load_bytes[ld]))
                ready = max(ready, a)
                if w.load_phase[ld] == E.PHASE_LOOKUP:
                    lookup = max(lookup, a)
        for ld in loads:
            if w.load_phase[ld] == E.PHASE_DEPENDENT:
                a = self.access(t, lookup, int(w.load_key[ld]), float(w.load_bytes[ld]))
                ready = max(ready, a)
        return ready

    def run(self) -> tuple[float, list[int], list[float], list[float], dict[str, float]]:
        """Returns (total cycles, cta -> sm, cta start, cta end, stats)."""
        w, p = self.w, self.p
        num_ctas = len(w.cta_iter_ptr) - 1
        num_slots = p.num_sms * p.ctas_per_sm
        cta_sm = [-1] * num_ctas
        cta_start = [0.0] * num_ctas
        cta_end = [0.0] * num_ctas
        pipe_free = [0.0] * p.num_sms
        # Per slot: (state, cta, next load iteration, next compute iteration, arrivals by stage)
        state = ["start"] * num_slots
        cta_of = [-1] * num_slots
        next_load = [0] * num_slots
        next_compute = [0] * num_slots
        arrivals = [[0.0] * p.num_stages for _ in range(num_slots)]
        events = [(p.launch_cycles, s) for s in range(min(num_slots, num_ctas))]
        heapq.heapify(events)
        next_cta = 0
        total = p.launch_cycles
        while events:
            t, s = heapq.heappop(events)
            sm = s % p.num_sms
            if state[s] == "start":
                if next_cta >= num_ctas:
                    continue
                c = next_cta
                next_cta += 1
                cta_of[s] = c
                cta_sm[c] = sm
                cta_start[c] = t
                first, last = int(w.cta_iter_ptr[c]), int(w.cta_iter_ptr[c + 1])
                n_issue = min(p.num_stages, last - first)
                for j in range(n_issue):
                    arrivals[s][j] = self.issue(t, first + j)
                next_load[s] = first + n_issue
                next_compute[s] = first
                if first < last:
                    state[s] = "begin"
                    heapq.heappush(events, (max(t, arrivals[s][0]), s))
                    continue
                t_end = t
            elif state[s] == "begin":
                it = next_compute[s]
                begin = max(t, pipe_free[sm])
                cycles = float(w.iter_compute_cycles[it])
                pipe_free[sm] = begin + cycles
                self.mem.stats["pipe"] += cycles
                state[s] = "end"
                heapq.heappush(events, (pipe_free[sm], s))
                continue
            else:
                c = cta_of[s]
                first, last = int(w.cta_iter_ptr[c]), int(w.cta_iter_ptr[c + 1])
                it = next_compute[s] + 1
                next_compute[s] = it
                nl = next_load[s]
                if nl < last:
                    arrivals[s][(nl - first) % p.num_stages] = self.issue(t, nl)
                    next_load[s] = nl + 1
                if it < last:
                    state[s] = "begin"
                    heapq.heappush(events, (max(t, arrivals[s][(it - first) % p.num_stages]), s))
                    continue
                t_end = t
            c = cta_of[s]
            t_end = t_end + p.epilogue_cycles
            nbytes = float(w.cta_store_bytes[c])
            if nbytes > 0.0:
                start = max(t_end, self.mem.hbm_free)
                busy = nbytes / p.hbm_bytes_per_cycle
                self.mem.hbm_free = start + busy
                self.mem.stats["hbm_busy"] += busy
                self.mem.stats["store"] += nbytes
                t_end = self.mem.hbm_free
            cta_end[c] = t_end
            total = max(total, t_end)
            cta_of[s] = -1
            state[s] = "start"
            heapq.heappush(events, (t_end + p.cta_launch_cycles, s))
        return total, cta_sm, cta_start, cta_end, self.mem.stats
