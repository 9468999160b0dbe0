"""Listening: the player's prebuffer and the smallest one that plays a request (exact on synthetic chunk schedules),
first audible from where speech starts, content scoring, and the bad inputs of the checkers (exit 2 before load)."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from cvload.errors import UsageError
from cvload.listen.content import error_rate, language_of, normalize_en, normalize_zh
from cvload.measure.metrics import BY_NAME, playback, playback_stalls, required_prebuffer_s
from cvload.results.records import RequestRecord

RATE = 1000  # 1000 samples a second: a chunk of 250 samples is 0.25 s


def schedule(arrivals: list[float], seconds: list[float], prebuffer: float = 0.0) -> RequestRecord:
    return RequestRecord(index=0, request_id="r", item_id="i", worker=0, server="s", text="t", sent=0.0,
                         chunk_offsets=list(arrivals), chunk_samples=[round(s * RATE) for s in seconds],
                         end_offset=arrivals[-1], sample_rate=RATE, prebuffer_s=prebuffer)


def test_a_player_that_starts_at_the_first_chunk_counts_the_stalls_as_before() -> None:
    # 0.5 s of audio at 0.1, the next at 0.9 (0.3 s late), the last at 1.4 (on time: 0.9 + 0.5)
    r = schedule([0.1, 0.9, 1.4], [0.5, 0.5, 0.5])
    assert playback_stalls(r) == (1, pytest.approx(0.3))
    played = playback(r)
    assert played is not None and played.start == 0.1 and played.stalls == ((0.5, pytest.approx(0.3)),)
    assert required_prebuffer_s(r) == pytest.approx(0.5)  # start at the second chunk: 0.5 s held


def test_the_prebuffer_delays_the_start_until_more_than_it_is_held() -> None:
    r = schedule([0.1, 0.9, 1.4], [0.5, 0.5, 0.5], prebuffer=0.5)
    played = playback(r)
    assert played is not None and played.start == 0.9 and played.stalls == ()  # holds 1.0 s > 0.5 s at 0.9
    # exactly the required prebuffer plays it without a stall; any less stalls
    assert playback_stalls(schedule([0.1, 0.9, 1.4], [0.5, 0.5, 0.5], prebuffer=0.499)) == (1, pytest.approx(0.3))


@pytest.mark.parametrize("seed", range(40))
def test_required_prebuffer_is_the_smallest_that_plays_without_a_stall(seed: int) -> None:
    """Against brute force: every prebuffer on a 1 ms grid below the answer stalls, the answer does not."""
    rng = np.random.default_rng(seed)
    n = int(rng.integers(1, 8))
    seconds = list(rng.choice([0.04, 0.1, 0.25, 0.5, 1.0], size=n))
    arrivals = list(itertools.accumulate(rng.uniform(0.0, 0.8, size=n)))
    r = schedule(arrivals, seconds)
    need = required_prebuffer_s(r)
    assert need is not None
    assert playback_stalls(schedule(arrivals, seconds, prebuffer=need))[0] == 0
    for grid in np.arange(0.0, need - 0.0005, 0.001):
        assert playback_stalls(schedule(arrivals, seconds, prebuffer=float(grid)))[0] > 0, (grid, need)


def test_first_audible_is_when_the_player_reaches_the_speech() -> None:
    first_audible = BY_NAME["first_audible_latency_ms"].of
    r = schedule([0.1, 0.9, 1.4], [0.5, 0.5, 0.5])
    r.speech_start_s = 0.3  # inside the first chunk: 0.1 + 0.3
    assert first_audible(r) == pytest.approx(400.0)
    assert BY_NAME["leading_silence_ms"].of(r) == pytest.approx(300.0)
    r.speech_start_s = 0.6  # after the stall at 0.5 s: 0.1 + 0.6 + 0.3 waited
    assert first_audible(r) == pytest.approx(1000.0)
    r.speech_start_s = None  # not looked for, or no speech found
    assert first_audible(r) is None


@pytest.mark.parametrize(("expected", "heard", "rate"), [
    ("In 1998 the company sold 42,000 units.", "In nineteen ninety-eight, the company sold 42 thousand units", 0.0),
    ("Hello, World!", "hello world", 0.0),
    ("It costs 5% more & ships today.", "it costs five percent more and ships today", 0.0),
    ("the cat sat on the mat", "the cat sat on a mat", 1 / 6),
    ("one two three", "", 1.0),
    ("one two", "one two three four five six", 1.0),  # insertions past the text are capped at 1
])
def test_english_scores_words_after_normalising(expected: str, heard: str, rate: float) -> None:
    assert error_rate(expected, heard, "en") == pytest.approx(rate)


def test_chinese_scores_characters_and_reads_numbers() -> None:
    assert normalize_zh("今天下午3点，开会。") == list("今天下午三点开会")
    assert error_rate("今天下午三点开会", "今天下午3点开会", "zh") == 0.0
    assert error_rate("今天下午三点开会", "今天上午三点开会", "zh") == pytest.approx(1 / 8)
    assert normalize_zh("第12号") == list("第十二号")


def test_language_follows_the_script() -> None:
    assert language_of("今天下午三点，我们在会议室讨论。") == "zh"
    assert language_of("Please remember to water the plants.") == "en"
    assert language_of("我们用 Python 写代码") == "zh"
    assert normalize_en("Don't STOP—now!") == ["don't", "stop", "now"]


def test_unknown_recogniser_and_missing_model_folder_are_usage_errors(tmp_path) -> None:
    from cvload.listen.asr import make_recognizer

    with pytest.raises(UsageError, match="unknown speech recogniser 'kaldi'"):
        make_recognizer("kaldi")
    with pytest.raises(UsageError, match="does not exist"):
        make_recognizer(f"moonshine:{tmp_path / 'nowhere'}").check()
    with pytest.raises(UsageError, match="lacks"):
        make_recognizer(f"moonshine:{tmp_path}").check()
    with pytest.raises(UsageError, match="needs its model folder"):
        make_recognizer("paraformer").check()
    with pytest.raises(UsageError, match="does not exist"):
        make_recognizer(f"sensevoice:{tmp_path / 'none'}").check()


def test_a_transcription_server_that_is_down_fails_before_any_load() -> None:
    from cvload.listen.asr import make_recognizer
    from cvload.triton.launcher import free_port

    port = free_port()
    with pytest.raises(UsageError, match="cannot reach the transcription server"):
        make_recognizer(f"openai:http://127.0.0.1:{port}").check()


def test_share_and_budget_are_parsed_and_checked() -> None:
    from cvload.listen.live import Sampling

    assert Sampling.parse("25%").share == 0.25
    assert Sampling.parse("0.5").share == 0.5
    assert Sampling.parse("8s/s").budget_s_per_s == 8.0
    for bad in ("150%", "0", "lots", "-1s/s"):
        with pytest.raises(UsageError):
            Sampling.parse(bad)


def test_the_checker_says_why_it_passed_a_request_over() -> None:
    """Backlog full, budget spent, a language without recogniser: each skipped request's record says which."""
    from cvload.listen.live import ContentChecker, Sampling

    def record(index: int, text: str = "Hello there.") -> RequestRecord:
        return RequestRecord(index=index, request_id="r", item_id="i", worker=0, server="s", text=text, sent=0.0)

    checker = ContentChecker("moonshine", Sampling.parse("1s/s"), backlog_requests=2)
    checker.languages = ("en",)
    first, second = record(0), record(1)
    assert checker.wants(first, 3.0)  # a second's worth to start with, and nothing waits: taken
    checker.stats.pending = 1  # (as submit() counts it)
    assert not checker.wants(second, 3.0) and second.content_check == "budget"
    checker.stats.pending = 2
    third = record(2)
    assert not checker.wants(third, 0.1) and third.content_check == "backlog"
    checker = ContentChecker("moonshine", Sampling.parse("100%"))
    checker.languages = ("en",)
    chinese = record(3, "今天天气很好")
    assert not checker.wants(chinese, 1.0) and chinese.content_check == "language"
    assert first.content_check is None  # taken: its outcome comes with its transcript


