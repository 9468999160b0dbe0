"""Bad state files and non-Triton peers get a clear error or finding from ``cvload bootstrap``, never a traceback."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from server_bootstrap.cli import main

WRONG_SHAPES = {
    "a list": "[]",
    "a stage record missing keys": '{"version": 1, "stages": {"emulator": {"repo": {"status": "done"}}}}',
    "stages as a list": '{"version": 1, "stages": []}',
    "a server that is a number": '{"version": 1, "servers": [1]}',
    "config as a number": '{"version": 1, "config": 3}',
}


@pytest.mark.parametrize("text", WRONG_SHAPES.values(), ids=WRONG_SHAPES.keys())
def test_state_file_of_the_wrong_shape_is_a_usage_error(tmp_path: Path, text: str,
                                                        capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "bootstrap-state.json"
    path.write_text(text)
    for command in (["status"], ["down"], ["doctor"], ["up", "--target", "emulator"]):
        assert main([*command, "--workdir", str(tmp_path)]) == 2, command
        err = capsys.readouterr().err
        assert f"state file {path} is unreadable" in err and "remove it to start over" in err, (command, err)
    assert path.read_text() == text  # left for the user to look at


class _HtmlHandler(BaseHTTPRequestHandler):
    """An ordinary web page on every path, as a web app or a proxy in front of the wrong port would answer."""

    def _page(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        body = b"<!doctype html><html><body>It works!</body></html>"
        self.send_response(200)
        self.send_header("Content-Type", "text/html")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_GET = do_POST = _page

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002
        pass


@pytest.fixture
def html_server() -> Iterator[int]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _HtmlHandler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.server_address[1]
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def test_doctor_against_a_plain_web_server(html_server: int, tmp_path: Path,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["doctor", "--server", f"127.0.0.1:{html_server}", "--workdir", str(tmp_path)]) == 1
    out = capsys.readouterr().out
    assert "ok    http port" in out and "ok    live" in out  # it is reached: HTTP itself works
    assert "FAIL  triton api" in out
    assert "not a Triton server (HTTP answered but not with Triton's JSON)" in out
    assert "fix:   give the Triton HTTP port" in out
