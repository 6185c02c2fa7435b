"""The router's memory budget: bytes of request bodies, parsed JSON and buffered answers that
requests may hold at once. Taken before the memory is used; a request that cannot take what it
needs is shed (503 with Retry-After) instead of growing the process past its container limit."""

from __future__ import annotations


class MemoryBudget:
    """A byte counter; never blocks (shedding beats queueing memory)."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.used = 0

    def take(self, size: int) -> bool:
        """Reserve `size` bytes; False (nothing reserved) when they are not free."""
        if size <= 0:
            return True
        if self.used + size > self.limit:
            return False
        self.used += size
        return True

    def give(self, size: int) -> None:
        self.used = max(0, self.used - size)
