"""The few serving-stack parameters that ``servesim calibrate --from`` fits and the bands
perturb, and how they are applied to a scenario.

=========================  =================================================================
parameter                  how it acts
=========================  =================================================================
``step_overhead_s``        host time per engine step (scheduling, input preparation, launch,
                           output processing): ``engine.step_overhead_s``. None = the
                           step-cost default (``hwmodels.stepcost.DEFAULT_STEP_OVERHEAD_S``).
``per_request_overhead_s`` time a request spends outside the engine loop (HTTP, tokenization,
                           admission, detokenization): added to every request's TTFT and
                           E2E latency, and, for closed-loop clients, to the gap between a
                           completion and the client's next request.
``compute_eff_scale``      multiplies the GPU's peak FLOP/s for every compute type, i.e. the
                           achieved fraction of peak of every GEMM and attention kernel.
``bandwidth_eff_scale``    multiplies the GPU's HBM bandwidth, i.e. the achieved fraction of
                           bandwidth of weight and KV reads.
``comm_eff_scale``         multiplies the GPU's scale-up (NVLink) and PCIe bandwidth, i.e. the
                           achieved all-reduce bus bandwidth of tensor parallelism. Not
                           fitted (a single-GPU file says nothing about it); the bands vary it.
``alltoall_overlap_frac``  share of the MoE all-to-all (expert parallelism with attention data
                           parallelism) hidden behind compute by two-batch overlap: the stack
                           profile's field, through a derived profile file. None = the
                           profile's own (0 in the shipped ones). Not fitted; the bands vary
                           it from 0 to 1 on deployments with an all-to-all.
=========================  =================================================================

The efficiency scales act through a derived GPU file (same name, scaled figures) written to a
temporary directory, so the roofline's calibrated size-dependence is untouched. A fit is
written as a stack profile in :mod:`hwmodels.stacks`' layout (``engine.profile``) plus, when the
GPU scales moved, a GPU file beside it (see :func:`write_profile`).
"""

from __future__ import annotations

import dataclasses
import math
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from servesim.simulator.errors import ScenarioError

__all__ = ["StackParams", "apply_params", "check_profile", "scenario_stack", "with_profile",
           "write_profile"]

_FIELDS = ("step_overhead_s", "per_request_overhead_s", "compute_eff_scale", "bandwidth_eff_scale",
           "comm_eff_scale", "alltoall_overlap_frac")