def test_content_counters_are_folded_from_records() -> None:
    from cvload.listen.live import ContentTally, merge_live

    def record(outcome: str | None, *, mismatch: bool = False, warmup: bool = False) -> RequestRecord:
        return RequestRecord(index=0, request_id="r", item_id="i", worker=0, server="s", text="t", sent=0.0,
                             content_check=outcome, warmup=warmup, flags=["content_mismatch"] if mismatch else [])

    records = [record("checked"), record("checked", mismatch=True), record("failed"), record("budget"),
               record("budget"), record("late"), record(None), record("checked", warmup=True)]
    live = {"asr": "moonshine", "backlog": 7, "backlog_audio_s": 30.0}  # the checker's word: no counts
    section = ContentTally.of(records, backlog=(2, 8.5)).section(live)
    assert (section["checked"], section["mismatches"], section["failed"], section["skipped"]) == (2, 1, 1, 3)
    assert section["skipped_because"] == {"budget": 2, "late": 1}
    assert (section["backlog"], section["backlog_audio_s"], section["asr"]) == (2, 8.5, "moonshine")
    assert ContentTally.of(records).section(live)["backlog"] == 7  # a run's: the checker's own
    # The dashboard's header reads the same counts (Session.content_live: the checker's word and the records').
    from cvload.tui.panels import listening_text

    assert listening_text(section).endswith("backlog 2 (8 s), 3 skipped")
    merged = merge_live([{"asr": "moonshine", "backlog": 1, "backlog_audio_s": 2.0, "audio_s": 10.0,
                          "cpu_s": 4.0, "workers": 1, "last_error": None},
                         {"asr": "moonshine", "backlog": 0, "backlog_audio_s": 0.0, "audio_s": 6.0,
                          "cpu_s": 4.0, "workers": 1, "last_error": "boom"}])
    assert merged is not None and merge_live([]) is None
    assert (merged["backlog"], merged["workers"], merged["processes"]) == (1, 2, 2)
    assert merged["audio_s_per_cpu_s"] == 2.0 and merged["last_error"] == "boom"


