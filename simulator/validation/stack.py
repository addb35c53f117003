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
=========================  =================================================================

The efficiency scales act through a derived GPU file (same name, scaled figures) written to a
temporary directory, so the roofline's calibrated size-dependence is untouched. A profile file
holds them under ``stack_fit:`` (see :func:`write_profile`).
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

__all__ = ["StackParams", "apply_params", "load_profile", "write_profile"]

_FIELDS = ("step_overhead_s", "per_request_overhead_s", "compute_eff_scale", "bandwidth_eff_scale",
           "comm_eff_scale")


@dataclass(frozen=True, slots=True, kw_only=True)
class StackParams:
    """Serving-stack parameters (see the module docstring).

    Attributes:
        step_overhead_s: host time per step (s); None = the step-cost default.
        per_request_overhead_s: time per request outside the engine loop (s).
        compute_eff_scale: factor on the GPU's peak FLOP/s (> 0).
        bandwidth_eff_scale: factor on the GPU's HBM bandwidth (> 0).
        comm_eff_scale: factor on the GPU's scale-up and PCIe link bandwidth (> 0).
    """

    step_overhead_s: float | None = None
    per_request_overhead_s: float = 0.0
    compute_eff_scale: float = 1.0
    bandwidth_eff_scale: float = 1.0
    comm_eff_scale: float = 1.0

    def __post_init__(self) -> None:
        if self.step_overhead_s is not None and not (0 <= self.step_overhead_s < 1):
            raise ScenarioError(f"step_overhead_s must be in [0, 1) s, got {self.step_overhead_s}")
        if not 0 <= self.per_request_overhead_s < 60:
            raise ScenarioError(
                f"per_request_overhead_s must be in [0, 60) s, got {self.per_request_overhead_s}"
            )
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
            if value is None and key == "step_overhead_s":
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
    if params.step_overhead_s is not None:
        out["engine"] = {**dict(out.get("engine") or {}), "step_overhead_s": params.step_overhead_s}
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


# ---------------------------------------------------------------------------- profile files


def write_profile(path: str | Path, params: StackParams, *, fit_report: Mapping[str, Any]) -> None:
    """Write a profile YAML: the fitted parameters and how well they fit.

    The file is usable in a scenario: ``engine.step_overhead_s`` takes ``step_overhead_s``;
    :func:`load_profile` reads all four (``servesim compare --profile``, ``validate``).
    """
    import yaml

    doc = {
        "kind": "servesim-stack-fit",
        "stack_fit": {k: (None if v is None else round(v, 6)) for k, v in params.to_dict().items()},
        "fit": dict(fit_report),
    }
    Path(path).write_text(
        "# servesim serving-stack fit (servesim calibrate --from). Edit freely; keys as in\n"
        "# docs/validation.md. step_overhead_s: host time per engine step; per_request_overhead_s:\n"
        "# HTTP/tokenization/detokenization time per request; *_eff_scale: factors on the GPU's\n"
        "# achievable FLOP/s and HBM bandwidth.\n" + yaml.safe_dump(doc, sort_keys=False)
    )


def load_profile(path: str | Path) -> StackParams:
    """Read the ``stack_fit:`` block of a profile YAML.

    Raises:
        ScenarioError: missing file, bad YAML, no ``stack_fit:``, or a bad value.
    """
    import yaml

    path = Path(path)
    if not path.is_file():
        raise ScenarioError(f"profile {str(path)!r} does not exist")
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise ScenarioError(f"profile {path}: YAML syntax error: {exc}") from None
    if not isinstance(raw, Mapping) or "stack_fit" not in raw:
        raise ScenarioError(f"profile {path}: no 'stack_fit:' mapping (write one with servesim calibrate --from)")
    return StackParams.from_dict(raw["stack_fit"], where=f"{path}: stack_fit")
