"""The emulated servers speak: every server sends the speech of its text, leading_silence_s puts that much quiet
before it, garble_above spoils content (never timing) only above N requests in flight.

Each server runs through `cvload run --emulator --save-audio` (real servers, real clients) and the saved audio is
compared with the speech cache's audio of the request's text, which is what hibari / espeak-ng said for it.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from cvload.emulator import get_profile, speech
from cvload.emulator.openai_server import Synthesizer
from cvload.emulator.runtime_server import sentences
from cvload.emulator.single_model import SAMPLE_RATE, SAMPLES_PER_TOKEN, speech_seconds, speech_tokens
from cvload.settings.inputs import load_items
from tests.runs import records_of, run_cli

LEAD_S = 0.3
TEXTS = {item.item_id: item.target_text for item in load_items(None, spk_cache=True)}
SERVERS = {"triton": [], "pipeline": ["--pipeline"], "openai": ["--api", "openai"],
           "runtime": ["--api", "cosyvoice", "--protocol", "grpc"]}


def clean_speech(text: str, server: str) -> np.ndarray:
    """What the server says for ``text`` when nothing spoils it (the cache's audio, as int16 went out)."""
    cache = speech.SpeechCache()
    if server == "runtime":  # sentence by sentence, each its own length
        parts = [cache.get(s, max(1, round(speech_seconds(s) * SAMPLE_RATE))) for s in sentences(text)]
    else:
        parts = [cache.get(text, speech_tokens(text) * SAMPLES_PER_TOKEN)]
    assert all(p is not None for p in parts), "the run spoke its texts into the cache before the server started"
    return np.concatenate(parts)  # type: ignore[arg-type]


def onset_s(audio: np.ndarray, rate: int = SAMPLE_RATE) -> float:
    """Where speech starts: the first 5 ms window louder than -40 dBFS."""
    n = rate // 200
    rms = np.sqrt(np.mean(audio[: len(audio) // n * n].reshape(-1, n) ** 2, axis=1))
    return float(np.argmax(rms > 0.01)) * n / rate


def saved(out: Path) -> list[tuple[str, np.ndarray]]:
    """(item id, audio) of each request of a run with --save-audio."""
    found = []
    for record in records_of(out):
        assert record["ok"], record
        path, = (out / "audio").glob(f"{record['index']:06d}_*.wav")
        audio, rate = sf.read(path, dtype="float32")
        assert rate == SAMPLE_RATE
        found.append((record["item_id"], audio))
    return found


def run(out: Path, server: str, *sets: str, tasks: int, requests: int) -> list[tuple[str, np.ndarray]]:
    profile_sets = [arg for s in sets for arg in ("--profile-set", s)]
    code = run_cli("--emulator", *SERVERS[server], "--profile", "fixed", *profile_sets, "--num-tasks", str(tasks),
                   "--requests", str(requests), "--save-audio", "--out", str(out))
    assert code == 0
    return saved(out)


_runs: dict[str, list[tuple[str, np.ndarray]]] = {}


@pytest.fixture(params=list(SERVERS))
def loaded(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> tuple[str, list]:
    """(server, its responses) of one run per server, shared by the tests below: concurrency 4 with
    garble_above=1 (a request that finds n > 1 in flight is spoiled with the share (n - 1) / n) and 300 ms of
    leading silence."""
    server = request.param
    if server not in _runs:
        _runs[server] = run(tmp_path_factory.mktemp(server), server, f"leading_silence_s={LEAD_S}",
                            "garble_above=1", tasks=4, requests=12)
    return server, _runs[server]


def unspoiled(audio: np.ndarray, clean: np.ndarray) -> bool:
    lead = round(LEAD_S * SAMPLE_RATE)
    return bool(np.allclose(audio[lead:lead + clean.size], clean, atol=2 / 32767))


def test_every_server_speaks_with_leading_silence_and_garbles_above_n(loaded: tuple[str, list]) -> None:
    """Every request, spoiled or not, starts with 300 ms of quiet, then its speech's length; unspoiled ones are
    exactly the speech of their text, and both kinds occur."""
    server, said = loaded
    lead = round(LEAD_S * SAMPLE_RATE)
    kept = spoiled = 0
    for item, audio in said:
        clean = clean_speech(TEXTS[item], server)
        # the stream grows by whole speech tokens (a quiet tail of under one token), the runtime's by the samples
        assert lead + clean.size <= audio.size < lead + clean.size + SAMPLES_PER_TOKEN, item
        assert np.abs(audio[:lead]).max() < 0.002, "quiet before the speech"
        assert abs(onset_s(audio) - LEAD_S - onset_s(clean)) <= 0.02
        if unspoiled(audio, clean):
            kept += 1
        else:
            spoiled += 1
    assert kept and spoiled, (kept, spoiled)


def test_every_server_is_heard_saying_its_text(loaded: tuple[str, list]) -> None:
    """A real recognizer (Moonshine, the listening checks' default) hears the text in an unspoiled English
    response of each server. Skipped where cvload has no recognizers (cvload.listen.asr, the listening checks)."""
    asr = pytest.importorskip("cvload.listen.asr")
    content = pytest.importorskip("cvload.listen.content")
    server, said = loaded
    recognizer = asr.make_recognizer("moonshine")
    for item, audio in said:
        text = TEXTS[item]
        if item.startswith("en_") and unspoiled(audio, clean_speech(text, server)):
            transcript = recognizer.transcribe(audio, SAMPLE_RATE, "en")
            assert content.error_rate(text, transcript, "en") <= 0.15, (text, transcript)
            return
    pytest.fail("no unspoiled English response to hear")


def test_garble_above_n_leaves_n_in_flight_alone(tmp_path: Path) -> None:
    said = run(tmp_path / "out", "triton", "garble_above=2", tasks=2, requests=6)
    for item, audio in said:
        np.testing.assert_allclose(audio, clean_speech(TEXTS[item], "triton"), atol=2 / 32767)
        assert onset_s(audio) < 0.02
    traced = [json.loads(line) for line in (tmp_path / "out" / "emulator" / "cosyvoice2.trace.jsonl").open()]
    assert {(t["voice"], t["garble"]) for t in traced} == {("speech", None)}


def test_chinese_is_spoken_by_espeak(tmp_path: Path) -> None:
    text = TEXTS["zh_01"]
    audio = clean_speech(text, "triton")
    rms = np.sqrt(np.mean(audio[: audio.size // 2400 * 2400].reshape(-1, 2400) ** 2, axis=1))
    assert (rms > 0.01).mean() > 0.6 and np.abs(audio).max() < 0.9  # speech most of the time, not clipped
    assert speech.voice_for(text) == speech.CHINESE_VOICE


def test_a_text_not_yet_spoken_gets_the_tone_once_then_speech(tmp_path: Path) -> None:
    """No synthesis on the response path: the first request for a new text is the tone (its trace says so)
    while a child process speaks it; the next request speaks."""
    profile = get_profile("instant", {"speech_cache": str(tmp_path / "cache")})
    synth = Synthesizer("cosyvoice2", profile, trace_path=str(tmp_path / "trace.jsonl"))
    text = "A sentence nobody has asked for before."
    chunks: list[bytes] = []
    assert synth.run(text, "r1", 0.0, chunks.append) is None
    assert synth.speech.idle(120), synth.speech.failure
    second: list[bytes] = []
    assert synth.run(text, "r2", 0.0, second.append) is None
    first_voice, second_voice = (json.loads(line)["voice"] for line in (tmp_path / "trace.jsonl").open())
    assert first_voice == "tone (speech not cached yet)" and second_voice == "speech"
    audio = np.frombuffer(b"".join(second), "<i2").astype(np.float32) / 32767
    assert len(b"".join(chunks)) == len(b"".join(second)) == speech_tokens(text) * SAMPLES_PER_TOKEN * 2
    np.testing.assert_allclose(audio, synth.speech.get(text, speech_tokens(text) * SAMPLES_PER_TOKEN), atol=2e-4)


def test_garbling_is_deterministic_and_keeps_the_length() -> None:
    audio = speech.SpeechCache().get(TEXTS["en_01"], speech_tokens(TEXTS["en_01"]) * SAMPLES_PER_TOKEN)
    other = speech.SpeechCache().get(TEXTS["en_02"], speech_tokens(TEXTS["en_02"]) * SAMPLES_PER_TOKEN)
    assert audio is not None and other is not None  # the built-in set is spoken by every server build
    for mode in speech.GARBLE_MODES:
        a, b = (speech.garble(audio, mode, random.Random(5), other) for _ in range(2))
        np.testing.assert_array_equal(a, b)
        assert a.size == audio.size and not np.allclose(a, audio) and np.isfinite(a).all()
        assert np.abs(a).max() < 1.0
