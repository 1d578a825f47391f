"""Zoho Accounts' refresh-token grant and the API's access-token check.

Errors come back with HTTP 200 and an ``error`` key, as forums report (the real status is
UNCONFIRMED); the 11th refresh inside a rolling 10 minutes gets HTTP 400 "Access Denied".
"""

from __future__ import annotations

from datetime import datetime, timedelta
from urllib.parse import parse_qsl

from watchkeeper.emulator import responses as r
from watchkeeper.emulator.state import MAX_REFRESHES, Org, ZohoState

TOKEN_PATH = "/oauth/v2/token"  # noqa: S105 (a URL path)


def token_params(query: dict[str, str], body: bytes) -> dict[str, str]:
    """Form fields, also accepted as query parameters (the form wins)."""
    try:
        form = dict(parse_qsl(body.decode(), keep_blank_values=True))
    except UnicodeDecodeError:
        form = {}
    return {**query, **form}


def org_of_params(state: ZohoState, params: dict[str, str]) -> Org | None:
    """The org whose refresh token this is (for fault filters and call records)."""
    return state.by_refresh_token.get(params.get("refresh_token") or "")


def refresh(
    state: ZohoState, params: dict[str, str], now: datetime, lifetime: timedelta, api_domain: str
) -> tuple[r.Response, Org | None]:
    if params.get("grant_type") != "refresh_token":
        return r.json_response(200, {"error": "unsupported_grant_type"}), None
    client = (params.get("client_id"), params.get("client_secret"))
    org = org_of_params(state, params)
    if org is None or (org.client_id, org.client_secret) != client:
        known = any((o.client_id, o.client_secret) == client for o in state.orgs.values())
        return r.json_response(200, {"error": "invalid_code" if known else "invalid_client"}), None
    if org.refreshes(now) >= MAX_REFRESHES:
        return r.json_response(400, r.TOKEN_RATE_LIMITED), org
    org.refresh_times.append(now)
    token = state.mint(org, now, lifetime)
    body = {
        "access_token": token,
        "api_domain": api_domain,
        "token_type": "Bearer",
        "expires_in": int(lifetime.total_seconds()),
    }
    return r.json_response(200, body), org


def bearer(headers: dict[str, str]) -> str | None:
    """The access token of ``Authorization: Zoho-oauthtoken <t>`` (or ``Bearer <t>``)."""
    scheme, _, token = headers.get("authorization", "").strip().partition(" ")
    if scheme.lower() not in ("zoho-oauthtoken", "bearer") or not token.strip():
        return None
    return token.strip()


def authenticate(state: ZohoState, token: str | None, now: datetime) -> Org | r.Response:
    """The caller's org, or the 401 Zoho answers: unknown -> AUTHENTICATION_FAILURE,
    expired or revoked -> INVALID_TOKEN."""
    known = state.tokens.get(token) if token is not None else None
    if known is None:
        return r.json_response(401, r.error("AUTHENTICATION_FAILURE"))
    if known.revoked or known.expires_at <= now:
        return r.json_response(401, r.error("INVALID_TOKEN"))
    return state.org(known.org)
