"""Bytes a Flower message occupies on the wire, computed as the transport sends it.

Flower 1.42 sends a message as a tree of inflatable objects (Message, RecordDict, records,
Arrays, ArrayChunks), one ``PushObjectRequest`` per object. The wire size of a message is

    sum over get_all_nested_objects(msg) of
        PushObjectRequest(node, run_id, object_id, object_content=obj.deflate(),
                          session_id).ByteSize()

which is what ``message_wire_bytes`` returns (the session id is a 36-character UUID
string, as the SuperLink issues). It counts every object once, as
``get_all_nested_objects`` does; a SuperLink that already holds an identical object may
skip its push, so this is an upper bound on what a push really costs. gRPC/HTTP framing
and TLS records (a few bytes per request) are not counted.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator, MutableMapping
from typing import Any, cast

from flwr.app import Array, ArrayRecord, Message, Metadata, RecordDict
from flwr.proto.message_pb2 import PushObjectRequest  # pylint: disable=E0611
from flwr.proto.node_pb2 import Node  # pylint: disable=E0611
from flwr.supercore.inflatable.inflatable_object import (
    InflatableObject,
    get_all_nested_objects,
    no_object_id_recompute,
)

#: Length of the session id the SuperLink issues for a push (str(uuid4())).
SESSION_ID_CHARS = 36
_SESSION_ID = "0" * SESSION_ID_CHARS
_CONTENT_TAG_BYTES = 1  # field 4, wire type 2: one tag byte


def _varint_size(n: int) -> int:
    size = 1
    while n >= 0x80:
        n >>= 7
        size += 1
    return size


def push_request_bytes(object_id: str, content_len: int, node_id: int, run_id: int) -> int:
    """``PushObjectRequest(...).ByteSize()`` for one object of ``content_len`` bytes,
    computed without building a request that holds the content."""
    base = PushObjectRequest(
        node=Node(node_id=node_id), run_id=run_id, object_id=object_id,
        session_id=_SESSION_ID,
    ).ByteSize()
    if content_len == 0:
        return base
    return base + _CONTENT_TAG_BYTES + _varint_size(content_len) + content_len


_ID_IN_HEADER = 65  # one more child id in an object's header: 64 hex digits and a comma


def _every_object(object_id: str, obj: InflatableObject
                  ) -> Iterator[tuple[str, InflatableObject, int]]:
    """Post-order walk that repeats identical objects (equal arrays, equal chunks), with the
    extra header bytes the parent would need if they all differed. Array chunks are taken
    with the ids their Array cached, so the walk hashes no array data twice."""
    children: list[tuple[str, InflatableObject]]
    if isinstance(obj, (ArrayRecord, RecordDict)):
        children = [(child.object_id, child) for child in obj.values()]
    elif isinstance(obj, Array):
        children = list(obj.slice_array())
    else:
        children = list((obj.children or {}).items())
    for child_id, child in children:
        yield from _every_object(child_id, child)
    unique = len({child_id for child_id, _ in children})
    yield object_id, obj, _ID_IN_HEADER * (len(children) - unique)


def message_wire_bytes(
    msg: Message, content_len_cache: MutableMapping[str, int] | None = None,
    *, dedup: bool = True,
) -> int:
    """Total ``PushObjectRequest`` bytes of every object of ``msg``, as the node that sends
    it (``msg.metadata.src_node_id``) pushes them.

    ``content_len_cache`` maps object ids to deflated lengths; pass one dict for many
    messages that share objects (e.g. the same global arrays) to deflate each object once.
    ``dedup=False`` counts an object as often as it appears in the tree (e.g. two arrays
    with identical bytes): the size of a message whose arrays all differ.
    """
    node_id = msg.metadata.src_node_id
    run_id = msg.metadata.run_id
    cache = {} if content_len_cache is None else content_len_cache
    total = 0
    with no_object_id_recompute():
        objects = (((oid, obj, 0) for oid, obj in get_all_nested_objects(msg).items())
                   if dedup else _every_object(msg.object_id, msg))
        for object_id, obj, extra in objects:
            n = cache.get(object_id)
            if n is None:
                n = len(obj.deflate())
                cache[object_id] = n
            total += push_request_bytes(object_id, n + extra, node_id, run_id)
    return total


def message_wire_bytes_reference(msg: Message) -> int:
    """The same sum, building every real ``PushObjectRequest`` (slow; used by tests)."""
    node = Node(node_id=msg.metadata.src_node_id)
    total = 0
    with no_object_id_recompute():
        for object_id, obj in get_all_nested_objects(msg).items():
            total += PushObjectRequest(
                node=node, run_id=msg.metadata.run_id, object_id=object_id,
                object_content=obj.deflate(), session_id=_SESSION_ID,
            ).ByteSize()
    return total


def message_with_metadata(content: RecordDict, metadata: Metadata) -> Message:
    """A Message with the given metadata (the constructor's ``metadata`` argument, which
    Flower uses when it inflates messages, is left out of its typed overloads)."""
    factory: Any = Message
    return cast(Message, factory(content=content, metadata=metadata))


def as_sent(msg: Message) -> Message:
    """The message as its sender pushed it: same content (or error), and a copy of the
    metadata without the ``delivered_at`` stamp the SuperLink adds on delivery."""
    metadata = copy.copy(msg.metadata)
    metadata.delivered_at = ""
    factory: Any = Message
    if msg.has_error():
        return cast(Message, factory(error=msg.error, metadata=metadata))
    return message_with_metadata(msg.content, metadata)


def sent_wire_bytes(msg: Message, cache: MutableMapping[str, int] | None = None) -> int:
    """``message_wire_bytes`` of the message as its sender pushed it (``as_sent``)."""
    return message_wire_bytes(as_sent(msg), cache)
