"""One node's experiments API in a process of its own, for ``haorch bench console``'s submit comparison:

    python -m bench.api_server new PORT SECONDS       # node/http (FastAPI on uvicorn), as every node serves it
    python -m bench.api_server baseline PORT SECONDS  # the hand-written http.server handler it replaced

The baseline is the handler's source at ``BASELINE_COMMIT`` (read with ``git show`` from the checkout: the bench
needs one), run against today's ``node`` package. Each serves until SECONDS passed, or SIGTERM, and exits by itself.
It prints ``ready`` on stdout once it listens.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import threading
import types
from typing import Any

from node.config import load_config
from node.paths import REPO_ROOT

BASELINE_COMMIT = "9755362"  # the last commit whose node/http/server.py is the http.server handler
MAX_SECONDS = 1800.0


def baseline_module() -> types.ModuleType:
    """node/http/server.py as of BASELINE_COMMIT, loaded as a module of its own."""
    source = subprocess.run(["git", "-C", str(REPO_ROOT), "show", f"{BASELINE_COMMIT}:node/http/server.py"],
                            check=True, capture_output=True, text=True, timeout=30).stdout
    module = types.ModuleType("haorch_baseline_http")
    exec(compile(source, f"{BASELINE_COMMIT}:node/http/server.py", "exec"), module.__dict__)
    return module


def serve(impl: str, port: int, seconds: float) -> None:
    cfg = load_config()

    def probe() -> tuple[bool, dict[str, Any]]:
        return True, {}

    if impl == "new":
        from node.http.server import NodeHTTPServer

        server: Any = NodeHTTPServer(cfg, port, probe, probe, node_id="bench-api")
    elif impl == "baseline":
        server = baseline_module().NodeHTTPServer(cfg, port, probe, probe)
    else:
        raise SystemExit(f"unknown implementation {impl!r}: new or baseline")
    done = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: done.set())
    server.start()
    print("ready", flush=True)
    done.wait(min(seconds, MAX_SECONDS))
    server.stop()


if __name__ == "__main__":
    serve(sys.argv[1], int(sys.argv[2]), float(sys.argv[3]))
