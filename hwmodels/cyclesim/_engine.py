"""The cycle-level event loop of one kernel launch (numba; flat arrays only).

A kernel is described by its *work*, built by the facades in :mod:`hwmodels.cyclesim.kernels`:
CTAs, each a sequence of iterations, each iteration a set of loads followed by a block of
compute. The machine is a set of SMs, each holding ``ctas_per_sm`` resident CTAs ("slots"), one
tensor-core/ALU pipe per SM shared by its resident CTAs, one L2 and one HBM, both modelled as
FCFS bandwidth queues with a latency.

Work layout (CSR, all ``int64`` pointers)::

    cta c      : iterations  cta_iter_ptr[c] .. cta_iter_ptr[c+1]-1
    iteration i: loads       iter_load_ptr[i] .. iter_load_ptr[i+1]-1, compute iter_compute_cycles[i]
    load l     : load_key[l] (L2 reuse key, -1 = never reused, -2 = always resident in L2),
                 load_bytes[l], load_phase[l] (0 = independent, 1 = address lookup, 2 =
                 dependent: issued when the iteration's lookups have arrived, e.g. a K/V gather
                 behind its block-table entry)

Event loop (one pending event per slot, in a binary heap ordered by ``(time, slot)``, a total
order, so the pure-Python twin in ``tests/cyclesim/reference.py`` pops in exactly the same order):

    START(slot)          take the next CTA (round-robin over SMs, as the hardware block
                         scheduler fills a wave), issue the loads of its first ``num_stages``
                         iterations (``num_stages == 1``: no double buffering)
    COMPUTE_BEGIN(slot)  data of the next iteration is in SRAM and the previous compute is done:
                         queue on the SM's pipe (shared by the resident CTAs)
    COMPUTE_END(slot)    the iteration's SRAM stage is free: issue the loads ``num_stages``
                         iterations ahead; when the last iteration is done, store the output
                         tile through HBM and end the CTA; the slot restarts after
                         ``cta_launch_cycles``

Queues are O(1) watermarks ("busy until"): a load waits for the backlog ahead of it, then
for its own service time, then for the latency.

L2: a load of key ``k`` hits if fewer than ``l2_capacity_bytes`` of HBM traffic were fetched
since ``k`` was last touched (an LRU stack-distance approximation, O(1) per access); a hit on
a line still in flight waits for its fill (MSHR merging). Misses occupy the HBM queue for
``bytes / hbm_bytes_per_cycle`` and arrive ``hbm_latency_cycles`` after leaving it; hits occupy
the L2 queue and arrive after ``l2_latency_cycles``.
"""

from __future__ import annotations

import numpy as np
from numba import njit

#: Event kinds.
EV_START = 0
EV_COMPUTE_BEGIN = 1
EV_COMPUTE_END = 2

#: Load key of data that is always in L2 (e.g. a block table the host just copied in).
KEY_L2_RESIDENT = -2

#: Load phases within one iteration.
PHASE_INDEPENDENT = 0
PHASE_LOOKUP = 1
PHASE_DEPENDENT = 2

#: Indices into the ``stats`` output array.
ST_HBM_BYTES = 0
ST_L2_HIT_BYTES = 1
ST_HBM_BUSY_CYCLES = 2
ST_PIPE_BUSY_CYCLES = 3
ST_NUM_EVENTS = 4
ST_STORE_BYTES = 5
NUM_STATS = 6


@njit(cache=True)
def _heap_less(t_a, s_a, t_b, s_b):
    return t_a < t_b or (t_a == t_b and s_a < s_b)


@njit(cache=True)
def _heap_push(heap_t, heap_s, size, t, s):
    """Push ``(t, s)``; returns the new size. ``heap_t``: float64[cap], ``heap_s``: int64[cap]."""
    i = size
    heap_t[i] = t
    heap_s[i] = s
    while i > 0:
        p = (i - 1) // 2
        if _heap_less(heap_t[i], heap_s[i], heap_t[p], heap_s[p]):
            tt = heap_t[p]
            ss = heap_s[p]
            heap_t[p] = heap_t[i]
            heap_s[p] = heap_s[i]
            heap_t[i] = tt
            heap_s[i] = ss
            i = p
        else:
            break
    return size + 1


