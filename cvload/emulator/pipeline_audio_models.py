"""Pipeline emulator: ``audio_tokenizer``, ``speaker_embedding`` and ``token2wav`` for Triton's Python backend.

Each instance is one stub process that serves the requests of a batch one after the other, as upstream's models
do (one GPU stream per instance): a request costs the profile's time for its model, so more requests than
instances wait in Triton's queue, where the statistics API shows them. Copied into each model's version folder as
``model.py``, beside ``cosyvoice_emulator.py`` (the single-model emulator, for the voice and the jitter).
"""

from __future__ import annotations

import math
import os
import random
import sys
import time
import zlib

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import cosyvoice_emulator as core  # noqa: E402

pb_utils = core.pb_utils
SPEECH_VOCAB_OFFSET = 151663  # speech token ids follow the text vocabulary (upstream ORIGINAL_VOCAB_SIZE)
EMBEDDING_DIM = 192


def _input(request, name: str):
    tensor = pb_utils.get_input_tensor_by_name(request, name)
    return None if tensor is None else tensor.as_numpy()


class TritonPythonModel:
    def initialize(self, args: dict) -> None:
        _, _, self.profile = core.model_args(args)
        self.model_name = args["model_name"]
        self.rng = random.Random(self.profile.get("seed", 0) or None)
        self.serve = {"audio_tokenizer": self._tokenize, "speaker_embedding": self._embed,
                      "token2wav": self._vocode}[self.model_name]
        if self.model_name == "token2wav":  # render the voices before the server is ready, not on first requests
            for index in range(core.ToneVoice.VOICES):
                core.ToneVoice(index)

    def _cost(self, seconds: float) -> None:
        sigma = self.profile.get("jitter", 0.0)
        if sigma and seconds > 0:
            seconds *= math.exp(self.rng.gauss(0.0, sigma))
        if seconds > 0:
            time.sleep(seconds)

    def _tokenize(self, request) -> list:
        wav = _input(request, "reference_wav")
        n = int(_input(request, "reference_wav_len").reshape(-1)[0])
        n = max(0, min(n, wav.shape[-1]))
        self._cost(self.profile.get("tokenizer_s", 0.0))
        count = max(1, n * core.TOKENS_PER_S // 16000)  # 25 speech tokens per second of 16 kHz prompt
        tokens = np.arange(count, dtype=np.int32).reshape(1, -1) % 6561 + SPEECH_VOCAB_OFFSET
        return [pb_utils.Tensor("prompt_speech_tokens", tokens)]

    def _embed(self, request) -> list:
        wav = _input(request, "reference_wav")
        self._cost(self.profile.get("spk_embedding_s", 0.0))
        seed = zlib.crc32(np.ascontiguousarray(wav[..., :1600]).tobytes())
        embedding = np.random.default_rng(seed).standard_normal((1, EMBEDDING_DIM)).astype(np.float16)
        return [pb_utils.Tensor("prompt_spk_embedding", embedding)]

    def _vocode(self, request) -> list:
        """The audio of the tokens after ``token_offset`` (all of them offline), less the lookahead tokens
        a chunk that is not the last keeps for the next one."""
        p = self.profile
        tokens = _input(request, "target_speech_tokens").reshape(-1)
        offset = _input(request, "token_offset")
        finalize = _input(request, "finalize")
        offset = 0 if offset is None else int(offset.reshape(-1)[0])
        final = True if finalize is None else bool(finalize.reshape(-1)[0])
        lookahead = 0 if final else int(p.get("lookahead_tokens", 3))
        new = max(0, tokens.size - offset - lookahead)
        cost = p.get("vocoder_base_s", 0.0) + p.get("vocoder_per_token_s", 0.0) * new
        if _input(request, "prompt_spk_embedding") is not None:
            cost += p.get("vocoder_prompt_s", 0.0)
        self._cost(cost)
        voice = core.ToneVoice(zlib.crc32(request.request_id().encode()))
        voice.pos = (voice.pos + offset * core.SAMPLES_PER_TOKEN) % len(voice.loop)
        audio = voice.render(new * core.SAMPLES_PER_TOKEN)
        return [pb_utils.Tensor("waveform", audio.reshape(1, -1))]

    def execute(self, requests: list) -> list:
        responses = []
        for request in requests:  # one after the other, as upstream's token2wav loops over its batch
            try:
                responses.append(pb_utils.InferenceResponse(output_tensors=self.serve(request)))
            except Exception as exc:  # noqa: BLE001 - a missing response would hang the front model
                responses.append(pb_utils.InferenceResponse(
                    error=pb_utils.TritonError(f"{self.model_name} emulator failure: {exc!r}")))
        return responses

    def finalize(self) -> None:
        pass
