"""The one backoff helper: a delay that doubles after each failure, up to a ceiling,
and starts over after a success. Every retry loop in mlsm uses it."""

from __future__ import annotations

from dataclasses import dataclass, field

__all__ = ["Backoff"]


@dataclass(slots=True)
class Backoff:
    first: float
    """Seconds to wait after the first failure."""
    most: float
    """The ceiling."""
    factor: float = 2.0
    _next: float = field(init=False, default=0.0)

    def __post_init__(self) -> None:
        self._next = self.first

    def next(self) -> float:
        """The seconds to wait now; the wait after it is longer."""
        delay = self._next
        self._next = min(self._next * self.factor, self.most)
        return delay

    def reset(self) -> None:
        """A success: the next failure waits `first` again."""
        self._next = self.first
