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


class InProcessGrid(Grid):
    """Node ids 1..N; node i is the device with partition-id i-1."""

    def __init__(self, plain_settings: dict, num_nodes: int) -> None:
        self.plain = plain_settings
        ensure_task_identity()
        self.nodes = list(range(1, num_nodes + 1))
        self._run = None
        self._inbox: dict[str, Message] = {}

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

    def _context(self, msg: Message) -> Context:
        node = msg.metadata.dst_node_id
        return Context(run_id=0, node_id=node, node_config={"partition-id": node - 1,
                       "num-partitions": len(self.nodes)}, state=RecordDict(), run_config={})

    def _deliver(self, msg: Message) -> Message:
        try:
            return HANDLERS[msg.metadata.message_type](self.plain, msg, self._context(msg))
        except Exception as err:  # a failing device is a failed reply, as in the real engine
            return _error_reply(msg, err)

    def _batched(self, messages: list[Message]) -> dict[int, Message]:
        """Replies computed for several devices at once (``simulation.cohort_batching``, client/cohort.py)."""
        if not (self.plain.get("simulation") or {}).get("cohort_batching"):
            return {}
        from client.cohort import evaluate_replies, train_replies

        out: dict[int, Message] = {}
        def train(ms):
            return train_replies(self.plain, ms, [self._context(m) for m in ms])

        for kind, batch in ((MessageType.TRAIN, train),
                            (MessageType.EVALUATE, lambda ms: evaluate_replies(self.plain, ms))):
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

    def _replies(self, messages: Iterable[Message]) -> list[Message]:
        messages = list(messages)
        batched = self._batched(messages)
        return [batched[i] if i in batched else self._deliver(m) for i, m in enumerate(messages)]

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