def test_the_speech_panel_lists_the_latest_mismatches() -> None:
    from cvload.measure.live_window import LiveStats
    from cvload.results.records import FLAG_CONTENT_MISMATCH
    from cvload.tui.panels import speech_lines

    live = LiveStats()
    for n, (error, heard) in enumerate([(0.0, "hello there"), (0.8, "goodbye now")]):
        r = schedule([0.1, 0.4], [0.5, 0.5])
        r.index, r.text, r.transcript, r.content_error, r.speech_start_s = n, "hello there", heard, error, 0.05
        if error > 0.3:
            r.flags.append(FLAG_CONTENT_MISMATCH)
        live.add(r)
    text = speech_lines(live.snapshot(), 60).plain
    assert "mismatches     1" in text and "hello there" in text and "| goodbye now" in text
    assert "p95 150" in text  # first audible: 0.1 s + 0.05 s (the mismatched request failed: not counted)


def test_an_items_language_comes_from_its_input(tmp_path) -> None:
    from cvload.settings.inputs import load_items

    path = tmp_path / "items.jsonl"
    path.write_text('{"id": "a", "target_text": "Hello", "language": "zh"}\n{"id": "b", "target_text": "Hi"}\n')
    a, b = load_items(path)
    assert a.language == "zh" and b.language is None
    path.write_text('{"id": "a", "target_text": "Hello", "language": "fr"}\n')
    with pytest.raises(UsageError, match="'language' 'fr' is not one of en, zh"):
        load_items(path)


def test_each_load_process_gets_its_share_of_the_checker() -> None:
    from cvload.load.process_fleet import split
    from cvload.settings.config import RunConfig

    config = RunConfig(server=["h:8001"], num_tasks=4, check_content="8s/s", check_workers=3, processes=2)
    parts = split(config.validate(), 2, items=4)
    assert [p.config["check_content"] for p in parts] == ["4s/s", "4s/s"]
    assert [p.config["check_workers"] for p in parts] == [2, 1]
    shares = split(RunConfig(server=["h:8001"], num_tasks=4, check_content="25%", processes=3).validate(), 3, 4)
    assert [p.config["check_workers"] for p in shares] == [1, 1, 1]  # at least one recogniser each
    assert {p.config["check_content"] for p in shares} == {"25%"}
