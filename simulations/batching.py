"""The in-process engine's batching (``simulation=fast``): a round's messages grouped so that devices sharing a
base and a shape of work are handed to their trainer together, K at a time (client/multi_adapter.py).

Only grouping lives here: the trainer, the evaluation and the replies are the ClientApp's own
(client/app.py, client/trainers/). Work that a trainer cannot batch (``Trainer.batch_key`` None), devices with an
injected fault, and groups of one are left to the ordinary handler.
"""

from __future__ import annotations

import time

from client.app import TrainMessage, decode_train, eval_reply, evaluate_devices, reply_for
from client.runtime import get_runtime
from client.trainers import TRAINERS, get_trainer
from client.trainers.base import run_tasks
from protocol.messages import ARRAYS, CONFIG, from_array_record
from protocol.work import Work


def chunks(members: list, cap: int) -> list[list]:
    """``members`` in runs of at most ``cap``; runs of one are dropped (the ordinary handler takes them)."""
    return [c for c in (members[lo:lo + cap] for lo in range(0, len(members), max(1, cap))) if len(c) >= 2]


def train_replies(plain_settings: dict, messages: list, contexts: list) -> dict[int, object]:
    """Replies (by position in ``messages``) for the train messages that can be batched."""
    runtime = get_runtime(plain_settings)
    s = runtime.settings
    groups: dict[tuple, list[int]] = {}
    decoded: dict[int, TrainMessage] = {}
    for i, (msg, context) in enumerate(zip(messages, contexts)):
        d = decode_train(runtime, plain_settings, msg, context)
        if d.fault or d.task.structure or d.trainer not in TRAINERS:  # an unknown trainer: the handler's error
            continue
        key = get_trainer(d.trainer).batch_key(d.task.work, s)
        if key is None:
            continue
        decoded[i] = d
        groups.setdefault((d.trainer, *key), []).append(i)
    replies: dict[int, object] = {}
    for (trainer, *_), members in groups.items():
        for chunk in chunks(members, s.simulation.max_batched_devices):
            started = time.perf_counter()
            results = run_tasks(get_trainer(trainer), runtime, [decoded[i].task for i in chunk])
            handler_s = (time.perf_counter() - started) / len(chunk)
            for i, result in zip(chunk, results):
                d = decoded[i]
                replies[i] = reply_for(messages[i], d.task.work, d.task.received, result, None,
                                       {"handler_s": handler_s + d.decode_s, "decode_s": d.decode_s})
    return replies


def evaluate_replies(plain_settings: dict, messages: list) -> dict[int, object]:
    """Federated evaluation of devices that evaluate the same global adapter at the same rank and batch size:
    one adapter load and larger forwards over all their test windows; each device's own loss and accuracy."""
    runtime = get_runtime(plain_settings)
    groups: dict[tuple, list[int]] = {}
    for i, msg in enumerate(messages):
        work = Work.from_config(msg.content[CONFIG])
        groups.setdefault((id(msg.content[ARRAYS]), work.rank, work.batch_size), []).append(i)
    replies: dict[int, object] = {}
    for members in groups.values():
        if len(members) < 2:
            continue
        start = time.perf_counter()
        works = [Work.from_config(messages[i].content[CONFIG]) for i in members]
        scores = evaluate_devices(runtime, from_array_record(messages[members[0]].content[ARRAYS]), works)
        elapsed = (time.perf_counter() - start) / len(members)
        for i, work, score in zip(members, works, scores):
            replies[i] = eval_reply(messages[i], work, score, elapsed)
    return replies
