"""Protocol targets behind one interface (``cvload.targets.base.Target``), chosen by protocol and mode."""

from __future__ import annotations

from cvload.errors import UsageError
from cvload.targets.base import Target

__all__ = ["make_target", "TARGETS"]

# (protocol, mode) -> "module:class", imported on use so gRPC-only runs never load aiohttp and vice versa.
TARGETS = {
    ("grpc", "streaming"): "cvload.targets.triton_grpc:TritonGrpcStreaming",
    ("grpc", "offline"): "cvload.targets.triton_grpc:TritonGrpcOffline",
    ("http", "streaming"): "cvload.targets.triton_http:TritonHttpStreaming",
    ("http", "offline"): "cvload.targets.triton_http:TritonHttpOffline",
}


def make_target(protocol: str, mode: str, address: str, model: str = "cosyvoice2", *,
                timeout: float | None = None) -> Target:
    """The target for ``--protocol``/``--mode`` at ``address`` (HOST:PORT); bad choices are UsageErrors."""
    import importlib

    spec = TARGETS.get((protocol, mode))
    if spec is None:
        protocols = sorted({p for p, _ in TARGETS})
        modes = sorted({m for _, m in TARGETS})
        raise UsageError(f"no target for --protocol {protocol!r} --mode {mode!r}",
                         hint=f"protocols: {', '.join(protocols)}; modes: {', '.join(modes)}")
    module_name, class_name = spec.split(":")
    cls = getattr(importlib.import_module(module_name), class_name)
    return cls(address, model, timeout=timeout)  # type: ignore[no-any-return]
