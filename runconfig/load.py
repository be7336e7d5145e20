"""From Hydra's composed config to validated :class:`Settings` (validation: runconfig/check.py).

Plain data for the wire is runconfig/plain.py, the error runconfig/errors.py (leaf modules: import them, not
this one, where only those are needed).
"""

from __future__ import annotations

from enum import Enum
from pathlib import Path

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from runconfig.check import validate
from runconfig.errors import ConfigError
from runconfig.schema import Settings

CONF_DIR = Path(__file__).resolve().parents[1] / "conf"


def available(group: str) -> list[str]:
    return sorted(p.stem for p in (CONF_DIR / group).glob("*.yaml"))


def to_settings(cfg: DictConfig | dict) -> Settings:
    """Merge a composed config onto the typed schema, then check ranges and cross-references."""
    if isinstance(cfg, DictConfig):
        cfg = OmegaConf.to_container(cfg, resolve=True)
    cfg = {k: v for k, v in cfg.items() if k != "hydra"}
    missing = _missing_keys(cfg)
    if missing:  # merged onto the schema, "???" would silently keep the schema's default
        raise ConfigError(f"config key '{missing[0]}': is required by the chosen config option but not set. "
                          f"Fix: add {missing[0]}=<value> (see its conf/ file)")
    if "fleet" not in cfg or cfg["fleet"] is None:
        raise ConfigError(
            "no fleet given. Fix: append one with Hydra's '+', e.g. `python -m simulations.run +fleet=80dev`. "
            f"Fleets: {', '.join(available('fleet'))}"
        )
    try:
        merged = OmegaConf.merge(OmegaConf.structured(Settings), cfg)
        settings: Settings = OmegaConf.to_object(merged)
    except OmegaConfBaseException as err:
        key = getattr(err, "full_key", None) or "?"
        raise ConfigError(f"config key '{key}': {str(err).splitlines()[0]}. Fix: {fix_for_key(key)}") from None
    validate(settings)
    return settings


def _missing_keys(data, prefix: str = "") -> list[str]:
    if isinstance(data, dict):
        return [k for key, v in data.items() for k in _missing_keys(v, f"{prefix}{key}.")]
    return [prefix[:-1]] if data == "???" else []


def fix_for_key(key: str) -> str:
    """A fix for a key whose value has the wrong type or is missing: its type and its schema default."""
    import dataclasses
    import typing

    cls, field, in_dict = Settings, None, False
    for part in key.split("."):
        if in_dict:  # the name of an entry of a dict of sections (fleet.classes.<name>)
            in_dict = False
            continue
        if not dataclasses.is_dataclass(cls):
            break
        hints = typing.get_type_hints(cls)
        field = next((f for f in dataclasses.fields(cls) if f.name == part), None)
        if field is None:
            return f"remove '{key}' (not a setting; see conf/config.yaml and runconfig/schema.py)"
        cls = hints[part]
        values = typing.get_args(cls)
        if typing.get_origin(cls) is dict and len(values) == 2 and dataclasses.is_dataclass(values[1]):
            cls, in_dict = values[1], True
    if field is None:
        return "see conf/config.yaml and runconfig/schema.py"
    args = [a for a in typing.get_args(cls) if a is not type(None)]
    choice = args[0] if typing.get_origin(cls) is typing.Union and len(args) == 1 else cls
    if isinstance(choice, type) and issubclass(choice, Enum):  # its values are in OmegaConf's message
        example = field.default if isinstance(field.default, Enum) else next(iter(choice))
        return f"one of the values listed (runconfig/choices.py), e.g. {key}={example}"
    if typing.get_origin(cls) is typing.Union and args:  # Optional[X]
        kind = f"{getattr(args[0], '__name__', args[0])} or null"
    else:
        kind = getattr(cls, "__name__", None) or str(cls).replace("typing.", "")
    default = field.default if field.default is not dataclasses.MISSING and field.default != "???" else None
    example = f"{key}={default}" if default is not None and not isinstance(default, (dict, list)) else f"{key}=<{kind}>"
    return f"a value of type {kind}, e.g. {example}"


def compose(overrides: list[str]) -> Settings:
    """Compose ``conf/`` with overrides outside a Hydra app (``flwr run``, notebooks, tests)."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = hydra_compose(config_name="config", overrides=list(overrides), return_hydra_config=False)
    container = OmegaConf.to_container(cfg, resolve=False)
    if not any(o.startswith("output_dir=") for o in overrides):
        container["output_dir"] = "."  # the default names Hydra's run dir, which exists only in a Hydra app
    return to_settings(OmegaConf.create(container))

