"""Narrative tests: tiny workloads whose timelines are worked out by hand in the docstrings."""

from __future__ import annotations

import numpy as np
import pytest

from tests.engine.helpers import LinearCost, simulate, workload


def times(res, col):
    return res.requests[col].tolist()


@pytest.mark.parametrize("loop", ["reference", "compiled"])
def test_vllm_prefill_first_pauses_decodes(loop: str) -> None:
    """Step = 1 s + 0.25 s per prefill token.

    r0 (prompt 4, out 3) arrives at 0, r1 (prompt 8, out 2) at 0.5.
    [0,2] prefill r0 -> r0 token 1 at 2. [2,5] prefill r1 (r0 paused) -> r1 token 1 at 5.
    [5,6] decode both -> r0 token 2, r1 token 2 (r1 done at 6). [6,7] decode r0 -> done at 7.
    ITL samples: r0 6-2=4 and 7-6=1; r1 6-5=1.
    """
    wl = workload([0.0, 0.5], [4, 8], [3, 2])
    res = simulate(wl, policy="vllm", cost=LinearCost(1.0, 0.25, 0.0), loop=loop)
    assert times(res, "first_token_s") == [2.0, 5.0]
    assert times(res, "finish_s") == [7.0, 6.0]
    assert times(res, "ttft_ms") == [2000.0, 4500.0]
    assert times(res, "tpot_ms") == [2500.0, 1000.0]
    assert res.recorder.itl_n == 3
    assert res.recorder.itl_sum_s == pytest.approx(6.0)
    assert res.steps["prefill_tokens"].tolist() == [4, 8, 0, 0]
    assert res.steps["decode_tokens"].tolist() == [0, 0, 2, 1]


@pytest.mark.parametrize("loop", ["reference", "compiled"])
def test_sarathi_chunked_prefill_is_stall_free(loop: str) -> None:
    """Sarathi, budget 6 tokens per step; same requests and cost as above.

    [0,2] r0 prompt (4). [2,4.25] r0 decode + r1 chunk 5. [4.25,6] r0 decode (done, 3 tokens)
    + r1 last 3 prompt tokens -> r1 token 1 at 6. [6,7] r1 decode -> done at 7.
    """
    wl = workload([0.0, 0.5], [4, 8], [3, 2])
    res = simulate(
        wl, policy="sarathi", chunk_size_tokens=6, cost=LinearCost(1.0, 0.25, 0.0), loop=loop
    )
    assert times(res, "first_token_s") == [2.0, 6.0]
    assert times(res, "finish_s") == [6.0, 7.0]
    assert res.steps["prefill_tokens"].tolist() == [4, 5, 3, 0]
    assert res.steps["decode_tokens"].tolist() == [0, 1, 1, 1]
    # Never above the token budget.
    assert (res.steps["prefill_tokens"] + res.steps["decode_tokens"]).max() <= 6


@pytest.mark.parametrize("loop", ["reference", "compiled"])
def test_vllm_recompute_preemption(loop: str) -> None:
    """Paged, 4 blocks of 4 tokens, no watermark, 1 s per step; r0, r1: prompt 4, out 8 at 0.

    [0,1] prefill both (1 block each). Decodes grow ctx 4->8 over [1,5] (2 blocks each: pool
    full). At 5 both need a 3rd block: r1 (latest) is preempted by recompute, r0 decodes
    [5,8] and finishes at 8 (out 8). r1 cannot come back before (needs 2 blocks for its
    4 + 4 recomputed tokens, 1 free). [8,9] r1 recomputes 8 tokens and samples token 6;
    [9,11] tokens 7, 8: done at 11.
    """
    wl = workload([0.0, 0.0], [4, 4], [8, 8])
    res = simulate(wl, policy="vllm", capacity_tokens=16, block_size_tokens=4, loop=loop)
    assert times(res, "first_token_s") == [1.0, 1.0]
    assert times(res, "finish_s") == [8.0, 11.0]
    assert res.requests["num_preemptions"].tolist() == [0, 1]
    assert res.steps["num_preemptions"].sum() == 1
    assert res.steps["prefill_tokens"].tolist()[-3] == 8


@pytest.mark.parametrize("loop", ["reference", "compiled"])
def test_static_batch_runs_until_its_last_request(loop: str) -> None:
    """Static, max 2 seqs, 1 s per step. r0 (out 2) and r1 (out 4) at 0, r2 (out 1) at 0.5.

    Batch {r0, r1}: [0,1] prefill, decodes [1,4]; r0 is padding from 2; both return at 4.
    Then r2: [4,5] prefill, its only token: done at 5.
    """
    wl = workload([0.0, 0.0, 0.5], [4, 4, 4], [2, 4, 1])
    res = simulate(
        wl,
        policy="static",
        kv_kind="contiguous",
        reservation="max",
        max_num_seqs=2,
        loop=loop,
    )
    assert times(res, "first_token_s") == [1.0, 1.0, 5.0]
    assert times(res, "finish_s") == [4.0, 4.0, 5.0]
    # r0 is computed as padding in [2,4]: two sequences per decode step throughout.
    assert res.steps["decode_tokens"].tolist() == [0, 2, 1, 1, 0]


@pytest.mark.parametrize("loop", ["reference", "compiled"])
def test_orca_contiguous_reservation_limits_the_batch(loop: str) -> None:
    """Orca + contiguous ``max`` (64 slots each) on 128 slots: only two requests run at once.

    Three requests (prompt 4, out 3) at 0; 1 s per step. r0, r1 prefill [0,1], decode [1,3];
    r2 waits for a whole 64-slot region: admitted at 3, prefill [3,4], done at 6.
    """
    wl = workload([0.0, 0.0, 0.0], [4, 4, 4], [3, 3, 3])
    res = simulate(
        wl,
        policy="orca",
        kv_kind="contiguous",
        reservation="max",
        capacity_tokens=128,
        max_seq_len=64,
        loop=loop,
    )
    assert times(res, "finish_s") == [3.0, 3.0, 6.0]
    assert res.requests["first_scheduled_s"].tolist() == [0.0, 0.0, 3.0]


