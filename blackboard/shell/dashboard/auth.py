"""The API key: changes (replay, purge) always need it; reads need it off loopback."""

from __future__ import annotations

import hmac
from typing import TYPE_CHECKING

from blackboard.shell.dashboard.settings import API_KEY_ENV, DashboardSettings

if TYPE_CHECKING:
    from starlette.requests import Request

HEADER = "X-API-Key"


def presented_key(request: Request) -> str | None:
    """The key a request carries: ``X-API-Key``, ``Authorization: Bearer``, or (for
    ``EventSource``, which cannot set headers) the ``key`` query parameter."""
    key = request.headers.get(HEADER)
    if key:
        return key
    auth = request.headers.get("Authorization", "")
    if auth.lower().startswith("bearer "):
        return auth[7:].strip()
    return request.query_params.get("key") or None


def key_ok(settings: DashboardSettings, request: Request) -> bool:
    """Whether the request carries the configured key (never, when none is configured)."""
    given = presented_key(request)
    if not settings.api_key or not given:
        return False
    return hmac.compare_digest(given.encode(), settings.api_key.get_secret_value().encode())


def may_read(settings: DashboardSettings, request: Request) -> bool:
    """Reads are open on loopback; elsewhere they need the key."""
    return settings.loopback or key_ok(settings, request)


def change_refusal(settings: DashboardSettings, request: Request) -> str | None:
    """Why a change is refused, or None when it may go ahead."""
    if not settings.api_key:
        return f"changes are disabled: start the dashboard with {API_KEY_ENV} set"
    if not key_ok(settings, request):
        return f"a valid API key is required ({HEADER} header)"
    return None
