"""Issue 20 (MFU, what bounds it): benchmarks.step_anatomy's arithmetic on recorded rows, no model run.

MFU is the cost model's FLOPs over the measured seconds over the host peak, as benchmarks.throughput computes it;
the GEMMs' own MFU is the same FLOPs over the profiled GEMM seconds; their share of the call times it gives the
call's MFU; the page and its reading say both modes' numbers and the compile's pay-back.
"""

from __future__ import annotations

import pytest

from benchmarks import step_anatomy

pytestmark = pytest.mark.realmodel

PEAK = 1000.0  # GFLOP/s


def _rows(call_s: float, first_s: float, split: tuple[float, float, float]) -> list[dict]:
    rows = []
    for trainer in step_anatomy.TRAINERS:
        for k in step_anatomy.DEVICE_COUNTS:
            row = {"trainer": trainer, "k": k, "call_s": call_s * k, "first_call_s": first_s * k,
                   "gemm_flops": 100e9 * k}
            if k == step_anatomy.PROFILED_K:
                row.update(dict(zip(("dense_gemm_s", "batched_gemm_s", "other_s"), (v * k for v in split))))
            rows.append(row)
    return rows


def test_mfu_gemm_share_and_reading():
    modes = {"eager": {"rows": _rows(1.0, 1.1, (0.15, 0.05, 0.8))},
             "compiled": {"rows": _rows(0.5, 10.5, (0.15, 0.05, 0.3))}}
    a = step_anatomy.analyse(modes, PEAK)
    k = str(step_anatomy.PROFILED_K)
    e, c = a["eager"]["lora_backprop"][k], a["compiled"]["zeroqat"][k]
    assert e["mfu"] == pytest.approx(0.1) and c["mfu"] == pytest.approx(0.2)  # 100 GFLOP a device in 1 s / 0.5 s
    assert e["gemm_share"] == pytest.approx(0.2) and c["gemm_share"] == pytest.approx(0.4)
    assert e["gemm_own_mfu"] == pytest.approx(0.5) == c["gemm_own_mfu"]  # share x own MFU = MFU
    assert c["gemm_share"] * c["gemm_own_mfu"] == pytest.approx(c["mfu"])
    text = step_anatomy.reading(a)
    assert len(text) == len(step_anatomy.TRAINERS)
    assert "needs them to take 80%" in text[0]  # 0.40 / 0.5
    assert "pays back after 20 calls" in text[0]  # (31.5 - 1.5) s of compile / (3 - 1.5) s saved a call
    page = step_anatomy.render({"model": "m", "machine": "x", "torch": "t", "work": {
        "steps": 5, "batch": 4, "seq_len": 64, "rank": 8, "quant": "W4A8"}, "host": {"gflops_bf16_1core": PEAK},
        "wall_s": 1.0, "anatomy": a, "reading": text})
    assert "| lora_backprop | 3 | 3.0 | 1.5 | 2.00x | 0.1 | 0.2 |" in page
    assert "Trained and priced: m" in page


def test_gemm_bound_below_the_target_is_said():
    slow = {"rows": _rows(1.0, 1.0, (0.5, 0.4, 0.1))}  # GEMMs at 100 / 0.9 s: own MFU 0.11
    text = step_anatomy.reading(step_anatomy.analyse({"eager": slow, "compiled": slow}, PEAK))
    assert all("Below 0.40 on their own" in line and "pays back" not in line for line in text)
