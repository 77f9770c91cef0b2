"""What the two client mods share (``compression_mod``, ``secagg_mod``): the message kinds
they act on, the error reply that refuses a message, and numpy arrays out of records."""

from __future__ import annotations

from logging import ERROR

import numpy as np
from flwr.app import Array, Error, Message
from flwr.common.constant import ErrorCode, SType
from flwr.supercore import log


def is_train(msg: Message) -> bool:
    """Whether ``msg`` is a train message (``train`` or ``train.<action>``)."""
    message_type = msg.metadata.message_type
    return message_type == "train" or message_type.startswith("train.")


def is_evaluate(msg: Message) -> bool:
    """Whether ``msg`` is an evaluate message (``evaluate`` or ``evaluate.<action>``)."""
    message_type = msg.metadata.message_type
    return message_type == "evaluate" or message_type.startswith("evaluate.")


def error_reply(msg: Message, mod: str, reason: str) -> Message:
    """The reply of mod ``mod`` refusing ``msg`` (logged; MOD_FAILED_PRECONDITION)."""
    log(ERROR, "%s: %s", mod, reason)
    return Message(Error(code=ErrorCode.MOD_FAILED_PRECONDITION, reason=f"{mod}: {reason}"),
                   reply_to=msg)


def numpy_array(array: Array, key: str, where: str, error: type[Exception],
                purpose: str) -> np.ndarray:
    """``array`` as numpy; ``error`` when it is not a numpy array (``where``: which message
    it came in, ``purpose``: what the mod does with it, for the message)."""
    if array.stype != SType.NUMPY:
        raise error(f"array '{key}' of the {where} has stype {array.stype!r}; only "
                    f"{SType.NUMPY!r} arrays can be {purpose}")
    return array.numpy()
