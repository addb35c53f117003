"""Open arrival processes: vectorised samplers of ``n`` sorted arrival times.

Time-varying rates (piecewise, diurnal, on/off) use time rescaling: the arrivals of a unit
Poisson process ``u_1 < u_2 < ...`` are mapped through the inverse cumulative intensity
``t = Lambda^-1(u)``, which gives a Poisson process of intensity ``lambda(t)`` exactly when
``lambda`` is piecewise constant. The diurnal cosine is integrated exactly over a fine grid
and inverted piecewise-linearly within each grid cell.

The closed-loop "process" has no open arrival times; :mod:`workloads.synthetic` chains its
requests through ``depends_on``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import numpy.typing as npt

from servesim.hwmodels.errors import ConfigError

if TYPE_CHECKING:
    from servesim.workloads.config import ArrivalsCfg

# Grid cells per period used to integrate the diurnal rate. 4096 cells keep the error of the
# piecewise-linear inverse far below a request's inter-arrival time at any practical rate.
_DIURNAL_CELLS = 4096


def sample_arrivals(cfg: ArrivalsCfg, n: int, rng: np.random.Generator) -> npt.NDArray[np.float64]:
    """Return ``n`` non-decreasing arrival times in seconds for an open process.

    Args:
        cfg: one of the arrival models of :mod:`workloads.config` (not closed_loop).
        n: number of arrivals.
        rng: the ``workload.arrivals`` stream.

    Raises:
        ConfigError: for ``closed_loop``, which has no open arrival times.
    """
    process = cfg.process
    if process == "poisson":
        return np.cumsum(rng.exponential(1.0 / cfg.rate_per_s, size=n))
    if process == "gamma":
        shape = 1.0 / cfg.cv**2
        return np.cumsum(rng.gamma(shape, 1.0 / (cfg.rate_per_s * shape), size=n))
    if process == "constant":
        return np.arange(n, dtype=np.float64) / cfg.rate_per_s
    if process == "offline":
        return np.zeros(n, dtype=np.float64)
    if process == "piecewise":
        return _rescaled(np.asarray(cfg.rates_per_s), np.asarray(cfg.durations_s), n, rng)
    if process == "onoff":
        return _rescaled(np.array([cfg.rate_per_s, 0.0]), np.array([cfg.on_s, cfg.off_s]), n, rng)
    if process == "diurnal":
        # Mean rate of each grid cell, from the exact integral of the cosine over the cell.
        edges_s = np.linspace(0.0, cfg.period_s, _DIURNAL_CELLS + 1)
        omega = 2.0 * np.pi / cfg.period_s
        integral = cfg.rate_per_s * (
            edges_s + cfg.amplitude_frac / omega * np.sin(omega * (edges_s - cfg.peak_s))
        )
        cell_s = np.diff(edges_s)
        return _rescaled(np.diff(integral) / cell_s, cell_s, n, rng)
    raise ConfigError(f"arrival process {process!r} has no open arrival times")


def _rescaled(
    rates_per_s: npt.NDArray[np.float64],
    durations_s: npt.NDArray[np.float64],
    n: int,
    rng: np.random.Generator,
) -> npt.NDArray[np.float64]:
    """Poisson arrivals with a periodic piecewise-constant rate (see the module docstring)."""
    mass = rates_per_s * durations_s  # expected arrivals per segment
    cum_mass = np.cumsum(mass)
    period_mass = float(cum_mass[-1])
    starts_s = np.concatenate(([0.0], np.cumsum(durations_s)[:-1]))
    period_s = float(durations_s.sum())
    u = np.cumsum(rng.exponential(1.0, size=n))
    cycles = np.floor(u / period_mass)
    rem = u - cycles * period_mass
    # side="right": a zero-rate segment has the same cumulative mass as the one before, so
    # the search skips it and lands on the segment where the remaining mass is spent.
    seg = np.minimum(np.searchsorted(cum_mass, rem, side="right"), len(mass) - 1)
    before = cum_mass[seg] - mass[seg]
    rate = rates_per_s[seg]
    # A remainder rounded up to the full period mass can land on a trailing zero-rate
    # segment; such an arrival sits at the end of the period.
    within_s = np.divide(rem - before, rate, out=durations_s[seg].copy(), where=rate > 0)
    t = cycles * period_s + starts_s[seg] + np.minimum(within_s, durations_s[seg])
    # Rounding can put neighbours a ulp out of order at segment edges; restore the order.
    return np.maximum.accumulate(t)
