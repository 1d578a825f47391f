"""A local Zoho (CRM and Bigin ``actions/watch`` plus the OAuth refresh) on loopback, for tests,
the demo and the soak harness. It behaves as zoho-api.md and the recorded responses say, keeps the
ground truth of when each channel was live, and fails on request. It is an independent oracle: it
imports nothing from the rest of watchkeeper (its own parsing of Zoho's formats is in ``formats``,
the versions and modules it serves in ``catalog``), so it cannot share the daemon's mistakes.

Python::

    with Emulator(clock=sim_clock) as emu:          # emu.url is api_domain and accounts_url
        emu.add_fault(Fault(status=503, fraction=0.2, retry_after=30))
        emu.live_intervals("1000000068001")

Every instant the emulator takes or reports is on its own clock, ``clock() + clock_skew``; only
fault latency sleeps in real time. Credentials of the default org ``org1`` (fixed, not secrets):
client_id ``emu-client-id``, client_secret ``emu-client-secret``, refresh_token
``emu-refresh-token``; ``add_org("x")`` gives org x the same client and ``emu-refresh-token-x``.

Each org has one store per product: a channel made through ``/crm/...`` is unknown to
``/bigin/...`` and the same id may live in both; the Python and admin calls take
``product="bigin"`` (default ``crm``).

Where Zoho is unrecorded the Options (``Emulator(**options)``, ``set_options()``, or the admin API)
play each plausible answer: ``default_lifetime`` (1 h as documented; the recordings show 2 h);
``patch_unknown`` for a PATCH or PUT of an unknown channel: ``"error"`` (NOT_SUBSCRIBED),
``"create"`` or ``"invalid_data"`` (INVALID_DATA ``channel_id``); ``bad_expiry="refuse"`` answers
an unreadable or past ``channel_expiry`` with INVALID_DATA instead of the default lifetime;
``unknown_modules="refuse"`` answers events on modules the product lacks (``catalog.MODULES`` plus
``custom_modules``) with INVALID_DATA ``events``; ``patch_events="merge"`` makes a PATCH add its
events instead of replacing them; ``forbidden_modules``, ``max_items``, ``expired_listed_for``;
for the records APIs ``records_empty="304"`` answers an empty If-Modified-Since query with 304
instead of 204, and ``page_tokens`` ("v5+", "all", "none") says which versions hand out
``next_page_token``.

Beyond the basic contract: ``Emulator(seed=0)`` seeds the fault RNG; ``Fault(status=None,
latency=2)`` delays a request that still takes effect (a timeout after Zoho acted);
``Fault(code=...)`` picks the error code (``OAUTH_SCOPE_MISMATCH``, or ``invalid_code`` on the
token path);
``issue_access_token(org, lifetime=...)``; ``change_channel(..., expires_at=...)`` shortens or
ends a channel; ``live_intervals(channel_id, event="Deals.edit")`` counts only the time that event
was subscribed; ``set_clock_skew()``; ``now()``.

Choices where Zoho is UNCONFIRMED: a re-POST of a live channel replaces its configuration and
extends its live interval; ``notify_on_related_action`` defaults to true; CRM v2/v2.1 listing rows
carry only the nine recorded keys, later versions and Bigin add ``return_affected_field_values``,
``fields`` and ``notification_condition``; a PATCH ``_delete_events`` that removes every event
deletes the channel; callbacks are sent once, never retried.

Zoho's endpoints::

    POST /oauth/v2/token                       grant_type=refresh_token (form or query)
    GET|POST|PUT|PATCH|DELETE /crm/{v2..v8}/actions/watch, /bigin/{v1,v2}/actions/watch
    GET /{crm|bigin}/{v}/{Module}              records (fields, sort_by, sort_order, page,
                                               page_token, per_page, If-Modified-Since)
    GET /{crm|bigin}/{v}/{Module}/deleted      deleted records (type, page, per_page)

Each org has a records store per product and module (``records.py``): ``record_change`` updates it
before calling back the live channels, so a test knows every change and every delivery
(``records()``, ``record_changes()``).

Admin endpoints (JSON in and out, no auth; ``org`` defaults to org1 and ``product`` to crm, as
query parameters or body keys; tokens and notify_url query values are shown as ``***``)::

    GET    /__emulator/                        status: url, clock, orgs, counts, endpoint list
    GET    /__emulator/channels?org=           live channels
    POST   /__emulator/channels                add a foreign channel:
                                               {"channel_id", "events": [...], "notify_url",
                                                "ttl_seconds"?: 21600, "token"?, "org"?}
    PATCH  /__emulator/channels/{id}           change it behind the daemon's back:
                                               {"events"?, "notify_url"?, "token"?, "expires_at"?}
    DELETE /__emulator/channels/{id}?org=      delete it behind the daemon's back
    GET    /__emulator/faults                  active faults, with their hit counts
    POST   /__emulator/faults                  add one: the Fault fields as JSON, e.g.
                                               {"status": 429, "retry_after": 30, "count": 3}
                                               ({"start", "end"} ISO 8601 with offset,
                                               "methods": ["PATCH", "TOKEN"], "paths": "watch" |
                                               "records" | "token" | "any", "body": "json" | "html" |
                                               "garbage" | "empty", "latency", "fraction", "org",
                                               "code")
    DELETE /__emulator/faults                  clear faults and grant_only_default windows
    POST   /__emulator/grant_only_default      {"start", "end"}: every expiry granted meanwhile
                                               is the default lifetime
    GET    /__emulator/calls                   every API/OAuth request (no bodies)
    DELETE /__emulator/calls                   forget them
    GET    /__emulator/live_intervals?channel_id=&event=&org=
                                               [[start, end-or-null], ...]
    POST   /__emulator/record_change           {"module", "op": "create"|"edit"|"delete",
                                                "record_ids": [...], "org"?}: change the records
                                               and deliver callbacks
    GET    /__emulator/records?module=&org=    the module's records and deleted records
    GET    /__emulator/clock                   {"now", "skew_seconds"}
    POST   /__emulator/clock                   {"skew_seconds": 3600}: move Zoho's clock (expiries
                                               and the Date header follow)
    GET    /__emulator/refreshes?org=          token refreshes in the current 10-minute window
    POST   /__emulator/access_token            {"org"?}: mint an access token without a refresh
    GET    /__emulator/options                 the Options (durations in seconds)
    PATCH  /__emulator/options                 change some: {"patch_unknown": "invalid_data",
                                               "bad_expiry": "refuse", "unknown_modules": "refuse",
                                               "custom_modules": [...], "default_lifetime": 7200}

Example: ``curl -X POST localhost:8950/__emulator/faults -d '{"status": 500, "count": 2}'``.
"""

from watchkeeper.emulator.delivery import Delivery
from watchkeeper.emulator.emulator import Emulator
from watchkeeper.emulator.faults import Fault
from watchkeeper.emulator.foreground import serve
from watchkeeper.emulator.options import Options
from watchkeeper.emulator.state import (
    DEFAULT_CLIENT_ID,
    DEFAULT_CLIENT_SECRET,
    DEFAULT_ORG,
    DEFAULT_REFRESH_TOKEN,
    Call,
    Channel,
)

__all__ = [
    "DEFAULT_CLIENT_ID",
    "DEFAULT_CLIENT_SECRET",
    "DEFAULT_ORG",
    "DEFAULT_REFRESH_TOKEN",
    "Call",
    "Channel",
    "Delivery",
    "Emulator",
    "Fault",
    "Options",
    "serve",
]
