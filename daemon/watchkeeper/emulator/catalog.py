"""What each product serves, as zoho-api.md states it (kept here rather than taken from the
daemon's tables, so a wrong entry there shows up as a disagreement with the emulator)."""

from __future__ import annotations

from datetime import timedelta

from watchkeeper.emulator.formats import Product

DAY = timedelta(days=1)
WEEK = timedelta(days=7)

MAX_LIFETIME: dict[Product, dict[str, timedelta]] = {
    # 1.4 and 2.1: 1 day on CRM v2-v3 and Bigin, 1 week from CRM v4 (Kaizen #170; v5 assumed)
    "crm": {
        "v2": DAY,
        "v2.1": DAY,
        "v3": DAY,
        "v4": WEEK,
        "v5": WEEK,
        "v6": WEEK,
        "v7": WEEK,
        "v8": WEEK,
    },
    "bigin": {"v1": DAY, "v2": DAY},
}
"""The versions each product serves and the longest channel lifetime each grants."""

MODULES: dict[Product, frozenset[str]] = {
    # 1.4 "Supported CRM modules (v7 list)", with API names for display names: Meetings is
    # ``Events`` in the API, "Appointments Rescheduled History" is written with underscores; Notes
    # "works in practice" [TWA] and a v7 example subscribes ``users.all``.
    "crm": frozenset(
        {
            "Leads",
            "Accounts",
            "Contacts",
            "Deals",
            "Campaigns",
            "Tasks",
            "Cases",
            "Events",
            "Meetings",
            "Calls",
            "Solutions",
            "Products",
            "Vendors",
            "Price_Books",
            "Quotes",
            "Sales_Orders",
            "Purchase_Orders",
            "Invoices",
            "Appointments",
            "Appointments_Rescheduled_History",
            "Services",
            "Notes",
            "users",
        }
    ),
    # 1.4 "Bigin modules: Contacts, Pipelines, Accounts (Companies), Products, Tasks, Events, Calls"
    "bigin": frozenset({"Contacts", "Pipelines", "Accounts", "Products", "Tasks", "Events", "Calls"}),
}
"""The standard module API names each product lets a channel watch; an org's custom modules come on
top (``Options.custom_modules``)."""
