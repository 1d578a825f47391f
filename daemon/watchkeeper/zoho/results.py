"""What a write or delete call to Zoho came back with, partial results included.

A call of many channels goes out in chunks of at most 100. When a later chunk fails, the answers
of the earlier ones are still facts the registry must record, so a call returns them beside the
error that stopped it instead of hanging them on a mutated exception.
"""

from __future__ import annotations

from dataclasses import dataclass

from watchkeeper.model import ItemResult
from watchkeeper.zoho.errors import ZohoError


@dataclass(frozen=True, slots=True)
class CallResult:
    results: tuple[ItemResult, ...]
    """One per channel of every chunk Zoho answered, in request order."""
    error: ZohoError | None = None
    """The failure that stopped the call; its channels, and those after it, have no result."""
    unsent: tuple[str, ...] = ()
    """Channel ids never sent because a stop was requested between two chunks."""

    @property
    def answered(self) -> dict[str, ItemResult]:
        return {result.channel_id: result for result in self.results}
