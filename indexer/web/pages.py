"""Drawing a page: Jinja2 templates with autoescaping (every value a page shows is escaped
unless a template says otherwise), the bilingual labels, and the no-store headers a page
with patient data needs (no browser or proxy cache keeps it)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fastapi import Request
from fastapi.responses import HTMLResponse
from fastapi.templating import Jinja2Templates

from ..security.auth import Principal

TEMPLATES = Jinja2Templates(directory=str(Path(__file__).parent / "templates"))
NO_STORE = {
    "Cache-Control": "no-store",
    "Pragma": "no-cache",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "same-origin",
    # the pages load nothing from elsewhere and run no inline script
    "Content-Security-Policy": (
        "default-src 'self'; style-src 'self' 'unsafe-inline'; script-src 'self'; "
        "img-src 'self' data:; frame-ancestors 'none'; form-action 'self'"
    ),
}


def render(
    request: Request,
    template: str,
    who: Principal | None,
    *,
    area: str,
    status_code: int = 200,
    **context: Any,
) -> HTMLResponse:
    """The page `template` of `area` ("/console", "/workspace") for `who`."""
    return TEMPLATES.TemplateResponse(
        request,
        template,
        {"who": who, "area": area, **context},
        status_code=status_code,
        headers=NO_STORE,
    )
