"""Running uvicorn for `gateway serve`: as uvicorn.run does, except that with several worker
processes SIGHUP is passed on to each of them, which reloads pricing.yaml (gateway/app.py), where
uvicorn's own supervisor would replace them all (dropping their requests under way, and stopping
them for good if a bad file kept the new ones from starting)."""

from __future__ import annotations

import os
import signal
from typing import Any

import uvicorn
from uvicorn.supervisors import Multiprocess


class _PassOnHangup(Multiprocess):
    def handle_hup(self) -> None:
        for worker in self.processes:
            pid = worker.process.pid
            if pid is not None and worker.process.is_alive():
                os.kill(pid, signal.SIGHUP)


def serve(app: str, *, workers: int, **options: Any) -> None:
    """`app`: the import string of the app factory; `options`: uvicorn.Config's."""
    if workers <= 1:
        uvicorn.run(app, workers=1, **options)
        return
    config = uvicorn.Config(app, workers=workers, **options)
    sock = config.bind_socket()
    try:
        _PassOnHangup(config, sockets=[sock]).run()
    finally:
        sock.close()