def test_rejections_are_counted_with_reasons() -> None:
    """A request longer than the model maximum is rejected at arrival; nothing waits."""
    wl = workload([0.0, 0.0], [4, 300], [2, 2])
    res = simulate(wl, max_seq_len=256)
    assert res.requests["status"].tolist() == ["completed", "rejected"]
    assert res.requests["reject_reason"].tolist() == ["", "exceeds_max_model_len"]
    assert res.summary["num_rejected"] == 1


def test_request_that_never_fits_the_kv_cache_is_rejected() -> None:
    wl = workload([0.0, 1.0], [4, 40], [2, 2])
    res = simulate(wl, capacity_tokens=32, max_seq_len=256)
    assert res.requests["status"].tolist() == ["completed", "rejected"]
    assert res.requests["reject_reason"].tolist()[1] == "exceeds_kv_capacity"


def test_fanout_wider_than_max_num_seqs_is_rejected() -> None:
    """A group of 3 parallel samples on a replica with 2 seats could never be admitted: it is
    rejected at arrival (it used to wait until the run ended), and the others run."""
    wl = workload([0.0, 0.0, 0.0], [4, 4, 4], [2, 2, 2], num_samples=[1, 3, 2])
    for loop in ("compiled", "reference"):
        res = simulate(wl, max_num_seqs=2, loop=loop)
        assert res.requests["status"].tolist() == ["completed", "rejected", "completed"]
        assert res.requests["reject_reason"].tolist() == ["", "exceeds_max_num_seqs", ""]


def test_request_whose_output_outgrows_the_kv_cache_is_rejected() -> None:
    """The prompt fits but prompt + output never can: rejected at arrival, not preempted
    and re-queued forever (capacity 48 slots, 25 + 25 tokens)."""
    wl = workload([0.0, 0.0], [25, 5], [25, 5])
    res = simulate(wl, capacity_tokens=48, block_size_tokens=1, max_seq_len=64)
    assert res.requests["reject_reason"].tolist() == ["exceeds_kv_capacity", ""]
    assert res.requests["status"].tolist() == ["rejected", "completed"]


@pytest.mark.parametrize(("kind", "sharing", "fits"), [
    ("paged", True, True),  # 5 shared prompt blocks + 4 x (8 - 5) own blocks = 17 <= 24
    ("paged", False, False),  # 4 x 8 blocks = 32 > 24
    ("contiguous", False, False),  # 4 x 32-slot reservations = 128 > 96
])
def test_fan_out_group_is_judged_as_a_whole(kind: str, sharing: bool, fits: bool) -> None:
    """n = 4 sequences of 20 + 12 tokens on 96 slots (blocks of 4): the group must fit as a
    whole, or it is rejected at arrival."""
    wl = workload([0.0], [20], [12], num_samples=4)
    res = simulate(wl, kv_kind=kind, capacity_tokens=96, block_size_tokens=4, max_seq_len=32,
                   kv_sharing=sharing)
    assert res.requests["status"].tolist() == (["completed"] if fits else ["rejected"])


def test_fan_out_counts_all_its_sequences_while_its_prompt_is_chunked() -> None:
    """A sharing group holds one slot until its prefill completes and forks; seats must count
    all its sequences meanwhile, so the batch never exceeds max_num_seqs."""
    wl = workload([0.0, 0.0, 0.0], [40, 4, 4], [6, 6, 6], num_samples=[3, 1, 1])
    res = simulate(wl, policy="sarathi", capacity_tokens=1024, max_num_seqs=4, chunk_size_tokens=16)
    assert res.steps["num_running"].max() <= 4
    assert (res.requests["status"] == "completed").all()


def test_swap_preempts_a_sharing_fan_out_group_by_recompute() -> None:
    """Out of blocks, a fan-out group sharing its prompt is recomputed rather than swapped."""
    wl = workload([0.0, 0.0], [16, 16], [40, 40], num_samples=[2, 2])
    res = simulate(wl, capacity_tokens=160, block_size_tokens=4, max_seq_len=64, preemption="swap")
    assert res.summary["num_preemptions"] > 0
    assert (res.steps["comm_s"] == 0).all()  # no swap traffic was charged
    assert (res.requests["status"] == "completed").all()


def test_parallel_sampling_shares_the_prompt() -> None:
    """n=4 with sharing holds the prompt once; without, four times (more token slots)."""
    wl = workload([0.0], [32], [4], num_samples=4)
    shared = simulate(wl, capacity_tokens=1024, kv_sharing=True)
    copied = simulate(wl, capacity_tokens=1024, kv_sharing=False)
    assert shared.requests["finish_s"].tolist() == copied.requests["finish_s"].tolist()
    peak_shared = shared.steps["kv_token_state_slots"].max()
    peak_copied = copied.steps["kv_token_state_slots"].max()
    assert peak_shared < peak_copied
    assert shared.summary["total_output_tokens"] == 16


def test_closed_loop_dependents_arrive_after_think_time() -> None:
    """r1 depends on r0 with 2 s think time: it arrives 2 s after r0 finishes."""
    wl = workload([0.0, np.nan], [4, 4], [2, 2], depends_on=[-1, 0], think_time_s=[0.0, 2.0])
    res = simulate(wl)
    f0 = res.requests["finish_s"][0]
    assert res.requests["arrival_s"][1] == f0 + 2.0
    assert res.requests["status"].tolist() == ["completed", "completed"]
