"""The call deadline value (plughost/deadline.py) and how the call chain combines them."""

from __future__ import annotations

import time

from plughost.deadline import Deadline, within
from plughost.host import chain


def test_the_budget_is_what_was_allowed_however_long_ago() -> None:
    d = Deadline(time.monotonic() - 0.05, 0.2)  # set 250 ms ago: already over
    assert d.left() == 0.0 and d.text() == "200 ms"
    fresh = Deadline.after(0.2)
    assert 0.19 < fresh.left() <= 0.2 and fresh.text() == "200 ms"
    assert Deadline.after(0.0005).text() == "1 ms"  # never shown as 0 ms


def test_cap_keeps_the_earlier_deadline_and_its_budget() -> None:
    outer = Deadline.after(10.0)
    inner = outer.cap(0.3)
    assert inner.budget == 0.3 and inner.at < outer.at
    assert inner.cap(60.0) is inner and outer.cap(None) is outer


def test_within_a_path_and_the_chain() -> None:
    assert within(None, None) is None
    made = within(None, 5.0)
    assert made is not None and made.budget == 5.0
    with chain.entered("a", 0.25) as a:
        assert a is not None and a.budget == 0.25
        with chain.entered("b", 30.0) as b:  # a nested call never outlives its caller
            assert b is a
            assert chain.current() == ("a", "b")
        with chain.entered("c", 0.1) as c:  # but may be shorter
            assert c is not None and c.budget == 0.1 and c.at < a.at
    assert chain.path().deadline is None
