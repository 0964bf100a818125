"""``abi-engine serve --loop / --http``: uvloop and httptools when installed, as uvicorn
picks them, and a one-line error when asked for and missing (issue #18)."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import types
from pathlib import Path

import httpx
import pytest
from test_cli import Server, _env, assert_one_line_error, run_cli

from abi_engine.cli import build_parser, processes
from abi_engine.cli._common import CliError
from abi_engine.cli.serve import http_protocol, loop_factory

#: A stand-in uvloop: asyncio's loop, noting each process that asked for it.
FAKE_UVLOOP = """
import asyncio, os


def new_event_loop():
    with open(os.environ["UVLOOP_LOG"], "a") as log:
        log.write(f"{os.getpid()}\\n")
    return asyncio.new_event_loop()
"""


def _missing(monkeypatch: pytest.MonkeyPatch, *names: str) -> None:
    for name in names:
        monkeypatch.setitem(sys.modules, name, None)  # importing it raises ImportError


def test_loop_factory_picks_uvloop_when_installed(monkeypatch: pytest.MonkeyPatch) -> None:
    """auto: uvloop's factory when importable, else asyncio's (None); asyncio: always None;
    uvloop: its factory, or a CliError naming the extra when it is missing."""
    fake = types.ModuleType("uvloop")
    fake.new_event_loop = asyncio.new_event_loop  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "uvloop", fake)
    assert loop_factory("auto") is asyncio.new_event_loop
    assert loop_factory("uvloop") is asyncio.new_event_loop
    assert loop_factory("asyncio") is None
    _missing(monkeypatch, "uvloop")
    assert loop_factory("auto") is None
    assert loop_factory("asyncio") is None
    with pytest.raises(CliError, match=r"--loop uvloop: uvloop is not installed.*\[server\]"):
        loop_factory("uvloop")


def test_http_protocol_checks_httptools(monkeypatch: pytest.MonkeyPatch) -> None:
    """auto and h11 pass to uvicorn as they are; httptools only when it is installed."""
    monkeypatch.setitem(sys.modules, "httptools", types.ModuleType("httptools"))
    assert [http_protocol(n) for n in ("auto", "h11", "httptools")] == ["auto", "h11", "httptools"]
    _missing(monkeypatch, "httptools")
    assert http_protocol("auto") == "auto"
    with pytest.raises(CliError, match=r"--http httptools: httptools is not installed"):
        http_protocol("httptools")


def test_the_children_of_processes_get_the_same_loop_and_parser() -> None:
    """``serve --processes N`` hands --loop and --http to each child."""
    args = build_parser().parse_args(
        ["serve", "--db", "x.db", "--processes", "2", "--loop", "asyncio", "--http", "h11"]
    )
    argv = processes._child_argv(args, (3, 4, 5))
    assert argv[argv.index("--loop") + 1] == "asyncio"
    assert argv[argv.index("--http") + 1] == "h11"
    defaults = processes._child_argv(build_parser().parse_args(["serve", "--db", "x"]), (3, 4, 5))
    assert defaults[defaults.index("--loop") + 1] == "auto"
    assert defaults[defaults.index("--http") + 1] == "auto"


@pytest.mark.slow
@pytest.mark.parametrize(
    ("flags", "uses_uvloop"),
    [([], True), (["--loop", "uvloop", "--http", "h11"], True), (["--loop", "asyncio"], False)],
    ids=["auto", "uvloop-h11", "asyncio"],
)
def test_serve_runs_on_uvloop_when_installed_unless_told(
    tmp_path: Path, flags: list[str], uses_uvloop: bool
) -> None:
    """With a uvloop on the path, ``serve`` (auto) makes its loop with it and answers;
    ``--loop asyncio`` does not touch it."""
    (tmp_path / "fake").mkdir()
    (tmp_path / "fake" / "uvloop.py").write_text(FAKE_UVLOOP)
    log = tmp_path / "uvloop.log"
    env = _env(
        PYTHONPATH=os.pathsep.join([str(tmp_path / "fake"), os.environ.get("PYTHONPATH", "")]),
        UVLOOP_LOG=str(log),
    )
    server = Server(
        "serve", "--db", str(tmp_path / "x.db"), "--port", "0", *flags, cwd=tmp_path, env=env
    )
    try:
        api = server.wait_serving()
        assert httpx.get(f"{api}/health", timeout=10).status_code == 200
        assert server.stop(signal.SIGTERM) == 0, server.output()
    finally:
        server.close()
    assert "Traceback" not in server.output()
    if uses_uvloop:
        assert log.read_text().split() == [str(server.proc.pid)]
    else:
        assert not log.exists()


@pytest.mark.slow
@pytest.mark.parametrize(("flag", "module"), [("--loop", "uvloop"), ("--http", "httptools")])
def test_asking_for_a_missing_one_is_one_line(
    tmp_path: Path, flag: str, module: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``--loop uvloop`` / ``--http httptools`` without it installed: exit 2, one line naming
    the extra, nothing bound or created."""
    (tmp_path / "hide").mkdir()
    (tmp_path / "hide" / f"{module}.py").write_text("raise ImportError('hidden by the test')\n")
    env = _env(
        PYTHONPATH=os.pathsep.join([str(tmp_path / "hide"), os.environ.get("PYTHONPATH", "")])
    )
    db = tmp_path / "x.db"
    result = run_cli("serve", "--db", str(db), "--port", "0", flag, module, cwd=tmp_path, env=env)
    assert_one_line_error(result, f"{flag} {module}", "abi-engine[server]")
    assert not db.exists()
