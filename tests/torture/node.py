"""One engine process of the torture suite: an Engine and its REST API on 127.0.0.1.

    python node.py --db URL --port-file PATH [--runtime JSON]

Builds :class:`abi_engine.Engine` on ``--db`` (the plugins come from
``ABI_ENGINE_PLUGINS``, so ``torture_plugin`` adds its workflow type and, when
``TORTURE_FAULTS`` is set, wraps the store in its fault injector), with
``RuntimeSettings`` from ``--runtime`` (fields this version does not know are
left out, so the harness outlives changes of the settings), serves the
``abi_asgi`` app under uvicorn on a free port, and writes ``<port>`` to
``--port-file`` once listening. Runs until killed (the harness uses SIGKILL) or
SIGTERM (uvicorn stops, then the engine stops cleanly).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import socket
import sys
import threading
from typing import Any

import attrs


def _runtime(spec: dict[str, Any]) -> Any:
    import abi_engine
    from abi_engine.runtime.settings import RuntimeSettings

    # Exported from the package one day, perhaps; the executor's is the one today.
    settings: Any = getattr(abi_engine, "RuntimeSettings", RuntimeSettings)
    known = {f.name for f in attrs.fields(settings)}
    dropped = sorted(set(spec) - known)
    if dropped:
        print(f"torture node: RuntimeSettings has no {dropped}; ignored", file=sys.stderr)
    return settings(**{k: v for k, v in spec.items() if k in known})


def _announce(port_file: str, port: int) -> None:
    """Write the port atomically (the harness never reads half a number)."""
    tmp = f"{port_file}.tmp"
    with open(tmp, "w", encoding="utf-8") as fh:
        fh.write(str(port))
    os.replace(tmp, port_file)


async def _serve(args: argparse.Namespace) -> None:
    import abi_asgi
    import uvicorn

    from abi_engine import Engine

    engine = Engine(args.db, runtime=_runtime(json.loads(args.runtime)), allow_private_urls=True)
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    sock.listen(512)
    app = abi_asgi.create_app(engine, manage_engine=False, rate_limit=None)
    config = uvicorn.Config(app, log_level="warning", lifespan="on", access_log=False)
    server = uvicorn.Server(config)
    try:
        async with engine:
            _announce(args.port_file, sock.getsockname()[1])
            await server.serve(sockets=[sock])
    finally:
        sock.close()
        engine.close()


def _watch_lifeline() -> None:
    """Exit at once when the harness is gone (its end of the lifeline pipe closed)."""
    fd = int(os.environ.get("TORTURE_LIFELINE", "-1"))
    if fd < 0:
        return

    def wait() -> None:
        while True:
            try:
                if not os.read(fd, 1):
                    break
            except InterruptedError:
                continue
            except OSError:
                break
        os._exit(3)

    threading.Thread(target=wait, name="lifeline", daemon=True).start()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--db", required=True)
    parser.add_argument("--port-file", required=True)
    parser.add_argument("--runtime", default="{}")
    args = parser.parse_args()
    _watch_lifeline()
    logging.basicConfig(
        level=logging.WARNING,
        format=f"%(asctime)s {os.environ.get('TORTURE_NODE', '?')} %(levelname)s %(name)s: %(message)s",
    )
    asyncio.run(_serve(args))


if __name__ == "__main__":
    main()
