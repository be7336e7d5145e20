"""Central evaluation on the global test set (plays held out from every client), on the server."""

from __future__ import annotations

import torch
from flwr.app import ArrayRecord, MetricRecord

from models.evaluation import evaluate_lm
from models.lora import load_adapter_arrays
from protocol.messages import from_array_record
from textdata.corpus import Corpus, windows


def global_test_windows(corpus: Corpus, seq_len: int, count: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``count`` windows spread evenly over the global test set (every play represented)."""
    x, y = windows(corpus.global_test_ids, seq_len, corpus.tokenizer.pad_token_id)
    if count < len(x):
        idx = torch.linspace(0, len(x) - 1, count).round().long()
        x, y = x[idx], y[idx]
    return x, y


class CentralEvaluator:
    def __init__(self, peft_model, corpus: Corpus, seq_len: int, count: int) -> None:
        self.model = peft_model
        self.inputs, self.labels = global_test_windows(corpus, seq_len, count)

    def __call__(self, server_round: int, arrays: ArrayRecord) -> MetricRecord:
        load_adapter_arrays(self.model, from_array_record(arrays))
        score = evaluate_lm(self.model, self.inputs, self.labels)
        return MetricRecord({
            "eval/global_loss": score.loss,
            "eval/global_ppl": score.perplexity,
            "eval/global_accuracy": score.accuracy,
        })