@dataclass(frozen=True, slots=True, kw_only=True)
class StackParams:
    """Serving-stack parameters (see the module docstring).

    Attributes:
        step_overhead_s: host time per step (s); None = the step-cost default.
        per_request_overhead_s: time per request outside the engine loop (s).
        compute_eff_scale: factor on the GPU's peak FLOP/s (> 0).
        bandwidth_eff_scale: factor on the GPU's HBM bandwidth (> 0).
        comm_eff_scale: factor on the GPU's scale-up and PCIe link bandwidth (> 0).
        alltoall_overlap_frac: hidden share of the MoE all-to-all, [0, 1]; None = the profile's.
        two_batch_overlap: ``engine.two_batch_overlap`` (None: the scenario's own). Not fitted
            and not written by :meth:`to_dict`; the bands switch it off for their low end.
    """

    step_overhead_s: float | None = None
    per_request_overhead_s: float = 0.0
    compute_eff_scale: float = 1.0
    bandwidth_eff_scale: float = 1.0
    comm_eff_scale: float = 1.0
    alltoall_overlap_frac: float | None = None
    two_batch_overlap: bool | None = None

    def __post_init__(self) -> None:
        if self.step_overhead_s is not None and not (0 <= self.step_overhead_s < 1):
            raise ScenarioError(f"step_overhead_s must be in [0, 1) s, got {self.step_overhead_s}")
        if not 0 <= self.per_request_overhead_s < 60:
            raise ScenarioError(
                f"per_request_overhead_s must be in [0, 60) s, got {self.per_request_overhead_s}"
            )
        a2a = self.alltoall_overlap_frac
        if a2a is not None and not (isinstance(a2a, int | float) and 0 <= a2a <= 1):
            raise ScenarioError(f"alltoall_overlap_frac must be in [0, 1], got {a2a!r}")
        if self.two_batch_overlap is not None and not isinstance(self.two_batch_overlap, bool):
            raise ScenarioError(f"two_batch_overlap must be true, false or null, got {self.two_batch_overlap!r}")
        for name in ("compute_eff_scale", "bandwidth_eff_scale", "comm_eff_scale"):
            value = getattr(self, name)
            if not (isinstance(value, int | float) and 0 < value <= 4):
                raise ScenarioError(f"{name} must be in (0, 4], got {value!r}")

    @property
    def is_default(self) -> bool:
        return self == StackParams()

    def replace(self, **changes: Any) -> StackParams:
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, float | None]:
        return {k: getattr(self, k) for k in _FIELDS}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], *, where: str = "stack_fit") -> StackParams:
        """Validate a mapping (unknown keys are errors naming the valid ones)."""
        if not isinstance(data, Mapping):
            raise ScenarioError(f"{where}: expected a mapping of {', '.join(_FIELDS)}")
        unknown = sorted(set(data) - set(_FIELDS))
        if unknown:
            raise ScenarioError(f"{where}: unknown key(s) {unknown}; valid: {', '.join(_FIELDS)}")
        values: dict[str, Any] = {}
        for key, value in data.items():
            if value is None and key in ("step_overhead_s", "alltoall_overlap_frac"):
                values[key] = None
                continue
            if isinstance(value, bool) or not isinstance(value, int | float) or math.isnan(value):
                raise ScenarioError(f"{where}.{key}: {value!r} is not a number")
            values[key] = float(value)
        return cls(**values)


# ---------------------------------------------------------------------------- scenario level


def apply_params(data: Mapping[str, Any], params: StackParams, workdir: Path) -> dict[str, Any]:
    """The scenario mapping with ``params`` applied (per-request overhead excepted: the
    replay adds it to the measured latencies, see :mod:`.replay`).

    Args:
        data: a plain scenario mapping (``ScenarioCfg.model_dump(mode="json")``).
        params: the stack parameters.
        workdir: where a derived GPU file may be written.
    """
    out = dict(data)
    if params.alltoall_overlap_frac is not None:  # the stack profile with the field replaced
        prof = scenario_stack(out).replace(alltoall_overlap_frac=params.alltoall_overlap_frac)
        path = Path(workdir) / f"profile-a2a-{params.alltoall_overlap_frac:.6f}.yaml"
        path.write_text(prof.to_yaml())
        out = with_profile(out, path)
    if params.step_overhead_s is not None:
        out["engine"] = {**dict(out.get("engine") or {}), "step_overhead_s": params.step_overhead_s}
    if params.two_batch_overlap is not None:
        out["engine"] = {**dict(out.get("engine") or {}), "two_batch_overlap": params.two_batch_overlap}
    if (params.compute_eff_scale, params.bandwidth_eff_scale, params.comm_eff_scale) != (1.0, 1.0, 1.0):
        hw = out.get("hardware")
        groups = hw if isinstance(hw, list) else [hw]
        new = []
        for i, group in enumerate(groups):
            g = dict(group)
            g["gpu"] = str(_scaled_gpu_file(str(g["gpu"]), params, workdir, i))
            new.append(g)
        out["hardware"] = new if isinstance(hw, list) else new[0]
    return out


