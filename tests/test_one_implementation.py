"""Issue 22, item 2: one implementation of each trainer, used by both engines.

A trainer is handed K devices that share a base; the ClientApp hands it one (the PEFT model), the in-process
engine's batching hands it several (the multi-adapter model). Here, on model=tiny-llama: for each trainer the
K-device call gives what K one-device calls give, and one round's replies from the plain engine (every message
through the ClientApp's handlers) and the fast engine (batched) agree. Stated tolerance (the same as
tests/test_throughput.py's): every adapter tensor within 1e-4 absolute and the update within 1e-3 relative (L2);
FedSpine's devices train one after another, so its K-device call must give exactly the one-device results.
"""

from __future__ import annotations

import numpy as np
import pytest

from runconfig.load import compose
from runconfig.plain import to_plain

pytestmark = pytest.mark.structure

ABS_TOL = 1e-4
REL_TOL = 1e-3
K = 3
FEDSPINE_EXTRA = dict(max_rank=4, alpha=8.0, ratio=0.15, prune_every=1, sparsity_step=0.15, importance_ema=0.5,
                      head_rule="within_groups")


def _plain(fast_overrides, *extra) -> dict:
    return to_plain(compose([*fast_overrides, "+fleet=8dev_test", "simulation.backend=inprocess",
                             "zeroqat.seed_upload=true", "method.lora.rank=4", *extra]))


def _received(runtime, rank: int) -> dict[str, np.ndarray]:
    """The fleet's initial adapter with a non-zero B (so that every factor gets a gradient)."""
    import copy

    from models.lora import adapter_arrays, attach_lora

    arrays = adapter_arrays(attach_lora(copy.deepcopy(runtime.dense_base()), runtime.settings.method.lora,
                                        runtime.settings.seed, rank))  # PEFT wraps in place: a copy
    rng = np.random.default_rng(3)
    return {k: (v + 0.02 * rng.standard_normal(v.shape)).astype(np.float32) for k, v in arrays.items()}


def _tasks(runtime, trainer: str):
    from client.trainers.base import DeviceTask
    from protocol.work import Work
    from pruning.structure import Dims, Structure

    received = _received(runtime, 4)
    extra = FEDSPINE_EXTRA if trainer == "fedspine_prune" else {}
    structure = Structure.dense(Dims.of(runtime.dense_base().config)).to_arrays() if extra else {}
    k = 2 if extra else K  # FedSpine's devices train one after another: two show whether anything leaks
    return [DeviceTask(Work(server_round=1, device_index=i, trainer=trainer, local_steps=3, batch_size=4, lr=2e-3,
                            rank=4, seed=11 + i, extra=dict(extra)), received, structure) for i in range(k)]


def _assert_close(batched: dict, alone: dict, start: dict) -> None:
    assert set(batched) == set(alone)
    assert max(float(np.abs(batched[k] - alone[k]).max()) for k in alone) < ABS_TOL
    diff = np.sqrt(sum(float(np.sum((batched[k] - alone[k]) ** 2)) for k in alone))
    step = np.sqrt(sum(float(np.sum((alone[k] - start[k]) ** 2)) for k in alone))
    assert step > 0 and diff / step < REL_TOL  # the adapters moved, and the same way


