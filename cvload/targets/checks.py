"""What every Triton target checks in ``open()``, with errors that tell the user what to do next.

gRPC and HTTP reach the same facts by different calls; the wording lives here once so both protocols say the
same thing: server unreachable, unknown model (with the server's models), model not ready, mode mismatch, and
a model that is not a CosyVoice front model.
"""

from __future__ import annotations

from typing import Any

from cvload.errors import ServerError, UsageError
from cvload.results.records import ERR_CONNECTION, ERR_SERVER
from cvload.settings.address import TRITON_PORTS, parse, server_hint
from cvload.targets.base import TargetError

OPEN_TIMEOUT_S = 4.0  # open() must fail within 5 s on an unreachable server


def check_address(address: str, protocol: str) -> str:
    """``HOST:PORT`` (IPv6 in brackets) or a UsageError saying what was expected."""
    parse(address, urls=False, hint=server_hint(protocol))
    return address


def unreachable(address: str, protocol: str, detail: str) -> ServerError:
    return ServerError(
        f"cannot reach a Triton {protocol} endpoint at {address}: {detail}",
        hint=f"start the server (Triton listens for {protocol} on port {TRITON_PORTS.of(protocol.lower())} by "
        "default), check --server HOST:PORT and --protocol, or pass --emulator to run against the embedded emulator",
    )


def other_api(address: str, protocol: str, api: str) -> UsageError:
    """A server that answers, but with another API than Triton's: say which it looks like."""
    looks = {"cosyvoice": "CosyVoice's Python runtime (no Triton service, as its gRPC and FastAPI servers)",
             "openai": "an OpenAI-style speech server (/v1/audio/speech)"}[api]
    return UsageError(f"{address} answers {protocol} but is not a Triton server: it looks like {looks}",
                      hint=f"use --api {api}")


def unknown_model(model: str, address: str, models: list[tuple[str, str]] | None) -> UsageError:
    if models is None:
        listing = "the server did not list its models"
    elif not models:
        listing = "the server has no models"
    else:
        listing = "server models: " + ", ".join(f"{name} ({state or 'unknown state'})" for name, state in models)
    return UsageError(f"model {model!r} not found on {address}; {listing}", hint="pass --model NAME")


def not_ready(model: str, address: str, state: str, reason: str = "") -> ServerError:
    why = f": {reason}" if reason else ""
    status = f"state {state}{why}" if state else f"not loaded{why}"  # explicit model control, never loaded
    return ServerError(
        f"model {model!r} on {address} is not ready ({status})",
        hint="wait for the model to load (see the server log), or load it (e.g. POST "
        f"/v2/repository/models/{model}/load when the server runs with --model-control-mode=explicit)",
    )


class ModeMismatch(UsageError):
    """The client's mode does not fit how the model was deployed (decoupled or not)."""


def check_mode(mode: str, decoupled: bool, model: str, address: str, protocol: str) -> None:
    """The client's mode must match how the model was deployed (decoupled_mode), before the first request."""
    if mode == "offline" and decoupled:
        call = "HTTP infer" if protocol == "http" else "gRPC ModelInfer"
        raise ModeMismatch(
            f"model {model!r} on {address} is decoupled (deployed for streaming): offline {call} cannot call it"
            + (" (Triton answers HTTP 501 for decoupled models)" if protocol == "http" else ""),
            hint="use --mode streaming, or redeploy the model with decoupled_mode=false for offline tests",
        )
    if mode == "streaming" and not decoupled:
        raise ModeMismatch(
            f"model {model!r} on {address} is not decoupled (deployed for offline synthesis): it answers with "
            "one response, so there is no streaming to measure",
            hint="use --mode offline, or redeploy the model with decoupled_mode=true for streaming tests",
        )


def check_tensors(config: dict[str, Any], model: str, address: str) -> None:
    """A model without ``target_text`` in or ``waveform`` out is not a CosyVoice front model."""
    inputs = [t.get("name", "") for t in config.get("input", [])]
    outputs = [t.get("name", "") for t in config.get("output", [])]
    if "target_text" not in inputs or "waveform" not in outputs:
        raise UsageError(
            f"model {model!r} on {address} is not a CosyVoice front model (inputs: {', '.join(inputs) or 'none'}; "
            f"outputs: {', '.join(outputs) or 'none'}; expected target_text in and waveform out)",
            hint="pass --model with the front model's name (usually cosyvoice2, cosyvoice2_dit or cosyvoice3)",
        )


def decoupled_of(config: dict[str, Any]) -> bool:
    """Whether a model config (Triton's JSON form) is decoupled: a request gets any number of responses (streaming),
    and offline calls (HTTP infer, gRPC ModelInfer) are refused. Every check of a model's mode asks here."""
    policy = config.get("model_transaction_policy")
    return isinstance(policy, dict) and bool(policy.get("decoupled", False))


# What Triton answers a request for a model it is unloading: mid-run (the model was ready when the run opened it)
# that means the server is stopping (a restart, a rolling update), i.e. the server went away, not a bad request.
_STOPPING = ("has no available versions", "server is stopping", "Server is stopping")


def failed_response(message: str) -> TargetError:
    """The kind of an error response: ``connection`` when it says the server is going away, else ``server_error``."""
    if any(sign in message for sign in _STOPPING):
        return TargetError(ERR_CONNECTION, f"the server is stopping (it unloaded the model): {message}")
    return TargetError(ERR_SERVER, message)
