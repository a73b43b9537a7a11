"""The call deadline: one value, made once per call and passed down.

A call's deadline is set once, in `Manager.call_raw`: the caller's timeout capped by the
plugin's `call_timeout_ms`, and never past the deadline of the call it is nested in
(`plugin_call`). Everything below works on that value: the instance pool waits until
`at`, wasm's epoch and gRPC's timeout get `left()`, host functions bound their waits by
it, and every timeout message shows `budget`, what the call was allowed, not a remainder
that has already ticked down.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass


@dataclass(frozen=True)
class Deadline:
    """An absolute monotonic deadline and the budget it was set with."""

    at: float  # time.monotonic() by which the call must end
    budget: float  # the seconds allowed when it was set (for messages)

    @classmethod
    def after(cls, seconds: float) -> Deadline:
        return cls(time.monotonic() + seconds, seconds)

    def left(self) -> float:
        """Seconds until the deadline, 0 once it has passed."""
        return max(0.0, self.at - time.monotonic())

    def cap(self, seconds: float | None) -> Deadline:
        """This deadline, or one `seconds` from now if that comes sooner."""
        if seconds is None:
            return self
        other = time.monotonic() + seconds
        return self if self.at <= other else Deadline(other, seconds)

    def text(self) -> str:
        """The budget in whole ms, as timeout messages show it."""
        return f"{math.ceil(round(self.budget * 1000, 3))} ms"


def within(outer: Deadline | None, seconds: float | None) -> Deadline | None:
    """A new call's deadline: `seconds` from now, never past `outer` (None: neither)."""
    if outer is None:
        return None if seconds is None else Deadline.after(seconds)
    return outer.cap(seconds)
