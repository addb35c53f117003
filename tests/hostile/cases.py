"""Hostile inputs for every reader and subcommand, as data (see ``test_hostile.py``).

Each :class:`Case` writes a few files into a fresh directory and runs one ``servesim``
command on them; the command must refuse with exit status 2, print one message naming the
place (a file name and/or a field), no traceback, in bounded time and memory. Cases are built
by crossing *hostile documents* with *every reader that takes one* (scenario, sweep, plan,
price table, GPU file), plus field-level cases per reader and per trace format, so a class
of failure is covered wherever it can occur.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field

# A tiny valid scenario: every hostile case changes one thing about it.
SCENARIO = {
    "name": "tiny",
    "seed": 0,
    "hardware": {"gpu": "h100-sxm"},
    "model": {"name": "llama-3.1-8b", "max_model_len_tokens": 2048},
    "kv_cache": {"manager": "paged", "block_size_tokens": 16},
    "scheduler": {"policy": "vllm", "max_num_seqs": 16, "max_num_batched_tokens": 2048},
    "engine": {"progress": False},
    "workload": {
        "num_requests": 8,
        "arrivals": {"process": "poisson", "rate_per_s": 4},
        "lengths": {"prompt": {"dist": "fixed", "tokens": 64},
                    "output": {"dist": "fixed", "tokens": 8}},
    },
}


@dataclass(frozen=True)
class Case:
    """One hostile input.

    Attributes:
        id: test id.
        files: relative name -> content (str is UTF-8 encoded; bytes as is; None makes a
            directory; "FIFO" makes a named pipe).
        args: the servesim arguments; ``{d}`` is replaced by the case directory.
        place: a substring the message must contain (the file, field or setting).
        code: expected exit status.
    """

    id: str
    files: dict[str, str | bytes | None]
    args: list[str]
    place: str
    code: int = 2
    slow: bool = False
    extra: dict = field(default_factory=dict)


def _yaml(obj: object) -> str:
    return json.dumps(obj)  # JSON is YAML


def _with(path: str, value: object, base: dict | None = None) -> dict:
    """A deep copy of ``base`` (the tiny scenario) with ``value`` at the dotted ``path``."""
    out = json.loads(json.dumps(base if base is not None else SCENARIO))
    node = out
    parts = path.split(".")
    for p in parts[:-1]:
        node = node.setdefault(p, {})
    node[parts[-1]] = value
    return out


# ---------------------------------------------------------------------------- documents

_BOMB = "a: &a [x, x, x, x, x, x, x, x, x]\n" + "".join(
    f"{c}: &{c} [{', '.join(['*' + p] * 9)}]\n"
    for p, c in zip("abcdefgh", "bcdefghi", strict=True)
)

#: Hostile YAML documents: (id, text or bytes, what the message must name). The text is
#: what a file of any YAML kind holds; each reader must refuse it.
DOCUMENTS: list[tuple[str, str | bytes, str]] = [
    ("alias-bomb", "name: x\n" + _BOMB, "expands"),
    ("alias-bomb-quick", _yaml(SCENARIO)[:-1] + ', "quick": {}}\n' + "zz: 1\n" + _BOMB, "line"),
    ("nested-400-brackets", "a: " + "[" * 400 + "]" * 400 + "\n", "nested"),
    ("nested-400-maps", "a: " + "{b: " * 400 + "1" + "}" * 400 + "\n", "nested"),
    ("nested-block-100", "".join("  " * i + f"k{i}:\n" for i in range(100)) + "  " * 100 + "v\n",
     "nested"),
    ("recursive-alias", "a: &a [1, *a]\n", "recursive"),
    ("duplicate-key", "name: a\nname: b\n", "duplicate key"),
    ("duplicate-nested-key", "x: {y: 1, y: 2}\n", "duplicate key"),
    ("complex-key-seq", "? [a, b]\n: 1\n", "mapping key"),
    ("complex-key-map", "? {a: 1}\n: 1\n", "mapping key"),
    ("non-utf8", b"name: caf\xe9\n", "UTF-8"),
    ("utf16-bom", "name: x\n".encode("utf-16"), "UTF-8"),
    ("binary-garbage", bytes(range(256)) * 8, "line"),
    ("nul-bytes", b"name: a\x00b\n", "NUL"),
    ("empty", "", "empty"),
    ("only-comment", "# nothing here\n", "empty"),
    ("top-level-list", "- 1\n- 2\n", "mapping"),
    ("top-level-scalar", "just a string\n", "mapping"),
    ("inf-value", "a: .inf\n", "finite"),
    ("nan-value", "a: .nan\n", "finite"),
    ("overflow-float", "a: 1.0e+400\n", "finite"),
    ("int-2-70", "a: 1180591620717411303424\n", "64-bit"),
    ("int-huge-digits", "a: " + "9" * 5000 + "\n", "too long"),
    ("python-tag", "a: !!python/object/apply:os.system ['true']\n", "line"),
    ("unknown-tag", "a: !custom 1\n", "line"),
    ("syntax-error", "a: [1, 2\n", "line"),
    ("tab-indent", "a:\n\tb: 1\n", "line"),
    ("two-documents", "a: 1\n---\nb: 2\n", "line"),
    ("huge-bad-value", "name: " + "x" * 2_000_000 + "\n", "yaml"),
]

# Readers of YAML documents: (kind, file name, args). Each gets every document above.
YAML_READERS: list[tuple[str, str, list[str]]] = [
    ("scenario", "s.yaml", ["check", "{d}/s.yaml"]),
    ("sweep", "sw.yaml", ["sweep", "{d}/sw.yaml", "-e", "serial", "--no-progress",
                          "--out", "{d}/out"]),
    ("plan", "p.yaml", ["plan", "{d}/p.yaml", "-e", "serial", "--no-progress",
                        "--out", "{d}/out"]),
    ("gpu", "g.yaml", ["show", "gpu", "{d}/g.yaml"]),
]


def document_cases() -> list[Case]:
    out = []
    for kind, name, args in YAML_READERS:
        for doc_id, text, place in DOCUMENTS:
            if kind == "gpu" and doc_id in ("empty", "only-comment", "top-level-scalar",
                                             "top-level-list"):
                place = "g.yaml"
            if doc_id == "alias-bomb-quick" and kind != "scenario":
                continue
            out.append(Case(f"{kind}-{doc_id}", {name: text}, args, place))
    # The price table is read by the planner: the same documents, through plan -> prices.
    plan = _plan_doc(prices="prices.yaml")
    for doc_id, text, place in DOCUMENTS:
        if doc_id in ("alias-bomb-quick",):
            continue
        out.append(Case(f"prices-{doc_id}", {"p.yaml": _yaml(plan), "prices.yaml": text},
                        ["plan", "{d}/p.yaml", "-e", "serial", "--no-progress", "--out",
                         "{d}/out"], "prices" if doc_id in ("empty", "only-comment",
                                                           "top-level-list",
                                                           "top-level-scalar") else place))
    # The base scenario of a sweep is read from its own file.
    for doc_id, text, place in DOCUMENTS:
        if doc_id in ("alias-bomb-quick", "empty", "only-comment", "top-level-list",
                      "top-level-scalar"):
            continue
        out.append(Case(f"sweep-base-{doc_id}",
                        {"sw.yaml": _yaml({"base": "base.yaml", "grid": {"seed": [0]}}),
                         "base.yaml": text},
                        ["sweep", "{d}/sw.yaml", "-e", "serial", "--no-progress", "--out",
                         "{d}/out"], place))
    return out


def _plan_doc(**changes: object) -> dict:
    doc = {
        "name": "p",
        "base": SCENARIO,
        "target_rate_per_s": 10,
        "slo": {"ttft_ms": 1000},
        "prices": {"h100-sxm": 3.0},
        "candidates": {"grid": {"kv_cache.manager": ["paged"]}},
    }
    doc.update(changes)
    return doc


def _sweep_doc(**changes: object) -> dict:
    doc = {"name": "sw", "base": SCENARIO, "grid": {"seed": [0, 1]}}
    doc.update(changes)
    return doc


# ---------------------------------------------------------------------------- files


def file_kind_cases() -> list[Case]:
    """Directories, FIFOs, devices and missing files given where a file is expected."""
    targets = [
        ("scenario", ["check", "{d}/X"]),
        ("sweep", ["sweep", "{d}/X", "-e", "serial", "--no-progress", "--out", "{d}/out"]),
        ("plan", ["plan", "{d}/X", "-e", "serial", "--no-progress", "--out", "{d}/out"]),
        ("gpu", ["show", "gpu", "{d}/X.yaml"]),
        ("config-json", ["show", "model", "{d}/X.json"]),
        ("trace", ["trace", "stats", "{d}/X"]),
    ]
    out = []
    for kind, args in targets:
        target = args[-1] if "{d}/X" in args[-1] else next(a for a in args if "{d}/X" in a)
        name = target.replace("{d}/", "")
        out.append(Case(f"{kind}-is-directory", {name: None}, args, "X"))
        out.append(Case(f"{kind}-is-fifo", {name: "FIFO"}, args, "X"))
        out.append(Case(f"{kind}-missing", {}, args, "X"))
    out.append(Case("scenario-is-dev-zero", {}, ["check", "/dev/zero"], "/dev/zero"))
    out.append(Case("trace-is-dev-zero", {}, ["trace", "stats", "/dev/zero", "-f", "splitwise"],
                    "/dev/zero"))
    return out


# ---------------------------------------------------------------------------- fields


def scenario_field_cases() -> list[Case]:
    """One bad value per field class, through ``check`` (validation) or ``run`` (sizing)."""
    bad: list[tuple[str, str, object, str]] = [
        ("rate-inf-string", "workload.arrivals.rate_per_s", "inf", "rate_per_s"),
        ("rate-1e-300", "workload.arrivals.rate_per_s", 1e-300, "rate_per_s"),
        ("rate-1e300", "workload.arrivals.rate_per_s", 1e300, "rate_per_s"),
        ("gamma-cv-1e-300", "workload.arrivals", {"process": "gamma", "rate_per_s": 1,
                                                  "cv": 1e-300}, "cv"),
        ("onoff-on-1e-300", "workload.arrivals", {"process": "onoff", "rate_per_s": 1,
                                                  "on_s": 1e-300, "off_s": 1}, "on_s"),
        ("lognormal-1e308", "workload.lengths.prompt", {"dist": "lognormal",
                                                        "mean_tokens": 1e308,
                                                        "median_tokens": 1e307}, "mean_tokens"),
        ("normal-std-1e300", "workload.lengths.prompt", {"dist": "normal", "mean_tokens": 10,
                                                         "std_tokens": 1e300}, "std_tokens"),
        ("tokens-1e12", "workload.lengths.prompt", {"dist": "fixed", "tokens": 10**12},
         "tokens"),
        ("tree-depth-60", "workload.prefixes", {"kind": "tree_of_thought", "depth": 60,
                                                "branching": 2}, "depth"),
        ("tree-branching-1000-depth-3", "workload.prefixes",
         {"kind": "tree_of_thought", "depth": 3, "branching": 1000}, "nodes"),
        ("turns-1e9", "workload.prefixes", {"kind": "multi_turn", "max_turns": 10**9},
         "max_turns"),
        ("pool-1e9", "workload.prefixes", {"kind": "system_prompts", "num_prompts": 10**9,
                                           "prompt_tokens": {"dist": "fixed", "tokens": 10}},
         "num_prompts"),
        ("num-requests-1e12", "workload.num_requests", 10**12, "num_requests"),
        ("replicas-1e6", "hardware.replicas", 10**6, "replicas"),
        ("tp-1e6", "hardware.tensor_parallel", 10**6, "tensor_parallel"),
        ("max-num-seqs-1e12", "scheduler.max_num_seqs", 10**12, "max_num_seqs"),
        ("sampling-n-1e6", "workload.sampling", {"n": 10**6}, "sampling"),
        ("seed-negative", "seed", -1, "seed"),
        ("seed-2-64", "seed", "18446744073709551616", "seed"),
        ("name-dotdot", "name", "../../escape", "name"),
        ("name-absolute", "name", "/tmp/escape", "name"),
        ("name-newline", "name", "tiny\n", "name"),
        ("name-nul", "name", "a\x00b", "name"),
        ("name-10k", "name", "a" * 10_000, "name"),
        ("name-slash", "name", "a/b", "name"),
        ("variant-name-dotdot", "variants", [{"name": "../v"}], "variant"),
        ("block-size-0", "kv_cache.block_size_tokens", 0, "block_size_tokens"),
        ("gpu-util-nan-string", "hardware.gpu_memory_utilization", "nan",
         "gpu_memory_utilization"),
        ("trace-missing", "workload", {"trace": {"path": "nope.csv"}}, "nope.csv"),
        ("trace-dir", "workload", {"trace": {"path": "."}}, "trace"),
        ("time-scale-1e-300", "workload", {"trace": {"path": "t.csv", "time_scale": 1e-300}},
         "time_scale"),
        ("window-inf-string", "workload", {"trace": {"path": "t.csv",
                                                     "window_s": [0, "inf"]}}, "window_s"),
        ("piecewise-rate-inf-str", "workload.arrivals", {"process": "piecewise",
                                                         "rates_per_s": ["inf"],
                                                         "durations_s": [1]}, "rates_per_s"),
        ("closed-loop-clients-1e9", "workload.arrivals", {"process": "closed_loop",
                                                          "num_clients": 10**9},
         "num_clients"),
        ("gpu-file-escape", "hardware.gpu", "/etc/passwd.yaml", "passwd"),
        ("model-config-missing", "model", {"config": "nope/config.json"}, "config"),
    ]
    trace = "arrived_at,num_prefill_tokens,num_decode_tokens\n0,10,2\n1,10,2\n"
    out = []
    for cid, path, value, place in bad:
        doc = _with(path, value)
        files: dict[str, str | bytes | None] = {"s.yaml": _yaml(doc)}
        if "t.csv" in json.dumps(value):
            files["t.csv"] = trace
        out.append(Case(f"scenario-field-{cid}", files, ["check", "{d}/s.yaml"], place))
    # Sized before being built: refused by run (not only check), with the estimate.
    sized = [
        ("requests-x-samples", _with("workload.sampling", {"n": 1024},
                                     _with("workload.num_requests", 10_000_000)), "sampling"),
        ("arrival-span", _with("workload.arrivals.rate_per_s", 1e-6,
                               _with("workload.num_requests", 10**6)), "rate_per_s"),
        ("onoff-duty", _with("workload.arrivals", {"process": "onoff", "rate_per_s": 1e-6,
                                                   "on_s": 1e-6, "off_s": 1e9}), "rate"),
        ("replicas-4096", _with("hardware.replicas", 4096), "hardware.replicas"),
        ("replicas-many-groups", _with("hardware", [{"gpu": "h100-sxm", "replicas": 20}] * 200),
         "earlier groups"),
        ("turns-1e6-context", _with("workload.prefixes", {"kind": "multi_turn",
                                                          "max_turns": 1_000_000},
                                    _with("workload.num_requests", 1_000_000)), "max_turns"),
        ("pool-1e6-of-1e7", _with("workload.prefixes", {
            "kind": "system_prompts", "num_prompts": 1_000_000, "block_tokens": 1,
            "prompt_tokens": {"dist": "fixed", "tokens": 10_000_000}}), "prefix block ids"),
        ("tree-contexts", _with("workload.prefixes", {"kind": "tree_of_thought", "depth": 18,
                                                      "branching": 2, "block_tokens": 1},
                                _with("workload.num_requests", 10_000_000)), "prefix block"),
    ]
    for cid, doc, place in sized:
        out.append(Case(f"run-sized-{cid}", {"s.yaml": _yaml(doc)},
                        ["run", "{d}/s.yaml", "--out", "{d}/out"], place))
    # --set values are YAML too.
    sets = [
        ("set-inf", "workload.arrivals.rate_per_s=.inf", "finite"),
        ("set-nan", "workload.arrivals.rate_per_s=.nan", "finite"),
        ("set-nested", "name=" + "[" * 300 + "]" * 300, "nested"),
        ("set-bomb", "quick=" + "{" + _BOMB.replace("\n", ", ")[:-2] + "}", "set"),
        ("set-no-equals", "workload.num_requests", "PATH=VALUE"),
        ("set-empty-path", "=3", "dotted path"),
        ("set-double-dot", "a..b=3", "dotted path"),
        ("set-through-scalar", "name.x=3", "name"),
        ("set-index-oob", "variants.5.name=x", "variants"),
        ("set-name-escape", "name=../../x", "name"),
        ("set-dup-key", "workload={a: 1, a: 2}", "duplicate"),
        ("set-int-2-70", "seed=1180591620717411303424", "64-bit"),
    ]
    for cid, expr, place in sets:
        out.append(Case(f"scenario-{cid}", {"s.yaml": _yaml(SCENARIO)},
                        ["check", "{d}/s.yaml", "--set", expr], place))
    return out


def sweep_plan_cases() -> list[Case]:
    sweep_args = ["sweep", "{d}/sw.yaml", "-e", "serial", "--no-progress", "--out", "{d}/out"]
    plan_args = ["plan", "{d}/p.yaml", "-e", "serial", "--no-progress", "--out", "{d}/out"]
    sweeps: list[tuple[str, dict, str]] = [
        ("name-dotdot", _sweep_doc(name="../../x"), "name"),
        ("name-absolute", _sweep_doc(name="/tmp/x"), "name"),
        ("name-newline", _sweep_doc(name="x\n"), "name"),
        ("name-not-string", _sweep_doc(name=["a"]), "name"),
        ("grid-10x10", _sweep_doc(grid={f"k{i}": list(range(10)) for i in range(10)}),
         "10,000,000,000 points"),
        ("random-1e9", _sweep_doc(grid=None, random={"samples": 10**9,
                                                     "params": {"seed": {"randint": [0, 9]}}}),
         "samples"),
        ("random-uniform-nan", _sweep_doc(grid=None, random={
            "samples": 2, "params": {"workload.arrivals.rate_per_s": {"uniform": ["nan", 1]}}}),
         "uniform"),
        ("random-uniform-1e300", _sweep_doc(grid=None, random={
            "samples": 2, "params": {"x": {"uniform": [0, 1e300]}}}), "uniform"),
        ("random-randint-2-70", _sweep_doc(grid=None, random={
            "samples": 2, "params": {"seed": {"randint": [0, 2**70]}}}), "64-bit"),
        ("random-loguniform-0", _sweep_doc(grid=None, random={
            "samples": 2, "params": {"x": {"loguniform": [0, 1]}}}), "loguniform"),
        ("random-choice-empty", _sweep_doc(grid=None, random={
            "samples": 2, "params": {"x": {"choice": []}}}), "choice"),
        ("zip-ragged", _sweep_doc(grid=None, zip={"a": [1, 2], "b": [1]}), "zip"),
        ("no-kind", _sweep_doc(grid=None), "exactly one"),
        ("base-missing", _sweep_doc(base="nope.yaml"), "nope.yaml"),
        ("base-is-dir", _sweep_doc(base="."), "directory"),
        ("base-not-mapping", _sweep_doc(base=[1, 2]), "base"),
        ("typo-path", _sweep_doc(grid={"scheduler.max_num_seq": [1]}), "max_num_seq"),
    ]
    plans: list[tuple[str, dict, str]] = [
        ("name-dotdot", _plan_doc(name="../../x"), "name"),
        ("name-absolute", _plan_doc(name="/tmp/x"), "name"),
        ("target-1e-300", _plan_doc(target_rate_per_s=1e-300), "target_rate_per_s"),
        ("target-inf-string", _plan_doc(target_rate_per_s="inf"), "target_rate_per_s"),
        ("min-rate-1e-300", _plan_doc(search={"min_rate_per_s": 1e-300}), "min_rate_per_s"),
        ("rel-tol-1e-300", _plan_doc(search={"rel_tol": 1e-300}), "rel_tol"),
        ("price-nan-string", _plan_doc(prices={"h100-sxm": "nan"}), "prices"),
        ("price-negative", _plan_doc(prices={"h100-sxm": -1}), "prices"),
        ("price-missing-gpu", _plan_doc(prices={"a100-sxm4-80gb": 1}), "h100-sxm"),
        ("curve-fracs-huge", _plan_doc(report={"curve_fracs": [1.0] * 1000}), "curve_fracs"),
        ("top-k-1e9", _plan_doc(report={"top_k": 10**9}), "top_k"),
        ("prices-file-missing", _plan_doc(prices="nope.yaml"), "nope.yaml"),
        ("candidates-grid-10x10", _plan_doc(candidates={"grid": {
            f"k{i}": list(range(10)) for i in range(10)}}), "points"),
    ]
    out = [Case(f"sweep-field-{cid}", {"sw.yaml": _yaml(doc)}, sweep_args, place)
           for cid, doc, place in sweeps]
    out += [Case(f"plan-field-{cid}", {"p.yaml": _yaml(doc)}, plan_args, place)
            for cid, doc, place in plans]
    prices_bad = [
        ("price-file-dup", "usd_per_gpu_hour:\n  h100-sxm: 1\n  h100-sxm: 2\n", "duplicate"),
        ("price-file-nan", "usd_per_gpu_hour:\n  h100-sxm: .nan\n", "finite"),
        ("price-file-1e300", "usd_per_gpu_hour:\n  h100-sxm: 1.0e300\n", "prices"),
        ("price-file-string", "usd_per_gpu_hour:\n  h100-sxm: cheap\n", "prices"),
        ("price-file-bool", "usd_per_gpu_hour:\n  h100-sxm: true\n", "prices"),
        ("price-file-no-table", "note: x\n", "usd_per_gpu_hour"),
    ]
    for cid, text, place in prices_bad:
        out.append(Case(f"plan-{cid}", {"p.yaml": _yaml(_plan_doc(prices="prices.yaml")),
                                        "prices.yaml": text}, plan_args, place))
    # Outputs: --out at a file, results file garbage, symlinked results.
    ok_sweep = _yaml(_sweep_doc())
    out.append(Case("sweep-out-is-file", {"sw.yaml": ok_sweep, "out": "a file"}, sweep_args,
                    "out"))
    out.append(Case("plan-out-is-file", {"p.yaml": _yaml(_plan_doc()), "out": "a file"},
                    plan_args, "out", slow=True))
    out.append(Case("sweep-resume-garbage-results", {"sw.yaml": ok_sweep,
                                                     "out/results.parquet": b"garbage" * 100},
                    [*sweep_args, "--resume"], "results.parquet"))
    out.append(Case("sweep-resume-results-not-sweep", {"sw.yaml": ok_sweep,
                                                       "out/results.parquet": "PARQUET"},
                    [*sweep_args, "--resume"], "results.parquet"))
    out.append(Case("sweep-resume-results-dir", {"sw.yaml": ok_sweep,
                                                 "out/results.parquet": None},
                    [*sweep_args, "--resume"], "results.parquet"))
    out.append(Case("sweep-out-parent-is-file", {"sw.yaml": ok_sweep, "f": "x"},
                    ["sweep", "{d}/sw.yaml", "-e", "serial", "--no-progress", "--out",
                     "{d}/f/out"], "f/out"))
    out.append(Case("run-out-is-file", {"s.yaml": _yaml(SCENARIO), "out": "x"},
                    ["run", "{d}/s.yaml", "--out", "{d}/out"], "out"))
    return out


# ---------------------------------------------------------------------------- config.json

_HF = {
    "architectures": ["LlamaForCausalLM"], "hidden_size": 4096, "intermediate_size": 14336,
    "num_attention_heads": 32, "num_key_value_heads": 8, "num_hidden_layers": 32,
    "vocab_size": 128256, "max_position_embeddings": 131072, "torch_dtype": "bfloat16",
}


def config_json_cases() -> list[Case]:
    def cfg(**changes: object) -> str:
        return json.dumps({**_HF, **changes})

    texts: list[tuple[str, str | bytes, str]] = [
        ("nan", cfg().replace('"hidden_size": 4096', '"hidden_size": NaN'), "finite"),
        ("infinity", cfg().replace('"hidden_size": 4096', '"hidden_size": Infinity'), "finite"),
        ("1e400", cfg().replace('"hidden_size": 4096', '"hidden_size": 1e400'), "finite"),
        ("1e20", cfg(hidden_size=1e20), "hidden_size"),
        ("int-2-70", cfg().replace('"hidden_size": 4096', '"hidden_size": ' + str(2**70)),
         "64-bit"),
        ("negative-layers", cfg(num_hidden_layers=-1), "num_hidden_layers"),
        ("string-heads", cfg(num_attention_heads="32"), "num_attention_heads"),
        ("bool-heads", cfg(num_attention_heads=True), "num_attention_heads"),
        ("deep-nesting", '{"a": ' + "[" * 10_000 + "]" * 10_000 + "}", "nested"),
        ("top-level-list", "[1, 2]", "object"),
        ("duplicate-key", cfg()[:-1] + ', "hidden_size": 1}', "duplicate"),
        ("not-json", "hidden_size: 4096", "JSON"),
        ("non-utf8", b'{"a": "\xff"}', "UTF-8"),
        ("empty", "", "JSON"),
        ("heads-not-dividing", cfg(num_key_value_heads=7), "num_key_value_heads"),
    ]
    return [Case(f"config-json-{cid}", {"m/config.json": text},
                 ["show", "model", "{d}/m/config.json"], place)
            for cid, text, place in texts]


# ---------------------------------------------------------------------------- GPU files

_GPU = {"name": "x-gpu", "hbm_gib": 80, "hbm_bw_bytes_per_s": 3.35e12,
        "peak_flops_per_s": {"fp16": 989e12, "bf16": 989e12}}


def gpu_field_cases() -> list[Case]:
    bad = [
        ("hbm-negative", {"hbm_gib": -1}, "hbm_gib"),
        ("hbm-1e300", {"hbm_gib": 1e300}, "hbm_gib"),
        ("bw-zero", {"hbm_bw_bytes_per_s": 0}, "hbm_bw_bytes_per_s"),
        ("flops-string", {"peak_flops_per_s": {"fp16": "fast"}}, "fp16"),
        ("unknown-key", {"hbm_gb": 80}, "hbm_gb"),
        ("name-missing", {"name": None}, "name"),
    ]
    out = []
    for cid, change, place in bad:
        doc = {**_GPU, **change}
        out.append(Case(f"gpu-field-{cid}", {"g.yaml": _yaml(doc)},
                        ["show", "gpu", "{d}/g.yaml"], place))
    return out


# ---------------------------------------------------------------------------- traces

_TRACE_HEADERS = {
    "azure": ("TIMESTAMP,ContextTokens,GeneratedTokens",
              "2023-11-16 18:15:46.6805900,{p},{o}", "{t}"),
    "splitwise": ("arrived_at,num_prefill_tokens,num_decode_tokens", "{t},{p},{o}", "{t}"),
    "burstgpt": ("Timestamp,Model,Request tokens,Response tokens,Total tokens,Log Type",
                 "{t},ChatGPT,{p},{o},0,Conversation log", "{t}"),
    "lengths": ("num_prefill_tokens,num_decode_tokens", "{p},{o}", None),
}


def trace_cases() -> list[Case]:
    out = []
    values = [("nan", "NaN"), ("infinity", "Infinity"), ("1e20", "1e20"), ("negative", "-5"),
              ("fraction", "2.5"), ("text", "many"), ("empty", ""), ("2-64", str(2**64)),
              ("huge-cell", "9" * 100_000)]
    for fmt, (header, row, has_time) in _TRACE_HEADERS.items():
        good = row.format(t="1", p="10", o="2")
        for vid, v in values:
            for col in ("p", "o"):
                line = row.format(t="1", p=v if col == "p" else "10", o=v if col == "o" else "2")
                # BurstGPT accepts 0/failed rows but not these.
                out.append(Case(f"trace-{fmt}-{'prompt' if col == 'p' else 'output'}-{vid}",
                                {"t.csv": f"{header}\n{good}\n{line}\n"},
                                ["trace", "stats", "{d}/t.csv", "-f", fmt], "line 3"))
            if has_time and fmt != "azure":
                line = row.format(t=v, p="10", o="2")
                if vid in ("fraction",):
                    continue
                out.append(Case(f"trace-{fmt}-time-{vid}",
                                {"t.csv": f"{header}\n{good}\n{line}\n"},
                                ["trace", "stats", "{d}/t.csv", "-f", fmt], "line 3"))
        out.append(Case(f"trace-{fmt}-non-utf8", {"t.csv": f"{header}\n".encode() + b"\xff\xfe,1\n"},
                        ["trace", "stats", "{d}/t.csv", "-f", fmt], "line 2"))
        out.append(Case(f"trace-{fmt}-binary", {"t.csv": os.urandom(0) + bytes(range(256)) * 64},
                        ["trace", "stats", "{d}/t.csv", "-f", fmt], "t.csv"))
        out.append(Case(f"trace-{fmt}-header-only", {"t.csv": header + "\n"},
                        ["trace", "stats", "{d}/t.csv", "-f", fmt], "t.csv"))
        out.append(Case(f"trace-{fmt}-dup-column", {"t.csv": header + "," + header.split(",")[0]
                                                    + "\n" + good + ",1\n"},
                        ["trace", "stats", "{d}/t.csv", "-f", fmt], "twice"))
    azure = _TRACE_HEADERS["azure"][0]
    out.append(Case("trace-azure-context-1e19",
                    {"t.csv": f"{azure}\n2023-11-16 18:15:46.68,10000000000000000000,5\n"},
                    ["trace", "stats", "{d}/t.csv"], "ContextTokens"))
    out.append(Case("trace-azure-bad-timestamp", {"t.csv": f"{azure}\nyesterday,10,5\n"},
                    ["trace", "stats", "{d}/t.csv"], "TIMESTAMP"))
    out.append(Case("trace-splitwise-negative-time",
                    {"t.csv": "arrived_at,num_prefill_tokens,num_decode_tokens\n-3,10,2\n"},
                    ["trace", "stats", "{d}/t.csv"], "arrived_at"))
    # Mooncake JSONL.
    good = '{"timestamp": 0, "input_length": 600, "output_length": 5, "hash_ids": [1, 2]}'
    mooncake: list[tuple[str, str | bytes, str]] = [
        ("timestamp-nan", '{"timestamp": NaN, "input_length": 10, "output_length": 5, '
                          '"hash_ids": []}', "finite"),
        ("timestamp-inf", '{"timestamp": Infinity, "input_length": 10, "output_length": 5, '
                          '"hash_ids": []}', "finite"),
        ("timestamp-negative", '{"timestamp": -1, "input_length": 10, "output_length": 5, '
                               '"hash_ids": []}', "timestamp"),
        ("timestamp-1e300", '{"timestamp": 1e300, "input_length": 10, "output_length": 5, '
                            '"hash_ids": []}', "timestamp"),
        ("input-1e20", '{"timestamp": 0, "input_length": 1e20, "output_length": 5, '
                       '"hash_ids": []}', "input_length"),
        ("input-string", '{"timestamp": 0, "input_length": "10", "output_length": 5, '
                         '"hash_ids": []}', "input_length"),
        ("hash-2-64", '{"timestamp": 0, "input_length": 10, "output_length": 5, '
                      f'"hash_ids": [{2**64}]}}', "64-bit"),
        ("hash-negative", '{"timestamp": 0, "input_length": 10, "output_length": 5, '
                          '"hash_ids": [-1]}', "hash_ids"),
        ("hash-too-many", '{"timestamp": 0, "input_length": 10, "output_length": 5, '
                          '"hash_ids": [' + ",".join(["1"] * 1000) + "]}", "hash_ids"),
        ("hash-not-list", '{"timestamp": 0, "input_length": 10, "output_length": 5, '
                          '"hash_ids": 3}', "hash_ids"),
        ("deep-nesting", '{"a": ' + "[" * 5000 + "]" * 5000 + "}", "nested"),
        ("array-line", "[1, 2, 3]", "JSON object"),
        ("duplicate-key", '{"timestamp": 0, "timestamp": 1, "input_length": 10, '
                          '"output_length": 5, "hash_ids": []}', "duplicate"),
        ("bad-json", '{"timestamp": 0,', "line 2"),
        ("non-utf8", b'{"timestamp": 0, "x": "\xff"}', "UTF-8"),
        ("blank-line", "", "empty line"),
    ]
    for cid, line, place in mooncake:
        body = good.encode() + b"\n" + (line if isinstance(line, bytes) else line.encode()) + b"\n"
        out.append(Case(f"trace-mooncake-{cid}", {"t.jsonl": body},
                        ["trace", "stats", "{d}/t.jsonl"], place))
    # The servesim format.
    meta = '# servesim-workload {"version": 1, "name": "w", "block_tokens": 0, "notes": []}'
    cols = ("request_id,arrival_s,prompt_tokens,output_tokens,session_id,turn,num_samples,"
            "beam_width,depends_on,think_time_s,prefix_block_ids")
    good_row = "0,0.5,10,2,-1,0,1,1,-1,0,"
    servesim: list[tuple[str, str, str]] = [
        ("arrival-nan", "1,nan,10,2,-1,0,1,1,-1,0,", "arrival_s"),
        ("arrival-inf", "1,inf,10,2,-1,0,1,1,-1,0,", "arrival_s"),
        ("arrival-negative", "1,-4,10,2,-1,0,1,1,-1,0,", "arrival_s"),
        ("samples-1e9", "1,1,10,2,-1,0,1000000000,1,-1,0,", "num_samples"),
        ("depends-forward", "1,1,10,2,-1,0,1,1,5,0,", "depends_on"),
        ("request-id-2-63", f"{2**63},1,10,2,-1,0,1,1,-1,0,", "request_id"),
        ("think-inf", "1,1,10,2,-1,0,1,1,-1,inf,", "think_time_s"),
        ("prefix-ids-garbage", "1,1,10,2,-1,0,1,1,-1,0,abc", "prefix_block_ids"),
        ("prefix-ids-2-70", f"1,1,10,2,-1,0,1,1,-1,0,{2**70}", "prefix_block_ids"),
    ]
    for cid, row, place in servesim:
        out.append(Case(f"trace-servesim-{cid}", {"t.csv": f"{meta}\n{cols}\n{good_row}\n{row}\n"},
                        ["trace", "stats", "{d}/t.csv", "-f", "servesim"], place))
    out.append(Case("trace-servesim-bad-meta",
                    {"t.csv": f"# servesim-workload {{nope\n{cols}\n{good_row}\n"},
                    ["trace", "stats", "{d}/t.csv", "-f", "servesim"], "metadata"))
    out.append(Case("trace-servesim-meta-nan",
                    {"t.csv": f'# servesim-workload {{"block_tokens": NaN}}\n{cols}\n{good_row}\n'},
                    ["trace", "stats", "{d}/t.csv", "-f", "servesim"], "finite"))
    out.append(Case("trace-servesim-meta-not-object",
                    {"t.csv": f"# servesim-workload [1]\n{cols}\n{good_row}\n"},
                    ["trace", "stats", "{d}/t.csv", "-f", "servesim"], "metadata"))
    out.append(Case("trace-servesim-parquet-garbage", {"t.parquet": b"PAR1" + b"\x00" * 100},
                    ["trace", "stats", "{d}/t.parquet"], "t.parquet"))
    out.append(Case("trace-unknown-format", {"t.csv": "a,b\n1,2\n"},
                    ["trace", "stats", "{d}/t.csv"], "unknown trace format"))
    out.append(Case("trace-format-option-bad", {"t.csv": "a,b\n1,2\n"},
                    ["trace", "stats", "{d}/t.csv", "-f", "../../x"], "format"))
    return out


# ---------------------------------------------------------------------------- kernels


def kernel_cases() -> list[Case]:
    return [
        Case("kernel-gemm-m-1e9", {}, ["kernel", "gemm", "--gpu", "h100-sxm", "--m",
                                       "1000000000", "--n", "8192", "--k", "8192"], "m=1000000000"),
        Case("kernel-gemm-k-1e12", {}, ["kernel", "gemm", "--gpu", "h100-sxm", "--m", "4096",
                                        "--n", "4096", "--k", "1000000000000"], "k="),
        Case("kernel-gemm-m-negative", {}, ["kernel", "gemm", "--gpu", "h100-sxm", "--m", "-4",
                                            "--n", "8", "--k", "8"], "m"),
        Case("kernel-decode-batch-1e8", {}, ["kernel", "attention-decode", "--gpu", "h100-sxm",
                                             "--batch", "100000000", "--context-tokens",
                                             "100000"], "batch="),
        Case("kernel-prefill-1e5", {}, ["kernel", "attention-prefill", "--gpu", "h100-sxm",
                                        "--batch", "100000", "--query-tokens", "100000"],
             "batch="),
        Case("kernel-gpu-file-bomb", {"g.yaml": "name: x\n" + _BOMB},
             ["kernel", "gemm", "--gpu", "{d}/g.yaml", "--m", "8", "--n", "8", "--k", "8"],
             "g.yaml"),
    ]


def _npy(shape: tuple[int, ...], payload: bytes = b"", descr: str = "<f8") -> bytes:
    import io

    import numpy as np

    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(
        buf, {"descr": descr, "fortran_order": False, "shape": shape})
    return buf.getvalue() + payload


def quant_cases() -> list[Case]:
    """quant-error --npy: activation tensors are data too."""
    import io

    import numpy as np

    def saved(arr: np.ndarray, allow_pickle: bool = False) -> bytes:
        buf = io.BytesIO()
        np.save(buf, arr, allow_pickle=allow_pickle)
        return buf.getvalue()

    args = ["quant-error", "--npy", "{d}/x.npy", "--no-plot"]
    return [
        Case("quant-npy-claims-1e12", {"x.npy": _npy((10**12,), b"\0" * 64)}, args, "x.npy"),
        Case("quant-npy-truncated", {"x.npy": _npy((1000, 64), b"\0" * 64)}, args, "x.npy"),
        Case("quant-npy-pickle", {"x.npy": saved(np.array([{"a": 1}], dtype=object),
                                                 allow_pickle=True)}, args, "x.npy"),
        Case("quant-npy-garbage", {"x.npy": b"\x93NUMPYgarbage"}, args, "x.npy"),
        Case("quant-npy-not-npy", {"x.npy": "hello"}, args, "x.npy"),
        Case("quant-npy-nan", {"x.npy": saved(np.full((4, 8), np.nan))}, args, "x.npy"),
        Case("quant-npy-empty", {"x.npy": saved(np.zeros((0, 8)))}, args, "x.npy"),
        Case("quant-npy-dir", {"x.npy": None}, args, "x.npy"),
    ]


def compare_cases() -> list[Case]:
    """compare: measured benchmark files (vLLM, SGLang, GenAI-Perf, AIPerf)."""
    files = [
        ("binary", bytes(range(256)) * 4, "bench.json"),
        ("non-utf8", b'{"a": "\xff"}', "UTF-8"),
        ("deep-nesting", "[" * 5000 + "]" * 5000, "nested"),
        ("deep-jsonl-line", '{"a": 1}\n' + "[" * 5000 + "]" * 5000, "nested"),
        ("not-json", "hello", "bench.json"),
        ("top-level-list", "[1, 2]", "bench.json"),
        ("empty", "", "empty"),
        ("directory", None, "directory"),
    ]
    return [Case(f"compare-{cid}", {"s.yaml": _yaml(SCENARIO), "bench.json": content},
                 ["compare", "-s", "{d}/s.yaml", "{d}/bench.json"], place)
            for cid, content, place in files]


def all_cases() -> list[Case]:
    cases = (document_cases() + file_kind_cases() + scenario_field_cases() + sweep_plan_cases()
             + config_json_cases() + gpu_field_cases() + trace_cases() + kernel_cases()
             + quant_cases() + compare_cases())
    ids = [c.id for c in cases]
    assert len(ids) == len(set(ids)), [i for i in ids if ids.count(i) > 1]
    return cases
