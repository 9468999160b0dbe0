"""The parent's side of the emulator's speech: fill the cache before a server starts, and hand the servers the
module and the cache's place.

Synthesis before the server starts costs no emulated time: a run's texts (and the built-in set) are spoken once
here, in the process that starts the server, and every later start finds them on disk (a few ms for the set).
"""

from __future__ import annotations

import json
import shutil
import sys
import time
from collections.abc import Iterable, Sequence
from pathlib import Path

from cvload.emulator import speech
from cvload.emulator.profiles import Profile
from cvload.emulator.single_model import SAMPLE_RATE, speech_seconds, speech_tokens

HERE = Path(__file__).parent
STUB_MODULE = "cvload_speech.py"  # speech.py's name beside a Triton model (model.py imports it by this name)


def copy_speech(version_dir: Path) -> None:
    """Put the speech module beside a model's ``model.py`` in its version folder."""
    shutil.copy(HERE / "speech.py", Path(version_dir) / STUB_MODULE)


def cache_of(profile: Profile) -> str:
    return profile.speech_cache or speech.cache_dir()


def stub_profile_json(profile: Profile) -> str:
    """The profile as a Triton model gets it: the cache's place resolved here, since the stub's environment
    (its home, its variables) need not be this process's."""
    data = json.loads(profile.to_json())
    data["speech_cache"] = cache_of(profile)
    return json.dumps(data, sort_keys=True)


def builtin_texts() -> list[str]:
    from cvload.settings.inputs import load_items

    return [item.target_text for item in load_items(None, spk_cache=True)]


def speech_lengths(texts: Iterable[str], *, per_sentence: bool = False) -> list[tuple[str, int]]:
    """(text, samples at 24 kHz) as the servers look them up: a whole text takes its speech tokens' samples
    (the Triton and OpenAI emulators); ``per_sentence``: each sentence its own length (the CosyVoice runtime)."""
    out = []
    for text in texts:
        if per_sentence:
            out += [(s, max(1, round(speech_seconds(s) * SAMPLE_RATE))) for s in speech.sentences(text)]
        else:
            out.append((text, speech_tokens(text) * (SAMPLE_RATE // 25)))
    return out


def warm_speech(profiles: Sequence[Profile], texts: Iterable[str] = (), *, per_sentence: bool = False,
                builtin: bool = True) -> int:
    """Speak ``texts`` (and the built-in input set) into the cache of every profile with the speech voice;
    returns how many were synthesised now. Without an engine installed it says so once and returns: the servers
    then send the tone, and their traces say why."""
    caches = sorted({cache_of(p) for p in profiles if p.voice == "speech"})
    if not caches:
        return 0
    wanted = list(dict.fromkeys([*(builtin_texts() if builtin else []), *texts]))
    lengths = list(dict.fromkeys(speech_lengths(wanted, per_sentence=per_sentence)))
    made = 0
    for directory in caches:
        cache = speech.SpeechCache(directory)
        missing = [(t, n) for t, n in lengths if not Path(cache.path(cache.key(t, n))).exists()]
        if not missing:
            continue
        started = time.monotonic()
        print(f"cvload emulator: speaking {len(missing)} text(s) once, into {directory} ...", file=sys.stderr,
              flush=True)
        for text, samples in missing:
            try:
                cache.make(text, samples)
            except speech.SpeechUnavailable as exc:
                print(f"cvload emulator: no speech ({exc}); the servers send the tone voice", file=sys.stderr,
                      flush=True)
                return made
            made += 1
        print(f"cvload emulator: spoke {len(missing)} text(s) in {time.monotonic() - started:.1f} s",
              file=sys.stderr, flush=True)
    return made
