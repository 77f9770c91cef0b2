"""``LocalGrid``: run a ServerApp strategy against a ClientApp in one process, no Ray.

Every message crosses a faithful copy of the transport: it is deflated into Flower's
inflatable objects and inflated again on the other side, exactly as the SuperLink and
SuperNodes move it, so the server sees what a real federation delivers. Meant for tests,
benchmarks and quick experiments; the Simulation and Deployment Engines remain the way to
run real federations.

>>> grid = LocalGrid(client_app, num_nodes=4)
>>> result = strategy.start(grid, initial_arrays, num_rounds=3)
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterable
from typing import cast

from flwr.app import Context, Message, RecordDict
from flwr.clientapp import ClientApp
from flwr.common.constant import SUPERLINK_NODE_ID
from flwr.serverapp import Grid
from flwr.supercore.inflatable.inflatable_object import get_all_nested_objects
from flwr.supercore.inflatable.inflatable_utils import inflate_object_from_contents
from flwr.supercore.run import Run
from flwr.supercore.task_identity import TaskIdentity

ReplyHook = Callable[[Message], Message]


def transport(msg: Message) -> Message:
    """A copy of ``msg`` as the receiving side inflates it (message id set)."""
    objects = get_all_nested_objects(msg)
    root = msg.object_id
    contents = {object_id: obj.deflate() for object_id, obj in objects.items()}
    out = cast(Message, inflate_object_from_contents(root, contents))
    out.metadata.__dict__["_message_id"] = root
    return out


class LocalGrid(Grid):
    """A Grid whose nodes run ``client_app`` in this process.

    Parameters
    ----------
    client_app : ClientApp
        The app every node runs (mods included).
    num_nodes : int
        Number of nodes; node ``i`` gets ``node_config = {"partition-id": i,
        "num-partitions": num_nodes}``.
    run_config : dict, optional
        The run config every node's Context carries.
    seed : int
        Seed of the node ids.
    reply_hook : callable, optional
        Applied to every reply before it goes back (e.g. to corrupt it in a test).
    """

    def __init__(self, client_app: ClientApp, num_nodes: int,
                 run_config: dict | None = None, seed: int = 0,
                 reply_hook: ReplyHook | None = None, run_id: int = 1):
        rng = random.Random(seed)
        self.client_app = client_app
        self.node_ids = [rng.randrange(2, 2**63) for _ in range(num_nodes)]
        self.contexts = {
            nid: Context(run_id=run_id, node_id=nid,
                         node_config={"partition-id": i, "num-partitions": num_nodes},
                         state=RecordDict(), run_config=dict(run_config or {}))
            for i, nid in enumerate(self.node_ids)
        }
        self.reply_hook = reply_hook
        self._run = Run.create_empty(run_id)
        self._replies: dict[str, Message] = {}
        TaskIdentity.task_id = 1
        TaskIdentity.run_id = run_id
        TaskIdentity.node_id = SUPERLINK_NODE_ID

    def set_run(self, run: Run) -> None:
        self._run = run

    @property
    def run(self) -> Run:
        return self._run

    def create_message(self, content: RecordDict, message_type: str, dst_node_id: int,
                       group_id: str, ttl: float | None = None) -> Message:
        return Message(content, dst_node_id, message_type, ttl=ttl, group_id=group_id)

    def get_node_ids(self) -> Iterable[int]:
        return list(self.node_ids)

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
        ids = []
        for msg in messages:
            received = transport(msg)
            ids.append(received.metadata.message_id)
            reply = self.client_app(received, self.contexts[received.metadata.dst_node_id])
            if self.reply_hook is not None:
                reply = self.reply_hook(reply)
            self._replies[received.metadata.message_id] = transport(reply)
        return ids

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        return [self._replies.pop(i) for i in message_ids if i in self._replies]

    def send_and_receive(self, messages: Iterable[Message], *,
                         timeout: float | None = None) -> Iterable[Message]:
        return self.pull_messages(list(self.push_messages(messages)))
