"""Which node is which device: node ids are random in a simulation, so each node is asked once (``query``)."""

from __future__ import annotations

import logging
import time

from flwr.app import Message, MessageType, RecordDict
from flwr.serverapp import Grid

from protocol.messages import METRICS

logger = logging.getLogger(__name__)


def discover_devices(grid: Grid, fleet_size: int, connect_timeout_s: float, timeout: float) -> dict[int, int]:
    """{device index: node id} of every node that answers; waits up to ``connect_timeout_s`` for the fleet's
    nodes to connect, then goes on with those that did."""
    deadline = time.monotonic() + connect_timeout_s
    while len(nodes := list(grid.get_node_ids())) < fleet_size and time.monotonic() < deadline:
        time.sleep(0.5)
    if len(nodes) < fleet_size:
        logger.warning(
            "fleet: %d of %d devices connected after %.0f s; going on with them (the federation has fewer "
            "SuperNodes than fleet.size: e.g. `flwr federation simulation-config ... --num-supernodes %d`)",
            len(nodes), fleet_size, connect_timeout_s, fleet_size)
    node_of_device: dict[int, int] = {}
    messages = [Message(RecordDict(), dst_node_id=n, message_type=MessageType.QUERY) for n in nodes]
    for reply in grid.send_and_receive(messages, timeout=timeout):
        if reply.has_error():
            logger.warning("node %s did not identify itself: %s", reply.metadata.src_node_id, reply.error.reason)
            continue
        index = int(reply.content[METRICS]["device-index"])
        if 0 <= index < fleet_size:
            node_of_device[index] = reply.metadata.src_node_id
    if not node_of_device:
        raise RuntimeError("no device of the fleet answered; is the ClientApp running?")
    logger.info("fleet: %d of %d devices connected", len(node_of_device), fleet_size)
    return node_of_device
