"""Module ids and URIs as Zoho reports them.

Zoho lists a channel's modules in the order of their resource ids (seed 000/001: Contacts, Solutions,
Price_Books for a request naming Solutions first), so every module gets a stable id: the recorded
ones where the seeds show them, then the usual CRM order, and a hash for custom modules.
"""

from __future__ import annotations

import zlib

from watchkeeper.emulator.formats import Event, Product

_BASE = 4150868000000002000
_KNOWN: dict[str, int] = {
    "Leads": 175,
    "Accounts": 177,
    "Contacts": 179,  # recorded
    "Deals": 181,  # recorded
    "Campaigns": 183,
    "Tasks": 185,
    "Events": 187,
    "Meetings": 187,
    "Calls": 189,
    "Notes": 191,
    "Pipelines": 193,
    "Cases": 209,  # recorded
    "Solutions": 211,  # recorded
    "Products": 213,
    "Vendors": 215,
    "Price_Books": 217,  # recorded
    "Quotes": 219,
    "Sales_Orders": 221,
    "Purchase_Orders": 223,
    "Invoices": 225,
    "Appointments": 227,
    "Services": 229,
}

OP_ORDER: tuple[str, ...] = ("edit", "create", "delete")
"""The order the GET listing writes a module's operations in (``Deals.all`` -> edit, create, delete)."""


def resource_id(module: str) -> int:
    known = _KNOWN.get(module)
    if known is not None:
        return _BASE + known
    return _BASE + 100_000_000 + zlib.crc32(module.encode()) % 10_000_000


def resource_uri(base_url: str, product: Product, module: str) -> str:
    """Always ``/crm/v2/`` or ``/bigin/v1/``, whatever version was called, as recorded."""
    return f"{base_url}/{'crm/v2' if product == 'crm' else 'bigin/v1'}/{module}"


def modules_in_order(events: frozenset[Event]) -> tuple[str, ...]:
    return tuple(sorted({module for module, _ in events}, key=lambda m: (resource_id(m), m)))


def module_events(events: frozenset[Event], module: str) -> list[str]:
    return [f"{module}.{op}" for op in OP_ORDER if (module, op) in events]
