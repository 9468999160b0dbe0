"""The Triton targets' own request settings, typed and built from the run's settings like every API's options.

Triton's requests need nothing beyond model, mode and prompts today (TLS and headers reach every target through
``cvload.settings.transport``); a setting of Triton's targets alone (e.g. how many requests one gRPC stream carries)
belongs here, read once from the ``RunConfig`` in ``of``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from cvload.settings.config import RunConfig

# Requests one gRPC ModelStreamInfer stream carries before it is half-closed and the next opens (0: no bound).
# Streams shared without bound cost nothing over a stream per request at 1-256 streams on the H100 host, and a
# stream per request ~0.3-0.6 ms of first chunk and 1.4-1.7x the client CPU (benchmarks/stream_sharing.py,
# docs/production.md); --stream-per-request is the way through a proxy limiting a stream's body (docs/tls.md).
REQUESTS_PER_STREAM = 0


@dataclass(frozen=True)
class TritonOptions:
    """Settings of the Triton targets."""

    requests_per_stream: int = REQUESTS_PER_STREAM  # gRPC streaming: --requests-per-stream

    @classmethod
    def of(cls, config: RunConfig | None, protocol: str) -> TritonOptions:
        """From a RunConfig (None: the defaults)."""
        given = config.requests_per_stream if config is not None else None
        return cls(requests_per_stream=REQUESTS_PER_STREAM if given is None else given)
