"""Protobuf messages as plain dicts shaped like Triton's HTTP JSON, so gRPC and HTTP targets report alike.

``json_format.MessageToDict`` writes 64-bit integers as strings (proto3 JSON mapping) and drops zero counts;
statistics are diffed before/after a run, so both would get in the way: integers stay integers, scalars are
always present, and an unset sub-message or oneof member is left out.
"""

from __future__ import annotations

import base64
from typing import Any

from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import Message


def _repeated(fd: FieldDescriptor) -> bool:
    flag = getattr(fd, "is_repeated", None)  # protobuf >= 5.29 (``label`` is deprecated there)
    if flag is not None:
        return bool(flag() if callable(flag) else flag)
    return bool(fd.label == FieldDescriptor.LABEL_REPEATED)  # pragma: no cover - older protobuf


def _value(fd: FieldDescriptor, value: Any) -> Any:
    if fd.message_type is not None:
        return message_to_dict(value)
    if fd.enum_type is not None:
        enum = fd.enum_type.values_by_number.get(value)
        return enum.name if enum is not None else value
    if isinstance(value, bytes):
        return base64.b64encode(value).decode("ascii")
    return value


def message_to_dict(msg: Message) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for fd in msg.DESCRIPTOR.fields:
        oneof = fd.containing_oneof
        if oneof is not None and msg.WhichOneof(oneof.name) != fd.name:
            continue
        value = getattr(msg, fd.name)
        if fd.message_type is not None and fd.message_type.GetOptions().map_entry:
            value_fd = fd.message_type.fields_by_name["value"]
            out[fd.name] = {key: _value(value_fd, item) for key, item in value.items()}
        elif _repeated(fd):
            out[fd.name] = [_value(fd, item) for item in value]
        elif fd.message_type is not None:
            if oneof is None and not msg.HasField(fd.name):
                continue
            out[fd.name] = message_to_dict(value)
        else:
            out[fd.name] = _value(fd, value)
    return out
