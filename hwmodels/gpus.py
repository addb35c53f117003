"""GPU catalogue: :class:`GpuSpec` and the named GPUs servesim knows.

The bundled entries live in ``hwmodels/data/gpus.yaml`` (converted from the project's datasheet
sheet, each entry keeping its ``source`` and ``confidence``). Users add their own GPU as a YAML
file with exactly the same keys; :func:`get_gpu` accepts a catalogue name or such a path.

Names are exact and case-insensitive (``h100-sxm``, ``a100-sxm4-80gb``); an unknown name is an
error listing the closest known names - never a fuzzy match, since a typo must not silently
simulate another GPU.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from types import MappingProxyType
from typing import Annotated, Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from servesim.hwmodels.errors import ConfigError, unknown_name
from servesim.hwmodels.units import GiB

#: Compute types a GPU may list a dense tensor-core peak for.
COMPUTE_TYPES: tuple[str, ...] = ("fp32", "tf32", "fp16", "bf16", "fp8", "int8", "int4", "fp4")

#: Configurable shared-memory maximum per SM where it is below the L1/SMEM array size.
#: NVIDIA CUDA C++ Programming Guide, "Compute Capabilities" table: cc 8.0 (A100) 164 KB,
#: cc 9.0 (H100/H200) 228 KB, cc 8.6/8.9 (A10, A10G, L4, L40S, RTX 3090/4090) 100 KB,
#: cc 7.0 (V100) 96 KB, cc 10.0 (B200) 228 KB.
_SMEM_MAX_BYTES_BY_ARCH_PREFIX: Mapping[str, int] = MappingProxyType(
    {
        "Ampere (GA100": 164 * 1024,
        "Ampere (GA10": 100 * 1024,
        "Ada": 100 * 1024,
        "Hopper": 228 * 1024,
        "Blackwell": 228 * 1024,
        "Volta": 96 * 1024,
    }
)


@dataclass(frozen=True, slots=True, kw_only=True)
class GpuSpec:
    """One accelerator, with the figures the cost models need. Frozen; SI units in names.

    Attributes:
        name: canonical catalogue name (lower case).
        hbm_bytes: device memory capacity in bytes.
        hbm_bw_bytes_per_s: vendor peak DRAM bandwidth.
        peak_flops_per_s: dense peak FLOP/s (or OP/s) per compute type; absent = unsupported.
        num_sms: streaming multiprocessors (compute units on AMD); None if unpublished.
        clock_hz: boost clock; None if unpublished.
        l2_bytes: last-level on-chip cache; None if unpublished.
        sram_bytes_per_sm: L1/shared-memory array per SM (datasheet).
        smem_max_bytes_per_sm: the part of it a kernel can use as shared memory.
        regfile_bytes_per_sm: register file per SM.
        scaleup_bw_bytes_per_s: aggregate bidirectional NVLink/IF bandwidth per GPU; None = none.
        pcie_bw_bytes_per_s: aggregate bidirectional host link bandwidth.
    """

    name: str
    display_name: str = ""
    aliases: tuple[str, ...] = ()
    vendor: str = ""
    arch: str = ""
    memory_type: str | None = None
    hbm_bytes: int
    hbm_bw_bytes_per_s: float
    peak_flops_per_s: Mapping[str, float] = field(default_factory=dict)
    num_sms: int | None = None
    clock_hz: float | None = None
    l2_bytes: int | None = None
    sram_bytes_per_sm: int | None = None
    smem_max_bytes_per_sm: int | None = None
    regfile_bytes_per_sm: int | None = None
    scaleup: str | None = None
    scaleup_bw_bytes_per_s: float | None = None
    pcie_bw_bytes_per_s: float | None = None
    tdp_w: float | None = None
    confidence: str = "unknown"
    source: str = ""
    notes: str = ""

    def __post_init__(self) -> None:
        for name in ("hbm_bytes", "hbm_bw_bytes_per_s"):
            value = getattr(self, name)
            if not value > 0:
                raise ConfigError(f"GPU {self.name}: {name} must be > 0, got {value!r}")
        for ct, value in self.peak_flops_per_s.items():
            if ct not in COMPUTE_TYPES:
                raise ConfigError(
                    f"GPU {self.name}: peak_flops_per_s has unknown compute type {ct!r}; "
                    f"valid: {', '.join(COMPUTE_TYPES)}"
                )
            if not value > 0:
                raise ConfigError(f"GPU {self.name}: peak_flops_per_s.{ct} must be > 0, got {value!r}")
        if "fp16" not in self.peak_flops_per_s and "bf16" not in self.peak_flops_per_s:
            raise ConfigError(f"GPU {self.name}: peak_flops_per_s needs at least fp16 or bf16")
        object.__setattr__(self, "peak_flops_per_s", MappingProxyType(dict(self.peak_flops_per_s)))

    # ------------------------------------------------------------------ derived figures
    def supports(self, compute_type: str) -> bool:
        """True if the GPU has a dense tensor-core (or vector) path for ``compute_type``."""
        return compute_type in self.peak_flops_per_s

    def peak(self, compute_type: str) -> float:
        """Dense peak FLOP/s for ``compute_type``; a clear error if the GPU lacks it."""
        try:
            return self.peak_flops_per_s[compute_type]
        except KeyError:
            raise ConfigError(
                f"GPU {self.name} has no {compute_type} tensor-core path; it supports "
                f"{', '.join(self.peak_flops_per_s)}"
            ) from None

    @property
    def peak_fp16_flops_per_s(self) -> float:
        """Dense fp16 (or bf16) tensor-core peak."""
        return self.peak_flops_per_s.get("fp16") or self.peak_flops_per_s["bf16"]

    @property
    def ridge_flops_per_byte(self) -> float:
        """fp16 arithmetic intensity where the roofline turns from memory- to compute-bound."""
        return self.peak_fp16_flops_per_s / self.hbm_bw_bytes_per_s

    @property
    def scaleup_bw_bytes_per_s_per_direction(self) -> float | None:
        """Unidirectional scale-up bandwidth (half the datasheet's bidirectional aggregate)."""
        return None if self.scaleup_bw_bytes_per_s is None else self.scaleup_bw_bytes_per_s / 2

    @property
    def pcie_bw_bytes_per_s_per_direction(self) -> float | None:
        """Unidirectional host-link bandwidth (half the bidirectional aggregate)."""
        return None if self.pcie_bw_bytes_per_s is None else self.pcie_bw_bytes_per_s / 2

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict (the ``servesim show gpu --json`` contract)."""
        return {
            "name": self.name,
            "display_name": self.display_name,
            "aliases": list(self.aliases),
            "vendor": self.vendor,
            "arch": self.arch,
            "memory_type": self.memory_type,
            "hbm_bytes": self.hbm_bytes,
            "hbm_bw_bytes_per_s": self.hbm_bw_bytes_per_s,
            "peak_flops_per_s": dict(self.peak_flops_per_s),
            "num_sms": self.num_sms,
            "clock_hz": self.clock_hz,
            "l2_bytes": self.l2_bytes,
            "sram_bytes_per_sm": self.sram_bytes_per_sm,
            "smem_max_bytes_per_sm": self.smem_max_bytes_per_sm,
            "regfile_bytes_per_sm": self.regfile_bytes_per_sm,
            "scaleup": self.scaleup,
            "scaleup_bw_bytes_per_s": self.scaleup_bw_bytes_per_s,
            "pcie_bw_bytes_per_s": self.pcie_bw_bytes_per_s,
            "tdp_w": self.tdp_w,
            "ridge_flops_per_byte": self.ridge_flops_per_byte,
            "confidence": self.confidence,
            "source": self.source,
            "notes": self.notes,
        }


class GpuFile(BaseModel):
    """Schema of one GPU entry in YAML (bundled catalogue and user files alike)."""

    # Finite and within physical sense (docs/inputs.md): 1e300 GiB would overflow to inf.
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    name: str = Field(min_length=1, max_length=200)
    display_name: str = Field("", max_length=1000)
    aliases: list[str] = Field([], max_length=100)
    vendor: str = ""
    arch: str = ""
    memory_type: str | None = None
    hbm_gib: float = Field(gt=0, le=1e6)
    hbm_bw_bytes_per_s: float = Field(gt=0, le=1e16)
    peak_flops_per_s: dict[str, Annotated[float, Field(gt=0, le=1e20)]]
    num_sms: int | None = Field(None, ge=1, le=1_000_000)
    clock_hz: float | None = Field(None, gt=0, le=1e11)
    l2_bytes: int | None = Field(None, ge=1, le=1 << 40)
    sram_bytes_per_sm: int | None = Field(None, ge=1, le=1 << 30)
    smem_max_bytes_per_sm: int | None = Field(None, ge=1, le=1 << 30)
    regfile_bytes_per_sm: int | None = Field(None, ge=1, le=1 << 30)
    scaleup: str | None = None
    scaleup_bw_bytes_per_s: float | None = Field(None, gt=0, le=1e16)
    pcie_bw_bytes_per_s: float | None = Field(None, gt=0, le=1e16)
    tdp_w: float | None = Field(None, gt=0, le=1e6)
    confidence: str = "user"
    source: str = "user-supplied"
    notes: str = ""

    @classmethod
    def from_spec(cls, spec: GpuSpec) -> GpuFile:
        """The YAML form of a spec (a template for a user GPU file; inverse of ``to_spec``)."""
        return cls(
            name=spec.name,
            display_name=spec.display_name,
            aliases=list(spec.aliases),
            vendor=spec.vendor,
            arch=spec.arch,
            memory_type=spec.memory_type,
            hbm_gib=spec.hbm_bytes / GiB,
            hbm_bw_bytes_per_s=spec.hbm_bw_bytes_per_s,
            peak_flops_per_s=dict(spec.peak_flops_per_s),
            num_sms=spec.num_sms,
            clock_hz=spec.clock_hz,
            l2_bytes=spec.l2_bytes,
            sram_bytes_per_sm=spec.sram_bytes_per_sm,
            smem_max_bytes_per_sm=spec.smem_max_bytes_per_sm,
            regfile_bytes_per_sm=spec.regfile_bytes_per_sm,
            scaleup=spec.scaleup,
            scaleup_bw_bytes_per_s=spec.scaleup_bw_bytes_per_s,
            pcie_bw_bytes_per_s=spec.pcie_bw_bytes_per_s,
            tdp_w=spec.tdp_w,
            confidence=spec.confidence,
            source=spec.source,
            notes=spec.notes,
        )

    def to_spec(self) -> GpuSpec:
        """Convert to the frozen runtime spec."""
        smem_max = self.smem_max_bytes_per_sm
        if smem_max is None and self.sram_bytes_per_sm is not None:
            smem_max = self.sram_bytes_per_sm
            for prefix, limit in _SMEM_MAX_BYTES_BY_ARCH_PREFIX.items():
                if self.arch.startswith(prefix):
                    smem_max = min(limit, self.sram_bytes_per_sm)
                    break
        return GpuSpec(
            name=self.name.lower(),
            display_name=self.display_name or self.name,
            aliases=tuple(a.lower() for a in self.aliases),
            vendor=self.vendor,
            arch=self.arch,
            memory_type=self.memory_type,
            hbm_bytes=round(self.hbm_gib * GiB),
            hbm_bw_bytes_per_s=self.hbm_bw_bytes_per_s,
            peak_flops_per_s=dict(self.peak_flops_per_s),
            num_sms=self.num_sms,
            clock_hz=self.clock_hz,
            l2_bytes=self.l2_bytes,
            sram_bytes_per_sm=self.sram_bytes_per_sm,
            smem_max_bytes_per_sm=smem_max,
            regfile_bytes_per_sm=self.regfile_bytes_per_sm,
            scaleup=self.scaleup,
            scaleup_bw_bytes_per_s=self.scaleup_bw_bytes_per_s,
            pcie_bw_bytes_per_s=self.pcie_bw_bytes_per_s,
            tdp_w=self.tdp_w,
            confidence=self.confidence,
            source=self.source,
            notes=self.notes,
        )


def _format_validation_error(where: str, exc: ValidationError) -> str:
    from servesim.hwmodels.safeio import clip, short

    parts = []
    for err in exc.errors():
        loc = ".".join(str(x) for x in err["loc"])
        parts.append(clip(f"{loc}: {err['msg']} (got {short(err.get('input'))})"))
    return f"{where}: invalid GPU spec: " + "; ".join(parts)


def parse_gpu_entries(raw: Any, where: str) -> list[GpuSpec]:
    """Validate YAML data (one mapping, a list, or ``{gpus: [...]}``) into GPU specs."""
    if isinstance(raw, dict) and "gpus" in raw:
        raw = raw["gpus"]
    entries = raw if isinstance(raw, list) else [raw]
    specs = []
    for i, entry in enumerate(entries):
        if not isinstance(entry, dict):
            raise ConfigError(f"{where}: GPU entry {i} must be a mapping, got {type(entry).__name__}")
        try:
            specs.append(GpuFile.model_validate(entry).to_spec())
        except ValidationError as exc:
            raise ConfigError(_format_validation_error(f"{where} entry {i}", exc)) from None
    return specs


def load_gpu_file(path: str | Path) -> list[GpuSpec]:
    """Read a user GPU YAML file (same keys as the bundled catalogue)."""
    from servesim.hwmodels.safeio import load_yaml, read_text

    path = Path(path)
    raw = load_yaml(read_text(path, "GPU file"), f"GPU file {path}")
    return parse_gpu_entries(raw, str(path))


@functools.cache
def _catalogue() -> tuple[Mapping[str, GpuSpec], Mapping[str, str]]:
    text = resources.files("servesim.hwmodels").joinpath("data/gpus.yaml").read_text()
    specs = parse_gpu_entries(yaml.safe_load(text), "hwmodels/data/gpus.yaml")
    by_name = {s.name: s for s in specs}
    alias = {a: s.name for s in specs for a in s.aliases}
    return MappingProxyType(by_name), MappingProxyType(alias)


def gpu_names() -> list[str]:
    """Canonical names of the bundled GPUs, in catalogue order."""
    return list(_catalogue()[0])


def list_gpus() -> list[GpuSpec]:
    """All bundled GPUs, in catalogue order."""
    return list(_catalogue()[0].values())


def get_gpu(name_or_path: str | Path | GpuSpec) -> GpuSpec:
    """Return a GPU by exact (case-insensitive) name or alias, or from a user YAML file.

    Raises:
        UnknownNameError: the name is not in the catalogue (message lists the closest names).
        ConfigError: the user file is missing or invalid.
    """
    if isinstance(name_or_path, GpuSpec):
        return name_or_path
    text = str(name_or_path)
    if text.endswith((".yaml", ".yml")) or Path(text).is_file():
        specs = load_gpu_file(text)
        if len(specs) != 1:
            raise ConfigError(f"GPU file {text!r} holds {len(specs)} GPUs; give a file with exactly one")
        return specs[0]
    by_name, alias = _catalogue()
    key = text.lower()
    key = alias.get(key, key)
    if key in by_name:
        return by_name[key]
    raise unknown_name("GPU", text, list(by_name) + list(alias))
