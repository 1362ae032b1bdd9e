"""Builds the Sanic app; each worker's parts start and stop in service/runtime.py."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from types import SimpleNamespace

from sanic import Sanic
from sanic.config import Config

from . import instrument, logs, manager_signals
from .admin import admin
from .auth import TokenVerifier
from .config import Settings
from .draining import close_idle_connections
from .http import handle
from .routes import public
from .runtime import running
from .tasks import cancel_and_wait
from .workers import shared_objects

logger = logging.getLogger(__name__)

App = Sanic[Config, SimpleNamespace]
APP_NAME = "coupon_service"


def create_app(settings: Settings, namespace: str) -> App:
    """``namespace``: the deployment's Redis namespace, resolved once by the main process."""
    logs.configure(settings.log_level, settings.log_format)  # in every process: workers spawn
    app = Sanic(APP_NAME, configure_logging=False)
    app.config.update(
        REQUEST_MAX_SIZE=settings.request_max_bytes,
        GRACEFUL_SHUTDOWN_TIMEOUT=settings.graceful_timeout_s,
        ACCESS_LOG=False,
        NOISY_EXCEPTIONS=False,
        FALLBACK_ERROR_FORMAT="json",
    )
    app.ctx.settings = settings
    app.ctx.verifier = (
        TokenVerifier(secret=settings.auth_jwt_secret, public_key=settings.auth_jwt_public_key)
        if settings.auth_jwt_secret or settings.auth_jwt_public_key
        else None
    )
    app.blueprint(public)
    app.blueprint(admin)
    app.error_handler.add(Exception, handle)
    instrument.access_log_enabled = settings.access_log

    @app.main_process_start
    async def share(app: App) -> None:
        for name, value in shared_objects().items():
            setattr(app.shared_ctx, name, value)

    @app.before_server_start
    async def start_worker(app: App) -> None:
        app.ctx.stack = contextlib.AsyncExitStack()
        app.ctx.worker = await app.ctx.stack.enter_async_context(
            running(settings, namespace, app.ctx.verifier, app.shared_ctx, getattr(app, "multiplexer", None))
        )

    @app.before_server_stop
    async def stop_accepting(app: App) -> None:
        # First: a second stop signal must not cut the drain (service/manager_signals.py).
        manager_signals.ignore_further_stop_signals()
        # Sanic may run this listener twice too (below): one closer is started.
        if getattr(app.ctx, "closer", None) is None:
            closer = asyncio.get_running_loop().create_task(close_idle_connections(), name="close-idle")
            app.ctx.closer = closer

    @app.after_server_stop
    async def stop_worker(app: App) -> None:
        # After in-flight requests are answered: store every buffered row, then close. Sanic
        # may run this listener a second time if a signal interrupts the first run
        # (uvloop); both runs wait for the one drain.
        if getattr(app.ctx, "stopping", None) is None:
            app.ctx.stopping = asyncio.get_running_loop().create_task(_stop(app))
        await asyncio.shield(app.ctx.stopping)

    return app


async def _stop(app: App) -> None:
    # Idle connections keep being closed while the parts stop: a request arriving on one
    # meanwhile would otherwise reach a worker whose buffer is draining.
    try:
        await app.ctx.stack.aclose()
    finally:
        closer = getattr(app.ctx, "closer", None)
        if closer is not None:
            await cancel_and_wait(closer)