@njit(cache=True)
def _heap_pop(heap_t, heap_s, size):
    """Remove the minimum (left in ``heap_t[size-1], heap_s[size-1]``); returns the new size."""
    last = size - 1
    tt = heap_t[0]
    ss = heap_s[0]
    heap_t[0] = heap_t[last]
    heap_s[0] = heap_s[last]
    heap_t[last] = tt
    heap_s[last] = ss
    i = 0
    while True:
        left = 2 * i + 1
        if left >= last:
            break
        c = left
        right = left + 1
        if right < last and _heap_less(heap_t[right], heap_s[right], heap_t[left], heap_s[left]):
            c = right
        if _heap_less(heap_t[c], heap_s[c], heap_t[i], heap_s[i]):
            tt = heap_t[c]
            ss = heap_s[c]
            heap_t[c] = heap_t[i]
            heap_s[c] = heap_s[i]
            heap_t[i] = tt
            heap_s[i] = ss
            i = c
        else:
            break
    return last


@njit(cache=True)
def _access(now, t, key, nbytes, mem, key_last, key_ready, p_l2_cap, p_hbm_bpc, p_hbm_lat,
            p_l2_bpc, p_l2_lat, stats):
    """One load issued at cycle ``t >= now`` (``now``: the event being processed).

    Returns its arrival cycle in SRAM. Every load occupies the L2 queue (all data reaches the
    SMs through L2); a miss also occupies the HBM queue; it arrives when the slower path is
    through. ``mem``: float64[3] = (hbm_free_cycle, l2_free_cycle, cumulative HBM bytes).

    A load issued in the future (``t > now``, behind a lookup) is served no earlier than ``t``
    but its service time is added to the queue's backlog as of ``now``: it never reserves a
    hole in the queue that loads processed later, but issued earlier, could not fill.
    """
    hit = key == KEY_L2_RESIDENT
    if key >= 0:
        last = key_last[key]
        if last >= 0.0 and mem[2] - last <= p_l2_cap:
            hit = True
    busy = nbytes / p_l2_bpc
    arrival = max(t, mem[1]) + busy + p_l2_lat
    mem[1] = max(mem[1], now) + busy
    if hit:
        stats[ST_L2_HIT_BYTES] += nbytes
        if key >= 0:
            arrival = max(arrival, key_ready[key])
    else:
        busy = nbytes / p_hbm_bpc
        arrival = max(arrival, max(t, mem[0]) + busy + p_hbm_lat)
        mem[0] = max(mem[0], now) + busy
        mem[2] += nbytes
        stats[ST_HBM_BYTES] += nbytes
        stats[ST_HBM_BUSY_CYCLES] += busy
        if key >= 0:
            key_ready[key] = arrival
    if key >= 0:
        key_last[key] = mem[2]
    return arrival


@njit(cache=True)
def _issue_iteration(t, it, iter_load_ptr, load_key, load_bytes, load_phase, mem, key_last,
                     key_ready, p_l2_cap, p_hbm_bpc, p_hbm_lat, p_l2_bpc, p_l2_lat, stats):
    """Issue all loads of iteration ``it`` at cycle ``t``; returns when the last one arrives.

    Phase 0 and 1 loads issue at ``t``; phase 2 loads issue when the phase-1 loads (address
    lookups) have arrived.
    """
    lo = iter_load_ptr[it]
    hi = iter_load_ptr[it + 1]
    ready = t
    lookup = t
    for ld in range(lo, hi):
        if load_phase[ld] <= PHASE_LOOKUP:
            a = _access(t, t, load_key[ld], load_bytes[ld], mem, key_last, key_ready, p_l2_cap,
                        p_hbm_bpc, p_hbm_lat, p_l2_bpc, p_l2_lat, stats)
            ready = max(ready, a)
            if load_phase[ld] == PHASE_LOOKUP:
                lookup = max(lookup, a)
    for ld in range(lo, hi):
        if load_phase[ld] == PHASE_DEPENDENT:
            a = _access(t, lookup, load_key[ld], load_bytes[ld], mem, key_last, key_ready,
                        p_l2_cap, p_hbm_bpc, p_hbm_lat, p_l2_bpc, p_l2_lat, stats)
            ready = max(ready, a)
    return ready


