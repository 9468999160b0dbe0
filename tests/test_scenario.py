"""Scenario files: lookup by name or path, strict keys and types (errors name key and file), the shipped files."""

from __future__ import annotations

from pathlib import Path

import pytest

from cvload.cli import build_parser
from cvload.commands.run import config_from_args
from cvload.errors import UsageError
from cvload.settings.config import RunConfig
from cvload.settings.scenario import SCENARIO_DIR, available_scenarios, find_scenario, load_scenario

SHIPPED = ("smoke", "streaming-8", "offline-http", "open-loop", "ci")


def scenario(tmp_path: Path, body: str, name: str = "s.toml") -> Path:
    path = tmp_path / name
    path.write_text(body, encoding="utf-8")
    return path


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_scenarios_load_and_validate(name: str) -> None:
    values = load_scenario(name)
    assert values["scenario"] == str((SCENARIO_DIR / f"{name}.toml").resolve())
    assert values["name"] == name
    config = RunConfig().merged(values)
    if not config.emulator:  # target-agnostic scenarios take --server on the command line
        config = config.merged({"server": ["gpu-host"]})
    config.validate()
    text = (SCENARIO_DIR / f"{name}.toml").read_text()
    assert text.startswith("#") and "Keys" in text  # documented in a comment header
    assert "Run: cvload run " + name in text


def test_shipped_scenarios_match_their_purpose() -> None:
    assert set(SHIPPED) <= set(available_scenarios())
    smoke, s8, http, open_loop, ci = (load_scenario(n) for n in SHIPPED)
    assert smoke["emulator"] and smoke["requests"] <= 20
    assert (s8["num_tasks"], s8["mode"], s8["protocol"]) == (8, "streaming", "grpc")
    assert (http["protocol"], http["mode"]) == ("http", "offline")
    assert open_loop["rate"] > 0 and open_loop["arrival"] == "poisson" and open_loop["duration"] == 60.0
    assert ci["emulator"] and ci["slo"]


def test_values_are_typed_and_paths_resolve_against_the_file(tmp_path: Path) -> None:
    (tmp_path / "conf").mkdir()
    path = scenario(tmp_path / "conf", """
        num_tasks = 4
        rate = 2                      # an integer where a float is expected is fine
        duration = "2m"
        ramp = 0
        request_timeout = "1500ms"
        telemetry_interval = 0.5
        warmup = "5s"
        server = ["a:8001", "b:8001"]
        inputs = "../data/items.jsonl"
        out = "/abs/results"
        spk_cache = true
        slo = ["first_chunk.p95<300ms", "error_rate<1%"]
        profile_set = { jitter = 0.1, seed = 3 }
        name = "my run"
    """)
    v = load_scenario(path)
    assert v["num_tasks"] == 4 and v["rate"] == 2.0 and isinstance(v["rate"], float)
    assert (v["duration"], v["ramp"], v["request_timeout"], v["telemetry_interval"]) == (120.0, 0.0, 1.5, 0.5)
    assert v["warmup"] == "5s" and v["server"] == ["a:8001", "b:8001"] and v["spk_cache"] is True
    assert v["inputs"] == str((tmp_path / "data" / "items.jsonl").resolve())
    assert v["out"] == "/abs/results"
    assert v["profile_set"] == {"jitter": 0.1, "seed": 3} and v["name"] == "my run"


def test_found_by_name_in_the_current_folder_first(tmp_path: Path) -> None:
    mine = scenario(tmp_path, "requests = 3\n", "smoke.toml")
    assert find_scenario("smoke", cwd=tmp_path) == mine
    (tmp_path / "scenarios").mkdir()
    other = scenario(tmp_path / "scenarios", "requests = 5\n", "nightly.toml")
    assert load_scenario("nightly", cwd=tmp_path)["requests"] == 5
    assert find_scenario("nightly", cwd=tmp_path) == other
    assert find_scenario("ci", cwd=tmp_path) == SCENARIO_DIR / "ci.toml"
    assert find_scenario(str(mine)) == mine


@pytest.mark.parametrize(("given", "message"), [
    ("smok", r"no scenario named 'smok'.*did you mean 'smoke'\?(.|\n)*built-in scenarios: .*streaming-8"),
    ("missing.toml", r"scenario file missing\.toml not found"),
    ("some/dir/x", r"scenario file some/dir/x not found"),
])
def test_unknown_scenarios(tmp_path: Path, given: str, message: str) -> None:
    with pytest.raises(UsageError, match=message):
        load_scenario(given, cwd=tmp_path)


