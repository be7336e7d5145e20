"""What each MLflow metric of a run means: the run's description (shown on its page in the MLflow UI) and the
artifact ``metrics_glossary.md``.

Patterns are ``fnmatch`` globs over metric keys; a test checks that every key a real run logs matches one.
"""

from __future__ import annotations

from fnmatch import fnmatchcase

# (pattern, meaning), in the order the description lists them
METRICS: list[tuple[str, str]] = [
    ("eval/global_*", "held-out plays (no client holds them), evaluated by the server each round (step 0: the base "
                      "model): loss, perplexity (ppl), next-token accuracy"),
    ("eval/fed_*", "the sampled devices' own test splits (federated evaluation): loss, ppl, accuracy"),
    ("eval/global_*_r*", "DP-DyLoRA: the same, with the adapter truncated to rank r"),
    ("train/loss*", "devices' local training loss, example-weighted (per device class: train/loss/CLASS; per "
                    "trainer: train/loss.TRAINER)"),
    ("comm/bytes_up*", "bytes the devices really uploaded this round: serialized updates of the model that is "
                       "trained (per class: comm/bytes_up/CLASS)"),
    ("comm/bytes_down", "bytes really sent to devices this round (the global adapter), devices that failed included"),
    ("cost/bytes_up", "bytes the simulated clock charges for the on-time replies' uploads: the adapter at the "
                      "shapes of the priced model (cost.priced_as), not necessarily the trained one"),
    ("cost/bytes_down", "the same for the downloads of the on-time replies"),
    ("clock/sim_round_s", "simulated duration of the round: its slowest on-time device (deterministic, cost.clock)"),
    ("clock/sim_time_s", "simulated time since the start of the run"),
    ("clock/round_compute_s", "compute part of the slowest device's simulated time this round"),
    ("clock/round_transfer_s", "download + upload part of the slowest device's simulated time this round"),
    ("fleet/replies*", "devices whose update was used this round (per class: fleet/replies/CLASS)"),
    ("fleet/offline", "sampled devices that were offline (per-class availability)"),
    ("fleet/skipped_memory", "devices never sent work because it would not fit their memory on the priced model"),
    ("fleet/rejected*", "updates rejected by validation (per reason: fleet/rejected/REASON)"),
    ("fleet/failures", "devices that failed mid-round (failure_rate) or replied with an error"),
    ("fleet/no_reply", "devices that sent nothing within the round timeout"),
    ("fleet/late", "replies past the simulated deadline (federation.deadline_s)"),
    ("fleet/surplus", "over-selected replies not needed (federation.over_selection)"),
    ("fleet/attempts", "attempts the round took (a short round is retried with a fresh cohort)"),
    ("fleet/skipped_round", "1 when the round ended without an update (the global adapter stayed)"),
    ("fleet/round_failed", "1 when the round's aggregation raised: logged with its traceback, the run goes on"),
    ("validation/norm_bound", "the round's absolute bound on an update's L2 norm (validation.norm_bound_factor x "
                              "the larger of the global adapter's norm and the recent median update norm)"),
    ("validation/update_norm_max", "the largest accepted update norm this round (how far below the bound honest "
                                   "updates stay)"),
    ("timing/*", "host wall-clock seconds: the real time this machine spent (not the simulated device time); "
                 "overhead_share: the part of a round's wall time outside client training"),
    ("memory/peak_rss_mb*", "peak resident memory of the client worker processes on this host, MB"),
    ("privacy/*", "differential privacy: epsilon spent so far, delta, noise multiplier, sampling rate"),
    ("fedspine/*", "FedSpine: pruning ratio and LoRA rank per device class, cohort sparsity, bandit reward"),
    ("bandit/*", "FedSpine's bandit: pulls and cells"),
]


def explained(key: str) -> bool:
    return any(fnmatchcase(key, pattern) for pattern, _ in METRICS)


def glossary_markdown() -> str:
    rows = "\n".join(f"| `{pattern}` | {meaning} |" for pattern, meaning in METRICS)
    return f"| metric | meaning |\n|---|---|\n{rows}\n"


def run_description(settings) -> str:
    """Markdown for ``mlflow.note.content``: what was trained, what was priced, and what the metrics mean."""
    priced = settings.cost.priced_as
    priced_text = f"the trained model ({settings.model.name})" if priced == "trained" else priced
    return (
        f"Federated LoRA fine-tuning of **{settings.model.name}** with **{settings.method.name}** on the "
        f"**{settings.fleet.name}** fleet ({settings.fleet.size} devices), {settings.rounds} rounds, seed "
        f"{settings.seed}. Device time and bytes are priced as {priced_text} (`cost.clock={settings.cost.clock}`). "
        "Step = server round.\n\n" + glossary_markdown()
    )
