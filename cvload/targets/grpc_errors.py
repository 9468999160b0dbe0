"""What the gRPC targets share: the channel options, and which error kind a failed call's status is.

One table for every gRPC target (Triton's ``ModelInfer``/``ModelStreamInfer``, CosyVoice's ``Inference``), so
the same status counts the same way whichever API was measured.
"""

from __future__ import annotations

import grpc

from cvload.results.records import ERR_CONNECTION, ERR_REJECTED, ERR_SERVER, ERR_TIMEOUT

# Prompts and whole offline waveforms exceed gRPC's 4 MB default message size.
CHANNEL_OPTIONS = [
    ("grpc.max_send_message_length", -1),
    ("grpc.max_receive_message_length", -1),
]

# The statuses that say how a call failed rather than that the server refused its work: lost (the server went
# away or was never there), out of time (our deadline), or refused for capacity (a --max_conc or queue limit).
KINDS = {
    grpc.StatusCode.UNAVAILABLE: ERR_CONNECTION,
    grpc.StatusCode.DEADLINE_EXCEEDED: ERR_TIMEOUT,
    grpc.StatusCode.RESOURCE_EXHAUSTED: ERR_REJECTED,
}
# Transport statuses: the server cannot be reached (an open() turns these into "cannot reach" errors).
TRANSPORT_CODES = (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)


def error_kind(code: grpc.StatusCode | None, default: str = ERR_SERVER) -> str:
    """The ``cvload.results.records`` error kind of a failed call's status; ``default`` for every other status: the
    server's error for one call, ``connection`` for a shared stream (whatever broke it broke every request on
    it)."""
    return KINDS.get(code, default) if code is not None else default