def test_a_folder_is_not_a_scenario(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="is not a file"):
        load_scenario(tmp_path)


@pytest.mark.parametrize(("body", "message"), [
    ("num_task = 8", r"unknown key 'num_task' in scenario .*s\.toml \(did you mean 'num_tasks'\?\)"),
    ("num-tasks = 8", r"unknown key 'num-tasks' in scenario .*s\.toml \(did you mean 'num_tasks'\?\)"),
    ("[load]\nrate = 3", r"unknown key 'load' in scenario .*s\.toml"),
    ('requests = "40"', r"key 'requests' in scenario .*s\.toml must be an integer, got str '40'"),
    ("requests = true", r"key 'requests' in scenario .*s\.toml must be an integer, got bool True"),
    ("num_tasks = 2.5", r"key 'num_tasks' .* must be an integer, got float 2\.5"),
    ('emulator = "yes"', r"key 'emulator' .* must be true or false, got str 'yes'"),
    ('rate = "fast"', r"key 'rate' .* must be a number, got str 'fast'"),
    ('server = "gpu:8001"', r"key 'server' .* must be a list of strings(.|\n)*hint: write a list: "
                            r'server = \["gpu:8001"\]'),
    ("slo = [1]", r"key 'slo' .* must be a list of strings, got list \[1\]"),
    ("profile_set = 3", r"key 'profile_set' .* must be a table, got int 3"),
    ('mode = "stream"', r"key 'mode' in scenario .*s\.toml: 'stream' is not one of streaming, offline "
                        r"\(did you mean 'streaming'\?\)"),
    ('protocol = "https"', r"key 'protocol' .*: 'https' is not one of grpc, http"),
    ('duration = "soon"', r"key 'duration' in scenario .*s\.toml: duration 'soon' is not a duration"),
    ("ramp = -1", r"key 'ramp' .*: must not be negative"),
    ('warmup = "a while"', r"key 'warmup' in scenario .*s\.toml: warmup 'a while' is not a duration"),
    ('slo = ["frist_chunk.p95<300ms"]', r"key 'slo' in scenario .*s\.toml: objective 'frist_chunk\.p95<300ms': "
                                        r"unknown metric(.|\n)*did you mean first_chunk\.p95\?"),
    ('scenario = "x.toml"', r"key 'scenario' in scenario .*s\.toml: set by cvload"),
    ("requests = ", r"scenario .*s\.toml is not valid TOML: .*line 3"),
])
def test_mistakes_name_the_key_and_the_file(tmp_path: Path, body: str, message: str) -> None:
    path = scenario(tmp_path, "# a scenario\nnum_tasks = 2\n" * (not body.startswith("num")) + body + "\n")
    with pytest.raises(UsageError, match=message):
        load_scenario(path)


def test_command_line_flags_override_the_scenario(tmp_path: Path) -> None:
    """`cvload run FILE --flags`: defaults < scenario < flags given on the command line."""
    path = scenario(tmp_path, """
        emulator = true
        profile = "instant"
        num_tasks = 2
        requests = 50
        ramp = "250ms"
        inputs = "set/items.lst"
        slo = ["error_rate<1%"]
    """)
    parser = build_parser()
    config = config_from_args(parser.parse_args(["run", str(path), "--requests", "3", "--slo", "rtf.p50<1"]))
    assert config.emulator and config.profile == "instant"  # from the file (no --emulator flag given)
    assert (config.num_tasks, config.ramp) == (2, 0.25)
    assert config.requests == 3 and config.slo == ["rtf.p50<1"]  # the flags win
    assert config.inputs == str((tmp_path / "set" / "items.lst").resolve())
    assert config.mode == "streaming" and config.request_timeout == 60.0  # defaults fill the rest
    config = config_from_args(parser.parse_args(["run", "ci", "--server", "gpu-host:8001"]))
    assert not config.emulator and config.server == ["gpu-host:8001"]  # an explicit server replaces the emulator
    assert config.slo == load_scenario("ci")["slo"]
    with pytest.raises(UsageError, match=r"unknown key 'num_task' in scenario"):
        config_from_args(parser.parse_args(["run", str(scenario(tmp_path, "num_task = 3", "bad.toml"))]))
