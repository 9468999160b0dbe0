"""The Triton targets' own request settings, typed and built from the run's settings like every API's options.

Triton's requests need nothing beyond model, mode and prompts today (TLS and headers reach every target through
``cvload.transport``); a setting of Triton's targets alone (e.g. how many requests one gRPC stream carries)
belongs here, read once from the ``RunConfig`` in ``of``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from cvload.config import RunConfig


@dataclass(frozen=True)
class TritonOptions:
    """Settings of the Triton targets (none of their own yet)."""

    @classmethod
    def of(cls, config: RunConfig | None, protocol: str) -> TritonOptions:
        """From a RunConfig (None: the defaults)."""
        return cls()
