"""A progress bar over rounds showing the latest metrics (the console's only chatter)."""

from __future__ import annotations

from tqdm.auto import tqdm

from strategies.events import RunObserver

SHOWN = {
    "eval/global_ppl": "ppl",
    "eval/global_accuracy": "acc",
    "train/loss": "loss",
    "clock/sim_time_s": "sim_s",
    "fleet/replies": "replies",
}


class RoundProgress(RunObserver):
    def __init__(self, rounds: int, enabled: bool = True) -> None:
        self.bar = tqdm(total=rounds, desc="federated rounds", unit="round", disable=not enabled, dynamic_ncols=True)

    def on_round(self, server_round: int, metrics: dict[str, float]) -> None:
        shown = {label: f"{metrics[key]:.4g}" for key, label in SHOWN.items() if key in metrics}
        self.bar.set_postfix(shown, refresh=False)
        if server_round > 0:
            self.bar.update(1)
        else:
            self.bar.refresh()

    def close(self) -> None:
        self.bar.close()
