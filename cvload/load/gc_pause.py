"""Garbage collection in a measuring process: no pause of tens of milliseconds in the middle of a run.

A full (oldest-generation) collection walks every tracked object the process holds: the modules, the targets,
the engine's state. In a run that allocates quickly (HTTP streaming with prompts: megabyte events, chunk and
record objects for 64 streams) full collections come every few seconds and each held the event loop for
30-40 ms of CPU on a 2-core machine, stamping every response that arrived meanwhile late. Everything alive when
the run starts lives for the run: ``quiet_collections`` collects once, then freezes it (``gc.freeze``: never
walked again), so a full collection walks only what the run itself made; the end of the run unfreezes it.
"""

from __future__ import annotations

import gc


class QuietCollections:
    """``start()`` when the run starts (after its setup), ``stop()`` when it ends; safe to call twice."""

    def __init__(self) -> None:
        self._frozen = False

    def start(self) -> None:
        if self._frozen:
            return
        gc.collect()
        gc.freeze()
        self._frozen = True

    def stop(self) -> None:
        if self._frozen:
            gc.unfreeze()
            self._frozen = False