@njit(cache=True)
def simulate(cta_iter_ptr, iter_load_ptr, load_key, load_bytes, load_phase,
             iter_compute_cycles, cta_store_bytes, num_keys, num_sms, ctas_per_sm, num_stages,
             hbm_bytes_per_cycle, hbm_latency_cycles, l2_bytes_per_cycle, l2_latency_cycles,
             l2_capacity_bytes, launch_cycles, cta_launch_cycles, epilogue_cycles,
             out_cta_sm, out_cta_start, out_cta_end, out_stats):
    """Run one kernel launch; returns its total cycles (last CTA end).

    Args:
        cta_iter_ptr: int64[num_ctas + 1], CSR pointers into the iterations.
        iter_load_ptr: int64[num_iters + 1], CSR pointers into the loads.
        load_key: int64[num_loads], L2 reuse key in ``[0, num_keys)``, -1 (streaming) or
            -2 (``KEY_L2_RESIDENT``: always hits).
        load_bytes: float64[num_loads], bytes moved by the load.
        load_phase: int8[num_loads], PHASE_INDEPENDENT, PHASE_LOOKUP or PHASE_DEPENDENT.
        iter_compute_cycles: float64[num_iters], SM pipe cycles of the iteration's compute.
        cta_store_bytes: float64[num_ctas], bytes the CTA's epilogue writes to HBM.
        num_keys: number of distinct L2 keys.
        num_sms, ctas_per_sm: machine size and residency (slots = num_sms * ctas_per_sm).
        num_stages: SRAM pipeline depth (1 = no double buffering).
        hbm_bytes_per_cycle, hbm_latency_cycles: HBM queue.
        l2_bytes_per_cycle, l2_latency_cycles, l2_capacity_bytes: L2 queue and capacity.
        launch_cycles: kernel launch overhead before the first CTA starts.
        cta_launch_cycles: gap before a slot starts its next CTA (block scheduling + prologue).
        epilogue_cycles: SM cycles of each CTA's epilogue (before its store drains).
        out_cta_sm: int64[num_ctas], receives the SM of each CTA (-1 never ran).
        out_cta_start, out_cta_end: float64[num_ctas], receive each CTA's start/end cycle.
        out_stats: float64[NUM_STATS], receives the totals (see ``ST_*``).

    Returns:
        Total cycles of the launch (0 for an empty grid after ``launch_cycles``).
    """
    num_ctas = cta_iter_ptr.shape[0] - 1
    num_slots = num_sms * ctas_per_sm
    for i in range(out_stats.shape[0]):
        out_stats[i] = 0.0
    for c in range(num_ctas):
        out_cta_sm[c] = -1
        out_cta_start[c] = 0.0
        out_cta_end[c] = 0.0
    key_last = np.full(max(num_keys, 1), -1.0)
    key_ready = np.zeros(max(num_keys, 1))
    mem = np.zeros(3)
    pipe_free = np.zeros(num_sms)
    slot_cta = np.full(num_slots, -1, dtype=np.int64)
    slot_event = np.zeros(num_slots, dtype=np.int64)
    slot_next_load = np.zeros(num_slots, dtype=np.int64)
    slot_next_compute = np.zeros(num_slots, dtype=np.int64)
    slot_arrival = np.zeros((num_slots, num_stages))
    heap_t = np.zeros(num_slots)
    heap_s = np.zeros(num_slots, dtype=np.int64)
    size = 0
    for s in range(min(num_slots, num_ctas)):
        slot_event[s] = EV_START
        size = _heap_push(heap_t, heap_s, size, launch_cycles, s)
    next_cta = 0
    total = launch_cycles
    num_events = 0
    while size > 0:
        size = _heap_pop(heap_t, heap_s, size)
        t = heap_t[size]
        s = heap_s[size]
        num_events += 1
        # Slots are numbered wave-major: slot s sits on SM s % num_sms, so CTAs 0..num_sms-1
        # land on distinct SMs, as the hardware scheduler spreads the first wave.
        sm = s % num_sms
        ev = slot_event[s]
        if ev == EV_START:
            if next_cta >= num_ctas:
                continue
            c = next_cta
            next_cta += 1
            slot_cta[s] = c
            out_cta_sm[c] = sm
            out_cta_start[c] = t
            first = cta_iter_ptr[c]
            last = cta_iter_ptr[c + 1]
            n_issue = min(num_stages, last - first)
            for j in range(n_issue):
                slot_arrival[s, j] = _issue_iteration(
                    t, first + j, iter_load_ptr, load_key, load_bytes, load_phase, mem,
                    key_last, key_ready, l2_capacity_bytes, hbm_bytes_per_cycle,
                    hbm_latency_cycles, l2_bytes_per_cycle, l2_latency_cycles, out_stats)
            slot_next_load[s] = first + n_issue
            slot_next_compute[s] = first
            if first < last:
                slot_event[s] = EV_COMPUTE_BEGIN
                size = _heap_push(heap_t, heap_s, size, max(t, slot_arrival[s, 0]), s)
                continue
            t_end = t
        elif ev == EV_COMPUTE_BEGIN:
            it = slot_next_compute[s]
            begin = max(t, pipe_free[sm])
            cycles = iter_compute_cycles[it]
            pipe_free[sm] = begin + cycles
            out_stats[ST_PIPE_BUSY_CYCLES] += cycles
            slot_event[s] = EV_COMPUTE_END
            size = _heap_push(heap_t, heap_s, size, pipe_free[sm], s)
            continue
        else:
            c = slot_cta[s]
            first = cta_iter_ptr[c]
            last = cta_iter_ptr[c + 1]
            it = slot_next_compute[s] + 1
            slot_next_compute[s] = it
            nl = slot_next_load[s]
            if nl < last:
                slot_arrival[s, (nl - first) % num_stages] = _issue_iteration(
                    t, nl, iter_load_ptr, load_key, load_bytes, load_phase, mem, key_last,
                    key_ready, l2_capacity_bytes, hbm_bytes_per_cycle, hbm_latency_cycles,
                    l2_bytes_per_cycle, l2_latency_cycles, out_stats)
                slot_next_load[s] = nl + 1
            if it < last:
                slot_event[s] = EV_COMPUTE_BEGIN
                arr = slot_arrival[s, (it - first) % num_stages]
                size = _heap_push(heap_t, heap_s, size, max(t, arr), s)
                continue
            t_end = t
        # The CTA is done computing: epilogue, then its output tile drains through HBM.
        c = slot_cta[s]
        t_end = t_end + epilogue_cycles
        nbytes = cta_store_bytes[c]
        if nbytes > 0.0:
            start = max(t_end, mem[0])
            busy = nbytes / hbm_bytes_per_cycle
            mem[0] = start + busy
            out_stats[ST_HBM_BUSY_CYCLES] += busy
            out_stats[ST_STORE_BYTES] += nbytes
            t_end = mem[0]
        out_cta_end[c] = t_end
        total = max(total, t_end)
        slot_cta[s] = -1
        slot_event[s] = EV_START
        size = _heap_push(heap_t, heap_s, size, t_end + cta_launch_cycles, s)
    out_stats[ST_NUM_EVENTS] = num_events
    return total
