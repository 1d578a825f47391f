"""How often a whole listing succeeds when 2 % of calls fail with a 5xx.

    python -m tests.bench.listing_faults [--channels 10000 50000] [--listings 20]
                                         [--errors 0.02] [--retries 0.5 1 2] [--seed 1]

The real client against the emulator over loopback: ``channels`` channels of two modules (two rows
each: 100 pages at 10,000 channels, 500 at 50,000), every GET failing with probability ``errors``
(seeded), ``listings`` listings in a row. ``--retries`` are the delays of the in-place retries of
a failed page (none: the old all-or-nothing listing); the sleeps are not waited for, only
counted. Prints, per size, the share of listings that succeeded, the GETs a listing cost, and
what independent page failures predict: (1 - errors ** (retries + 1)) ** pages.
"""

from __future__ import annotations

import argparse
import random

from watchkeeper.emulator import Emulator, Fault
from watchkeeper.zoho.auth import StaticToken
from watchkeeper.zoho.client import PER_PAGE, Limits, WatchClient
from watchkeeper.zoho.errors import TransientError
from watchkeeper.zoho.regions import Endpoint

URL = "https://hooks.example.com/zoho"


def measure(channels: int, listings: int, errors: float, retries: tuple[float, ...], seed: int) -> str:
    with Emulator(seed=seed) as emu:
        for n in range(channels):
            emu.add_foreign_channel(str(4_000_000_000_000 + n), ["Deals.create", "Contacts.edit"], URL)
        emu.add_fault(Fault(status=500, fraction=errors, methods=frozenset({"GET"})))
        endpoint = Endpoint.resolve("crm", "v8", api_domain=emu.url, accounts_url=emu.url)
        token = StaticToken(emu.issue_access_token(lifetime=None))
        slept: list[float] = []
        client = WatchClient(endpoint, token, limits=Limits(retries=retries), sleep=slept.append)
        ok = 0
        for _ in range(listings):
            try:
                client.list()
                ok += 1
            except TransientError:
                pass
        gets = sum(1 for c in emu.calls if c.method == "GET")
        client.close()
    pages = -(-2 * channels // PER_PAGE)
    predicted = (1 - errors ** (len(retries) + 1)) ** pages
    return (
        f"{channels:>6} channels ({pages} pages), retries {list(retries) or 'none'}: "
        f"{ok}/{listings} listings succeeded ({100 * ok / listings:.1f} %), "
        f"{gets / listings:.1f} GETs a listing, {sum(slept) / listings:.1f} s of backoff a listing; "
        f"independent failures predict {100 * predicted:.3f} %"
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m tests.bench.listing_faults")
    parser.add_argument("--channels", type=int, nargs="+", default=[10_000, 50_000])
    parser.add_argument("--listings", type=int, default=20)
    parser.add_argument("--errors", type=float, default=0.02)
    parser.add_argument("--retries", type=float, nargs="*", default=[0.5, 1.0, 2.0])
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args(argv)
    random.seed(args.seed)
    for channels in args.channels:
        print(measure(channels, args.listings, args.errors, tuple(args.retries), args.seed), flush=True)


if __name__ == "__main__":
    main()
