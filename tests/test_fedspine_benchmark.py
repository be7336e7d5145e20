"""benchmarks.fedspine: its settings compose for every model and scale, and rule v2 on given curves."""

from __future__ import annotations

import pytest

from benchmarks.fedspine import METHODS, overrides, parse
from benchmarks.fedspine_stats import summarise_v2
from runconfig.load import compose

pytestmark = pytest.mark.fedspine


@pytest.mark.parametrize("scale", ["small", "full"])
def test_the_real_model_settings_compose_at_both_scales(tmp_path, scale):
    args = parse(["--scale", scale])
    assert args.model == "smollm2-135m" and args.cost == ["trained"] and args.levels == [0.5, 0.15]
    for method in METHODS:
        o = overrides(method, 0, args.rounds, str(tmp_path), f"sqlite:///{tmp_path}/m.db", (), "trained",
                      args.model, scale)
        assert not any(x.startswith("model.pretrain") for x in o)  # the real model is pretrained
        s = compose(o)
        assert s.model.name == "SmolLM2-135M-Instruct" and s.cost.shape is None  # trained and priced as itself
        if method in ("fedspine", "fedspine_fixed", "fedspine_random"):  # conf/per_model/fedspine/
            assert s.method.fedspine.max_ratio == 0.15
    assert (s.rounds, s.federation.cohort_size) == ((12, 40) if scale == "full" else (args.rounds, 6))


def _run(curve, sim, dense=None):
    return {"levels": {"0.15": {"ppl": curve, "accuracy": [0.2] * len(curve)}},
            "ppl": dense or curve, "accuracy": [0.2] * len(curve), "sim_time": sim, "initial_lora_b_max": 0.0}


def test_rule_v2_on_given_curves():
    """Round 0 is 150 for all; the best baseline ends at 130, so the target is 140. FedSpine reaches it at its
    round 2 (4 s); the fastest baseline (fedspine_fixed) at its round 2 (8 s); HetLoRA never (counted at 20 s)."""
    sim2, sim10 = [0, 2, 4, 6], [0, 4, 8, 12]
    runs = {
        "fedavg_lora": _run([150, 148, 145, 142], [0, 10, 20, 30]),
        "hetlora": _run([150, 149, 148, 147], [0, 5, 10, 20]),
        "fedspine_fixed": _run([150, 145, 139, 130], sim10),
        "fedspine_random": _run([150, 146, 141, 135], sim10),
        "fedspine": _run([150, 144, 138, 129], sim2),
    }
    out = summarise_v2({0: runs}, [0], METHODS, ["0.15"], "0.15", 1)
    level = out["by_level"]["0.15"]
    assert level["target_ppl_per_seed"] == {"0": 140.0}
    assert level["times_to_target_s"]["fedspine"] == [4.0] and level["times_to_target_s"]["hetlora"] == [None]
    assert out["best_baseline"] == "fedspine_fixed" and out["speedup_vs_best_baseline"] == pytest.approx(2.0)
    assert out["round0_spread"]["0.15"] == 0.0
    assert out["verdict"] and level["quality_no_worse"]  # 129 <= 130
    runs["fedspine"] = _run([150, 144, 138, 131], sim2)  # as fast, but ends worse than fixed arms: fails
    assert not summarise_v2({0: runs}, [0], METHODS, ["0.15"], "0.15", 1)["verdict"]
    runs["fedspine"] = _run([150, 149, 148, 147], sim2)  # never reaches it: counted at its total (6 s)
    out = summarise_v2({0: runs}, [0], METHODS, ["0.15"], "0.15", 1)
    assert out["speedup_vs_best_baseline"] == pytest.approx(8 / 6)
    assert not out["by_level"]["0.15"]["fedspine_reached_every_seed"] and not out["verdict_speedup"]
