"""Regenerate the sample benchmark files in this folder (a developer tool, not a test).

    .venv/bin/python tests/data/bench/_make_samples.py tests/data/bench

The files are in the real formats of ``vllm bench serve --save-result [--save-detailed]``,
SGLang ``bench_serving --output-file [--output-details]``, GenAI-Perf ``*_genai_perf.json``
and AIPerf ``profile_export_aiperf.json`` (field names as cited in
``simulator/validation/readers.py``). Their numbers are NOT measurements: they are servesim's
own replay of each load on ``h100-llama8b.yaml`` with planted stack parameters (PLANTED
below) and 3 % seeded multiplicative noise, so that the tests can check that
``servesim calibrate --from`` recovers what was planted and that ``compare`` reports the gap.
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import numpy as np

from servesim.simulator.validation.readers import BenchResult
from servesim.simulator.validation.replay import replay_data
from servesim.simulator.validation.stack import StackParams, apply_params, temp_workdir

HERE = Path(__file__).resolve().parent
PLANTED = StackParams(step_overhead_s=0.004, per_request_overhead_s=0.030,
                      compute_eff_scale=0.85, bandwidth_eff_scale=0.9)
NOISE = 0.03


def _run(load: BenchResult, seed: int):
    from servesim.simulator.build import run_scenario
    from servesim.simulator.scenario import load_scenario, scenario_from_dict
    from servesim.simulator.validation.replay import _arrivals

    scen = load_scenario(HERE / "h100-llama8b.yaml")
    with temp_workdir() as tmp:
        data = replay_data(load, scen, Path(tmp), seed=seed)
        if load.max_concurrency is not None:
            data["workload"]["arrivals"] = _arrivals(load, PLANTED.per_request_overhead_s)
        data = apply_params(data, PLANTED, Path(tmp))
        res = run_scenario(scenario_from_dict(data)).variants[0]
    req = res.requests[res.requests["status"] == "completed"].sort_values("request_id")
    return req, res.summary


def _stats(values: np.ndarray) -> dict[str, float]:
    return {"mean": float(values.mean()), "median": float(np.median(values)),
            "std": float(values.std()), "p99": float(np.percentile(values, 99))}


def _per_request(load: BenchResult, seed: int):
    rng = np.random.default_rng(seed)
    req, summary = _run(load, seed)
    add = PLANTED.per_request_overhead_s
    noise = lambda n: 1.0 + NOISE * rng.standard_normal(n)  # noqa: E731
    n = len(req)
    ttft_s = (req["ttft_ms"].to_numpy() / 1e3 + add) * noise(n)
    e2el_s = np.maximum((req["e2el_ms"].to_numpy() / 1e3 + add) * noise(n), ttft_s + 1e-3)
    out = req["output_tokens"].to_numpy()
    dur = (float(summary["duration"]) + add) * float(noise(1)[0])
    itls = [list(np.full(int(o) - 1, (e - t) / max(int(o) - 1, 1)).round(6)) for t, e, o in zip(ttft_s, e2el_s, out, strict=True)]
    return req, ttft_s, e2el_s, out, dur, itls


def _vllm(load: BenchResult, seed: int, *, detailed: bool, dataset_in: int, dataset_out: int) -> dict:
    req, ttft_s, e2el_s, out, dur, itls = _per_request(load, seed)
    tpot_s = np.array([(e - t) / (o - 1) for t, e, o in zip(ttft_s, e2el_s, out, strict=True) if o > 1])
    all_itl = np.concatenate([np.asarray(x) for x in itls if x])
    ins = req["prompt_tokens"].to_numpy()
    res = {
        "date": "20251120-101500", "endpoint_type": "vllm", "backend": "vllm", "label": None,
        "model_id": "meta-llama/Llama-3.1-8B-Instruct", "tokenizer_id": "meta-llama/Llama-3.1-8B-Instruct",
        "num_prompts": load.num_requests,
        "request_rate": "inf" if math.isinf(load.request_rate_per_s) else load.request_rate_per_s,
        "burstiness": load.burstiness, "max_concurrency": load.max_concurrency,
        "duration": dur, "completed": len(req), "failed": 0,
        "total_input_tokens": int(ins.sum()), "total_output_tokens": int(out.sum()),
        "request_throughput": len(req) / dur, "request_goodput": None,
        "output_throughput": float(out.sum()) / dur,
        "total_token_throughput": float(out.sum() + ins.sum()) / dur,
    }
    if detailed:
        res.update({"input_lens": [int(x) for x in ins], "output_lens": [int(x) for x in out],
                    "ttfts": [float(x) for x in ttft_s], "itls": itls,
                    "generated_texts": ["" for _ in out], "errors": ["" for _ in out]})
    res["max_output_tokens_per_s"] = float(round(res["output_throughput"] * 1.3))
    res["max_concurrent_requests"] = int(load.max_concurrency or len(req))
    for name, vals in (("ttft", ttft_s), ("tpot", tpot_s), ("itl", all_itl), ("e2el", e2el_s)):
        if name == "e2el":
            continue  # vLLM's default --percentile-metrics is ttft,tpot,itl
        st = _stats(vals * 1e3)
        res[f"mean_{name}_ms"], res[f"median_{name}_ms"] = st["mean"], st["median"]
        res[f"std_{name}_ms"], res[f"p99_{name}_ms"] = st["std"], st["p99"]
    del dataset_in, dataset_out
    return res


def _sglang(load: BenchResult, seed: int, *, details: bool, rin: int, rout: int) -> dict:
    req, ttft_s, e2el_s, out, dur, itls = _per_request(load, seed)
    tpot_s = np.array([(e - t) / (o - 1) for t, e, o in zip(ttft_s, e2el_s, out, strict=True) if o > 1])
    all_itl = np.concatenate([np.asarray(x) for x in itls if x])
    ins = req["prompt_tokens"].to_numpy()
    e2, tt, tp, it = (_stats(v * 1e3) for v in (e2el_s, ttft_s, tpot_s, all_itl))
    res = {
        "tag": None, "backend": "sglang", "dataset_name": "random",
        "request_rate": load.request_rate_per_s, "max_concurrency": load.max_concurrency,
        "sharegpt_output_len": None, "random_input_len": rin, "random_output_len": rout,
        "random_range_ratio": 1.0, "server_info": None,
        "duration": dur, "completed": len(req), "total_input_tokens": int(ins.sum()),
        "total_input_text_tokens": int(ins.sum()), "total_input_vision_tokens": 0,
        "total_output_tokens": int(out.sum()), "total_output_tokens_retokenized": int(out.sum()),
        "request_throughput": len(req) / dur, "input_throughput": float(ins.sum()) / dur,
        "output_throughput": float(out.sum()) / dur, "total_throughput": float(out.sum() + ins.sum()) / dur,
        "mean_e2e_latency_ms": e2["mean"], "median_e2e_latency_ms": e2["median"],
        "std_e2e_latency_ms": e2["std"], "p99_e2e_latency_ms": e2["p99"],
        "mean_ttft_ms": tt["mean"], "median_ttft_ms": tt["median"], "std_ttft_ms": tt["std"], "p99_ttft_ms": tt["p99"],
        "mean_tpot_ms": tp["mean"], "median_tpot_ms": tp["median"], "std_tpot_ms": tp["std"], "p99_tpot_ms": tp["p99"],
        "mean_itl_ms": it["mean"], "median_itl_ms": it["median"], "std_itl_ms": it["std"],
        "p95_itl_ms": float(np.percentile(all_itl * 1e3, 95)), "p99_itl_ms": it["p99"],
        "concurrency": float(e2el_s.sum() / dur), "accept_length": None,
        "max_output_tokens_per_s": float(round(out.sum() / dur * 1.3)),
        "max_concurrent_requests": int(load.max_concurrency or len(req)),
    }
    if details:
        res.update({"input_lens": [int(x) for x in ins], "output_lens": [int(x) for x in out],
                    "ttfts": [float(x) for x in ttft_s], "itls": itls,
                    "generated_texts": ["" for _ in out], "errors": ["" for _ in out]})
    return res


def _perf_stats(values: np.ndarray, unit: str) -> dict:
    d = {"unit": unit, "avg": float(values.mean())}
    for p in (1, 5, 10, 25, 50, 75, 90, 95, 99):
        d[f"p{p}"] = float(np.percentile(values, p))
    d.update({"min": float(values.min()), "max": float(values.max()), "std": float(values.std())})
    return d


def _perf(load: BenchResult, seed: int, *, aiperf: bool) -> dict:
    req, ttft_s, e2el_s, out, dur, _ = _per_request(load, seed)
    ins = req["prompt_tokens"].to_numpy()
    itl = np.array([(e - t) / (o - 1) for t, e, o in zip(ttft_s, e2el_s, out, strict=True) if o > 1])
    doc = {
        "request_throughput": {"unit": "requests/sec", "avg": len(req) / dur},
        "request_latency": _perf_stats(e2el_s * 1e3, "ms"),
        "time_to_first_token": _perf_stats(ttft_s * 1e3, "ms"),
        "inter_token_latency": _perf_stats(itl * 1e3, "ms"),
        "output_token_throughput": {"unit": "tokens/sec", "avg": float(out.sum()) / dur},
        "output_token_throughput_per_user": _perf_stats(1e3 / (itl * 1e3), "tokens/sec/user"),
        "output_sequence_length": _perf_stats(out.astype(float), "tokens"),
        "input_sequence_length": _perf_stats(ins.astype(float), "tokens"),
    }
    if aiperf:
        doc.update({
            "benchmark_duration": {"unit": "sec", "avg": dur},
            "request_count": {"unit": "requests", "avg": float(len(req))},
            "total_isl": {"unit": "tokens", "avg": float(ins.sum())},
            "total_osl": {"unit": "tokens", "avg": float(out.sum())},
            "was_cancelled": False, "start_time": "2025-11-20T10:15:00.000000",
            "end_time": "2025-11-20T10:16:00.000000", "error_summary": [],
            "input_config": {
                "endpoint": {"model_names": ["meta-llama/Llama-3.1-8B-Instruct"], "type": "chat",
                             "streaming": True, "url": "localhost:8000"},
                "input": {"random_seed": 0, "prompt": {
                    "input_tokens": {"mean": round(load.mean_input_tokens), "stddev": 0},
                    "output_tokens": {"mean": round(load.mean_output_tokens), "stddev": 0}}},
                "loadgen": {"concurrency": load.max_concurrency, "request_rate_mode": "concurrency_burst",
                            "request_count": load.num_requests},
                "cli_command": (f"aiperf profile -m meta-llama/Llama-3.1-8B-Instruct --url localhost:8000 "
                                f"--streaming --concurrency {load.max_concurrency} --request-count "
                                f"{load.num_requests} --isl {round(load.mean_input_tokens)} --osl "
                                f"{round(load.mean_output_tokens)} --extra-inputs ignore_eos:true"),
            },
        })
    else:
        doc["input_config"] = {
            "model": ["meta-llama/Llama-3.1-8B-Instruct"], "backend": "tensorrtllm",
            "endpoint": "v1/chat/completions", "endpoint_type": "chat", "service_kind": "openai",
            "streaming": True, "u": "localhost:8000", "concurrency": load.max_concurrency,
            "request_rate": None, "request_count": load.num_requests,
            "synthetic_input_tokens_mean": round(load.mean_input_tokens),
            "synthetic_input_tokens_stddev": 0,
            "output_tokens_mean": round(load.mean_output_tokens), "output_tokens_stddev": 0,
            "output_tokens_mean_deterministic": False, "random_seed": 0,
            "extra_inputs": {"ignore_eos": True, "max_tokens": round(load.mean_output_tokens)},
            "profile_export_file": "artifacts/profile_export.json", "artifact_dir": "artifacts",
        }
    return doc


def _load(n: int, rate: float, *, conc: int | None = None, ins=None, outs=None,
          mean_in: float = 512, mean_out: float = 128) -> BenchResult:
    return BenchResult(path=Path("planned"), index=0, tool="plan", model_id="", num_requests=n,
                       request_rate_per_s=rate, max_concurrency=conc, input_lens=ins, output_lens=outs,
                       mean_input_tokens=mean_in, mean_output_tokens=mean_out)


def main(out_dir: Path) -> None:
    rng = np.random.default_rng(2025)
    n = 48
    ins = tuple(int(x) for x in rng.integers(128, 1536, n))
    outs = tuple(int(x) for x in rng.integers(24, 160, n))
    files = {
        "vllm-detailed-rate4.json": _vllm(_load(n, 4.0, ins=ins, outs=outs), 1, detailed=True, dataset_in=0, dataset_out=0),
        "vllm-concurrency8.json": _vllm(_load(64, math.inf, conc=8, mean_in=1024, mean_out=128), 2,
                                        detailed=False, dataset_in=1024, dataset_out=128),
    }
    for name, doc in files.items():
        (out_dir / name).write_text(json.dumps(doc))
    lines = [
        _sglang(_load(40, 2.0, mean_in=1024, mean_out=256), 3, details=False, rin=1024, rout=256),
        _sglang(_load(60, 8.0, mean_in=1024, mean_out=256), 4, details=False, rin=1024, rout=256),
    ]
    (out_dir / "sglang-random.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    (out_dir / "profile_export_genai_perf.json").write_text(
        json.dumps(_perf(_load(40, math.inf, conc=4, mean_in=256, mean_out=128), 5, aiperf=False), indent=2))
    (out_dir / "profile_export_aiperf.json").write_text(
        json.dumps(_perf(_load(64, math.inf, conc=16, mean_in=2048, mean_out=200), 6, aiperf=True), indent=2))


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else HERE)
