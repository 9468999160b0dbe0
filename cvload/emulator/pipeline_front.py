"""Pipeline emulator: its ``cosyvoice2`` BLS front model (calling the four sub-models), for Triton's Python
backend; the single-model emulator (``single_model.py``) is the other ``cosyvoice2``.

It does what upstream's front model does, with the same calls: per request (one after the other on each
instance, so ``bls_instances`` requests are worked on at once) it sends the prompt audio to ``audio_tokenizer``
and ``speaker_embedding`` (skipped when the request brings no prompt: the cached speaker), streams speech tokens
from the decoupled ``tensorrt_llm`` (``exec(decoupled=True)``, read on a thread), and calls ``token2wav`` once per
chunk as enough tokens arrived (chunk sizes of the profile, plus the lookahead tokens), sending each chunk's
waveform to the client: the speech of the text, which only the front holds (token2wav's own output, a tone, is
the vocoder's work and time). Offline it calls ``tensorrt_llm`` and ``token2wav`` once. Request checks, faults,
the trace, the voice, garbling and leading silence come from the single-model emulator (``cosyvoice_emulator.py`` beside this file): only the
production of the chunks differs. Every delay is the sub-models' own, so queueing shows in Triton's statistics
of the model where it happens.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
import threading
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import cosyvoice_emulator as core  # noqa: E402

pb_utils = core.pb_utils
TEXT_IDS = 151643  # where the emulated text tokenizer's ids start (any ids below the speech vocabulary do)


class _Tokens:
    """Speech tokens streamed so far by tensorrt_llm, filled by the reading thread."""

    def __init__(self) -> None:
        self.ids: list[int] = []
        self.done = False
        self.error: Exception | None = None
        self.cond = threading.Condition()
        self.stream = None  # the tensorrt_llm response iterator, once the reader opened it

    def cancel(self) -> None:
        """Ask tensorrt_llm to stop (the response iterator's ``cancel()``, in Python backends from r24.11 on;
        the bundled 2.51 has none, so there the stream runs to its end and the release waits for it)."""
        cancel = getattr(self.stream, "cancel", None)
        if cancel is not None:
            with contextlib.suppress(Exception):  # a stream that already ended
                cancel()

    def wait_for(self, count: int, watch=None) -> list[int] | None:
        """The first ``count`` tokens; None when ``watch`` (the client's cancellation) says stop first."""
        with self.cond:
            while len(self.ids) < count and not self.done and self.error is None:
                if watch is not None and watch.stop():
                    return None
                self.cond.wait(None if watch is None else watch.poll_s)
            if self.error is not None:
                raise self.error
            if len(self.ids) < count:
                raise RuntimeError(f"tensorrt_llm ended after {len(self.ids)} tokens, {count} expected")
            return self.ids[:count]


def _traced(parent) -> dict:
    """A child request joins its parent's Triton trace (``trace=``), so the server's trace file shows each
    token2wav and tensorrt_llm call under the client's request (its ``parent_id``). Upstream's front passes none:
    there only the front request itself is traced."""
    if parent is None or not hasattr(parent, "trace"):
        return {}
    return {"trace": parent.trace()}


class TritonPythonModel(core.TritonPythonModel):
    def initialize(self, args: dict) -> None:
        super().initialize(args)
        params = {k: v["string_value"] for k, v in json.loads(args["model_config"]).get("parameters", {}).items()}
        # Instances are separate processes: arrivals and in-flight ids are shared through the state file.
        self.state = core.SharedState(params.get("state_path") or None)
        self.prompt_models = params.get("prompt_models", "true") == "true"
        self.retired: list = []  # finished BLS iterators whose cleanup may still be queued (see _retire)
        self.retired_lock = threading.Lock()

    # ---- BLS calls -----------------------------------------------------------------------------------------
    @staticmethod
    def _call(model: str, inputs: list, outputs: list[str], request_id: str = "", parent=None) -> list[np.ndarray]:
        request = pb_utils.InferenceRequest(model_name=model, requested_output_names=outputs, inputs=inputs,
                                            request_id=request_id, **_traced(parent))
        response = request.exec()
        if response.has_error():
            raise RuntimeError(f"{model}: {response.error().message()}")
        return [pb_utils.get_output_tensor_by_name(response, name).as_numpy() for name in outputs]

    @staticmethod
    def _llm_request(input_ids: np.ndarray, total: int, streaming: bool, request_id: str, parent=None):
        inputs = {
            "input_ids": input_ids.reshape(1, -1),
            "input_lengths": np.array([[input_ids.size]], dtype=np.int32),
            "request_output_len": np.array([[total]], dtype=np.int32),
            "end_id": np.array([[TEXT_IDS + 2]], dtype=np.int32),
            "pad_id": np.array([[TEXT_IDS + 2]], dtype=np.int32),
            "streaming": np.array([[streaming]], dtype=np.bool_),
            "runtime_top_p": np.array([[0.95]], dtype=np.float32),
            "runtime_top_k": np.array([[50]], dtype=np.int32),
            "temperature": np.array([[0.8]], dtype=np.float32),
            "repetition_penalty": np.array([[1.1]], dtype=np.float32),
            "random_seed": np.array([[42]], dtype=np.uint64),
        }
        return pb_utils.InferenceRequest(model_name="tensorrt_llm", requested_output_names=["output_ids", "sequence_length"],
                                         inputs=[pb_utils.Tensor(k, v) for k, v in inputs.items()],
                                         request_id=request_id, **_traced(parent))

    @staticmethod
    def _ids(response) -> list[int]:
        if response.has_error():
            raise RuntimeError(f"tensorrt_llm: {response.error().message()}")
        out = pb_utils.get_output_tensor_by_name(response, "output_ids")
        if out is None:  # the empty final response of a stream
            return []
        length = int(pb_utils.get_output_tensor_by_name(response, "sequence_length").as_numpy().reshape(-1)[0])
        return out.as_numpy().reshape(-1)[:length].tolist()

    def _read_stream(self, front_request, request, tokens: _Tokens) -> None:
        """Read the stream to its end, even after an error response (an iterator left unfinished stays in the
        stub's table for good), then retire the iterator (see ``_retire``)."""
        stream = None
        try:
            stream = tokens.stream = request.exec(decoupled=True)
            for response in stream:
                if tokens.error is not None:
                    continue
                try:
                    ids = self._ids(response)
                except Exception as exc:  # noqa: BLE001 - handed to the request's thread
                    ids, tokens.error = [], exc
                with tokens.cond:
                    tokens.ids.extend(ids)
                    tokens.cond.notify_all()
        except Exception as exc:  # noqa: BLE001 - handed to the request's thread
            tokens.error = tokens.error or exc
        finally:
            with tokens.cond:
                tokens.done = True
                tokens.cond.notify_all()
            self._retire(front_request, stream)

    def _retire(self, request, stream) -> None:
        """Drop a finished BLS response iterator here, holding the GIL, never on the stub's own thread.

        The stub (python_backend up to at least r24.10) keeps each decoupled BLS iterator in a table too; the
        final response queues a cleanup that its stub-to-parent thread runs, erasing the table's reference
        without the GIL. When Python has dropped its reference first, that erase destroys the iterator, its
        responses and their numpy arrays on a thread with no Python thread state: Python 3.12's per-interpreter
        allocator then reads a NULL thread state (segfault in ``_PyObject_Free``, "Stub process ... is not
        healthy"); 3.11 frees it racily without crashing. That thread works its queue in order, and
        ``is_cancelled()`` queues a query on it and waits for the answer: once it returns, the cleanup has run
        and Python holds the last reference. A request already seen cancelled answers from a cache without the
        queue; its iterator waits in ``self.retired`` for the next request's barrier."""
        if stream is None:
            return
        with self.retired_lock:
            earlier, self.retired = self.retired, []
        if request.is_cancelled():
            earlier.append(stream)
            with self.retired_lock:
                self.retired.extend(earlier)
        # Leaving: ``stream`` and ``earlier`` go with this frame, here, with the GIL held.

    # ---- one request -----------------------------------------------------------------------------------------
    def _parse(self, request) -> dict:
        parsed = super()._parse(request)
        parsed["wav"] = pb_utils.get_input_tensor_by_name(request, "reference_wav")
        parsed["request"] = request  # for the cleanup barrier of its tensorrt_llm stream (see _retire)
        return parsed

    def _prompt(self, parsed: dict) -> tuple[list, int]:
        """The prompt tensors token2wav gets (none for the cached speaker) and the prompt's speech tokens."""
        if parsed["wav"] is None:
            return [], 75  # the cached speaker's prompt: about 3 s of speech tokens
        if not self.prompt_models:
            raise core.RequestError("this deployment serves its cached speaker only (no audio_tokenizer or "
                                    "speaker_embedding): send target_text without a prompt")
        n = round(parsed["ref_seconds"] * 16000)
        wav = parsed["wav"].as_numpy().reshape(1, -1)[:, :n]
        tokens, = self._call("audio_tokenizer", [pb_utils.Tensor("reference_wav", wav),
                                                 pb_utils.Tensor("reference_wav_len", np.array([[n]], np.int32))],
                             ["prompt_speech_tokens"], parent=parsed["request"])
        embedding, = self._call("speaker_embedding", [pb_utils.Tensor("reference_wav", wav)],
                                ["prompt_spk_embedding"], parent=parsed["request"])
        tokens = tokens.reshape(1, -1).astype(np.int32)
        feat = np.zeros((1, 2 * tokens.shape[1], 80), dtype=np.float16)  # mel frames: two per speech token
        return [pb_utils.Tensor("prompt_speech_tokens", tokens), pb_utils.Tensor("prompt_speech_feat", feat),
                pb_utils.Tensor("prompt_spk_embedding", embedding.reshape(1, -1).astype(np.float16))], tokens.shape[1]

    def _token2wav(self, ids: list[int], prompt: list, request_id: str, offset: int | None,
                   final: bool | None, parent=None) -> np.ndarray:
        inputs = [pb_utils.Tensor("target_speech_tokens", np.array(ids, dtype=np.int32).reshape(1, -1)), *prompt]
        if offset is not None:
            inputs += [pb_utils.Tensor("token_offset", np.array([[offset]], dtype=np.int32)),
                       pb_utils.Tensor("finalize", np.array([[final]], dtype=np.bool_))]
        waveform, = self._call("token2wav", inputs, ["waveform"], request_id, parent)
        return waveform.reshape(-1)

    def _synthesize(self, parsed: dict, request_id: str, arrival: float, emit) -> tuple[list[float], list]:
        p = self.profile
        prompt, prompt_tokens = self._prompt(parsed)
        # token2wav does the vocoder's work and time; what the client hears is the front's voice (the speech of
        # the text, garbled or delayed as the profile says), which only the front, holding the text, can make
        voice, total = self._spoken(parsed["target"], request_id)
        text_ids = np.frombuffer(parsed["target"].encode("utf-8"), dtype=np.uint8).astype(np.int32) + TEXT_IDS - 256
        input_ids = np.concatenate([text_ids, np.arange(prompt_tokens, dtype=np.int32) + TEXT_IDS + 20])
        sends: list[float] = []
        spans: list[list[float]] = []

        def vocode(ids: list[int], n: int, offset: int | None, final: bool | None) -> None:
            start = time.monotonic()
            self._token2wav(ids, prompt, request_id, offset, final, parsed["request"])
            spans.append([start - arrival, time.monotonic() - arrival])
            sends.append(time.monotonic() - arrival)
            emit(voice.render(n * core.SAMPLES_PER_TOKEN))

        if not self.decoupled:
            whole = self._ids(self._llm_request(input_ids, total, False, request_id, parsed["request"]).exec())
            vocode(whole, total, None, None)
            return sends, spans
        lookahead = int(p.get("lookahead_tokens", 3))
        chunks = self._chunks(total)
        while len(chunks) > 1 and chunks[-1] < lookahead:  # a chunk before the last needs its lookahead tokens
            chunks[-2:] = [chunks[-2] + chunks[-1]]
        stall_at = self.rng.randrange(len(chunks)) if self.rng.random() < p.get("stall_prob", 0.0) else -1
        tokens = _Tokens()
        reader = threading.Thread(target=self._read_stream, daemon=True,
                                  args=(parsed["request"], self._llm_request(input_ids, total, True, request_id, parsed["request"]),
                                        tokens))
        reader.start()
        watch = parsed.get("watch")  # the client's cancellation, checked between the pipeline's stages
        try:
            offset = 0
            for i, n in enumerate(chunks):
                if i == stall_at:
                    time.sleep(p.get("stall_s", 0.0))
                final = i == len(chunks) - 1
                ids = tokens.wait_for(offset + n + (0 if final else lookahead), watch)
                if ids is None or (watch is not None and watch.stop()):  # no more token2wav calls
                    tokens.cancel()
                    break
                vocode(ids, n, offset, final)
                if watch is not None:
                    watch.made(n * core.SAMPLES_PER_TOKEN)
                offset += n
        finally:  # also after a failure: the reader's barrier needs the request before its final response
            reader.join()
        return sends, spans

    def execute(self, requests: list) -> list | None:
        """One request after the other, as upstream's front model: an instance works on one request at a time."""
        arrival = time.monotonic()
        if self.decoupled:
            for request in requests:
                self._serve_stream(request, arrival)
            return None
        responses = []
        for request in requests:
            try:
                responses.append(self._serve_offline(request, arrival))
            except Exception as exc:  # noqa: BLE001 - a missing response would hang the client
                responses.append(pb_utils.InferenceResponse(error=core._error(f"emulator failure: {exc!r}")))
        return responses
