"""Pipeline emulator: ``tensorrt_llm`` (the speech-token LLM) for Triton's Python backend.

In-flight batching as TensorRT-LLM does it: every request that arrives joins the running batch at once (the
model returns from ``execute`` at once and generates on a thread per request), and each request in flight slows
every other by ``llm_batch_slowdown``. Decoupled, it streams the tokens of each ``llm_step_s`` step as one
response (``output_ids`` [1, 1, n] holding the new tokens, ``sequence_length`` [1, 1]); otherwise it answers once
with all of them. The emulator never emits ``end_id``: it stops at ``request_output_len``, which the front model
sets to the speech length of its text. Copied as ``model.py`` beside ``cosyvoice_emulator.py``.
"""

from __future__ import annotations

import math
import os
import random
import sys
import threading
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import cosyvoice_emulator as core  # noqa: E402

pb_utils = core.pb_utils
SPEECH_VOCAB_OFFSET = 151663


def _scalar(request, name: str, default: int) -> int:
    tensor = pb_utils.get_input_tensor_by_name(request, name)
    return default if tensor is None else int(tensor.as_numpy().reshape(-1)[0])


class TritonPythonModel:
    def initialize(self, args: dict) -> None:
        config, params, self.profile = core.model_args(args)
        self.decoupled = pb_utils.using_decoupled_model_transaction_policy(config)
        self.rng = random.Random(self.profile.get("seed", 0) or None)
        self.lock = threading.Lock()
        self.active = 0

    def _jitter(self, seconds: float) -> float:
        sigma = self.profile.get("jitter", 0.0)
        return seconds * math.exp(self.rng.gauss(0.0, sigma)) if sigma and seconds > 0 else seconds

    def _generate(self, request, emit) -> None:
        """Emit the request's speech tokens step by step, at the speed the current batch allows."""
        p = self.profile
        total = _scalar(request, "request_output_len", 0)
        if total < 1:
            raise ValueError(f"request_output_len must be at least 1, got {total}")
        with self.lock:
            self.active += 1
            others = self.active - 1
        try:
            clock = time.monotonic() + self._jitter(
                p.get("llm_prefill_s", 0.0) + p.get("llm_prefill_per_active_s", 0.0) * others)
            produced = 0
            while produced < total:
                rate = p.get("llm_tokens_per_s", 0.0) / (1.0 + p.get("llm_batch_slowdown", 0.0) * (self.active - 1))
                if rate > 0:
                    n = min(total - produced, max(1, round(p.get("llm_step_s", 0.02) * rate)))
                    clock += self._jitter(n / rate)
                else:
                    n = total - produced
                delay = clock - time.monotonic()
                if delay > 0:
                    time.sleep(delay)
                ids = (np.arange(produced, produced + n, dtype=np.int32) * 7919) % 6561 + SPEECH_VOCAB_OFFSET
                emit(ids)
                produced += n
        finally:
            with self.lock:
                self.active -= 1

    @staticmethod
    def _response(ids: np.ndarray):
        return pb_utils.InferenceResponse(output_tensors=[
            pb_utils.Tensor("output_ids", ids.reshape(1, 1, -1)),
            pb_utils.Tensor("sequence_length", np.array([[ids.size]], dtype=np.int32))])

    def _stream(self, request) -> None:
        sender = request.get_response_sender()
        try:
            self._generate(request, lambda ids: sender.send(self._response(ids)))
            sender.send(flags=pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL)
        except Exception as exc:  # noqa: BLE001 - the caller's stream must end
            sender.send(pb_utils.InferenceResponse(error=pb_utils.TritonError(f"tensorrt_llm emulator: {exc!r}")),
                        flags=pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL)

    def _whole(self, request, out: list, i: int) -> None:
        parts: list[np.ndarray] = []
        try:
            self._generate(request, parts.append)
            out[i] = self._response(np.concatenate(parts))
        except Exception as exc:  # noqa: BLE001
            out[i] = pb_utils.InferenceResponse(error=pb_utils.TritonError(f"tensorrt_llm emulator: {exc!r}"))

    def execute(self, requests: list) -> list | None:
        if self.decoupled:
            for request in requests:
                threading.Thread(target=self._stream, args=(request,), daemon=True).start()
            return None
        out: list = [None] * len(requests)
        threads = [threading.Thread(target=self._whole, args=(r, out, i)) for i, r in enumerate(requests)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        return out

    def finalize(self) -> None:
        pass
