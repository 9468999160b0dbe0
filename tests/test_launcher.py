"""The local Triton launcher against the real tritonserver: start, stop, cleanup, and every way a start fails."""

from __future__ import annotations

import dataclasses
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy
import pytest
from envs import fitting_env, make_env, numpy2_env

from cvload import subprocesses
from cvload.emulator import EmulatedModel, build_repository, get_profile
from cvload.errors import CvloadError, ServerError
from cvload.triton import launcher, stub_python
from cvload.triton.launcher import TritonServer

INSTANT = get_profile("instant")


def group_pids(pgid: int) -> list[int]:
    """Running processes of a process group: the server and its Python-backend stubs."""
    return [p.pid for p in subprocesses.group_members(pgid)]


def repository(tmp_path: Path, models: list[EmulatedModel] | None = None) -> Path:
    return build_repository(tmp_path / "emu", models or [EmulatedModel("cosyvoice2", INSTANT, "streaming")])


def break_initialize(repo: Path, statement: str, model: str = "cosyvoice2") -> None:
    """Make the model's initialize() run ``statement`` first (raise, hang, ...)."""
    path = repo / model / "1" / "model.py"
    text = path.read_text()
    marker = '        config, params, self.profile = model_args(args)'
    assert marker in text
    path.write_text(text.replace(marker, f"        {statement}\n{marker}"))


def test_start_serve_stop_leaves_nothing_behind(tmp_path: Path) -> None:
    repo = repository(tmp_path, [
        EmulatedModel("cosyvoice2", INSTANT, "streaming"),
        EmulatedModel("cosyvoice2_offline", INSTANT, "offline", instances=2),
    ])
    envs_before = subprocesses.python_envs()
    server = TritonServer(repo)  # no workdir: the launcher makes (and owns) a temporary one
    server.start()
    try:
        assert server.alive()
        with urllib.request.urlopen(f"http://{server.http_url}/v2/health/ready", timeout=5) as resp:
            assert resp.status == 200
        pid = server.process.pid  # type: ignore[union-attr]
        members = group_pids(pid)
        assert pid in members and len(members) >= 1 + 1 + 2, "server plus one stub per model instance"
        assert server.shm_prefix and subprocesses.shm_regions(server.shm_prefix), "stubs talk through /dev/shm"
        workdir = server.workdir
        assert workdir is not None and (workdir / "tritonserver.log").is_file()
        own_env = server._tmp_own
        assert len(own_env) == 1 and own_env <= subprocesses.python_envs() - envs_before, "the backend's /tmp folder"
        assert set(server.endpoints()) == {"http", "grpc", "metrics", "log"}
        ports = (server.http_port, server.grpc_port, server.metrics_port)
        assert not any((launcher._reservations() / str(p)).exists() for p in ports), "released once bound"
        with urllib.request.urlopen(server.metrics_url, timeout=5) as resp:
            assert b"nv_inference_request_success" in resp.read()
    finally:
        server.stop()
    assert server.process.poll() is not None  # type: ignore[union-attr]
    assert not group_pids(pid), "stop() returns once no process of the server's group runs"
    assert not subprocesses.shm_regions(server.shm_prefix)
    assert server.clean_exit is True
    assert not workdir.exists(), "a clean stop removes the launcher's own workdir"
    assert not any(os.path.exists(p) for p in own_env)
    server.stop()  # a second stop is harmless


def test_given_workdir_is_kept_after_a_clean_stop(tmp_path: Path) -> None:
    """Also when something removed the backend's /tmp folder meanwhile (a launcher that started a server beside
    this one and took it for its own): it is put back, else the backend aborts as it deletes it on the way out."""
    workdir = tmp_path / "server"
    with TritonServer(repository(tmp_path), workdir=workdir) as server:
        assert server.log_path == workdir / "tritonserver.log"
        (own_env,) = server._tmp_own
        os.rmdir(own_env)
    assert server.clean_exit is True, (workdir / "tritonserver.log").read_text()[-2000:]
    assert not os.path.exists(own_env)
    assert (workdir / "tritonserver.log").read_text().strip(), "the caller's folder and log stay"