def _scaled_gpu_file(gpu: str, params: StackParams, workdir: Path, index: int) -> Path:
    """Write the GPU's catalogue entry with scaled peaks and bandwidth; same name."""
    import yaml

    entry = {k: v for k, v in _raw_gpu_entry(gpu).items() if k != "aliases"}
    entry["hbm_bw_bytes_per_s"] = float(entry["hbm_bw_bytes_per_s"]) * params.bandwidth_eff_scale
    entry["peak_flops_per_s"] = {
        k: float(v) * params.compute_eff_scale for k, v in dict(entry["peak_flops_per_s"]).items()
    }
    for key in ("scaleup_bw_bytes_per_s", "pcie_bw_bytes_per_s"):
        if entry.get(key) is not None:
            entry[key] = float(entry[key]) * params.comm_eff_scale
    entry["source"] = (f"{entry.get('source', '')}; servesim stack parameters: peaks x "
                       f"{params.compute_eff_scale:.4g}, bandwidth x {params.bandwidth_eff_scale:.4g}, "
                       f"links x {params.comm_eff_scale:.4g}")
    path = workdir / (f"gpu-{index}-c{params.compute_eff_scale:.6f}-b{params.bandwidth_eff_scale:.6f}"
                      f"-l{params.comm_eff_scale:.6f}.yaml")
    path.write_text(yaml.safe_dump(entry, sort_keys=False))
    return path


def _raw_gpu_entry(gpu: str) -> Mapping[str, Any]:
    """The GPU's YAML mapping: from the user file, or the bundled catalogue."""
    from importlib import resources

    import yaml

    from servesim.hwmodels.gpus import get_gpu

    spec = get_gpu(gpu)  # validates the name / file (UnknownNameError lists the known ones)
    if gpu.endswith((".yaml", ".yml")) or Path(gpu).is_file():
        raw = yaml.safe_load(Path(gpu).read_text())
    else:
        raw = yaml.safe_load(resources.files("servesim.hwmodels").joinpath("data/gpus.yaml").read_text())
    if isinstance(raw, Mapping) and isinstance(raw.get("gpus"), list):
        entries = raw["gpus"]
    else:
        entries = raw if isinstance(raw, list) else [raw]
    for entry in entries:
        if isinstance(entry, Mapping) and str(entry.get("name", "")).lower() == spec.name:
            return entry
    raise ScenarioError(f"GPU {gpu!r}: no catalogue entry named {spec.name!r} to scale")


def temp_workdir() -> tempfile.TemporaryDirectory[str]:
    """A temporary directory for derived files (removed when the context exits)."""
    return tempfile.TemporaryDirectory(prefix="servesim-stack-")


# ---------------------------------------------------------------------------- stack profiles


def scenario_stack(data: Mapping[str, Any]) -> Any:
    """The :class:`~hwmodels.stacks.StackProfile` a scenario mapping runs under
    (``engine.profile`` file, else ``engine.stack``, else the default)."""
    from servesim.hwmodels.stacks import get_stack, load_profile_file

    engine = data.get("engine") or {}
    if engine.get("profile"):
        return load_profile_file(engine["profile"])
    return get_stack(engine.get("stack"))


def request_overhead_total_s(data: Mapping[str, Any], prompt_tokens: float) -> float:
    """Time per request outside the engine loop that the scenario's stack already adds."""
    return float(scenario_stack(data).request_overhead_total_s(prompt_tokens))


def with_profile(data: Mapping[str, Any], profile: str | Path) -> dict[str, Any]:
    """The scenario mapping run under the profile file ``profile`` (``engine.profile``), with
    its GPU sidecar (``<profile>.gpu.yaml``, see :func:`write_profile`) when there is one for
    the scenario's GPU."""
    out = dict(data)
    engine = {k: v for k, v in dict(out.get("engine") or {}).items() if k not in ("stack", "step_overhead_s")}
    engine["profile"] = str(Path(profile).resolve())
    out["engine"] = engine
    sidecar = gpu_sidecar(profile)
    if sidecar.is_file():
        import yaml

        name = str((yaml.safe_load(sidecar.read_text()) or {}).get("name", "")).lower()
        from servesim.hwmodels.gpus import get_gpu

        hw = out.get("hardware")
        groups = hw if isinstance(hw, list) else [hw]
        new = [dict(g, gpu=str(sidecar.resolve())) if get_gpu(str(g["gpu"])).name == name else dict(g)
               for g in groups]
        out["hardware"] = new if isinstance(hw, list) else new[0]
    return out


