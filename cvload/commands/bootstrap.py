"""``cvload bootstrap``: build, launch, check and stop a CosyVoice Triton server (server_bootstrap.cli)."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    from server_bootstrap.cli import DESCRIPTION, configure

    p = sub.add_parser("bootstrap", help="build and launch the Triton + TensorRT-LLM CosyVoice server "
                       "(or the emulator), resumably; diagnose it (doctor)", description=DESCRIPTION)
    configure(p)
