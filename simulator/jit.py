"""The house's numba decorator: ``njit`` compiled once per argument *types*.

numba compiles a jitted callee once per distinct argument type, and a constant argument (``-1``,
``0``, a module constant such as a header index) has its own type, ``Literal[int](value)``: each
call site that passes a different constant compiled another copy of the callee and of everything
it calls. Measured on the quickstart's first run (empty cache, numba 0.68): about 60 of the
kernel family's specializations were such literal copies (``_blocks._f32`` alone 18), and
removing them cut the compile's CPU time by 27 % (109.5 -> 79.4 s, back to back, same load).

:func:`njit` is ``numba.njit`` whose dispatcher, when called from jitted code, compiles and
types the call with the constants widened to their plain types (``types.unliteral``), so every
call site shares one compiled copy. No kernel here specialises on a constant's value (none
calls ``numba.literally``), so the code is the same and only compile time changes. With
``NUMBA_DISABLE_JIT=1`` the functions stay plain Python, as with ``numba.njit``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from numba import njit as _numba_njit
from numba.core import types


def _widen(ty: Any) -> Any:
    ty = types.unliteral(ty)
    # A narrower signed integer (an element read from an int32 view) counts as int64: the
    # kernels index with these, and Python's ints (the JIT-off twin) have no width at all.
    if isinstance(ty, types.Integer) and ty.signed and ty.bitwidth < 64:
        return types.int64
    return ty


def _widen_constants(dispatcher: Any) -> None:
    # Dispatcher.get_call_template(args, kws) is what numba's typing calls for a jitted call
    # (``types.Dispatcher.get_call_type``); it compiles for exactly the types it is given.
    resolve = getattr(dispatcher, "get_call_template", None)
    if resolve is None:  # NUMBA_DISABLE_JIT: a plain function
        return

    def get_call_template(args, kws):
        return resolve(tuple(_widen(a) for a in args), {k: _widen(v) for k, v in kws.items()})

    dispatcher.get_call_template = get_call_template


def njit(*args: Any, **kwargs: Any) -> Any:
    """``numba.njit`` (same arguments), compiled once per argument types (module docstring)."""

    def wrap(fn: Callable[..., Any]) -> Any:
        dispatcher = _numba_njit(**kwargs)(fn)
        _widen_constants(dispatcher)
        return dispatcher

    if args and callable(args[0]) and not kwargs:
        return wrap(args[0])
    if args:
        raise TypeError("servesim.simulator.jit.njit takes keyword options only (cache=True, ...)")
    return wrap
