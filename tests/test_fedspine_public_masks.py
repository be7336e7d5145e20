"""Public pruning importance and the divergence rule for pruning devices (issue 25).

* The public masks' scores are each head's / channel's exact output contribution, not its weight norm: on
  SmolLM2-135M weight norms pruned worse than random (docs/benchmarks/pruning_damage.md).
* A FedSpine device is judged on whether the training of the model it trained diverged (``loss_pruned`` ->
  ``loss_end``); the jump its pruning step causes is not divergence. Other trainers keep the plain rule.
"""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch
from flwr.supercore.task_identity import TaskIdentity

from models.architectures import ARCHITECTURES, build_model
from pruning.importance import activation_scores, public_calibration, weight_scores
from pruning.prune import decoder_layers
from pruning.structure import Dims, Structure, select

pytestmark = pytest.mark.fedspine


def tiny_llama():
    config_cls, _ = ARCHITECTURES["llama"]
    config = config_cls(vocab_size=64, hidden_size=48, intermediate_size=48, num_hidden_layers=2,
                        num_attention_heads=6, num_key_value_heads=2, max_position_embeddings=32,
                        tie_word_embeddings=True, pad_token_id=0, bos_token_id=1, eos_token_id=2)
    return build_model(config, seed=0).eval()


def inputs(n: int = 4, seq: int = 16) -> torch.Tensor:
    return torch.randint(3, 64, (n, seq), generator=torch.Generator().manual_seed(0))


def captured(model, x, layer: int):
    """Layer ``layer``'s o_proj and down_proj inputs over ``x``."""
    seen = {}
    lyr = decoder_layers(model)[layer]
    hooks = [lyr.self_attn.o_proj.register_forward_pre_hook(lambda m, a: seen.__setitem__("o", a[0].detach())),
             lyr.mlp.down_proj.register_forward_pre_hook(lambda m, a: seen.__setitem__("down", a[0].detach()))]
    with torch.no_grad():
        model(input_ids=x)
    for h in hooks:
        h.remove()
    return seen["o"], seen["down"]


def test_public_scores_are_the_output_change_of_removing_each_head_and_channel():
    model, x = tiny_llama(), inputs()
    dims = Dims.of(model.config)
    heads, channels = activation_scores(model, x, dims, batch_size=len(x))
    for layer in range(dims.num_layers):
        o_in, down_in = captured(model, x, layer)
        lyr = decoder_layers(model)[layer]
        o_w, down_w = lyr.self_attn.o_proj.weight, lyr.mlp.down_proj.weight
        for h in range(dims.num_heads):  # o_proj's output without head h's columns
            cols = slice(h * dims.head_dim, (h + 1) * dims.head_dim)
            change = (o_in[..., cols] @ o_w[:, cols].T).square().sum().item()
            assert heads[layer][h] == pytest.approx(change, rel=1e-4)
        for c in (0, 7, 47):
            change = (down_in[..., c:c + 1] @ down_w[:, c:c + 1].T).square().sum().item()
            assert channels[layer][c] == pytest.approx(change, rel=1e-4)


def test_a_channel_with_large_weights_but_a_small_output_is_pruned_first():
    """The bug weight norms had: a channel's weights say nothing about its output when its input is small."""
    model, x = tiny_llama(), inputs()
    dims = Dims.of(model.config)
    with torch.no_grad():
        for lyr in decoder_layers(model):
            lyr.mlp.up_proj.weight[5] *= 1e-3  # its activation shrinks 1000x ...
            lyr.mlp.down_proj.weight[:, 5] *= 10  # ... while its weights grow
    public = activation_scores(model, x, dims, batch_size=len(x))
    by_weight = weight_scores(model, dims)
    for scores, kept in ((public, False), (by_weight, True)):
        structure = select(*scores, Structure.dense(dims), dims, 0.1, "within_groups")
        assert all(bool(c[5]) is kept for c in structure.channels)


def test_public_calibration_is_evenly_spread_and_deterministic():
    ids = torch.arange(3, 3 + 64 * 40)
    a, b = public_calibration(ids, 64, 0, count=8), public_calibration(ids, 64, 0, count=8)
    assert a.shape == (8, 64) and torch.equal(a, b)
    assert a[0, 0] == 3 and a[-1, 0] > a[0, 0] + 64 * 30


# ------------------------------------------------------------------ the divergence rule
@pytest.fixture()
def round_of_two():
    from benchmarks.robustness_cases import Round

    mp = pytest.MonkeyPatch()
    for name in ("_run_id", "_task_id", "_node_id"):  # messages need a run id (Flower sets it in a ServerApp)
        mp.setattr(TaskIdentity, name, 1)
    logging.disable(logging.WARNING)
    yield Round
    logging.disable(logging.NOTSET)
    mp.undo()


@pytest.mark.parametrize("losses, verdict", [
    # (loss_start, loss_pruned, loss_end): dense 4.5, pruned to 14, recovering to 13 -> its training did not diverge
    ((4.5, 14.0, 13.0), None),
    ((4.5, 4.6, 8.0), "diverged"),  # pruning cost little, but training the pruned model blew up
    ((4.5, 14.0, 17.5), "diverged"),  # the pruned model's own training rose by more than 3 nats
    ((4.5, float("nan"), 4.0), "diverged"),  # a non-finite loss after pruning is divergence
    ((4.5, None, 13.0), "diverged"),  # no pruning reported (every other trainer): the plain rule, unchanged
    ((4.5, None, 7.4), None),
])
def test_a_pruning_device_is_judged_on_the_model_it_trained(round_of_two, losses, verdict):
    start, pruned, end = losses
    r = round_of_two.open([0, 1])
    update = r.honest_update(0)
    update.metrics.update(loss_start=start, loss_end=end)
    if pruned is not None:
        update.metrics["loss_pruned"] = pruned
    r.aggregate([round_of_two.message(update, 0), round_of_two.message(r.honest_update(1), 1)])
    reasons = {v.device_index: v.reason for v in r.strategy._ledger.checked.rejected}
    assert reasons.get(0) == verdict
    assert 1 not in reasons
    assert np.isfinite(start)


def test_device_and_server_read_the_same_public_scores(tmp_path):
    """Computed per process, float noise flipped near-tied channels and the server rejected honest masks: the
    scores are stored once next to the base and every process reads that file."""
    from types import SimpleNamespace

    from pruning import importance

    tiny_llama().save_pretrained(str(tmp_path))
    corpus = SimpleNamespace(public_ids=torch.randint(3, 64, (16 * 40,), generator=torch.Generator().manual_seed(1)),
                             tokenizer=SimpleNamespace(pad_token_id=0))
    dims = Dims.of(tiny_llama().config)
    first = importance.public_scores(tmp_path, corpus, 16, dims)
    stored = list(tmp_path.glob("public_scores_*.npz"))
    assert len(stored) == 1
    importance._PUBLIC.clear()  # another process: nothing cached in memory
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        again = importance.public_scores(tmp_path, corpus, 16, dims)
    finally:
        torch.set_num_threads(threads)
    for a, b in zip(first[0] + first[1], again[0] + again[1]):
        assert np.array_equal(a, b)
    fresh = activation_scores(tiny_llama(), public_calibration(corpus.public_ids, 16, 0), dims)
    assert all(np.allclose(a, b, rtol=1e-5) for a, b in zip(first[1], fresh[1]))
