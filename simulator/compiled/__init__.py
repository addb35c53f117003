"""The compiled serving loop: vLLM, Sarathi-Serve, Orca or SGLang scheduling on paged KV (with
or without vLLM v1's automatic prefix caching) or the radix prefix cache, one numba kernel
per replica.

``engine.loop: auto`` (the default) runs a variant here when it is supported
(:func:`unsupported_reason` says why not otherwise) and in the Python engine
(``simulator.engine``) otherwise; ``compiled`` insists (a configuration error names what is
unsupported), ``python`` never uses it. Results are the same either way: the kernel is the
Python engine's stepping mode, operation for operation (``tests/engine/test_compiled.py``
compares every request time, step row and summary value), and the Python engine is its
pure-Python twin.

SimPy still runs the event loop: arrivals (and the router) are SimPy events exactly as in
the Python engine. A replica is advanced lazily: when a request is routed to it (or, for a
router that reads replica state, when any request arrives), :func:`_loop.advance` commits
its steps that end before the arrival, plans each next step as the previous one ends, and
queues the request. Per-step and per-token work is compiled; no step is a SimPy event,
except with dependent requests, where each step end is one (:class:`CompiledCluster`), so
that a finish releases its dependents at the reference's moment.
"""

from servesim.simulator.compiled.replica import CompiledCluster, CompiledReplica, unsupported_reason

__all__ = ["CompiledCluster", "CompiledReplica", "unsupported_reason"]
