"""Following a store: the transitions it records after a position, in order, as they come.

``GET /v1/events`` and ``flask plugins watch`` both read this way. A position is a transition's sequence number
in the store (``StateStore.last_seq``), which only grows, so a follower that lost its connection resumes from
the last one it saw and misses nothing the store still keeps. Asking whether anything is new costs one read of
the newest sequence number (an index look-up in SQLite, a counter in memory), so every follower of every worker
may ask several times a second; the records themselves are read only when there are new ones.
"""

from __future__ import annotations

from plugin_health.lifecycle import TransitionRecord
from plugin_health.store.base import StateStore, record_from_json

#: Records read at most at once (a follower resuming far behind gets them in several reads).
BATCH = 500


class Feed:
    """The transitions ``store`` records after a position; ``read`` gives the next ones and moves past them."""

    def __init__(self, store: StateStore, after: int | None = None) -> None:
        self.store = store
        newest = store.last_seq()
        if after is None:
            after = newest  # from now on
        elif after > newest:
            after = 0  # ahead of this store (its file was made anew since): everything it holds is news
        #: The sequence number of the last transition read (or skipped, for a feed that starts now).
        self.position = after

    def read(self, limit: int = BATCH) -> list[tuple[int, TransitionRecord]]:
        """The transitions recorded since the last read, oldest first (at most ``limit``), with their sequence
        numbers; empty when there is none."""
        if self.store.last_seq() <= self.position:
            return []
        rows = self.store.records_since(self.position, limit)
        if rows:
            self.position = rows[-1][0]
        return [(seq, record_from_json(data)) for seq, _, data in rows]
