"""An in-process Flower ``Grid``: the real ServerApp strategy and ClientApp handlers, no Ray, one process.

For benchmarks on a machine too small for a Ray fleet: messages go straight to ``client.app``'s handlers
(query/train/evaluate) with a ``Context`` whose ``partition-id`` is the device index, sequentially. The
simulated clock is unaffected (it scales each reply's measured compute, not the host's wall time).
"""

from __future__ import annotations

from collections.abc import Iterable

from flwr.app import Context, Message, MessageType, RecordDict
from flwr.serverapp import Grid
from flwr.supercore.task_identity import TaskIdentity

from client.app import handle_evaluate, handle_query, handle_train

_HANDLERS = {MessageType.QUERY: handle_query, MessageType.TRAIN: handle_train,
             MessageType.EVALUATE: handle_evaluate}


class InProcessGrid(Grid):
    def __init__(self, plain_settings: dict, num_nodes: int) -> None:
        self.plain = plain_settings
        self.node_ids = list(range(1, num_nodes + 1))  # node id = partition id + 1
        # Messages take their run/node identity from the process, as a SuperLink's ServerApp process sets it
        TaskIdentity.task_id, TaskIdentity.run_id, TaskIdentity.node_id = 1, 1, 0

    def set_run(self, run) -> None:  # pragma: no cover - nothing to set up in-process
        self._run = run

    @property
    def run(self):
        return getattr(self, "_run", None)

    def create_message(self, content: RecordDict, message_type: str, dst_node_id: int, group_id: str,
                       ttl: float | None = None) -> Message:
        return Message(content, dst_node_id=dst_node_id, message_type=message_type, group_id=group_id)

    def get_node_ids(self) -> Iterable[int]:
        return list(self.node_ids)

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
        raise NotImplementedError("use send_and_receive")

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        raise NotImplementedError("use send_and_receive")

    def send_and_receive(self, messages: Iterable[Message], *, timeout: float | None = None) -> Iterable[Message]:
        replies = []
        for msg in messages:
            node = msg.metadata.dst_node_id
            context = Context(run_id=0, node_id=node, node_config={"partition-id": node - 1}, state=RecordDict(),
                              run_config={})
            replies.append(_HANDLERS[msg.metadata.message_type](self.plain, msg, context))
        return replies
