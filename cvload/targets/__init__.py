"""Protocol targets behind one interface (``cvload.targets.base.Target``), chosen by API, protocol and mode."""

from __future__ import annotations

from typing import Any

from cvload.errors import UsageError
from cvload.targets.base import Target

__all__ = ["make_target", "TARGETS"]

# Triton: (protocol, mode) -> "module:class", imported on use so gRPC-only runs never load aiohttp and vice versa.
TARGETS = {
    ("grpc", "streaming"): "cvload.targets.triton_grpc:TritonGrpcStreaming",
    ("grpc", "offline"): "cvload.targets.triton_grpc:TritonGrpcOffline",
    ("http", "streaming"): "cvload.targets.triton_http:TritonHttpStreaming",
    ("http", "offline"): "cvload.targets.triton_http:TritonHttpOffline",
}
# Other server APIs: (api, protocol) -> "module:class"; their classes also take ``options`` (the run's settings
# for request kinds, speaker, voice, sample rate) and have no streaming/offline mode of their own.
API_TARGETS: dict[tuple[str, str], str] = {
    ("cosyvoice", "grpc"): "cvload.targets.cosyvoice_grpc:CosyVoiceGrpc",
    ("cosyvoice", "http"): "cvload.targets.cosyvoice_http:CosyVoiceHttp",
    ("openai", "http"): "cvload.targets.openai_speech:OpenAISpeech",
}


def make_target(protocol: str, mode: str, address: str, model: str = "cosyvoice2", *,
                timeout: float | None = None, api: str = "triton", options: Any = None) -> Target:
    """The target for ``--api``/``--protocol``/``--mode`` at ``address`` (HOST:PORT); bad choices are UsageErrors.

    ``options``: the run's ``RunConfig`` (or None for defaults), read by the non-Triton APIs' targets and, for
    TLS and headers, by every target (``cvload.transport``).
    """
    import importlib

    from cvload.transport import Transport

    if api == "triton":
        spec = TARGETS.get((protocol, mode))
        if spec is None:
            protocols = sorted({p for p, _ in TARGETS})
            modes = sorted({m for _, m in TARGETS})
            raise UsageError(f"no target for --protocol {protocol!r} --mode {mode!r}",
                             hint=f"protocols: {', '.join(protocols)}; modes: {', '.join(modes)}")
    else:
        spec = API_TARGETS.get((api, protocol))
        if spec is None:
            raise UsageError(f"no target for --api {api!r} --protocol {protocol!r}",
                             hint="combinations: " + ", ".join(f"{a}/{p}" for a, p in sorted(API_TARGETS)))
    module_name, class_name = spec.split(":")
    cls = getattr(importlib.import_module(module_name), class_name)
    transport = Transport.of(options, api=api)
    if api == "triton":
        if (protocol, mode) == ("grpc", "streaming") and getattr(options, "requests_per_stream", None) is not None:
            return cls(address, model, timeout=timeout, transport=transport,  # type: ignore[no-any-return]
                       requests_per_stream=options.requests_per_stream)
        return cls(address, model, timeout=timeout, transport=transport)  # type: ignore[no-any-return]
    return cls(address, model, timeout=timeout, options=options, transport=transport)  # type: ignore[no-any-return]
