"""The ClientApp: one device of the fleet. The same code runs in simulation and on a real SuperNode.

The device's index comes from ``partition-id`` in its node config (Flower sets it in simulation; a real
SuperNode passes it with ``--node-config``); its class, data and trainer follow from the fleet config.
"""

from __future__ import annotations

import resource
import time
from dataclasses import dataclass

import torch
from flwr.app import Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from client.faults import before_training, corrupt, injected_kind
from client.device_detect import detect_host, device_class_of, trainer_of
from client.runtime import get_runtime, host_gflops
from client.trainers import get_trainer
from client.trainers.base import DeviceTask, run_tasks
from models.evaluation import LMScore, evaluate_parts
from models.lora import load_adapter_arrays
from privacy.client_side import privatize_update
from protocol.messages import ARRAYS, CONFIG, METRICS, NUM_EXAMPLES, STRUCTURE, Update, Work, from_array_record


def _device_index(context: Context) -> int:
    return int(context.node_config["partition-id"])


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def handle_query(plain_settings: dict, msg: Message, context: Context) -> Message:
    """Tell the server which device of the fleet this node is."""
    index = _device_index(context)
    device_class_of(context.node_config, plain_settings["fleet"]["classes"], "")  # a wrong class fails here, early
    metrics = MetricRecord({"device-index": index, "host-gflops": host_gflops(), **detect_host().metrics()})
    return Message(RecordDict({METRICS: metrics}), reply_to=msg)


@dataclass
class TrainMessage:
    """A train message decoded: the device's task, the trainer that runs it, its injected fault (chaos runs)."""

    task: DeviceTask
    trainer: str
    fault: str | None
    decode_s: float


def decode_train(runtime, plain_settings: dict, msg: Message, context: Context) -> TrainMessage:
    started = time.perf_counter()
    work = Work.from_config(msg.content[CONFIG])
    fault = injected_kind(plain_settings, work.device_index)  # testing / chaos only (faults.inject)
    received = from_array_record(msg.content[ARRAYS])
    structure = from_array_record(msg.content[STRUCTURE]) if STRUCTURE in msg.content else {}  # FedSpine's masks
    s = runtime.settings  # the node may name its own class or trainer (--node-config); see client/device_detect.py
    trainer = trainer_of(context.node_config, s.client.trainer, s.fleet.classes,
                         runtime.devices[work.device_index].class_name, work.trainer)
    return TrainMessage(DeviceTask(work, received, structure), trainer, fault, time.perf_counter() - started)


def handle_train(plain_settings: dict, msg: Message, context: Context) -> Message:
    started = time.perf_counter()
    runtime = get_runtime(plain_settings)
    decoded = decode_train(runtime, plain_settings, msg, context)
    before_training(decoded.fault, decoded.task.work.device_index)
    (result,) = run_tasks(get_trainer(decoded.trainer), runtime, [decoded.task])
    return reply_for(msg, decoded.task.work, decoded.task.received, result, decoded.fault,
                     {"handler_s": time.perf_counter() - started, "decode_s": decoded.decode_s})


def reply_for(msg: Message, work: Work, received: dict, result, fault: str | None,
              timing: dict[str, float] | None = None) -> Message:
    """The train reply: the delta (or seed upload) of a finished local training, as an Update. ``timing``:
    the handler's host wall time (``handler_s``, training included) and message decoding (``decode_s``)."""
    if result.upload is not None:  # ZeroQAT seed upload: (seeds, projected gradients), replayed by the server
        delta = result.upload
    else:
        reference = received if result.reference is None else result.reference  # FedSpine: its sub-model's coords
        delta = {k: result.adapter[k] - reference[k] for k in reference}
        delta = privatize_update(delta, work)  # clip + local noise when the server asks (privacy.noise_placement=client)
    update = Update(
        device_index=work.device_index,
        server_round=work.server_round,
        delta=delta,
        num_examples=result.num_examples,
        metrics={**result.metrics, **(timing or {}), "host_gflops": host_gflops(), "peak_rss_mb": _peak_rss_mb(),
                 "torch_threads": float(torch.get_num_threads())},
        structure=result.structure,
        model_version=work.model_version,
    )
    return Message(corrupt(fault, update).to_content(), reply_to=msg)


EVAL_FORWARD_BATCHES = 8  # several devices evaluated at once: forwards of this many client batches


def evaluate_devices(runtime, adapter: dict, works: list[Work]) -> list[LMScore]:
    """Each device's score of ``adapter`` on its own test windows (``client.eval_batches`` batches). One device:
    the runtime's PEFT model, one batch per forward. Several: the adapter on the multi-adapter model and larger
    forwards over all their windows (logits of a forward stay small: memory traffic, not FLOPs)."""
    rank, batch_size = works[0].rank, works[0].batch_size
    n = runtime.settings.client.eval_batches * batch_size
    parts = [(d.test_inputs[:n], d.test_labels[:n]) for d in (runtime.device_data(w.device_index) for w in works)]
    with runtime.autocast():
        if len(works) == 1:
            model = runtime.adapter_model(rank)
            load_adapter_arrays(model, adapter)
            return evaluate_parts(model, parts, batch_size)
        from client.multi_adapter import dense_multi_lora

        holder = dense_multi_lora(runtime, rank).load([adapter], trainable=False)
        try:
            return evaluate_parts(holder.model, parts, EVAL_FORWARD_BATCHES * batch_size, use_cache=False)
        finally:
            holder.release()


def eval_reply(msg: Message, work: Work, score: LMScore, compute_s: float) -> Message:
    metrics = {
        NUM_EXAMPLES: score.tokens,
        "device-index": work.device_index,
        "eval_loss": score.loss,
        "eval_accuracy": score.accuracy,
        "compute_s": compute_s,
    }
    return Message(RecordDict({METRICS: MetricRecord(metrics)}), reply_to=msg)


def handle_evaluate(plain_settings: dict, msg: Message, context: Context) -> Message:
    runtime = get_runtime(plain_settings)
    work = Work.from_config(msg.content[CONFIG])
    start = time.perf_counter()
    (score,) = evaluate_devices(runtime, from_array_record(msg.content[ARRAYS]), [work])
    return eval_reply(msg, work, score, time.perf_counter() - start)


def build_client_app(plain_settings: dict) -> ClientApp:
    """A ClientApp bound to one run's settings (small and picklable: Ray ships it to every worker)."""
    app = ClientApp()

    @app.query()
    def query(msg: Message, context: Context) -> Message:
        return handle_query(plain_settings, msg, context)

    @app.train()
    def train(msg: Message, context: Context) -> Message:
        return handle_train(plain_settings, msg, context)

    @app.evaluate()
    def evaluate(msg: Message, context: Context) -> Message:
        return handle_evaluate(plain_settings, msg, context)

    return app


def _settings_from_run_config(context: Context) -> dict:
    from runconfig.load import compose
    from runconfig.plain import to_plain

    return to_plain(compose(str(context.run_config.get("overrides", "")).split()))


# `flwr run .` entry point ([tool.flwr.app.components] in pyproject.toml): settings from the run config.
app = ClientApp()


@app.query()
def _query(msg: Message, context: Context) -> Message:
    return handle_query(_settings_from_run_config(context), msg, context)


@app.train()
def _train(msg: Message, context: Context) -> Message:
    return handle_train(_settings_from_run_config(context), msg, context)


@app.evaluate()
def _evaluate(msg: Message, context: Context) -> Message:
    return handle_evaluate(_settings_from_run_config(context), msg, context)
