"""The indexer's FastAPI application."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI
from psycopg_pool import AsyncConnectionPool

from . import __doc__ as description
from . import metrics
from .api import audit_middleware
from .api.deps import get_pii
from .api.errors import BodyLimit, install
from .api.routes import (
    admin_console,
    audit,
    authz,
    break_glass,
    console,
    fleet,
    grants,
    health,
    hl7,
    images,
    ingest,
    lookup,
    qido,
    recognition,
    records,
    sharing,
    workspace,
)
from .config import get_settings
from .db import session_factory
from .services.audit_writer import AuditWriter
from .services.platform import BuiltInPlatform, HttpPlatform, MasterIndexPlatform, MasterIndexQueue
from .services.qido import CentralQido
from .web import session as web_session


def platform_from_settings() -> MasterIndexPlatform:
    settings = get_settings()
    if settings.platform_url:
        return HttpPlatform(settings.platform_url, settings.platform_timeout_s)
    return BuiltInPlatform(settings.platform_key.get_secret_value().encode())


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    settings = get_settings()
    app.state.settings = settings
    queue = MasterIndexQueue(
        session_factory(),
        platform_from_settings(),
        get_pii(),
        retry_max_s=settings.platform_retry_max_s,
    )
    app.state.master_index = queue
    queue.start()
    url = settings.database_url.get_secret_value().replace("postgresql+psycopg://", "postgresql://")
    app.state.pool = AsyncConnectionPool(
        url, min_size=2, max_size=settings.db_pool_size, open=False, timeout=10
    )
    await app.state.pool.open()
    app.state.audit = AuditWriter(app.state.pool)
    app.state.central_qido = CentralQido(
        settings.central_url,
        settings.central_basic_auth.get_secret_value(),
        settings.central_timeout_s,
    )
    # The audit sealer is not started here (that would be one per worker): `python -m
    # indexer serve` runs one per node beside uvicorn, and a lease lets one of them work.
    try:
        yield
    finally:
        queue.stop()
        await app.state.audit.aclose()
        await app.state.central_qido.close()
        await app.state.pool.close()


def create_app() -> FastAPI:
    app = FastAPI(
        title="Imaging cloud indexer",
        description=description or "",
        version="0.2.0",
        openapi_url="/api/openapi.json",
        docs_url="/api/docs",
        redoc_url=None,
        lifespan=lifespan,
    )
    install(app)
    web_session.install(app)  # page requests without a session go to the login
    app.include_router(health.router, prefix="/api")
    app.include_router(records.router, prefix="/api")
    app.include_router(images.router, prefix="/api")
    app.include_router(lookup.router, prefix="/api")
    app.include_router(authz.router, prefix="/api")
    app.include_router(audit.router, prefix="/api")
    app.include_router(grants.router, prefix="/api")
    app.include_router(break_glass.router, prefix="/api")
    app.include_router(sharing.router, prefix="/api")
    app.include_router(fleet.router, prefix="/api")
    app.include_router(recognition.router, prefix="/api")
    app.include_router(hl7.router, prefix="/api")
    app.include_router(qido.router)
    app.include_router(sharing.landing)
    app.include_router(admin_console.router)
    app.include_router(ingest.router)
    app.include_router(console.router)
    app.include_router(workspace.router)
    audit_middleware.install(app)
    app.add_middleware(
        BodyLimit,
        max_bytes=get_settings().max_body_bytes,
        unlimited=("/orthanc/instances",),  # DICOM files: central takes any size
    )
    metrics.install(app)  # outermost: refused bodies (413) are counted too; not via the gateway
    return app


app = create_app()
