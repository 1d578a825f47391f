"""Where each Zoho data centre lives and what each product version allows.

Sources: Zoho's multi-DC pages for CRM and Bigin (Canada's accounts host is zohocloud.ca, not zoho.ca)
and the Kaizen #170 FAQ for lifetimes (1 day on CRM v2-v3 and Bigin, 1 week on CRM v4+).
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from datetime import timedelta
from urllib.parse import urlsplit

from watchkeeper.model import Product


@dataclass(frozen=True, slots=True)
class Region:
    api_domain: str
    accounts_url: str


REGIONS: dict[str, Region] = {
    "com": Region("https://www.zohoapis.com", "https://accounts.zoho.com"),
    "eu": Region("https://www.zohoapis.eu", "https://accounts.zoho.eu"),
    "in": Region("https://www.zohoapis.in", "https://accounts.zoho.in"),
    "com.au": Region("https://www.zohoapis.com.au", "https://accounts.zoho.com.au"),
    "jp": Region("https://www.zohoapis.jp", "https://accounts.zoho.jp"),
    "ca": Region("https://www.zohoapis.ca", "https://accounts.zohocloud.ca"),
    "com.cn": Region("https://www.zohoapis.com.cn", "https://accounts.zoho.com.cn"),
    "sa": Region("https://www.zohoapis.sa", "https://accounts.zoho.sa"),
}

DAY = timedelta(days=1)
WEEK = timedelta(days=7)

VERSIONS: dict[Product, dict[str, timedelta]] = {
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
"""Each supported version and the longest channel lifetime Zoho grants on it."""

TTL_MARGIN = timedelta(minutes=5)
"""A requested ttl must stay this far under the maximum: an expiry Zoho finds too long is not
clamped but replaced by its 1-2 hour default."""


def max_lifetime(product: Product, version: str) -> timedelta:
    try:
        return VERSIONS[product][version]
    except KeyError:
        known = ", ".join(VERSIONS.get(product, {})) or "none"
        raise ValueError(f"unsupported {product} API version {version!r} (supported: {known})") from None


def watch_path(product: Product, version: str) -> str:
    max_lifetime(product, version)  # validates the pair
    return f"/{product}/{version}/actions/watch"


def is_loopback(host: str | None) -> bool:
    if not host:
        return False
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def check_base_url(url: str, what: str) -> str:
    """An https URL (or plain http on a loopback host), without a trailing slash."""
    parts = urlsplit(url)
    if parts.scheme not in ("https", "http") or not parts.hostname:
        raise ValueError(f"{what} {url!r} is not an http(s) URL")
    if parts.scheme == "http" and not is_loopback(parts.hostname):
        raise ValueError(f"{what} must use https (plain http only for loopback hosts): {url!r}")
    return url.rstrip("/")


@dataclass(frozen=True, slots=True)
class Endpoint:
    """Where one account's calls go: the API base, the accounts server and the watch path."""

    product: Product
    version: str
    api_domain: str
    accounts_url: str

    @classmethod
    def resolve(
        cls,
        product: Product,
        version: str,
        region: str = "com",
        api_domain: str | None = None,
        accounts_url: str | None = None,
    ) -> Endpoint:
        if region not in REGIONS:
            raise ValueError(f"unknown region {region!r} (one of {', '.join(REGIONS)})")
        max_lifetime(product, version)
        base = REGIONS[region]
        return cls(
            product=product,
            version=version,
            api_domain=check_base_url(api_domain or base.api_domain, "api_domain"),
            accounts_url=check_base_url(accounts_url or base.accounts_url, "accounts_url"),
        )

    @property
    def watch_path(self) -> str:
        return watch_path(self.product, self.version)

    @property
    def max_lifetime(self) -> timedelta:
        return max_lifetime(self.product, self.version)
