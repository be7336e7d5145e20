
import pytest

from runconfig.load import CONF_DIR, ConfigError, available, compose
from runconfig.plain import flatten, to_plain


@pytest.mark.parametrize("fleet", available("fleet"))
def test_every_fleet_composes_and_validates(fleet):
    s = compose([f"+fleet={fleet}"])
    assert s.fleet.name == fleet
    assert s.fleet.size >= (3 if fleet.startswith("lab") else 8)  # lab*: a bench of real devices (docs/deploy.md)


def test_there_is_a_fleet_of_at_least_160():
    assert max(compose([f"+fleet={f}"]).fleet.size for f in available("fleet")) >= 160


@pytest.mark.parametrize("model", [m for m in available("model") if m != "hf"])
def test_every_model_config_validates(model):
    s = compose(["+fleet=80dev", f"model={model}"])
    assert s.model.name == model or (s.model.gguf is not None and s.model.name)  # a packaged base keeps its own name


def test_every_device_profile_cites_its_source():
    for path in (CONF_DIR / "device").glob("*.yaml"):
        assert "Spec: http" in path.read_text(), path.name


def test_no_fleet_lists_the_fleets():
    with pytest.raises(ConfigError, match="80dev.*80dev_jetson"):
        compose([])


@pytest.mark.parametrize(
    "overrides, key",
    [
        (["federation.cohort_size=100"], "federation.cohort_size"),
        (["rounds=0"], "rounds"),
        (["rounds=abc"], "rounds"),
        (["client.lr=-1"], "client.lr"),
        (["model=tiny-llama", "model.num_kv_heads=3"], "model.num_kv_heads"),  # the sizes of a model built here
        (["fleet.classes.pixel_8.share=0.5"], "share"),
        (["fleet.link_spread=-0.1"], "fleet.link_spread"),
        (["method=fedspine", "method.fedspine.reward.time_reference=mean"], "method.fedspine.reward.time_reference"),
        (["aggregation.rule=median"], "aggregation.rule"),  # a choice outside its enum (runconfig/choices.py)
        (["fleet.classes.pixel_8.trainer=sgd"], "fleet.classes.pixel_8.trainer"),
        (["method=dp_dylora", "method.dylora.min_rank=0"], "method.dylora.min_rank"),  # was the strategy's check
        (["method.name=fedspine"], "method.fedspine"),
    ],
)
def test_bad_values_name_the_key(overrides, key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        compose(["+fleet=80dev", *overrides])


def test_flatten_for_mlflow_params():
    flat = flatten(to_plain(compose(["+fleet=80dev"])))
    assert flat["fleet.classes.jetson_tx2.peak_gflops"] == "1330.0"
    assert flat["method.lora.rank"] == "8"


def test_the_fedspine_benchmarks_settings_compose_whatever_the_default_model(tmp_path):
    """benchmarks.fedspine pretrains the proxy (model.pretrain.*): it names it, so a change of the default model
    (SmolLM2-135M has no pretrain section) does not break the benchmark at its first run."""
    from benchmarks.fedspine import METHODS, overrides

    for method in METHODS:
        settings = compose(overrides(method, 0, 1, str(tmp_path), f"sqlite:///{tmp_path}/m.db"))
        assert settings.model.name == "tiny-llama" and settings.method.name == method
