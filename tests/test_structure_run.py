"""Issue 22: the composed strategy and the run object.

The strategy's parts (uniform or Poisson selection through one online/memory filter, the privacy layer, the
round loop of strategies/round_loop.py) replaced an inherited DP mixin and a copied ``Strategy.start``. Two
small real runs through :class:`server.run.FederatedRun` on the in-process engine (tiny-llama, 8 devices,
2 rounds), without and with user-level DP, must give the rounds the inherited code gave: the per-round metrics
in tests/data/structure_rounds.json were recorded with the code before the redesign (commit fa554c8, same
settings, same seed). Counts, bytes and privacy accounting must be equal; losses within 1e-4 relative (floating point across
CPUs). Wall-clock metrics (``timing/``, ``memory/``) are not compared. The run's events: one per phase.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from conftest import FAST
from runconfig.load import compose
from runconfig.plain import to_plain
from strategies.events import PHASES, RunObserver

pytestmark = pytest.mark.structure

GOLDEN = Path(__file__).parent / "data" / "structure_rounds.json"
RUNS = {"plain": [], "dp": ["privacy=user_dp", "privacy.noise_multiplier=1.0", "privacy.target_epsilon=null"]}
UNCOMPARED = ("timing/", "memory/")
REL_TOL = 1e-4
# The largest pre-clip update norm of one device, once a round has trained on a noised model (DP, round >= 2: ~33,
# 60x the clip norm), is chaotic in float rounding: 33.3-34.0 across thread settings and the fused loss's summation
# order. It is clipped before it enters anything, so it is compared in round 1 only; every loss, perplexity, count,
# byte and epsilon is still compared at REL_TOL.
NOISED_ROUND_ONLY = ("validation/update_norm_max",)


def overrides(cache_dir, work: Path, extra: list[str]) -> list[str]:
    """The settings tests/data/structure_rounds.json was recorded with."""
    return ["+fleet=8dev_test", "rounds=2", "client.local_steps=3", "federation.eval_cohort_size=3",
            f"tracking.uri=sqlite:///{work}/m.db", f"output_dir={work}", "tracking.log_adapter=false",
            "tracking.generations=0", f"cache_dir={cache_dir}", *FAST, "simulation.backend=inprocess", *extra]


class Recorder(RunObserver):
    def __init__(self) -> None:
        self.started, self.phases, self.rounds, self.artifacts = [], [], {}, []

    def on_start(self, strategy) -> None:
        self.started.append(strategy)

    def on_phase(self, server_round: int, phase: str, seconds: float) -> None:
        self.phases.append((server_round, phase, seconds))

    def on_round(self, server_round: int, metrics: dict[str, float]) -> None:
        self.rounds[server_round] = dict(metrics)

    def on_artifact(self, data: dict, name: str) -> None:
        self.artifacts.append(name)


@pytest.fixture(scope="module", params=sorted(RUNS))
def run(request, cache_dir, tmp_path_factory):
    from server.run import FederatedRun
    from simulations.inprocess import InProcessGrid
    from simulations.launch import quiet_frameworks

    quiet_frameworks()
    work = tmp_path_factory.mktemp(request.param)
    settings = compose(overrides(cache_dir, work, RUNS[request.param]))
    recorder = Recorder()
    federated = FederatedRun(settings, observers=[recorder], show_progress=False)
    federated.execute(InProcessGrid(to_plain(settings), settings.fleet.size))
    return request.param, federated, recorder


def test_the_composed_strategy_gives_the_inherited_strategys_rounds(run):
    name, federated, recorder = run
    golden = json.loads(GOLDEN.read_text())[name]
    assert sorted(recorder.rounds) == sorted(int(r) for r in golden) == [0, 1, 2]
    for rnd, expected in golden.items():
        got = recorder.rounds[int(rnd)]
        for key, value in expected.items():
            if key.startswith(UNCOMPARED):
                continue
            assert key in got, (name, rnd, key)
            if name == "dp" and int(rnd) >= 2 and key in NOISED_ROUND_ONLY:
                continue
            assert got[key] == pytest.approx(value, rel=REL_TOL, abs=1e-9), (name, rnd, key)
        new = sorted(k for k in got if not k.startswith(UNCOMPARED) and k not in expected)
        assert not new, (name, rnd, new)  # same metrics: none added, none lost
    assert federated.strategy.counters.model_version == 2
    if name == "dp":
        assert federated.strategy.train_selection is federated.strategy.privacy.selection
        assert recorder.artifacts.count("privacy/accountant.json") == 2  # one per round, through the events


def test_the_run_emits_one_event_per_phase(run):
    _, federated, recorder = run
    assert recorder.started == [federated.strategy]
    per_round: dict[int, list[str]] = {}
    for rnd, phase, seconds in recorder.phases:
        assert seconds >= 0
        per_round.setdefault(rnd, []).append(phase)
    assert per_round[0] == ["central_evaluate"]
    for rnd in (1, 2):
        assert per_round[rnd] == list(PHASES)  # no retried attempt in these runs: each phase once, in order
        train = sum(s for r, p, s in recorder.phases if r == rnd and p in ("configure_train", "train",
                                                                            "aggregate_train"))
        assert train <= recorder.rounds[rnd]["timing/train_wall_s"] + 1e-6
