"""The ``abi-engine`` command line, run as a real subprocess against real SQLite files."""

from __future__ import annotations

import importlib.util
import os
import queue
import re
import shlex
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import anyio
import httpx
import pytest

from abi_engine import Principal, Scope
from abi_engine.auth import TokenService
from abi_engine.cli import main
from abi_engine.errors import Unauthorized
from abi_engine.storage.sqlite import SQLiteStore

START_TIMEOUT = 30.0
STOP_TIMEOUT = 10.0
SERVING = re.compile(r"^abi-engine serving (http://\S+/api/v1) \(db: (.+)\)$")


def _env(**extra: str) -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("ABI_ENGINE_DB", "ABI_ENGINE_URL", "ABI_ENGINE_ALLOW_PRIVATE_URLS")
    }
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra)
    return env


def run_cli(
    *args: str, cwd: Path, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """Run ``abi-engine ARGS`` to completion."""
    return subprocess.run(
        [sys.executable, "-m", "abi_engine", *args],
        cwd=cwd,
        env=env or _env(),
        capture_output=True,
        text=True,
        timeout=60,
        stdin=subprocess.DEVNULL,
    )


def assert_one_line_error(result: subprocess.CompletedProcess[str], *needles: str) -> None:
    """Exit 2, nothing on stdout, one ``abi-engine: error:`` line on stderr, no traceback."""
    assert result.returncode == 2, (result.returncode, result.stderr)
    assert result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("abi-engine: error: "), lines[0]
    for needle in needles:
        assert needle in lines[0], lines[0]


class Server:
    """A running ``abi-engine serve`` (or ``demo``) subprocess and its output."""

    def __init__(self, *args: str, cwd: Path, env: dict[str, str] | None = None) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "abi_engine", *args],
            cwd=cwd,
            env=env or _env(),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.stdout: list[str] = []
        self.stderr: list[str] = []
        self._lines: queue.Queue[tuple[str, str]] = queue.Queue()
        self._pumps = [
            threading.Thread(target=self._pump, args=(name, stream, sink), daemon=True)
            for name, stream, sink in (
                ("stdout", self.proc.stdout, self.stdout),
                ("stderr", self.proc.stderr, self.stderr),
            )
        ]
        for pump in self._pumps:
            pump.start()
        self.api_url = ""
        self.db = ""

    def _pump(self, name: str, stream: object, sink: list[str]) -> None:
        for line in stream:  # type: ignore[attr-defined]
            sink.append(line.rstrip("\n"))
            self._lines.put((name, line.rstrip("\n")))

    def wait_serving(self) -> str:
        """Wait for the ``abi-engine serving ...`` line; return the API base URL."""
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            try:
                name, line = self._lines.get(timeout=0.1)
            except queue.Empty:
                if self.proc.poll() is not None:
                    break
                continue
            match = SERVING.match(line)
            if name == "stderr" and match:
                self.api_url, self.db = match.group(1), match.group(2)
                return self.api_url
        raise AssertionError(f"server did not start: {self.output()}")

    def stop(self, sig: int = signal.SIGTERM) -> int:
        """Send ``sig`` and return the exit code (killing it after STOP_TIMEOUT)."""
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            return self.proc.wait(timeout=STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            self.close()
            raise AssertionError(f"no exit within {STOP_TIMEOUT}s: {self.output()}") from None
        finally:
            self._drain()

    def close(self) -> None:
        """Kill the process if it still runs and release its pipes."""
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self._drain()

    def _drain(self) -> None:
        if self.proc.poll() is None:
            return
        for pump in self._pumps:
            pump.join(timeout=5)
        for stream in (self.proc.stdout, self.proc.stderr):
            if stream is not None:
                stream.close()

    def output(self) -> str:
        if self.proc.poll() is not None:
            for pump in self._pumps:
                pump.join(timeout=2)
        return "\n".join(["stdout:", *self.stdout, "stderr:", *self.stderr])

    def value(self, label: str) -> str:
        """The first word after ``label:`` on a line the process printed on stdout."""
        for line in self.stdout:
            if line.startswith(f"{label}: "):
                return line.split()[1]
        raise AssertionError(f"no {label!r} line: {self.output()}")


@pytest.fixture
def start_server(tmp_path: Path) -> Iterator[Callable[..., Server]]:
    """Start ``abi-engine ARGS`` servers; any still running at the end are killed."""
    servers: list[Server] = []

    def start(*args: str, env: dict[str, str] | None = None) -> Server:
        server = Server(*args, cwd=tmp_path, env=env)
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.close()


def auth(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def run_printed_curl(line: str) -> httpx.Response:
    """Do what a ``curl -s [-H HEADER]... [-d BODY] URL`` line the CLI printed does."""
    words = shlex.split(line)
    assert words[:2] == ["curl", "-s"], line
    headers: dict[str, str] = {}
    body: str | None = None
    rest = iter(words[2:-1])
    for flag in rest:
        value = next(rest)
        if flag == "-H":
            name, _, header = value.partition(": ")
            headers[name] = header
        else:
            assert flag == "-d", line
            body = value
    method = "GET" if body is None else "POST"
    return httpx.request(method, words[-1], headers=headers, content=body, timeout=30)


def authenticate(db: Path, token: str) -> Principal:
    """Who ``token`` is, read from the SQLite database at ``db``."""
    store = SQLiteStore(db)
    try:
        return TokenService(store).authenticate(token)
    finally:
        store.close()


def create_token(db: Path, *extra: str) -> str:
    result = run_cli("token", "create", "--db", str(db), *extra, cwd=db.parent)
    assert result.returncode == 0, result.stderr
    return result.stdout.strip()


# -- token create ----------------------------------------------------------------------


def test_token_create_prints_one_token_with_the_requested_scopes(tmp_path: Path) -> None:
    """`token create` prints exactly one line: a token of that user with those scopes."""
    db = tmp_path / "engine.db"
    result = run_cli(
        "token",
        "create",
        "--db",
        str(db),
        "--user",
        "usr_alice",
        "--scope",
        "workflows:read",
        "--scope",
        "executions:read",
        "--name",
        "ci",
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    lines = result.stdout.splitlines()
    assert len(lines) == 1
    principal = authenticate(db, lines[0])
    assert principal.user_id == "usr_alice"
    assert principal.scopes == {Scope.WORKFLOWS_READ, Scope.EXECUTIONS_READ}


def test_token_list_and_revoke(tmp_path: Path) -> None:
    """`token list` shows ids (never tokens); `token revoke ID` makes that token fail at once."""
    db = tmp_path / "engine.db"
    alice = create_token(db, "--user", "usr_alice", "--name", "laptop")
    bob = create_token(db, "--user", "usr_bob", "--scope", "workflows:read")
    listed = run_cli("token", "list", "--db", str(db), cwd=tmp_path)
    assert listed.returncode == 0, listed.stderr
    rows = [line.split("\t") for line in listed.stdout.splitlines()]
    assert [(r[1], r[4]) for r in rows] == [("usr_bob", ""), ("usr_alice", "laptop")]
    assert rows[0][3] == "workflows:read"
    assert alice not in listed.stdout
    assert bob not in listed.stdout
    only_bob = run_cli("token", "list", "--db", str(db), "--user", "bob", cwd=tmp_path)
    assert [line.split("\t")[1] for line in only_bob.stdout.splitlines()] == ["usr_bob"]
    alice_id = rows[1][0]
    assert authenticate(db, alice).token_id == alice_id
    revoked = run_cli("token", "revoke", "--db", str(db), alice_id, cwd=tmp_path)
    assert revoked.returncode == 0, revoked.stderr
    assert revoked.stdout.strip() == f"revoked {alice_id}"
    with pytest.raises(Unauthorized):
        authenticate(db, alice)
    assert authenticate(db, bob).user_id == "usr_bob"
    again = run_cli("token", "revoke", "--db", str(db), alice_id, cwd=tmp_path)
    assert again.returncode == 1
    assert "no live token" in again.stderr
    after = run_cli("token", "list", "--db", str(db), cwd=tmp_path)
    assert [line.split("\t")[1] for line in after.stdout.splitlines()] == ["usr_bob"]


def _mint(db: Path, parent: str) -> str:
    """A token minted from ``parent`` by the self-service operation (as POST /api/v1/tokens)."""
    store = SQLiteStore(db)
    try:
        service = TokenService(store)
        return anyio.run(service.create_own, service.authenticate(parent), {}).token
    finally:
        store.close()


def test_token_revoke_revokes_the_tokens_minted_from_it(tmp_path: Path) -> None:
    """`token revoke ID` also revokes the token's descendants, one `revoked` line each."""
    db = tmp_path / "engine.db"
    root = create_token(db, "--user", "usr_alice")
    other = create_token(db, "--user", "usr_alice")
    child = _mint(db, root)
    grandchild = _mint(db, child)
    beside = _mint(db, other)
    ids = [authenticate(db, token).token_id for token in (root, child, grandchild)]
    listed = run_cli("token", "list", "--db", str(db), cwd=tmp_path)
    parents = {row[0]: row[5] for row in (line.split("\t") for line in listed.stdout.splitlines())}
    assert (parents[ids[0]], parents[ids[1]], parents[ids[2]]) == ("", ids[0], ids[1])
    revoked = run_cli("token", "revoke", "--db", str(db), str(ids[0]), cwd=tmp_path)
    assert revoked.returncode == 0, revoked.stderr
    lines = revoked.stdout.splitlines()
    assert lines[0] == f"revoked {ids[0]}"
    assert sorted(lines[1:]) == sorted(f"revoked {token_id}" for token_id in ids[1:])
    for token in (root, child, grandchild):
        with pytest.raises(Unauthorized):
            authenticate(db, token)
    assert authenticate(db, beside).user_id == authenticate(db, other).user_id == "usr_alice"
    again = run_cli("token", "revoke", "--db", str(db), str(ids[1]), cwd=tmp_path)
    assert again.returncode == 1
    assert "no live token" in again.stderr


def test_token_create_without_scope_grants_every_scope(tmp_path: Path) -> None:
    """No --scope means all scopes; a bare user name gets the usr_ prefix."""
    db = tmp_path / "engine.db"
    token = create_token(db, "--user", "bob")
    principal = authenticate(db, token)
    assert principal.user_id == "usr_bob"
    assert principal.scopes == set(Scope)


def test_token_create_reads_the_database_from_the_environment(tmp_path: Path) -> None:
    """Without --db, ABI_ENGINE_DB names the database."""
    db = tmp_path / "from-env.db"
    result = run_cli(
        "token", "create", "--user", "usr_env", cwd=tmp_path, env=_env(ABI_ENGINE_DB=str(db))
    )
    assert result.returncode == 0, result.stderr
    assert authenticate(db, result.stdout.strip()).user_id == "usr_env"
    assert not (tmp_path / "abi-engine.db").exists()


def test_token_create_unknown_scope_is_a_usage_error(tmp_path: Path) -> None:
    """An unknown scope exits 2 naming it and the allowed scopes, without a traceback."""
    result = run_cli(
        "token",
        "create",
        "--db",
        str(tmp_path / "e.db"),
        "--user",
        "u",
        "--scope",
        "root:all",
        cwd=tmp_path,
    )
    assert result.returncode == 2
    assert result.stdout == ""
    assert "invalid choice: 'root:all'" in result.stderr
    assert "workflows:read" in result.stderr
    assert "Traceback" not in result.stderr


def test_token_create_rejects_an_empty_user(tmp_path: Path) -> None:
    """A blank user id is one clear error line and exit 2."""
    result = run_cli("token", "create", "--db", str(tmp_path / "e.db"), "--user", " ", cwd=tmp_path)
    assert_one_line_error(result, "user")


def test_bad_database_path_is_one_clear_line(tmp_path: Path) -> None:
    """A database under a regular file cannot be created: exit 2, one line, no traceback."""
    (tmp_path / "file").write_text("not a directory")
    bad = str(tmp_path / "file" / "sub" / "engine.db")
    assert_one_line_error(
        run_cli("token", "create", "--db", bad, "--user", "u", cwd=tmp_path),
        "cannot open the database",
        "Not a directory",
    )
    assert_one_line_error(
        run_cli("serve", "--db", bad, "--port", "0", cwd=tmp_path), "cannot open the database"
    )


@pytest.mark.parametrize("command", ["serve", "demo", "token"])
def test_database_in_a_missing_directory_is_refused(tmp_path: Path, command: str) -> None:
    """A --db path whose directory does not exist (a typo) is one clear line and exit 2; no
    directory and no empty database are created."""
    db = tmp_path / "typo-dir" / "nested" / "engine.db"
    args = ["token", "create", "--user", "u"] if command == "token" else [command, "--port", "0"]
    result = run_cli(*args, "--db", str(db), cwd=tmp_path)
    assert_one_line_error(
        result,
        f"cannot open the database '{db}'",
        f"the directory '{db.parent}' does not exist",
        "--create-dirs",
    )
    assert not (tmp_path / "typo-dir").exists()


def test_database_from_the_environment_in_a_missing_directory_is_refused(tmp_path: Path) -> None:
    """$ABI_ENGINE_DB pointing into a missing directory is refused the same way."""
    db = tmp_path / "missing" / "engine.db"
    result = run_cli(
        "token", "create", "--user", "u", cwd=tmp_path, env=_env(ABI_ENGINE_DB=str(db))
    )
    assert_one_line_error(result, "does not exist", "--create-dirs")
    assert not db.parent.exists()


def test_create_dirs_creates_the_missing_directories(tmp_path: Path) -> None:
    """With --create-dirs the missing directories and the database are created and used."""
    db = tmp_path / "new" / "nested" / "engine.db"
    result = run_cli(
        "token", "create", "--db", str(db), "--user", "alice", "--create-dirs", cwd=tmp_path
    )
    assert result.returncode == 0, result.stderr
    token = result.stdout.strip()
    assert db.is_file()
    assert authenticate(db, token).user_id == "usr_alice"
    # once the directory exists, the flag is not needed any more
    assert create_token(db, "--user", "bob")


def test_file_that_is_not_a_database_is_one_clear_line(tmp_path: Path) -> None:
    """A file that is not SQLite is refused with the reason."""
    junk = tmp_path / "junk.db"
    junk.write_bytes(b"this is not a sqlite database" * 100)
    assert_one_line_error(
        run_cli("token", "create", "--db", str(junk), "--user", "u", cwd=tmp_path),
        "file is not a database",
    )


def test_unsupported_database_url_is_a_usage_error_without_its_password(tmp_path: Path) -> None:
    """A database URL that cannot be opened (nothing listens there) exits 2 with one line
    that hides the password."""
    url = "postgresql://app:s3cret@127.0.0.1:1/abi"
    for args in (("token", "create", "--user", "u"), ("serve", "--port", "0")):
        result = run_cli(*args, "--db", url, cwd=tmp_path)
        assert_one_line_error(result, "postgresql://app:***@127.0.0.1:1/abi")
        assert "s3cret" not in result.stderr


@pytest.mark.parametrize(
    "args",
    [
        ["serve", "--port", "70000"],
        ["serve", "--rate-limit", "-1"],
        ["serve", "--workers", "0"],
        ["token", "create"],
        ["token"],
        [],
    ],
    ids=["port", "rate-limit", "workers", "no-user", "no-subcommand", "no-command"],
)
def test_bad_arguments_are_usage_errors(
    args: list[str],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Bad or missing arguments exit 2 with usage on stderr, before touching any database."""
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as exited:
        main(args)
    assert exited.value.code == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert "usage: abi-engine" in captured.err
    assert "error:" in captured.err
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize(
    "args",
    [
        ["serve", "--durability", "fast"],
        ["serve", "--lease-seconds", "0"],
        ["serve", "--lease-seconds", "nan"],
        ["demo", "--lease-seconds", "100000"],
    ],
    ids=["durability", "lease-zero", "lease-nan", "lease-huge"],
)
def test_bad_durability_or_lease_is_a_usage_error(
    args: list[str],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """An unknown durability or a lease outside 1..3600 s exits 2 before opening anything."""
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as exited:
        main(args)
    assert exited.value.code == 2
    assert "error:" in capsys.readouterr().err
    assert not list(tmp_path.iterdir())


def test_serve_durability_and_lease_reach_the_engine(tmp_path: Path) -> None:
    """`serve --durability full --lease-seconds 7` opens the store with synchronous=FULL and
    the runtime with 7 s leases."""
    from abi_engine.cli import _open_engine, build_parser

    args = build_parser().parse_args(
        ["serve", "--db", str(tmp_path / "x.db"), "--durability", "full", "--lease-seconds", "7"]
    )
    engine = _open_engine(args.db, durability=args.durability, lease_seconds=args.lease_seconds)
    try:
        assert engine.store.durability == "full"  # type: ignore[attr-defined]
        with engine.store._read() as conn:  # type: ignore[attr-defined]
            assert conn.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL
        assert engine.runtime.settings.lease_seconds == 7
    finally:
        engine.close()


# -- serve -----------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("stop_signal", [signal.SIGTERM, signal.SIGINT], ids=["TERM", "INT"])
def test_serve_answers_with_cli_tokens_and_stops_cleanly(
    tmp_path: Path, start_server: Callable[..., Server], stop_signal: int
) -> None:
    """`serve` answers health and token-authenticated requests, then exits 0 on the signal
    (on a database in a directory that --create-dirs creates)."""
    db = tmp_path / "data" / "engine.db"
    server = start_server(
        "serve", "--db", str(db), "--create-dirs", "--host", "127.0.0.1", "--port", "0"
    )
    api = server.wait_serving()
    assert server.db == str(db)
    reader = create_token(db, "--user", "usr_reader", "--scope", "workflows:read")
    with httpx.Client(base_url=api, timeout=10) as client:
        assert client.get("/health").status_code == 200
        assert client.get("/workflows").status_code == 401
        listed = client.get("/workflows", headers=auth(reader))
        assert listed.status_code == 200, listed.text
        assert listed.json()["data"]["pagination"]["total_items"] == 0
        denied = client.post("/workflows", headers=auth(reader), json={})
        assert denied.status_code == 403
        assert denied.json()["error"]["code"] == "FORBIDDEN"
    started = time.monotonic()
    assert server.stop(stop_signal) == 0, server.output()
    assert time.monotonic() - started < STOP_TIMEOUT
    assert "Traceback" not in server.output()
    assert not Path(f"{db}-wal").exists(), "the store was not closed cleanly"


@pytest.mark.slow
@pytest.mark.parametrize("flag", [None, "--no-dashboard"], ids=["default", "off"])
def test_serve_has_the_dashboard_unless_told(
    tmp_path: Path, start_server: Callable[..., Server], flag: str | None
) -> None:
    """`serve` serves the dashboard's sign-in form under /ui/ and says where; with
    --no-dashboard /ui/ is an unknown route."""
    db = tmp_path / "engine.db"
    server = start_server("serve", "--db", str(db), "--port", "0", *([flag] if flag else []))
    api = server.wait_serving()
    root = api.removesuffix("/api/v1")
    with httpx.Client(base_url=root, timeout=10) as client:
        page = client.get("/ui/", follow_redirects=True)
    if flag is None:
        assert page.status_code == 200
        assert "Access token" in page.text
    else:
        assert page.status_code == 404
    assert server.stop(signal.SIGTERM) == 0, server.output()
    assert (f"dashboard: {root}/ui/" in server.output()) is (flag is None)


@pytest.mark.slow
@pytest.mark.parametrize(
    ("args", "env", "allowed"),
    [
        ((), {}, False),
        (("--allow-private-urls",), {}, True),
        ((), {"ABI_ENGINE_ALLOW_PRIVATE_URLS": "1"}, True),
    ],
    ids=["default", "flag", "environment"],
)
def test_serve_private_urls_need_the_flag(
    tmp_path: Path,
    start_server: Callable[..., Server],
    args: tuple[str, ...],
    env: dict[str, str],
    allowed: bool,
) -> None:
    """Loopback URLs are refused unless --allow-private-urls (or its variable) is given."""
    db = tmp_path / "engine.db"
    token = create_token(db, "--user", "usr_ops")
    server = start_server("serve", "--db", str(db), "--port", "0", *args, env=_env(**env))
    api = server.wait_serving()
    step = {"name": "ping", "action": "http_request", "method": "GET", "url": f"{api}/health"}
    body = {"name": "Ping myself", "type": "custom", "configuration": {"steps": [step]}}
    with httpx.Client(base_url=api, headers=auth(token), timeout=10) as client:
        created = client.post("/workflows", json=body)
        if not allowed:
            assert created.status_code == 400, created.text
            assert created.json()["error"]["code"] == "INVALID_WORKFLOW_CONFIG"
        else:
            assert created.status_code == 201, created.text
            workflow_id = created.json()["data"]["id"]
            assert client.post(f"/workflows/{workflow_id}/activate").status_code == 200
            ran = client.post(f"/workflows/{workflow_id}/execute", json={"parameters": {}})
            assert ran.status_code == 200, ran.text
            assert ran.json()["data"]["result"]["status_code"] == 200
    assert server.stop() == 0, server.output()


@pytest.mark.slow
def test_serve_defaults_to_the_environment_database(
    tmp_path: Path, start_server: Callable[..., Server]
) -> None:
    """Without --db, serve uses ABI_ENGINE_DB and says so on its serving line."""
    db = tmp_path / "env.db"
    server = start_server("serve", "--port", "0", env=_env(ABI_ENGINE_DB=str(db)))
    server.wait_serving()
    assert server.db == str(db)
    assert db.exists()
    assert server.stop() == 0


@pytest.mark.slow
def test_serve_rate_limit_applies_per_token(
    tmp_path: Path, start_server: Callable[..., Server]
) -> None:
    """--rate-limit reaches the REST adapter: past the burst a token gets 429 with Retry-After."""
    db = tmp_path / "engine.db"
    server = start_server("serve", "--db", str(db), "--port", "0", "--rate-limit", "0.5")
    api = server.wait_serving()
    token = create_token(db, "--user", "usr_busy")
    with httpx.Client(base_url=api, timeout=10) as client:
        codes = [client.get("/workflows", headers=auth(token)).status_code for _ in range(3)]
        assert codes[0] == 200
        assert 429 in codes
        limited = client.get("/workflows", headers=auth(token))
        assert limited.status_code == 429
        assert limited.json()["error"]["code"] == "RATE_LIMIT_EXCEEDED"
        assert int(limited.headers["retry-after"]) >= 1
    assert server.stop() == 0


@pytest.mark.slow
def test_serve_on_a_port_in_use_is_one_clear_line(tmp_path: Path) -> None:
    """A port another socket listens on: exit 2, one line naming the address, no database made."""
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        result = run_cli("serve", "--db", str(tmp_path / "e.db"), "--port", str(port), cwd=tmp_path)
    assert_one_line_error(result, f"cannot listen on 127.0.0.1:{port}", "in use")
    assert not (tmp_path / "e.db").exists()


# -- demo ------------------------------------------------------------------------------


#: The specification's example feedback (docs/feedback-analysis.md, the seed's execute example).
SPECIFICATION_TEXT = (
    "I really love your product, but the latest update made the user interface more"
    " complicated. It's still a great service overall though!"
)


def assert_specification_answer(execution: dict[str, object]) -> None:
    """The demo's feedback example is the specification's, with the specification's answer."""
    parameters = execution["parameters"]
    assert isinstance(parameters, dict)
    assert parameters["feedback_text"] == SPECIFICATION_TEXT
    result = execution["result"]
    assert isinstance(result, dict)
    assert result["sentiment"] == "mixed", result
    assert [(c["topic"], c["sentiment"]) for c in result["feedback_components"]] == [
        ("product_overall", "positive"),
        ("user_interface", "negative"),
    ], result
    assert result["primary_topics"][0] == "user_interface", result


@pytest.mark.slow
def test_demo_prints_a_working_token_and_example_workflow(
    tmp_path: Path, start_server: Callable[..., Server]
) -> None:
    """`demo` prints a token and an active example workflow it serves; a rerun reuses it."""
    workflow_ids = []
    for _ in range(2):
        server = start_server("demo", "--port", "0")
        api = server.wait_serving()
        token, workflow_id = server.value("token"), server.value("workflow")
        assert workflow_id.startswith("wf_")
        curls = [line.strip() for line in server.stdout if line.strip().startswith("curl ")]
        custom = f"workflow: {workflow_id} (Add two numbers, type custom, active)" in server.stdout
        # the feedback example whenever its default service is installed (as in CI)
        assert custom == (importlib.util.find_spec("vaderSentiment") is None), server.output()
        assert any(f"{api}/workflows/{workflow_id}" in line for line in curls), server.output()
        for line in curls:
            answer = run_printed_curl(line)
            assert answer.status_code == 200, (line, answer.text)
            assert answer.json()["status"] == "success"
            if line.endswith("/execute"):
                assert answer.json()["data"]["status"] == "completed"
                if custom:
                    assert answer.json()["data"]["result"] == {"sum": 5}
                else:
                    assert_specification_answer(answer.json()["data"])
        with httpx.Client(base_url=api, timeout=10) as client:
            got = client.get(f"/workflows/{workflow_id}", headers=auth(token))
        assert got.status_code == 200, got.text
        assert got.json()["data"]["status"] == "active"
        assert server.stop() == 0, server.output()
        workflow_ids.append(workflow_id)
    assert workflow_ids[0] == workflow_ids[1]
    assert (tmp_path / "abi-engine.db").exists()


def test_serve_freezes_what_start_up_made() -> None:
    """After start-up, ``serve`` takes the objects made so far out of full collections."""
    import gc

    from abi_engine.cli import freeze_startup_objects

    kept = object.__new__(type("Kept", (), {}))  # a tracked object made "at start-up"
    try:
        frozen = freeze_startup_objects()
        assert frozen == gc.get_freeze_count() > 0
        assert gc.is_tracked(kept)
        assert kept not in gc.get_objects(generation=2)  # a full collection no longer walks it
    finally:
        gc.unfreeze()