@pytest.mark.parametrize("trainer", ["lora_backprop", "zeroqat", "fedspine_prune"])
def test_a_k_device_call_gives_the_one_device_results(fast_overrides, trainer):
    from client.runtime import get_runtime
    from client.trainers import get_trainer
    from client.trainers.base import run_tasks
    from zeroqat import upload
    from zeroqat.spsa import step_seeds

    runtime = get_runtime(_plain(fast_overrides))
    tasks = _tasks(runtime, trainer)
    batched = run_tasks(get_trainer(trainer), runtime, tasks)
    alone = [run_tasks(get_trainer(trainer), runtime, [t])[0] for t in tasks]
    if trainer != "fedspine_prune":
        assert [r.metrics["batched_devices"] for r in batched] == [K] * K  # really one batched call
    for task, b, a in zip(tasks, batched, alone):
        if trainer == "fedspine_prune":  # its own sub-model per device: nothing may leak from one to the next
            assert b.metrics["prune_steps"] >= 1
            for ours, theirs in ((b.adapter, a.adapter), (b.reference, a.reference), (b.structure, a.structure)):
                assert set(ours) == set(theirs) and all(np.array_equal(ours[k], theirs[k]) for k in theirs)
            continue
        _assert_close(b.adapter, a.adapter, task.received)
        assert b.metrics["train_loss"] == pytest.approx(a.metrics["train_loss"], rel=1e-5)
        if trainer == "zeroqat":  # the batched seed upload is the device's own, and the server's replay verifies
            cfg = runtime.settings.zeroqat
            expected = step_seeds(task.work.seed, task.work.local_steps, cfg.perturbations)
            upload.check_upload(b.upload, expected, cfg.grad_clip)
            assert np.array_equal(b.upload[upload.SEEDS], a.upload[upload.SEEDS])
            replayed = upload.replay_adapter(task.received, b.upload, cfg.lr, cfg.lr_schedule)
            assert all(np.array_equal(replayed[k], b.adapter[k]) for k in b.adapter)  # bit for bit


def _messages(runtime, num_nodes: int):
    """One round's messages: 4 backprop and 3 ZeroQAT train messages, 4 evaluate messages (one global adapter)."""
    from flwr.app import Message, MessageType

    from protocol.messages import to_array_record, work_message_content
    from protocol.work import Work

    received = to_array_record(_received(runtime, 4))
    out = []
    for kind, trainer, devices in ((MessageType.TRAIN, "lora_backprop", range(4)),
                                   (MessageType.TRAIN, "zeroqat", range(4, 7)),
                                   (MessageType.EVALUATE, "lora_backprop", range(0, 8, 2))):
        for i in devices:
            work = Work(server_round=1, device_index=i, trainer=trainer, local_steps=3, batch_size=4, lr=2e-3, rank=4,
                        seed=5 + i)
            out.append(Message(work_message_content(received, work), dst_node_id=i + 1, message_type=kind,
                               group_id="1"))
    return out


def test_plain_and_fast_engines_give_the_same_replies(fast_overrides):
    from flwr.app import MessageType

    from client.runtime import get_runtime
    from protocol.messages import METRICS, Update
    from simulations.inprocess import deliver, ensure_task_identity, local_replies

    ensure_task_identity()
    plain = _plain(fast_overrides)
    fast = _plain(fast_overrides, "simulation.cohort_batching=true")
    runtime = get_runtime(plain)
    messages = _messages(runtime, 8)
    one_by_one = [deliver(plain, m, 8) for m in messages]
    together = local_replies(fast, messages, 8)
    for msg, a, b in zip(messages, one_by_one, together):
        assert not a.has_error() and not b.has_error(), (a.error if a.has_error() else b.error)
        if msg.metadata.message_type == MessageType.EVALUATE:
            ma, mb = a.content[METRICS], b.content[METRICS]
            assert ma["num-examples"] == mb["num-examples"] > 0
            assert mb["eval_loss"] == pytest.approx(ma["eval_loss"], rel=1e-5)
            assert mb["eval_accuracy"] == pytest.approx(ma["eval_accuracy"], abs=1e-3)
            continue
        ua, ub = Update.from_message(a), Update.from_message(b)
        assert ub.metrics["batched_devices"] >= 2 and "batched_devices" not in ua.metrics
        assert ub.metrics["train_loss"] == pytest.approx(ua.metrics["train_loss"], rel=1e-5)
        if "zo.seeds" in ua.delta:  # seed uploads: the same seeds, projected gradients within the tolerance
            assert np.array_equal(ua.delta["zo.seeds"], ub.delta["zo.seeds"])
            assert np.allclose(ub.delta["zo.grads"], ua.delta["zo.grads"], rtol=REL_TOL, atol=ABS_TOL)
        else:
            zero = {k: np.zeros_like(v) for k, v in ua.delta.items()}
            _assert_close(ub.delta, ua.delta, zero)
