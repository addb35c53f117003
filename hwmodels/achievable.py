"""Achievable performance per GPU: measured figures next to the datasheet peaks.

A datasheet peak is what a GPU cannot exceed; what a serving stack's kernels reach is lower,
and by how much differs per GPU and vendor (a large BF16 GEMM reaches ~79 % of peak on A100,
~74 % on H100, under half on MI300X). ``hwmodels/data/achievable.yaml`` holds, for every
catalogue GPU, published or measured figures, each with its ``source`` and a ``confidence``
grade:

* ``measured`` - a published measurement on this GPU (kernel timings, vendor or independent
  microbenchmark, nccl/rccl-tests);
* ``derived``  - computed from a measurement of the same silicon (another SKU, power limit,
  memory) or from the topology (links between GPUs), the derivation stated in ``source``;
* ``borrowed`` - no measurement found: the figure is another GPU's, named in ``source``. A
  prediction band widens for it (:data:`BAND_FRAC_BY_CONFIDENCE`).

The step-cost model uses these figures *relative to the GPU its roofline was calibrated on*
(``size_profile``): the fitted size-dependence (launch latency, half-efficiency sizes) is kept,
and the asymptotic efficiencies are scaled by ``frac(gpu, type) / frac(calibration GPU, fp16)``
(:func:`efficiency_for`). On the two calibration GPUs the scale is exactly 1.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from dataclasses import dataclass, field
from importlib import resources
from types import MappingProxyType
from typing import Any

import yaml

from servesim.hwmodels.errors import ConfigError
from servesim.hwmodels.gpus import GpuSpec, get_gpu

#: Confidence grades, best first.
CONFIDENCE_GRADES: tuple[str, ...] = ("measured", "derived", "borrowed")
#: Relative half-width of the prediction band a figure of each grade implies (one-sigma-like;
#: the bands of issue #13 section 5 start from these). Measured kernel figures scatter by a
#: few per cent between runs and software versions; a derivation adds the uncertainty of its
#: scaling; a borrowed figure can be off by the spread between GPUs (~20 %).
BAND_FRAC_BY_CONFIDENCE: Mapping[str, float] = MappingProxyType(
    {"measured": 0.05, "derived": 0.10, "borrowed": 0.20}
)
#: Compute types every GPU entry must give when the GPU has a tensor-core path for them.
REQUIRED_COMPUTE_TYPES: tuple[str, ...] = ("fp16", "bf16", "fp8", "int8")
#: Weight-only kernel families (stored-weight bits, activations fp16/bf16).
WEIGHT_ONLY_KINDS: tuple[str, ...] = ("w4a16", "w8a16")

_DATA_FILE = "data/achievable.yaml"


def _check_grade(grade: Any, where: str) -> str:
    if grade not in CONFIDENCE_GRADES:
        raise ConfigError(f"{where}: confidence must be one of {', '.join(CONFIDENCE_GRADES)}, got {grade!r}")
    return str(grade)


def _check_source(src: Any, where: str) -> str:
    if not isinstance(src, str) or len(src.strip()) < 8:
        raise ConfigError(f"{where}: every figure needs a source (a citation), got {src!r}")
    return src


@dataclass(frozen=True, slots=True, kw_only=True)
class Figure:
    """One achievable figure with its provenance.

    Attributes:
        value: the figure (unit in the owning field's name).
        confidence: ``measured``, ``derived`` or ``borrowed``.
        source: where it comes from (citation; for derived/borrowed, from what).
    """

    value: float
    confidence: str
    source: str

    @property
    def band_frac(self) -> float:
        """Relative band half-width this figure's grade implies."""
        return BAND_FRAC_BY_CONFIDENCE[self.confidence]


@dataclass(frozen=True, slots=True, kw_only=True)
class GemmPoint:
    """A measured GEMM ``[m, k] x [k, n]`` of one compute type (FLOP/s achieved)."""

    compute_type: str
    m: int
    n: int
    k: int
    flops_per_s: float
    source: str


@dataclass(frozen=True, slots=True, kw_only=True)
class AllReduceFigure:
    """All-reduce within one node for ``tp`` GPUs (nccl-tests / rccl-tests conventions).

    ``time = latency_s + busbytes / bus_bw_bytes_per_s`` with ``busbytes = 2 (tp-1)/tp x
    message bytes`` (the ring all-reduce's bytes per GPU, nccl-tests' ``busbw`` definition),
    or, where the data file gives measured times at a few message sizes (``curve_us``), those
    times interpolated (:meth:`time_s`).
    """

    tp: int
    latency_s: float
    bus_bw_bytes_per_s: float
    confidence: str
    source: str
    #: Measured all-reduce times ``(message_bytes, seconds)`` at a few sizes, ascending (empty:
    #: the affine law alone). See :meth:`time_s`.
    curve: tuple[tuple[float, float], ...] = ()

    @property
    def band_frac(self) -> float:
        return BAND_FRAC_BY_CONFIDENCE[self.confidence]

    def points(self) -> tuple[tuple[float, float, float], ...]:
        """The law as ``(message_bytes, seconds, seconds_per_byte)`` segments, ascending from 0 bytes.

        Without a curve: one segment, ``latency_s + busbytes / bus_bw``. With a curve: from
        ``(0, latency_s)`` through the measured points, linear between them (a message size
        between two measurements costs the interpolated time: NCCL switches protocol - LL,
        LL128, Simple - across this range, so a single latency + bandwidth underestimates
        the mid sizes), and past the last point its time plus the extra bus bytes at
        ``bus_bw_bytes_per_s`` (the large-message bus bandwidth).
        """
        per_byte = 2.0 * (self.tp - 1) / self.tp / self.bus_bw_bytes_per_s
        pts = [(0.0, self.latency_s)] + [p for p in self.curve if p[0] > 0.0]
        out = []
        for i, (b, t) in enumerate(pts):
            slope = per_byte if i == len(pts) - 1 else (pts[i + 1][1] - t) / (pts[i + 1][0] - b)
            out.append((b, t, slope))
        return tuple(out)

    def time_s(self, message_bytes: float) -> float:
        """Seconds of one all-reduce of ``message_bytes`` (per GPU) under :meth:`points`."""
        segs = self.points()
        i = max(j for j, (b, _, _) in enumerate(segs) if b <= message_bytes) if message_bytes > 0 else 0
        b, t, slope = segs[i]
        return t + (message_bytes - b) * slope


@dataclass(frozen=True, slots=True, kw_only=True)
class AllToAllFigure:
    """MoE dispatch and combine all-to-alls across ``ep`` expert-parallel GPUs, DeepEP's two
    kernel families.

    *Low latency* (decode): ``latency_s + logical bytes / bw_bytes_per_s``, logical bytes =
    tokens per rank x top-k x hidden x element bytes (local traffic included; DeepEP's
    low-latency table reports 128 x 8 x 7168 x 1.03 B FP8 in 77 us as 98 GB/s). *Normal*
    (prefill): ``latency_s + bytes / normal_*_bw_bytes_per_s`` with DeepEP's bottleneck bytes,
    tokens x distinct destination GPUs (within ``node_gpus``) or nodes x hidden x element bytes.
    """

    ep: int
    dispatch_latency_s: float
    dispatch_bw_bytes_per_s: float
    combine_latency_s: float
    combine_bw_bytes_per_s: float
    normal_dispatch_bw_bytes_per_s: float
    normal_combine_bw_bytes_per_s: float
    node_gpus: int
    confidence: str
    source: str

    @property
    def band_frac(self) -> float:
        return BAND_FRAC_BY_CONFIDENCE[self.confidence]

    def dispatch_s(self, logical_bytes: float) -> float:
        """Seconds of one dispatch of ``logical_bytes`` per rank."""
        return self.dispatch_latency_s + logical_bytes / self.dispatch_bw_bytes_per_s

    def combine_s(self, logical_bytes: float) -> float:
        """Seconds of one combine of ``logical_bytes`` per rank."""
        return self.combine_latency_s + logical_bytes / self.combine_bw_bytes_per_s


@dataclass(frozen=True, slots=True, kw_only=True)
class GpuAchievable:
    """Achievable figures of one GPU (see module docstring).

    Attributes:
        gpu: catalogue name.
        size_profile: which fitted roofline size-dependence the GPU uses (``a100``/``h100``).
        size_profile_confidence: ``measured`` on the calibration GPUs themselves, else
            ``borrowed`` (the shape of the efficiency curve is another GPU's).
        gemm_frac: per compute type, the fraction of the datasheet dense peak a large,
            well-shaped GEMM reaches.
        weight_only_bw_frac: per weight-only kernel family, the weight-streaming bandwidth it
            reaches as a fraction of the fp16 GEMM's at small M (decode).
        hbm_bw: achievable DRAM bandwidth (bytes/s) of weight-streaming GEMMs/GEMVs.
        allreduce: per TP size, all-reduce latency and bus bandwidth.
        alltoall: per expert-parallel size, MoE dispatch/combine latency and bandwidth.
        gemm_points: measured GEMMs at a few shapes (documentation and tests).
        notes: free text.
    """

    gpu: str
    size_profile: str
    size_profile_confidence: str
    gemm_frac: Mapping[str, Figure]
    weight_only_bw_frac: Mapping[str, Figure]
    hbm_bw: Figure
    allreduce: Mapping[int, AllReduceFigure]
    alltoall: Mapping[int, AllToAllFigure] = field(default_factory=lambda: MappingProxyType({}))
    gemm_points: tuple[GemmPoint, ...] = ()
    notes: str = ""
    peak_hbm_bw_bytes_per_s: float = field(default=0.0)

    @property
    def hbm_frac(self) -> float:
        """Achievable / datasheet HBM bandwidth."""
        return self.hbm_bw.value / self.peak_hbm_bw_bytes_per_s

    def gemm(self, compute_type: str) -> Figure:
        """The large-GEMM fraction of peak for ``compute_type``; a clear error if the data
        file has none (no silent fallback to another type)."""
        try:
            return self.gemm_frac[compute_type]
        except KeyError:
            raise ConfigError(
                f"{self.gpu}: no achievable GEMM figure for {compute_type!r} in {_DATA_FILE} "
                f"(has {', '.join(self.gemm_frac)})"
            ) from None

    def allreduce_for(self, tp: int) -> AllReduceFigure:
        """All-reduce figure for ``tp`` GPUs: the entry for ``tp``, else the next larger TP
        size listed (a conservative choice), else the largest listed."""
        if tp in self.allreduce:
            return self.allreduce[tp]
        larger = sorted(t for t in self.allreduce if t >= tp)
        return self.allreduce[larger[0] if larger else max(self.allreduce)]

    def alltoall_for(self, ep: int) -> AllToAllFigure | None:
        """All-to-all figure for ``ep`` GPUs: the entry for ``ep``, else the next larger EP
        size listed (conservative), else the largest; None when the GPU lists none."""
        if not self.alltoall:
            return None
        if ep in self.alltoall:
            return self.alltoall[ep]
        larger = sorted(e for e in self.alltoall if e >= ep)
        return self.alltoall[larger[0] if larger else max(self.alltoall)]

    def figures(self) -> list[tuple[str, Figure | AllReduceFigure | AllToAllFigure]]:
        """Every figure as ``(name, figure)``, for tables and band widening."""
        out: list[tuple[str, Figure | AllReduceFigure | AllToAllFigure]] = [
            (f"gemm.{k}", v) for k, v in self.gemm_frac.items()]
        out += [(f"weight_only.{k}", v) for k, v in self.weight_only_bw_frac.items()]
        out.append(("hbm_bw", self.hbm_bw))
        out += [(f"allreduce.tp{k}", v) for k, v in sorted(self.allreduce.items())]
        out += [(f"alltoall.ep{k}", v) for k, v in sorted(self.alltoall.items())]
        return out

    @property
    def confidence(self) -> str:
        """Overall grade of the figures the step cost leans on most (fp16 GEMM, HBM): their
        worst; a ``measured`` GPU whose efficiency-curve shape is borrowed counts as ``derived``."""
        worst = max((self.gemm("fp16").confidence, self.hbm_bw.confidence), key=CONFIDENCE_GRADES.index)
        if worst == "measured" and self.size_profile_confidence != "measured":
            return "derived"
        return worst


def _figure(raw: Any, where: str, key: str = "value") -> Figure:
    if not isinstance(raw, Mapping):
        raise ConfigError(f"{where}: expected a mapping with {key}, confidence, source")
    try:
        value = float(raw[key])
    except (KeyError, TypeError, ValueError):
        raise ConfigError(f"{where}: {key} must be a number") from None
    if not value > 0:
        raise ConfigError(f"{where}: {key} must be > 0, got {value}")
    return Figure(value=value, confidence=_check_grade(raw.get("confidence"), where),
                  source=_check_source(raw.get("source"), where))


def _parse_curve(raw: Any, where: str, latency_s: float) -> tuple[tuple[float, float], ...]:
    """``curve_us: [[message_bytes, microseconds], ...]``: ascending sizes, non-decreasing
    times, none below the latency."""
    if raw is None:
        return ()
    try:
        pts = tuple((float(b), float(us) * 1e-6) for b, us in raw)
    except (TypeError, ValueError):
        raise ConfigError(f"{where}: curve_us must be a list of [message_bytes, microseconds]") from None
    prev_b, prev_t = 0.0, latency_s
    for b, t in pts:
        if not (b > prev_b and t >= prev_t):
            raise ConfigError(f"{where}: curve_us needs ascending sizes > 0 and non-decreasing times "
                              f">= latency_s, got {raw!r}")
        prev_b, prev_t = b, t
    return pts


_A2A_KEYS = ("dispatch_latency_s", "dispatch_bw_bytes_per_s", "combine_latency_s", "combine_bw_bytes_per_s",
             "normal_dispatch_bw_bytes_per_s", "normal_combine_bw_bytes_per_s")


def _parse_alltoall(raw: Any, where: str) -> dict[int, AllToAllFigure]:
    """``alltoall: {confidence, source, node_gpus, ep: {n: {_A2A_KEYS}}}`` (optional: a GPU
    without it prices the all-to-all at its link bandwidth, see hwmodels.stepcost)."""
    if raw is None:
        return {}
    if not isinstance(raw, Mapping):
        raise ConfigError(f"{where} alltoall: expected a mapping with confidence, source, ep")
    conf = _check_grade(raw.get("confidence"), f"{where} alltoall")
    src = _check_source(raw.get("source"), f"{where} alltoall")
    node_gpus = raw.get("node_gpus", 8)
    if not isinstance(node_gpus, int) or node_gpus < 1:
        raise ConfigError(f"{where} alltoall.node_gpus: GPUs per NVLink domain, an integer >= 1, got {node_gpus!r}")
    out: dict[int, AllToAllFigure] = {}
    for ep, entry in (raw.get("ep") or {}).items():
        w = f"{where} alltoall.ep.{ep}"
        if not isinstance(ep, int) or ep < 2 or not isinstance(entry, Mapping):
            raise ConfigError(f"{w}: keys are EP sizes >= 2, each a mapping of {', '.join(_A2A_KEYS)}")
        try:
            vals = {k: float(entry[k]) for k in _A2A_KEYS}
        except (KeyError, TypeError, ValueError):
            raise ConfigError(f"{w}: needs numbers {', '.join(_A2A_KEYS)}") from None
        if not (vals["dispatch_latency_s"] >= 0 and vals["combine_latency_s"] >= 0
                and min(v for k, v in vals.items() if k.endswith("bw_bytes_per_s")) > 0):
            raise ConfigError(f"{w}: latencies must be >= 0 and bandwidths > 0, got {vals}")
        out[ep] = AllToAllFigure(
            ep=ep, **vals, node_gpus=node_gpus,
            confidence=_check_grade(entry.get("confidence", conf), w),
            source=_check_source(entry.get("source", src), w),
        )
    if not out:
        raise ConfigError(f"{where} alltoall.ep needs at least one EP size")
    return out


def _parse_gpu(name: str, raw: Mapping[str, Any], gpu: GpuSpec) -> GpuAchievable:
    where = f"{_DATA_FILE} {name}"
    profile = raw.get("size_profile")
    if profile not in ("a100", "h100"):
        raise ConfigError(f"{where}: size_profile must be 'a100' or 'h100', got {profile!r}")
    gemm: dict[str, Figure] = {}
    for ct, entry in (raw.get("gemm") or {}).items():
        fig = _figure(entry, f"{where} gemm.{ct}", "frac_of_peak")
        if fig.value > 1.0:
            raise ConfigError(f"{where} gemm.{ct}: frac_of_peak must be <= 1, got {fig.value}")
        gemm[str(ct)] = fig
    for ct in REQUIRED_COMPUTE_TYPES:
        if gpu.supports(ct) and ct not in gemm:
            raise ConfigError(f"{where}: the GPU has a {ct} path but no gemm.{ct} figure")
    wo = {str(k): _figure(v, f"{where} weight_only.{k}", "bw_frac_of_fp16")
          for k, v in (raw.get("weight_only") or {}).items()}
    for k in WEIGHT_ONLY_KINDS:
        if k not in wo:
            raise ConfigError(f"{where}: weight_only.{k} missing")
    hbm = _figure(raw.get("hbm"), f"{where} hbm", "bw_bytes_per_s")
    if hbm.value > gpu.hbm_bw_bytes_per_s * 1.0001:
        raise ConfigError(f"{where}: achievable HBM bandwidth exceeds the datasheet peak")
    ar_raw = raw.get("allreduce") or {}
    ar_conf = _check_grade(ar_raw.get("confidence"), f"{where} allreduce")
    ar_src = _check_source(ar_raw.get("source"), f"{where} allreduce")
    allreduce: dict[int, AllReduceFigure] = {}
    for tp, entry in (ar_raw.get("tp") or {}).items():
        lat, bw = float(entry["latency_s"]), float(entry["bus_bw_bytes_per_s"])
        if not (lat >= 0 and bw > 0):
            raise ConfigError(f"{where} allreduce.tp.{tp}: latency_s >= 0 and bus_bw_bytes_per_s > 0")
        curve = _parse_curve(entry.get("curve_us"), f"{where} allreduce.tp.{tp}", lat)
        allreduce[int(tp)] = AllReduceFigure(
            tp=int(tp), latency_s=lat, bus_bw_bytes_per_s=bw, curve=curve,
            confidence=_check_grade(entry.get("confidence", ar_conf), f"{where} allreduce.tp.{tp}"),
            source=_check_source(entry.get("source", ar_src), f"{where} allreduce.tp.{tp}"),
        )
    if not allreduce:
        raise ConfigError(f"{where}: allreduce.tp needs at least one TP size")
    alltoall = _parse_alltoall(raw.get("alltoall"), where)
    points = tuple(
        GemmPoint(compute_type=str(p["compute_type"]), m=int(p["m"]), n=int(p["n"]), k=int(p["k"]),
                  flops_per_s=float(p["flops_per_s"]), source=_check_source(p.get("source"), f"{where} points"))
        for p in (raw.get("points") or ())
    )
    return GpuAchievable(
        gpu=name, size_profile=str(profile),
        size_profile_confidence=_check_grade(raw.get("size_profile_confidence"), f"{where} size_profile"),
        gemm_frac=MappingProxyType(gemm), weight_only_bw_frac=MappingProxyType(wo), hbm_bw=hbm,
        allreduce=MappingProxyType(allreduce), alltoall=MappingProxyType(alltoall), gemm_points=points, notes=str(raw.get("notes", "")),
        peak_hbm_bw_bytes_per_s=gpu.hbm_bw_bytes_per_s,
    )


@functools.cache
def _load() -> tuple[Mapping[str, str], Mapping[str, GpuAchievable]]:
    text = resources.files("servesim.hwmodels").joinpath(_DATA_FILE).read_text()
    raw = yaml.safe_load(text)
    refs = {str(k): str(v) for k, v in raw["calibration_gpus"].items()}
    out: dict[str, GpuAchievable] = {}
    for name, entry in raw["gpus"].items():
        out[str(name)] = _parse_gpu(str(name), entry, get_gpu(str(name)))
    return MappingProxyType(refs), MappingProxyType(out)


def achievable_names() -> list[str]:
    """GPUs with achievable figures (every catalogue GPU; the tests check)."""
    return sorted(_load()[1])


def get_achievable(gpu: GpuSpec | str) -> GpuAchievable:
    """The achievable figures of ``gpu`` (a catalogue name or spec).

    Raises:
        ConfigError: a GPU without an entry (a user GPU file): the error says how to add one.
    """
    name = get_gpu(gpu).name if isinstance(gpu, str) else gpu.name
    table = _load()[1]
    if name not in table:
        raise ConfigError(
            f"GPU {name!r} has no achievable-performance figures ({_DATA_FILE}); servesim will not "
            f"silently borrow another GPU's. Use a catalogue GPU or add an entry with size_profile, "
            f"gemm, weight_only, hbm and allreduce figures (each with confidence and source)."
        )
    return table[name]


@dataclass(frozen=True, slots=True)
class GpuEfficiency:
    """What the step-cost model takes from the achievable figures (dimensionless scales
    relative to the roofline's calibration GPU, plus the all-reduce law).

    Attributes:
        compute_scale: per compute type, ``frac(gpu, ct) / frac(calibration GPU, fp16)``.
        mem_scale: ``hbm_frac(gpu) / hbm_frac(calibration GPU)``.
        weight_only_bw_frac: per weight-only family, fraction of the fp16 weight bandwidth.
    """

    compute_scale: Mapping[str, float]
    mem_scale: float
    weight_only_bw_frac: Mapping[str, float]
    achievable: GpuAchievable | None
    confidence: str = "measured"
    note: str = ""

    def compute(self, compute_type: str) -> float:
        """Scale for ``compute_type``; a clear error if the data lacks it."""
        try:
            return self.compute_scale[compute_type]
        except KeyError:
            raise ConfigError(
                f"no achievable GEMM figure for {compute_type!r} ({self.note}); "
                f"has {', '.join(self.compute_scale)}"
            ) from None


def efficiency_for(gpu: GpuSpec | str) -> GpuEfficiency:
    """Scales of ``gpu``'s achievable figures relative to its roofline calibration GPU.

    A GPU without an entry (a user GPU file under a new name) gets the calibration GPU's
    efficiencies - scales of 1 - and ``confidence == "borrowed"``, said in ``note``.
    """
    refs, table = _load()
    name = get_gpu(gpu).name if isinstance(gpu, str) else gpu.name
    if name not in table:
        from servesim.hwmodels.roofline import profile_for

        spec = get_gpu(gpu) if isinstance(gpu, str) else gpu
        ref = table[refs[profile_for(spec)]]
        return GpuEfficiency(
            compute_scale=MappingProxyType(dict.fromkeys(spec.peak_flops_per_s, 1.0)),
            mem_scale=1.0,
            weight_only_bw_frac=MappingProxyType({k: v.value for k, v in ref.weight_only_bw_frac.items()}),
            achievable=None,
            confidence="borrowed",
            note=f"{name} has no entry in {_DATA_FILE}: the efficiencies of the roofline's calibration "
                 f"GPU {ref.gpu} are used (borrowed); add an entry to use its own",
        )
    ach = table[name]
    ref = table[refs[ach.size_profile]]
    ref_fp16 = ref.gemm("fp16").value
    scales = {ct: fig.value / ref_fp16 for ct, fig in ach.gemm_frac.items()}
    return GpuEfficiency(
        compute_scale=MappingProxyType(scales),
        mem_scale=ach.hbm_frac / ref.hbm_frac,
        weight_only_bw_frac=MappingProxyType({k: v.value for k, v in ach.weight_only_bw_frac.items()}),
        achievable=ach,
        confidence=ach.confidence,
        note=f"achievable figures of {name} ({_DATA_FILE})",
    )


def band_frac_for(gpu: GpuSpec | str) -> float:
    """Relative prediction-band half-width ``gpu``'s figures imply (its overall grade,
    :data:`BAND_FRAC_BY_CONFIDENCE`; ``borrowed`` for a GPU without figures)."""
    return BAND_FRAC_BY_CONFIDENCE[efficiency_for(gpu).confidence]


def calibration_gpu(profile: str) -> str:
    """The catalogue GPU a roofline profile (``a100``/``h100``) was fitted on."""
    return _load()[0][profile]


__all__ = [
    "BAND_FRAC_BY_CONFIDENCE",
    "CONFIDENCE_GRADES",
    "AllReduceFigure",
    "AllToAllFigure",
    "Figure",
    "GemmPoint",
    "GpuAchievable",
    "GpuEfficiency",
    "achievable_names",
    "band_frac_for",
    "calibration_gpu",
    "efficiency_for",
    "get_achievable",
]
