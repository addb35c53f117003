"""The compiled serving loop: the kernel family (``_loop``, ``_mem``, ``_prefix``, ``_cost``)
behind the facade ``replica.py``, one numba kernel state per replica.

It runs every configuration: the five schedulers, paged (with or without automatic prefix
caching), radix and contiguous KV, recompute and swap preemption, fan-out, dependent
requests, every router, packed or memoised (cycle) step cost. ``engine.loop: auto`` (the
default) and ``compiled`` run here; ``reference`` (alias ``python``) runs the plain
reference replica (:mod:`simulator.reference`). Results are identical bit for bit: the
kernel is the reference, operation for operation (``tests/engine/test_reference.py`` and
``tests/engine/test_compiled.py`` compare every request time, step row and summary value).

SimPy still runs the event loop: arrivals (and the router) are SimPy events exactly as with
the reference. A replica is advanced lazily: when a request is routed to it (or, for a
router that reads replica state, when any request arrives), :func:`_loop.advance` commits
its steps that end before the arrival, plans each next step as the previous one ends, and
queues the request. Per-step and per-token work is compiled; no step is a SimPy event,
except with dependent requests, where each step end is one (:class:`CompiledCluster`), so
that a finish releases its dependents at the reference's moment.
"""

from servesim.simulator.compiled.replica import CompiledCluster, CompiledReplica, unsupported_reason

__all__ = ["CompiledCluster", "CompiledReplica", "unsupported_reason"]
