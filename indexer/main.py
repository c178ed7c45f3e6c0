"""The indexer's FastAPI application."""

from fastapi import FastAPI

from . import __doc__ as description
from .api.routes import health


def create_app() -> FastAPI:
    app = FastAPI(
        title="Imaging cloud indexer",
        description=description or "",
        version="0.1.0",
        root_path="",
        openapi_url="/api/openapi.json",
        docs_url="/api/docs",
        redoc_url=None,
    )
    app.include_router(health.router, prefix="/api")
    return app


app = create_app()
