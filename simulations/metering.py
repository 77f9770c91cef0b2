"""Metering: bytes of both directions as transported, and compression CPU seconds, per round.

Bytes (:class:`MeteredGrid`): every Message that passes through the ServerApp's Grid is
sized as Flower transports it -- one ``PushObjectRequest`` per object of the message tree
(``strategies.message_wire_bytes``) -- so the downlink counts each train message to each
sampled client (global arrays, config, envelopes) and the uplink each reply (blob, scales,
record envelopes, metrics). Both are kept per round and per node, so the link model
(:mod:`simulations.link`) can time the slowest client.

CPU seconds, measured where the work happens and documented here because "compression
cost" is easy to overstate or hide:

- client (:func:`metering_mod`, a client mod placed *outside* ``compression_mod``): the
  process CPU seconds (``time.process_time``: every thread of the client's process,
  fedhd's kernel threads included) of the whole train call, and, reported by the train
  handler itself, those of local training alone. ``compress`` = call - training: what
  ``compression_mod`` spends keeping the received model and encoding the update. The two
  figures travel back as metrics of the reply; :class:`MeteredGrid` takes them out of the
  reply before sizing it and before the strategy sees it, so bytes and aggregated metrics
  are those of an uninstrumented app.
- server (:class:`MeteredFedAvg`): process CPU and wall seconds of ``aggregate_train``
  (validate, decode and sum every reply, rebuild the model). The uncompressed baseline
  pays this too (for plain averaging), so the compression overhead is the difference.
  Flower's and Ray's own threads in the driver add a little background CPU.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from flwr.app import ArrayRecord, Context, Message, MessageType, MetricRecord, RecordDict
from flwr.clientapp.typing import ClientAppCallable
from flwr.serverapp import Grid

from strategies import CompressedFedAvg, message_wire_bytes

#: Reply metrics of the instrumentation (removed from the reply at the Grid).
KEY_TRAIN_CPU = "sim.train-cpu-seconds"  # written by the train handler
KEY_CALL_CPU = "sim.call-cpu-seconds"  # written by metering_mod: the whole train call
INSTRUMENTATION = (KEY_TRAIN_CPU, KEY_CALL_CPU)


# --------------------------------------------------------------------------------------
# Client side


def metering_mod(msg: Message, context: Context, call_next: ClientAppCallable) -> Message:
    """Client mod: CPU seconds of the whole train call into the reply's MetricRecord.

    Use it outermost, ``ClientApp(mods=[metering_mod, compression_mod])``, so that it
    measures the compression mod together with the training it wraps.
    """
    if msg.metadata.message_type != MessageType.TRAIN:
        return call_next(msg, context)
    cpu = time.process_time()
    reply = call_next(msg, context)
    cpu = time.process_time() - cpu
    if not reply.has_error():
        for record in reply.content.metric_records.values():
            if KEY_TRAIN_CPU in record:
                record[KEY_CALL_CPU] = cpu
                break
    return reply


# --------------------------------------------------------------------------------------
# Server side: bytes


def wire_bytes(msg: Message, cache: dict[str, int] | None = None) -> int:
    """Bytes of ``msg`` as its sender pushes it: one ``PushObjectRequest`` per object of the
    message tree (``strategies.message_wire_bytes``), with the ``delivered_at`` stamp the
    SuperLink adds on delivery left out."""
    metadata = copy.copy(msg.metadata)
    metadata.__dict__["_delivered_at"] = ""
    body: dict[str, Any] = ({"error": msg.error} if msg.has_error()
                            else {"content": msg.content})
    sent: Message = Message(metadata=metadata, **body)  # type: ignore[call-overload]
    return message_wire_bytes(sent, cache)


@dataclass
class RoundTraffic:
    """What crossed the Grid in one round, per node id."""

    downlink: dict[int, int] = field(default_factory=dict)  # bytes sent to each node
    uplink: dict[int, int] = field(default_factory=dict)  # bytes of each node's replies
    client_cpu: dict[int, float] = field(default_factory=dict)  # whole train call
    train_cpu: dict[int, float] = field(default_factory=dict)  # local training alone

    @property
    def downlink_bytes(self) -> int:
        return sum(self.downlink.values())

    @property
    def uplink_bytes(self) -> int:
        return sum(self.uplink.values())

    @property
    def compress_cpu(self) -> dict[int, float]:
        """Client CPU seconds of compression: the train call minus local training."""
        return {n: max(cpu - self.train_cpu.get(n, 0.0), 0.0)
                for n, cpu in self.client_cpu.items()}


class MeteredGrid(Grid):
    """A Grid that forwards everything to ``inner`` and meters every message.

    ``downlink`` / ``uplink``: bytes of the messages the ServerApp sends / of the replies it
    gets (error replies included), cumulative until :meth:`reset`. :meth:`take_round`
    returns the traffic since its last call, per node: call it once at the end of each
    round.
    """

    def __init__(self, inner: Grid):
        self.inner = inner
        self.uplink = 0
        self.downlink = 0
        self.partition_of: dict[int, int] = {}  # node id -> partition id
        self._round = RoundTraffic()

    def map_partitions(self, expected: int, timeout: float = 300.0,
                       content: RecordDict | None = None) -> None:
        """Ask every node for its partition id (one unmetered query message each, carrying
        ``content``), so that :meth:`get_node_ids` lists the nodes in partition order. Node
        ids are random in each simulation; the order makes seeded sampling pick the same
        shards every run."""
        deadline = time.monotonic() + timeout
        while len(ids := list(self.inner.get_node_ids())) < expected:
            if time.monotonic() > deadline:
                raise TimeoutError(f"{len(ids)} of {expected} nodes connected")
            time.sleep(0.5)
        messages = [Message(RecordDict(dict((content or RecordDict()).items())), node_id,
                            MessageType.QUERY, group_id="fedhd-partition-map")
                    for node_id in ids]
        for reply in self.inner.send_and_receive(messages, timeout=timeout):
            if not reply.has_error() and "partition" in reply.content:
                record = reply.content["partition"]
                pid = record.get("partition-id") if isinstance(record, MetricRecord) else None
                if isinstance(pid, int):
                    self.partition_of[reply.metadata.src_node_id] = pid

    def reset(self) -> None:
        self.uplink = self.downlink = 0
        self._round = RoundTraffic()

    def take_round(self) -> RoundTraffic:
        """The traffic since the last call (or :meth:`reset`), and start a new round."""
        traffic, self._round = self._round, RoundTraffic()
        return traffic

    def set_run(self, run: Any) -> None:
        self.inner.set_run(run)

    @property
    def run(self) -> Any:
        return self.inner.run

    def create_message(self, content: RecordDict, message_type: str, dst_node_id: int,
                       group_id: str, ttl: float | None = None) -> Message:
        return self.inner.create_message(content, message_type, dst_node_id, group_id, ttl)

    def get_node_ids(self) -> Iterable[int]:
        """Node ids in partition order (see :meth:`map_partitions`), then by id."""
        unknown = 1 << 62
        return sorted(self.inner.get_node_ids(),
                      key=lambda n: (self.partition_of.get(n, unknown), n))

    def _sent(self, messages: list[Message]) -> None:
        cache: dict[str, int] = {}  # the global arrays go to every node: deflate them once
        for m in messages:
            n = wire_bytes(m, cache)
            self.downlink += n
            node = m.metadata.dst_node_id
            self._round.downlink[node] = self._round.downlink.get(node, 0) + n

    def _received(self, replies: list[Message]) -> None:
        for m in replies:
            self._take_instrumentation(m)
            n = wire_bytes(m)
            self.uplink += n
            node = m.metadata.src_node_id
            self._round.uplink[node] = self._round.uplink.get(node, 0) + n

    def _take_instrumentation(self, reply: Message) -> None:
        if reply.has_error():
            return
        node = reply.metadata.src_node_id
        for record in reply.content.metric_records.values():
            for key, into in ((KEY_CALL_CPU, self._round.client_cpu),
                              (KEY_TRAIN_CPU, self._round.train_cpu)):
                if key in record:
                    value = record[key]
                    into[node] = into.get(node, 0.0) + float(value)  # type: ignore[arg-type]
                    del record[key]

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
        messages = list(messages)
        self._sent(messages)
        return self.inner.push_messages(messages)

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        replies = list(self.inner.pull_messages(message_ids))
        self._received(replies)
        return replies

    def send_and_receive(self, messages: Iterable[Message], *,
                         timeout: float | None = None) -> Iterable[Message]:
        messages = list(messages)
        self._sent(messages)
        replies = list(self.inner.send_and_receive(messages, timeout=timeout))
        self._received(replies)
        return replies


# --------------------------------------------------------------------------------------
# Server side: aggregation time


class MeteredFedAvg(CompressedFedAvg):
    """``CompressedFedAvg`` that records the CPU and wall seconds of each ``aggregate_train``
    in :attr:`aggregate_seconds` (round -> (CPU seconds, wall seconds))."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.aggregate_seconds: dict[int, tuple[float, float]] = {}

    def aggregate_train(self, server_round: int, replies: Iterable[Message]
                        ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        replies = list(replies)
        cpu, wall = time.process_time(), time.perf_counter()
        out = super().aggregate_train(server_round, replies)
        self.aggregate_seconds[server_round] = (time.process_time() - cpu,
                                                time.perf_counter() - wall)
        return out
