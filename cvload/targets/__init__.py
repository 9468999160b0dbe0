"""Protocol targets behind one interface (``cvload.targets.base.Target``), chosen by API, protocol and mode.

Which class serves which API and protocol is declared by the API's spec (``cvload.apis``); every target takes
the same arguments: address, model, timeout, its API's typed options and the run's transport (TLS, headers).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from cvload.apis import api_spec
from cvload.targets.base import Target

if TYPE_CHECKING:
    from cvload.settings.config import RunConfig

__all__ = ["make_target"]


def make_target(protocol: str, mode: str, address: str, model: str = "cosyvoice2", *,
                timeout: float | None = None, api: str | None = None, config: RunConfig | None = None) -> Target:
    """The target for ``--api``/``--protocol``/``--mode`` at ``address``; bad choices are UsageErrors.

    ``config``: the run's settings (None: defaults), from which the API's typed options and the transport
    (TLS, headers) are built here, once, so a bad setting fails before any load.
    """
    from cvload.settings.transport import Transport

    spec = api_spec(api or (config.api if config is not None else None))
    cls = spec.target_class(protocol, mode)
    target: Target = cls(address, model, timeout=timeout, options=spec.target_options(config, protocol),
                         transport=Transport.of(config, token_env=spec.token_env))
    return target