def gpu_sidecar(profile: str | Path) -> Path:
    """``profile.yaml`` -> ``profile.gpu.yaml``: the fitted GPU efficiency scales."""
    path = Path(profile)
    return path.with_name(path.stem + ".gpu.yaml")


def check_profile(path: str | Path) -> Path:
    """Validate a profile file (the stack-profile layout); return its path.

    Raises:
        ScenarioError: missing or invalid profile.
    """
    from servesim.hwmodels.errors import ConfigError
    from servesim.hwmodels.stacks import load_profile_file

    path = Path(path)
    if not path.is_file():
        raise ScenarioError(f"profile {str(path)!r} does not exist")
    try:
        load_profile_file(path)
    except ConfigError as exc:
        raise ScenarioError(str(exc)) from None
    return path


def write_profile(path: str | Path, params: StackParams, *, scenario: Mapping[str, Any],
                  fit_report: Mapping[str, Any]) -> list[Path]:
    """Write the fit as a stack profile (``engine.profile: path`` in a scenario) and, when the
    GPU efficiency scales moved, a GPU file beside it (``<path stem>.gpu.yaml``, usable as
    ``hardware.gpu``: the GPU's figures times the fitted scales, same name).

    The profile starts from the scenario's own stack and replaces the fitted fields:
    ``step_overhead_s`` (the fitted host time per step) and ``request_overhead_s`` (the
    stack's plus the fitted extra per request); ``sources`` says so, with the fit's numbers.

    Returns:
        The files written.
    """
    import yaml

    path = Path(path)
    base = scenario_stack(scenario)
    from servesim.hwmodels.stepcost import DEFAULT_STEP_OVERHEAD_S

    step = params.step_overhead_s if params.step_overhead_s is not None else (
        base.step_overhead_s if base.step_overhead_s is not None else DEFAULT_STEP_OVERHEAD_S)
    note = (f"servesim calibrate --from: fitted to {', '.join(fit_report.get('fitted_runs', []))}; "
            f"held-out median |error| {fit_report.get('held_out_median_abs_error_frac')} "
            f"(before: {fit_report.get('held_out_median_abs_error_frac_before_fit')})")
    sources = dict(base.sources)
    sources["step_overhead_s"] = note
    sources["request_overhead_s"] = (f"{note}; the {base.name} profile's "
                                     f"{base.request_overhead_s:.4g} s plus the fitted "
                                     f"{params.per_request_overhead_s:.4g} s")
    fitted = base.replace(
        name=f"{base.name}-fit", step_overhead_s=round(step, 7),
        request_overhead_s=round(base.request_overhead_s + params.per_request_overhead_s, 6),
        description=f"{base.description} - fitted by servesim calibrate --from".strip(" -"),
        sources=sources,
    )
    header = (
        "# servesim stack profile fitted by `servesim calibrate --from` (docs/validation.md).\n"
        "# Use it in a scenario: engine.profile: <this file>  (instead of engine.stack).\n"
        f"# Fit: {yaml.safe_dump(dict(fit_report), default_flow_style=True, width=10**6).strip()}\n"
    )
    written = [path]
    scales = (params.compute_eff_scale, params.bandwidth_eff_scale)
    if any(abs(x - 1.0) > 1e-9 for x in scales):
        hw = scenario.get("hardware")
        group = hw[0] if isinstance(hw, list) else hw
        with temp_workdir() as tmp:
            gpu_file = _scaled_gpu_file(str(group["gpu"]), params.replace(comm_eff_scale=1.0), Path(tmp), 0)
            text = gpu_file.read_text()
        sidecar = gpu_sidecar(path)
        sidecar.write_text(
            "# GPU figures x the efficiency scales fitted by `servesim calibrate --from`:\n"
            f"# compute x {params.compute_eff_scale:.4g}, HBM bandwidth x {params.bandwidth_eff_scale:.4g}.\n"
            "# Use it as hardware.gpu: <this file> (same GPU name).\n" + text)
        header += f"# GPU efficiency scales: {sidecar.name} (hardware.gpu).\n"
        written.append(sidecar)
    path.write_text(header + fitted.to_yaml())
    return written
