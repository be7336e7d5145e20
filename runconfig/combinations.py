"""Which ``method x privacy x trainer x aggregation x simulation`` combinations run, checked before any work.

Each check below names a combination that would otherwise fail on every device, or whose setting would be
replaced by another without a word; such a run is refused in one line naming the keys and the fix
(runconfig.errors.ConfigError, exit 2). Called by runconfig.check.validate. Imports no torch: it reads only the
typed settings.
"""

from __future__ import annotations

from runconfig.choices import FORWARD_ONLY_TRAINERS, MaskSource, PrivacyMode, TrainerName
from runconfig.errors import refuse as _refuse
from runconfig.schema import Settings

FEDSPINE_TRAINER = TrainerName.fedspine_prune
RECORD_TRAINER = TrainerName.lora_dpsgd


def device_trainers(s: Settings) -> dict[str, str]:
    """The trainer each device class runs before the method changes anything (class name -> trainer)."""
    if s.client.trainer:
        return dict.fromkeys(s.fleet.classes, s.client.trainer)
    return {name: c.trainer for name, c in s.fleet.classes.items()}


def masks_under(s: Settings) -> str:
    """The FedSpine mask source a run uses: ``local`` (device importance) or ``public`` (dense base weights)."""
    f = s.method.fedspine
    if f is None or f.masks == MaskSource.auto:
        return MaskSource.public if s.privacy.mode == PrivacyMode.user else MaskSource.local
    return MaskSource(f.masks)


def check_combinations(s: Settings) -> None:
    """Refuse every combination this project cannot run as configured (see the module docstring)."""
    user_dp = s.privacy.mode == "user"
    fedspine = s.method.fedspine is not None
    trainers = device_trainers(s)
    rule = s.aggregation.rule

    # --- trainers the method cannot use
    for name, trainer in trainers.items():
        key = "client.trainer" if s.client.trainer else f"fleet.classes.{name}.trainer"
        if trainer == FEDSPINE_TRAINER and not fedspine:
            _refuse(key, f"trainer '{FEDSPINE_TRAINER}' prunes a sub-model only FedSpine methods send "
                    f"(method={s.method.name})", "method=fedspine (or another FedSpine method), or another trainer")
        if trainer == RECORD_TRAINER and not (user_dp and s.privacy.record.enabled):
            _refuse(key, f"trainer '{RECORD_TRAINER}' (record-level DP-SGD) needs the record-level DP settings, "
                    "which only privacy=user_dp privacy.record.enabled=true sends",
                    "privacy=user_dp privacy.record.enabled=true (and leave client.trainer unset), or another trainer")
    if s.privacy.record.enabled and s.client.trainer not in (None, RECORD_TRAINER):
        _refuse("client.trainer", f"privacy.record.enabled sends every device record-level DP-SGD work "
                f"('{RECORD_TRAINER}'); client.trainer={s.client.trainer} would run instead, without it",
                "leave client.trainer unset, or privacy.record.enabled=false")
    if s.privacy.record.enabled and not user_dp:
        _refuse("privacy.record.enabled", "record-level DP-SGD is run by the user-level DP server (privacy=user_dp); "
                "with privacy.mode=none it would be ignored", "privacy=user_dp, or privacy.record.enabled=false")

    # --- FedSpine family: its own trainer and its own aggregation
    if fedspine:
        f = s.method.fedspine
        if rule != "mean":
            _refuse("aggregation.rule", f"method={s.method.name} averages each coordinate over the devices holding "
                    f"it; '{rule}' is defined for same-shape updates only and would be ignored",
                    "aggregation.rule=mean")
        if s.privacy.record.enabled:
            _refuse("privacy.record.enabled", f"method={s.method.name} trains with its own trainers (pruned LoRA, "
                    "ZeroQAT); record-level DP-SGD would be ignored", "privacy.record.enabled=false")
        if f.keep_forward_only and s.client.trainer:
            _refuse("client.trainer", "method.fedspine.keep_forward_only keeps each class's own trainer",
                    "leave client.trainer unset")

    # --- user-level DP
    if user_dp:
        if rule != "mean":
            _refuse("aggregation.rule", f"privacy=user_dp releases the clipped, noised mean (sensitivity C / qN); "
                    f"'{rule}' has another sensitivity, which the accountant does not cover, and would be replaced",
                    "aggregation.rule=mean (clipping already bounds each user's influence)")
        if fedspine and s.privacy.noise_placement == "client":
            _refuse("privacy.noise_placement", f"method={s.method.name} sends pruned, rank-truncated updates; "
                    "client-side noise would miss the coordinates a device does not hold",
                    "privacy.noise_placement=server")
        zo = any(t in FORWARD_ONLY_TRAINERS for t in trainers.values())
        if zo and s.zeroqat.seed_upload and s.privacy.noise_placement == "client":
            _refuse("zeroqat.seed_upload", "a seed upload (seeds, projected gradients) cannot carry client-side "
                    "noise", "zeroqat.seed_upload=false, or privacy.noise_placement=server")
        if fedspine:
            f = s.method.fedspine
            if f.prune and masks_under(s) == "local":
                _refuse("method.fedspine.masks", "masks chosen from a device's own gradients reveal its data "
                        "through the structure it uploads, outside the DP mechanism (docs/privacy.md)",
                        "method.fedspine.masks=public (or auto)")
            if f.policy == "bandit" and (f.reward.loss != 0 or f.reward.importance != 0):
                _refuse("method.fedspine.reward", "the bandit would learn from each device's training loss and update "
                        "norm (private data) and publish it through the arms it picks (docs/privacy.md)",
                        "method.fedspine.reward.loss=0 method.fedspine.reward.importance=0 (public feedback: "
                        "time and pruning progress), or method=combined")
