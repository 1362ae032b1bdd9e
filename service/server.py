"""`coupon-service`: serves the API with WORKERS processes on HOST:PORT."""

from __future__ import annotations

import atexit
import sys
from functools import partial

from sanic import Sanic
from sanic.worker.loader import AppLoader

from . import metrics
from .app import create_app
from .config import ConfigError, Settings
from .draining import DrainingHttpProtocol


def main() -> None:
    try:
        settings = Settings.from_env()
    except ConfigError as exc:
        print(f"coupon-service: configuration error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    made = metrics.prepare_directory()  # before the workers spawn: they inherit the variable
    atexit.register(metrics.remove_directory, made)
    loader = AppLoader(factory=partial(create_app, settings))
    app = loader.load()
    app.prepare(
        host=settings.host,
        port=settings.port,
        workers=settings.workers,
        access_log=False,
        motd=False,
        backlog=4096,
        protocol=DrainingHttpProtocol,
    )
    Sanic.serve(primary=app, app_loader=loader)


if __name__ == "__main__":
    main()
