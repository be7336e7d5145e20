"""A Flower ``Grid`` that hands each message straight to the ClientApp's handlers in this process.

For benchmarks of populations (1,000+ simulated users) on a laptop-sized CPU budget: the same ServerApp code
(``server.federation.run_server``, strategies, mechanisms, MLflow tracking) and the same client handlers
(``client.app.handle_*``) as the Ray simulation, minus Ray's process pool and message transport. Only the
devices a strategy sends work to compute anything. Not a substitute for ``simulations.launch`` in tests of
the runtime itself.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable

from flwr.app import Context, Message, MessageType, RecordDict
from flwr.serverapp import Grid

from client.app import handle_evaluate, handle_query, handle_train

logger = logging.getLogger(__name__)


def _error_reply(msg: Message, err: Exception) -> Message:
    from flwr.app import Error

    return Message(Error(code=0, reason=f"{type(err).__name__}: {err}"), reply_to=msg)

def ensure_task_identity() -> None:
    """Messages take run/task/node ids from the process's task identity, which Flower's engine sets in a
    ServerApp process; outside one (this grid, tests) it is set to 0 once."""
    from flwr.supercore.task_identity import TaskIdentity

    for attr in ("run_id", "task_id", "node_id"):
        if getattr(TaskIdentity, f"_{attr}") is None:
            setattr(TaskIdentity, attr, 0)


HANDLERS = {MessageType.QUERY: handle_query, MessageType.TRAIN: handle_train, MessageType.EVALUATE: handle_evaluate}


def node_context(node: int, num_nodes: int) -> Context:
    """The Context a SuperNode gives node ``node`` (1..N): partition-id node-1."""
    return Context(run_id=0, node_id=node, node_config={"partition-id": node - 1, "num-partitions": num_nodes},
                   state=RecordDict(), run_config={})


def deliver(plain: dict, msg: Message, num_nodes: int) -> Message:
    try:
        return HANDLERS[msg.metadata.message_type](plain, msg, node_context(msg.metadata.dst_node_id, num_nodes))
    except Exception as err:  # a failing device is a failed reply, as in the real engine
        return _error_reply(msg, err)


def batched_replies(plain: dict, messages: list[Message], num_nodes: int) -> dict[int, Message]:
    """Replies computed for several devices at once (``simulation.cohort_batching``, simulations/batching.py)."""
    if not (plain.get("simulation") or {}).get("cohort_batching"):
        return {}
    from simulations.batching import evaluate_replies, train_replies

    out: dict[int, Message] = {}
    def train(ms):
        return train_replies(plain, ms, [node_context(m.metadata.dst_node_id, num_nodes) for m in ms])

    for kind, batch in ((MessageType.TRAIN, train), (MessageType.EVALUATE, lambda ms: evaluate_replies(plain, ms))):
        picked = [i for i, m in enumerate(messages) if m.metadata.message_type == kind]
        if len(picked) < 2:
            continue
        try:
            replies = batch([messages[i] for i in picked])
        except Exception:  # noqa: BLE001 -- the devices are then run one by one, as without batching
            logger.warning("batched %s failed; running its devices one by one", kind, exc_info=True)
            continue
        out.update({picked[j]: reply for j, reply in replies.items()})
    return out


def local_replies(plain: dict, messages: list[Message], num_nodes: int) -> list[Message]:
    """Every message's reply, computed in this process (batched where it can be, else one by one)."""
    batched = batched_replies(plain, messages, num_nodes)
    return [batched[i] if i in batched else deliver(plain, m, num_nodes) for i, m in enumerate(messages)]


def _worker_init(threads: int) -> None:
    import torch

    torch.set_num_threads(threads)
    ensure_task_identity()


def split_for_workers(messages: list[Message], workers: int) -> list[list[int]]:
    """Positions of the messages each worker gets: every kind of work (message type and trainer) dealt out in
    turn, so that each worker batches a fair share of each group."""
    from protocol.messages import CONFIG

    kinds: dict[tuple, list[int]] = {}
    for i, m in enumerate(messages):
        trainer = m.content[CONFIG].get("trainer", "") if CONFIG in m.content else ""
        kinds.setdefault((m.metadata.message_type, trainer), []).append(i)
    parts: list[list[int]] = [[] for _ in range(workers)]
    turn = 0
    for members in kinds.values():
        for i in members:
            parts[turn % workers].append(i)
            turn += 1
    return [sorted(p) for p in parts if p]


class InProcessGrid(Grid):
    """Node ids 1..N; node i is the device with partition-id i-1.

    ``simulation.workers`` > 1: a round's messages are dealt out to that many long-lived worker processes
    (each with cores / workers threads; each loads the base model once), which run the same handlers. On a
    CPU, two single-threaded processes get more out of two cores than one two-threaded process, whose many
    small element-wise operations scale poorly across threads (docs/benchmarks/throughput.md).
    """

    def __init__(self, plain_settings: dict, num_nodes: int) -> None:
        self.plain = plain_settings
        ensure_task_identity()
        self.nodes = list(range(1, num_nodes + 1))
        self._run = None
        self._inbox: dict[str, Message] = {}
        self.workers = int((plain_settings.get("simulation") or {}).get("workers", 1) or 1)
        self._pool = None

    def __enter__(self) -> InProcessGrid:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        """Stop the worker processes (a no-op with one worker)."""
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None

    def set_run(self, run) -> None:
        self._run = run

    @property
    def run(self):
        return self._run

    def create_message(self, content: RecordDict, message_type: str, dst_node_id: int, group_id: str,
                       ttl: float | None = None) -> Message:
        return Message(content, dst_node_id=dst_node_id, message_type=message_type, group_id=group_id, ttl=ttl)

    def get_node_ids(self) -> Iterable[int]:
        return list(self.nodes)

    def _pool_executor(self):
        if self._pool is None:
            import multiprocessing
            import os
            from concurrent.futures import ProcessPoolExecutor

            threads = max(1, (os.cpu_count() or 1) // self.workers)
            self._pool = ProcessPoolExecutor(self.workers, mp_context=multiprocessing.get_context("spawn"),
                                             initializer=_worker_init, initargs=(threads,))
        return self._pool

    def _replies(self, messages: Iterable[Message]) -> list[Message]:
        messages = list(messages)
        if self.workers <= 1 or len(messages) < 2:
            return local_replies(self.plain, messages, len(self.nodes))
        from concurrent.futures.process import BrokenProcessPool

        parts = split_for_workers(messages, self.workers)
        pool = self._pool_executor()
        futures = [pool.submit(local_replies, self.plain, [messages[i] for i in part], len(self.nodes))
                   for part in parts]
        out: list[Message | None] = [None] * len(messages)
        for part, future in zip(parts, futures):
            try:
                replies = future.result()
            except BrokenProcessPool as err:  # a worker died (e.g. out of memory): its devices fail this round
                self.close()
                replies = [_error_reply(messages[i], err) for i in part]
            for i, reply in zip(part, replies):
                out[i] = reply
        return out

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
        ids = []
        for i, reply in enumerate(self._replies(messages)):
            key = f"{len(self._inbox)}-{i}"
            self._inbox[key] = reply
            ids.append(key)
        return ids

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        return [self._inbox.pop(i) for i in message_ids if i in self._inbox]

    def send_and_receive(self, messages: Iterable[Message], *, timeout: float | None = None) -> Iterable[Message]:
        return self._replies(messages)
