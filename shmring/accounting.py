"""A reader's cursor and accounting: the one object that holds them.

Rules:
- ``cursor`` is the seq of the last event the reader consumed, dropped or
  filtered out; ``delivered``, ``dropped`` and ``filtered`` count those steps
  since attach, so always delivered + dropped + filtered == cursor - start.
- ``unpublished`` counts the steps since the cursor was last published to the
  registry, which happens at least every ``progress_every`` steps.
- ``fast``: the next read may take the next event without the reader's
  Python rules (a reader in the ring, not at its end; the compiled taker
  applies the reader's filter itself, the Python read leaves a filtered
  reader to ``_take``).
- With the compiled accelerator the reader's ``RecordTaker`` holds these same
  fields (and ``took`` and ``passed``), so that its per-event read and
  iteration update them in C; ``ReaderState`` is the same object in Python,
  for readers without it.
"""

__all__ = ["ReaderState"]


class ReaderState:
    """A reader's cursor and counters (the pure-Python twin of ``_hotpath.RecordTaker``'s)."""

    __slots__ = ("cursor", "delivered", "dropped", "filtered", "unpublished", "progress_every", "fast")

    def __init__(self):
        self.cursor = self.delivered = self.dropped = self.filtered = self.unpublished = 0
        self.progress_every = 1
        self.fast = False

    def took(self, seq: int) -> bool:
        """`seq` was delivered: whether the cursor is due to be published."""
        self.cursor = seq
        self.delivered += 1
        self.unpublished += 1
        return self.unpublished >= self.progress_every

    def passed(self, seq: int) -> None:
        """`seq` was filtered out."""
        self.cursor = seq
        self.filtered += 1
        self.unpublished += 1
