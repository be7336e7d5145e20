"""Every method x privacy x trainer x aggregation x simulation combination either runs (at least one update
aggregated) or is refused before any work in one line naming the key and the fix (exit 2 at the CLI)."""

import dataclasses
import functools
import itertools
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from conftest import run_cli
from runconfig.load import CONF_DIR, ConfigError, available, validate
from runconfig.schema import PrivacyConfig, Settings

pytestmark = pytest.mark.privacy

FLEET = ["+fleet=8dev_test", "model=tiny-llama"]
PRIVACY = {"none": {}, "user_dp": {}, "user_dp+record": {"record": {"enabled": True}}}
RULES = ("mean", "krum", "multikrum", "trimmed_mean")


def unvalidated(overrides: list[str]) -> Settings:
    """Hydra's composition as typed settings, before validation (the grid's starting points)."""
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose(config_name="config", overrides=overrides)
    data = OmegaConf.to_container(cfg, resolve=False)
    data["output_dir"] = "."
    data = OmegaConf.to_container(OmegaConf.create(data), resolve=True)
    return OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(Settings), data))


@functools.lru_cache(maxsize=None)
def privacy_of(name: str) -> PrivacyConfig:
    file = name.split("+")[0]
    data = OmegaConf.merge(OmegaConf.load(CONF_DIR / "privacy" / f"{file}.yaml"), PRIVACY[name])
    return OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(PrivacyConfig), data))


def grid(extra=()):
    """(labels, settings) for the whole grid: one composition per method and per simulation; the privacy,
    trainer and aggregation choices are the same config files and keys set on those."""
    from client.trainers import TRAINERS

    methods = {m: unvalidated([*FLEET, f"method={m}", *extra]) for m in available("method")}
    sims = {name: unvalidated([*FLEET, f"simulation={name}", *extra]) for name in available("simulation")}
    for m, p, t, r, sim in itertools.product(methods, PRIVACY, [None, *sorted(TRAINERS)], RULES, sims):
        base, engine = methods[m], sims[sim]
        s = dataclasses.replace(
            base, privacy=privacy_of(p), simulation=engine.simulation,
            client=dataclasses.replace(base.client, trainer=t, precision=engine.client.precision),
            aggregation=dataclasses.replace(base.aggregation, rule=r))
        yield (m, p, t, r, sim), s


def path_key(s: Settings) -> tuple:
    """What decides the server's code path: strategy class, DP (record-level too), mean or robust rule, and for
    FedSpine whether masks are local, the bandit learns and phones keep ZeroQAT. A run with class trainers
    (client.trainer unset: backprop Jetsons and ZeroQAT phones) covers the runs forcing either trainer; the
    engine (ray or the in-process one with batched cohorts) runs the same handlers and strategies, so every
    run here uses the in-process engine (tests/test_throughput.py compares the engines' results)."""
    from runconfig.combinations import masks_under
    from strategies import STRATEGIES

    f = s.method.fedspine
    fedspine = None if f is None else (masks_under(s), f.policy == "bandit", f.keep_forward_only)
    return (STRATEGIES[s.method.name].__name__, s.privacy.mode, s.privacy.record.enabled,
            s.aggregation.rule == "mean", fedspine)


def test_every_combination_runs_or_is_refused_in_one_line(fast_overrides, tmp_path):
    from runconfig.plain import to_plain
    from server.federation import run_server
    from server.preflight import prepare
    from simulations.inprocess import InProcessGrid

    runnable, refused = {}, 0
    for labels, s in grid(fast_overrides):  # the session's cache: one corpus and base for every run
        try:
            validate(s)
        except ConfigError as err:
            message = str(err)
            assert "\n" not in message and message.startswith("config key '") and ". Fix: " in message, labels
            refused += 1
            continue
        key = path_key(s)
        if key not in runnable or labels[2] is None:  # prefer class trainers (both device paths in one run)
            runnable[key] = (labels, s)
    assert refused and len(runnable) >= 10
    small = {"rounds": 1}
    for key, (labels, s) in sorted(runnable.items(), key=lambda kv: str(kv[0])):
        run = dataclasses.replace(
            s, **small, output_dir=str(tmp_path / "-".join(map(str, labels))),
            federation=dataclasses.replace(s.federation, eval_cohort_size=0),
            client=dataclasses.replace(s.client, local_steps=1),
            simulation=dataclasses.replace(s.simulation, backend="inprocess", workers=1, reuse_freed_memory=False),
            tracking=dataclasses.replace(s.tracking, uri=f"sqlite:///{tmp_path}/m.db", log_adapter=False),
            checkpoint=dataclasses.replace(s.checkpoint, enabled=False))
        validate(run)
        prepare(run, show_progress=False)
        with InProcessGrid(to_plain(run), run.fleet.size) as engine:
            run_server(engine, run, show_progress=False)  # raises NoUpdateAggregated when nothing was aggregated
        summary = (Path(run.output_dir) / "summary.json").read_text()
        assert '"updates_aggregated": 0' not in summary, labels


@pytest.mark.parametrize("args", [["method=dp_dylora", "aggregation.rule=trimmed_mean"],
                                  ["client.trainer=lora_dpsgd"],
                                  # refused by the run's privacy plan (the accountant), not by validation
                                  ["method=dp_dylora", "privacy.noise_multiplier=0.3", "privacy.target_epsilon=0.05"]])
def test_refused_at_the_cli_with_exit_2_and_one_line(args, tmp_path):
    proc = run_cli(["-m", "simulations.run", *FLEET, *args, f"hydra.run.dir={tmp_path}"], cwd=tmp_path, timeout=300)
    assert proc.returncode == 2, proc.stderr[-2000:]
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: config key '") and "Fix: " in lines[0]