@pytest.mark.parametrize("which", ["http_port", "grpc_port", "metrics_port"])
def test_busy_port_is_named(tmp_path: Path, which: str) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        server = TritonServer(repository(tmp_path), **{which: port})  # type: ignore[arg-type]
        with pytest.raises(ServerError) as err:
            server.start()
    assert str(port) in str(err.value)
    assert "already in use" in str(err.value)
    assert server.process is None, "nothing was started"


@pytest.mark.parametrize("kind", ["missing", "not_executable"])
def test_explicit_binary_that_is_not_there_says_how_to_install(tmp_path: Path, kind: str) -> None:
    binary = tmp_path / "bin" / "tritonserver"
    if kind == "not_executable":
        binary.parent.mkdir()
        binary.write_text("#!/bin/sh\n")
    with pytest.raises(CvloadError) as err:
        TritonServer(repository(tmp_path), tritonserver=binary).start()
    message = str(err.value)
    assert str(binary) in message
    assert "pip install 'cvload[emulator]'" in message and "--tritonserver" in message


def test_no_binary_anywhere_says_how_to_install(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    if Path("/opt/tritonserver/bin/tritonserver").exists():
        pytest.skip("this machine has /opt/tritonserver")
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.setattr(launcher, "_pytriton_root", lambda: None)  # as if nvidia-pytriton were not installed
    with pytest.raises(ServerError) as err:
        TritonServer(repository(tmp_path)).start()
    assert "tritonserver not found" in str(err.value)
    assert "pip install 'cvload[emulator]'" in str(err.value)


def _assert_failed_start_cleaned(server: TritonServer) -> None:
    pid = server.process.pid  # type: ignore[union-attr]
    assert server.process.poll() is not None  # type: ignore[union-attr]
    assert not group_pids(pid), "stop() returns once no process of the server's group runs"
    assert not subprocesses.shm_regions(server.shm_prefix)
    assert server.clean_exit is False


@pytest.mark.parametrize(
    "breakage, expected",
    [
        ("raise", "RuntimeError: emulator boom in initialize"),
        ("config", "config.pbtxt"),
    ],
)
def test_model_that_fails_to_load_quotes_the_log(tmp_path: Path, breakage: str, expected: str) -> None:
    repo = repository(tmp_path)
    if breakage == "raise":
        break_initialize(repo, 'raise RuntimeError("emulator boom in initialize")')
    else:
        (repo / "cosyvoice2" / "config.pbtxt").write_text('name: "cosyvoice2"\nbackend: "python"\ninput [ { name: x\n')
    server = TritonServer(repo, ready_timeout=30)  # own workdir: kept after the failure, log included
    started = time.monotonic()
    with pytest.raises(ServerError) as err:
        server.start()
    elapsed = time.monotonic() - started
    assert elapsed < 15, f"a model that fails to load ends the start early ({elapsed:.1f} s)"
    message = str(err.value)
    assert "exited with code" in message and expected in message
    assert str(server.log_path) in message
    _assert_failed_start_cleaned(server)
    assert server.log_path is not None and server.log_path.is_file(), "the log stays after a failure"
    assert expected.split(":")[0] in server.log_path.read_text()
    assert not (server.workdir / "backends").exists()  # type: ignore[operator]
    shutil.rmtree(server.workdir)  # type: ignore[arg-type]


def test_stub_that_hangs_hits_the_deadline(tmp_path: Path) -> None:
    repo = repository(tmp_path)
    break_initialize(repo, "time.sleep(3600)")
    server = TritonServer(repo, workdir=tmp_path / "server", ready_timeout=1.5, stop_timeout=5)
    started = time.monotonic()
    with pytest.raises(ServerError) as err:
        server.start()
    elapsed = time.monotonic() - started
    assert 1.5 <= elapsed < 10
    message = str(err.value)
    assert "not ready after 1.5 s" in message
    assert "loading: cosyvoice2" in message, "the log tail shows what was still loading"
    _assert_failed_start_cleaned(server)
    assert not [p for p in server._tmp_own if os.path.exists(p)], "its /tmp/python_env_* folder is removed"


def test_restart_on_the_same_ports_right_after_a_stop(start_emulator) -> None:  # noqa: ANN001
    """Ports left in TIME_WAIT by the stopped server are free for the next one (bootstrap down, then up)."""
    http, grpc, metrics = launcher.free_ports(3)
    for _ in range(2):
        server = start_emulator([EmulatedModel("cosyvoice2", INSTANT, "streaming")], http_port=http,
                                grpc_port=grpc, metrics_port=metrics).server
        with urllib.request.urlopen(f"http://{server.http_url}/v2/health/ready", timeout=5) as resp:
            assert resp.status == 200
        with socket.create_connection(("127.0.0.1", metrics), timeout=5):
            pass
        server.stop()
        assert not server.alive()


def test_server_that_dies_is_noticed_and_cleaned(tmp_path: Path) -> None:
    server = TritonServer(repository(tmp_path))
    server.start()
    pid = server.process.pid  # type: ignore[union-attr]
    os.kill(pid, 9)
    subprocesses.wait_until(lambda: not server.alive(), 5, what="the server to die")
    server.stop()
    assert server.clean_exit is False
    assert not group_pids(pid), "stop() returns once no process of the server's group runs"
    assert not subprocesses.shm_regions(server.shm_prefix)
    assert server.workdir is not None and (server.workdir / "tritonserver.log").is_file(), "kept after a failure"
    shutil.rmtree(server.workdir)


def abort_server_at_start(repo: Path, starts: Path, message: str, times: int) -> None:
    """Make the first ``times`` starts abort as Triton does when its stub start race hits: the stub's initialize
    writes ``message`` (the C++ runtime's last words) to the server's log and the server gets SIGABRT. Each start
    adds a line to ``starts``."""
    break_initialize(repo, (
        f"import os, signal, sys, time, pathlib; starts = pathlib.Path({str(starts)!r})\n"
        "        with starts.open('a') as f: f.write('start\\n')\n"
        f"        if len(starts.read_text().split()) <= {times}: "
        f"sys.stderr.write({message!r} + '\\n'); sys.stderr.flush(); os.kill(os.getppid(), signal.SIGABRT); "
        "time.sleep(60)"))


LOCK_EXCEPTION = "terminate called after throwing an instance of 'boost::interprocess::lock_exception'"


def test_an_abort_in_the_stub_start_race_is_started_again(tmp_path: Path) -> None:
    """Triton's Python backend at times aborts the server while starting a stub (an interprocess lock fails): the
    start is tried once more on the same ports, the aborted attempt's log kept and its residue removed."""
    repo, starts = repository(tmp_path), tmp_path / "starts"
    abort_server_at_start(repo, starts, LOCK_EXCEPTION, times=1)
    mine = f"cvload{os.getpid()}x"
    regions_before = set(subprocesses.shm_regions(mine))
    server = TritonServer(repo, workdir=tmp_path / "server", ready_timeout=30)
    with server:
        with urllib.request.urlopen(f"http://{server.http_url}/v2/health/ready", timeout=5) as resp:
            assert resp.status == 200
        assert starts.read_text().split() == ["start", "start"]
        assert server.aborted_starts == [tmp_path / "server" / "tritonserver.log.attempt1"]
        assert LOCK_EXCEPTION in server.aborted_starts[0].read_text()
        assert LOCK_EXCEPTION not in server.log_path.read_text()  # type: ignore[union-attr]
        regions = set(subprocesses.shm_regions(mine)) - regions_before
        assert regions and all(r.startswith(f"/dev/shm/{server.shm_prefix}") for r in regions), \
            "the aborted attempt's regions are gone"
    assert server.clean_exit is True
    assert set(subprocesses.shm_regions(mine)) == regions_before


def test_other_aborts_at_start_are_not_started_again(tmp_path: Path) -> None:
    repo, starts = repository(tmp_path), tmp_path / "starts"
    abort_server_at_start(repo, starts, "terminate called after throwing an instance of 'std::bad_alloc'", times=2)
    server = TritonServer(repo, workdir=tmp_path / "server", ready_timeout=30)
    with pytest.raises(ServerError, match="exited with code -6") as err:
        server.start()
    assert "std::bad_alloc" in str(err.value)
    assert starts.read_text().split() == ["start"] and server.aborted_starts == []
    _assert_failed_start_cleaned(server)


def test_server_does_not_outlive_a_killed_parent(tmp_path: Path) -> None:
    """A cvload (or test run) killed with SIGKILL cannot stop its server: the server gets SIGTERM from the kernel."""
    repo = repository(tmp_path)
    script = (
        "import sys, time\n"
        "from pathlib import Path\n"
        "from cvload.triton.launcher import TritonServer\n"
        f"server = TritonServer(Path({str(repo)!r}), workdir=Path({str(tmp_path / 'server')!r}),\n"
        "                       die_with_parent=True).start()\n"
        "print(server.process.pid, server.shm_prefix, flush=True)\n"
        "time.sleep(600)\n"
    )
    parent = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    try:
        line = parent.stdout.readline().split()  # type: ignore[union-attr]
        assert line, "the parent did not start its server"
        server_pid, prefix = int(line[0]), line[1]
        assert group_pids(server_pid)
    finally:
        parent.kill()
        parent.wait()
    subprocesses.wait_until(lambda: not group_pids(server_pid), 20, what="the orphaned server to exit")
    subprocesses.wait_until(lambda: not subprocesses.shm_regions(prefix), 5, what="the server to remove its regions")


# ---- the Python that runs the bundled server's stub ----------------------------------------------------------
needs_bundle = pytest.mark.skipif(launcher.find_tritonserver().bundle_root is None,
                                  reason="the stub checks concern the nvidia-pytriton bundle")


@needs_bundle
async def test_stub_runs_in_the_chosen_environment_not_the_first_python3(tmp_path: Path) -> None:
    """A second environment (this one's packages through a .pth) runs the stub: it records its own start, and
    the FP32 prompt and BYTES text arrive intact (the audio's length follows from the text)."""
    from cvload.targets import make_target
    from cvload.targets.base import SynthesisRequest

    starts = tmp_path / "starts.txt"
    # A .pth "import" line runs at every start of that environment (Debian's own sitecustomize would shadow one).
    python = fitting_env(tmp_path / "stubenv", {
        "zz_record_start.pth": f"import os, sys; open({str(starts)!r}, 'a').write(f'{{os.getppid()}} {{sys.prefix}}\\n')\n",
    })
    repo = repository(tmp_path, [EmulatedModel("cosyvoice2_offline", INSTANT, "offline")])
    with TritonServer(repo, workdir=tmp_path / "server", stub_python=python,
                      extra_args=["--exit-timeout-secs=0"]) as server:
        assert server.stub is not None and server.stub.python == python
        target = make_target("http", "offline", server.http_url, "cosyvoice2_offline", timeout=10)
        await target.open()
        try:
            prompt = (0.1 * numpy.sin(numpy.arange(16000) / 10)).astype(numpy.float32)
            text = "Hello there, this is a test of the emergency broadcast system."
            chunks = [c async for c in target.synthesize(SynthesisRequest("stubenv-1", text, "a prompt", prompt))]
        finally:
            await target.close()
        server_pid = server.process.pid  # type: ignore[union-attr]
    assert [c.audio.size for c in chunks] == [24000 + 48000 + 40320]
    stub_starts = [line.split(" ", 1) for line in starts.read_text().splitlines()]
    assert [str(server_pid), str(tmp_path / "stubenv")] in stub_starts, stub_starts


@needs_bundle
@pytest.mark.parametrize("how", ["argument", "environment"])
def test_stub_python_with_numpy_2_is_refused_before_start(tmp_path: Path, how: str,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    python = numpy2_env(tmp_path / "np2")
    if how == "environment":
        monkeypatch.setenv(stub_python.ENV_VAR, str(python))
    server = TritonServer(repository(tmp_path), stub_python=python if how == "argument" else None)
    with pytest.raises(ServerError) as err:
        server.start()
    message = str(err.value)
    assert f"{python} imports numpy 2.2.6" in message and "works only with numpy 1.x" in message
    assert stub_python.SETUP_COMMAND in message and "--server" in message, "says what to do"
    assert server.process is None, "nothing was started"


def test_python3_dir_is_the_venv_bin_or_a_link_to_a_bare_interpreter(tmp_path: Path) -> None:
    python = make_env(tmp_path / "env", {})
    assert launcher._python3_dir(python, tmp_path / "work") == python.parent
    bare = tmp_path / "usr" / "bin" / "python3.99"
    bare.parent.mkdir(parents=True)
    bare.symlink_to(sys.executable)
    (bare.parent / "python3").symlink_to("/bin/sh")  # another python3 beside it
    shim = launcher._python3_dir(bare, tmp_path / "work")
    assert shim == tmp_path / "work" / "stub-bin"
    assert (shim / "python3").resolve() == Path(sys.executable).resolve()


@needs_bundle
def test_a_stub_with_its_own_libpython_runs_on_the_interpreters(tmp_path: Path) -> None:
    """The 3.13 stub carries a grafted libpython: a copy of it (its RPATH then leads nowhere) and a stub-lib link
    under the grafted name make it load the chosen interpreter's; other stubs are plain links."""
    install = launcher.find_tritonserver()
    assert install.bundle_root is not None
    here = stub_python.inspect(sys.executable)
    assert here.libpython is not None
    as_313 = dataclasses.replace(here, version="3.13")
    stub = launcher._prepare_bundle_backends(install, tmp_path / "a", as_313) / "python" / "triton_python_backend_stub"
    original = install.bundle_root / "python_backend_stubs" / "3.13" / "triton_python_backend_stub"
    assert not stub.is_symlink() and stub.read_bytes() == original.read_bytes()
    [link] = (tmp_path / "a" / "stub-lib").iterdir()
    assert link.name.startswith("libpython3-") and link.name.endswith(".13.so.1.0")
    assert (install.libs / link.name).exists(), "named as the stub asks for it"  # type: ignore[operator]
    assert link.resolve() == Path(here.libpython).resolve()

    as_312 = dataclasses.replace(here, version="3.12")
    stub = launcher._prepare_bundle_backends(install, tmp_path / "b", as_312) / "python" / "triton_python_backend_stub"
    assert stub.is_symlink() and not (tmp_path / "b" / "stub-lib").exists()


def test_free_ports_are_distinct_bindable_and_never_ephemeral() -> None:
    """Chosen below the kernel's ephemeral range, so no outgoing connection takes one before its server binds it;
    all distinct within a call, and free (bindable) when returned."""
    low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    ports = launcher.free_ports(20)
    assert len(set(ports)) == 20
    if low - launcher.LISTEN_PORTS_FROM >= 1000:
        assert all(launcher.LISTEN_PORTS_FROM <= p < low for p in ports), ports
    for port in ports:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.bind(("127.0.0.1", port))


def test_a_port_another_live_process_picked_is_not_handed_out_until_it_is_released() -> None:
    """Between a pick and its server's bind the port looks free to every other launcher on the host: a pick is
    reserved while its picker lives (RESERVE_S at most), and released once its server is up."""
    picker = subprocess.Popen([sys.executable, "-c", "import sys; from cvload.triton.launcher import free_ports; "
                               "print(*free_ports(3), flush=True); sys.stdin.read()"],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert picker.stdout is not None and picker.stdin is not None
    theirs = [int(p) for p in picker.stdout.readline().split()]
    try:
        assert [launcher._reserve(port) for port in theirs] == [False] * 3, "reserved by a live process"
        picker.stdin.close()
        picker.wait(10)
        assert launcher._reserve(theirs[0]), "its picker is gone: a stale reservation is taken over"
        assert not launcher._reserve(theirs[0]), "reserved now, by this process"
        launcher.release_ports([theirs[0]])
        assert launcher._reserve(theirs[0]), "released"
    finally:
        picker.kill()
        launcher.release_ports(theirs)
