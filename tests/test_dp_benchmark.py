"""benchmarks.dp's command line, composed settings and gain-kept formula (nothing is trained here)."""

import math

import pytest

from benchmarks.dp import CLIP_ONLY, METHODS, overrides, parse_args, planned_runs
from benchmarks.dp_report import gain_kept, merge_sections
from runconfig.load import compose


def test_gain_kept_on_given_numbers():
    # perplexity: base 120, non-private 80 (gain 40), epsilon 2 at 100 keeps 20 of it
    assert gain_kept(120.0, 100.0, 80.0, lower_is_better=True) == pytest.approx(0.5)
    assert gain_kept(120.0, 150.0, 80.0, lower_is_better=True) == pytest.approx(-0.75)
    assert gain_kept(120.0, math.inf, 80.0, lower_is_better=True) == -math.inf
    assert gain_kept(0.30, 0.31, 0.34, lower_is_better=False) == pytest.approx(0.25)
    assert gain_kept(120.0, 100.0, 125.0, lower_is_better=True) is None  # no non-private gain: undefined


@pytest.mark.parametrize("scale", ["cpu", "full"])
def test_real_model_settings_compose(scale, tmp_path):
    args = parse_args(["--scale", scale, "--workdir", str(tmp_path), "--clip-sweep", "0.1,2"])
    runs = planned_runs(args)
    assert args.model == "smollm2-135m" and args.population >= 1000 and len(args.seeds) >= 2
    assert {e for _, e, _, _ in runs} == {math.inf, 8.0, 2.0, CLIP_ONLY}
    assert runs[:2] == [(m, math.inf, args.seeds[0], None) for m in METHODS]  # the baselines first
    sweep = [r for r in runs if r[3] is not None]  # the clip-norm sweep: last, seed 0, epsilon 2 and sigma 0
    assert runs[-len(sweep):] == sweep and {(e, s) for _, e, s, _ in sweep} == {(2.0, 0), (CLIP_ONLY, 0)}
    for method, eps, seed, clip in [runs[0], (METHODS[1], 2.0, 1, None), (METHODS[0], CLIP_ONLY, 0, None), sweep[0]]:
        s = compose(overrides(args, method, eps, seed, clip))
        assert s.model.name == "SmolLM2-135M-Instruct" and s.method.name == method
        assert (s.fleet.size, s.rounds, s.federation.cohort_size) == (args.population, args.rounds, args.cohort)
        assert (s.client.local_steps, s.client.batch_size) == (args.local_steps, args.batch_size)
        assert s.data.roles_per_device == 1 and s.privacy.mode == ("none" if eps == math.inf else "user")
        if eps == CLIP_ONLY:
            assert math.isinf(s.privacy.target_epsilon)
        if eps != math.inf:
            assert s.privacy.clip_norm == (args.clip if clip is None else clip)
    assert len(sweep) == 2 * 2 * len(METHODS)  # two other clip norms x (epsilon 2, clipping only) x methods
    if scale == "full":
        cpu = parse_args([])
        assert parse_args(["--scale", "full"]).clip_sweep and not cpu.clip_sweep
        assert args.rounds > cpu.rounds and args.cohort > cpu.cohort and len(args.seeds) >= 3
        assert args.eval_windows > cpu.eval_windows


def test_proxy_keeps_its_settings_and_bad_scale_exits_2(tmp_path):
    args = parse_args(["--model", "tiny-llama", "--workdir", str(tmp_path)])
    assert (args.rounds, args.cohort, args.local_steps, args.clip, args.eval_windows) == (8, 80, 4, 2.0, 256)
    s = compose(overrides(args, "dp_dylora", 2.0, 0))
    assert s.model.name == "tiny-llama" and s.model.pretrain.steps == 400
    with pytest.raises(SystemExit) as err:
        parse_args(["--model", "tiny-llama", "--scale", "full"])
    assert err.value.code == 2


def test_sections_replace_their_own_and_keep_the_other(tmp_path):
    path = tmp_path / "dp.md"
    path.write_text(merge_sections(path, "tiny-llama", ["## proxy", "old"]))
    path.write_text(merge_sections(path, "smollm2-135m", ["## real", "a"]))
    path.write_text(merge_sections(path, "tiny-llama", ["## proxy", "new"]))
    text = path.read_text()
    assert text.index("## real") < text.index("## proxy") and "new" in text and "old" not in text
