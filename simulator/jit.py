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


def borrowed(array: Any) -> Any:
    """``array`` itself, as a view that numba does not reference-count (inside jitted code).

    NOTE(speed): numba counts references to an array atomically each time it is passed to a
    jitted callee or bound to a variable, and the replica's step passes a dozen arrays through
    a few levels of calls: on the Azure hour those atomic updates were about two thirds of the
    kernel's time (``perf``: numba's ``NRT_incref``/``NRT_decref`` at the top). An entry
    point that rebinds its arguments with ``borrowed`` hands its callees views without a
    memory-info pointer, for which numba's reference counting returns at once. Sound because
    the Python caller holds the arrays for the whole call, and nothing stores or returns a
    borrowed view beyond it (a kernel that returned one to Python would box an array that
    does not own its memory: the entry points return scalars and tuples of scalars only).
    With ``NUMBA_DISABLE_JIT=1`` this is the identity.
    """
    return array


def _register_borrowed() -> None:
    from numba.core import cgutils
    from numba.extending import intrinsic, overload

    @intrinsic
    def _borrowed_view(typingctx, array):
        if not isinstance(array, types.Array):
            return None

        def codegen(context, builder, signature, args):
            view = context.make_array(array)(context, builder, value=args[0])
            view.meminfo = cgutils.get_null_value(view.meminfo.type)
            view.parent = cgutils.get_null_value(view.parent.type)
            return view._getvalue()

        return array(array), codegen

    @overload(borrowed, jit_options={"cache": True})
    def _borrowed_impl(array):
        if isinstance(array, types.Array):
            return lambda array: _borrowed_view(array)
        return None


_register_borrowed()
