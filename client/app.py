"""The ClientApp: one device of the fleet. The same code runs in simulation and on a real SuperNode.

The device's index comes from ``partition-id`` in its node config (Flower sets it in simulation; a real
SuperNode passes it with ``--node-config``); its class, data and trainer follow from the fleet config.
"""

from __future__ import annotations

import resource
import time

import torch
from flwr.app import Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from client.faults import before_training, corrupt, injected_kind
from client.device_detect import detect_host, device_class_of, trainer_of
from client.runtime import get_runtime, host_gflops
from client.trainers import get_trainer
from models.evaluation import evaluate_lm
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


def handle_train(plain_settings: dict, msg: Message, context: Context) -> Message:
    started = time.perf_counter()
    runtime = get_runtime(plain_settings)
    work = Work.from_config(msg.content[CONFIG])
    fault = injected_kind(plain_settings, work.device_index)  # testing / chaos only (faults.inject)
    before_training(fault, work.device_index)
    received = from_array_record(msg.content[ARRAYS])
    decode_s = time.perf_counter() - started
    s = runtime.settings  # the node may name its own class or trainer (--node-config); see client/device_detect.py
    trainer = get_trainer(trainer_of(context.node_config, s.client.trainer, s.fleet.classes,
                                     runtime.devices[work.device_index].class_name, work.trainer))
    if hasattr(trainer, "train_pruned"):  # builds its own pruned sub-model from the base (FedSpine)
        structure = from_array_record(msg.content[STRUCTURE]) if STRUCTURE in msg.content else {}
        with runtime.autocast():
            result = trainer.train_pruned(runtime, received, structure, work)
    else:
        # A trainer may bring its own model (ZeroQAT: a quantized base); otherwise the runtime's float one.
        model = trainer.model_for(runtime, work) if hasattr(trainer, "model_for") else runtime.adapter_model(work.rank)
        load_adapter_arrays(model, received)
        with runtime.autocast():
            result = trainer.train(model, runtime.device_data(work.device_index).to_model(model), work)
    return reply_for(msg, work, received, result, fault, {"handler_s": time.perf_counter() - started,
                                                            "decode_s": decode_s})


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


def handle_evaluate(plain_settings: dict, msg: Message, context: Context) -> Message:
    runtime = get_runtime(plain_settings)
    work = Work.from_config(msg.content[CONFIG])
    model = runtime.adapter_model(work.rank)
    load_adapter_arrays(model, from_array_record(msg.content[ARRAYS]))
    data = runtime.device_data(work.device_index).to_model(model)
    n = runtime.settings.client.eval_batches * work.batch_size
    start = time.perf_counter()
    with runtime.autocast():
        score = evaluate_lm(model, data.test_inputs[:n], data.test_labels[:n], batch_size=work.batch_size)
    metrics = {
        NUM_EXAMPLES: score.tokens,
        "device-index": work.device_index,
        "eval_loss": score.loss,
        "eval_accuracy": score.accuracy,
        "compute_s": time.perf_counter() - start,
    }
    return Message(RecordDict({METRICS: MetricRecord(metrics)}), reply_to=msg)


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
