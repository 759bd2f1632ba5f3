"""``lr_core.errors``' message helpers at their edges (docs/design.md#job-spec: a message
quotes at most 80 characters of a value), where `make mutants` found the fast tests silent:
a value of exactly the limit, a limit shorter than the cut's own "...", a long integer
inside a list or cut to a small limit, nesting, and what the cut says of the length."""
import tracemalloc
from pathlib import Path

import pytest

from lr_core.errors import SHOWN_CHARS, clip, shown


def test_a_value_of_exactly_the_limit_is_not_cut():
    assert clip("x" * SHOWN_CHARS) == "x" * SHOWN_CHARS
    assert clip("x" * (SHOWN_CHARS + 1)) == "x" * 61 + "... (81 characters)"
    # a string of 80 characters is no longer than the limit: reprlib's own middle cut, no length
    assert shown("a" * SHOWN_CHARS) == "'" + "a" * 37 + "..." + "a" * 38 + "'"


def test_a_cut_repr_ends_with_dots_only():
    # the length of a rendered list is not known (it was never rendered whole): no "(n characters)"
    assert shown(list(range(100))) == "[" + ", ".join(map(str, range(22))) + "..."
    assert len(shown(list(range(100)))) == SHOWN_CHARS


def test_a_limit_shorter_than_the_dots_is_all_dots():
    assert shown([1, 2, 3], limit=2) == ".."
    assert shown("abcdef", limit=2) == ".."


def test_a_path_is_clipped_as_the_path_and_other_values_as_their_repr():
    assert clip(Path("/data/a.csv")) == "/data/a.csv"
    assert clip(123) == "123" and clip(["a"]) == "['a']"


def test_an_integer_is_written_up_to_4_bits_a_character_then_described():
    # 2 ** 319 has 320 bits (96 digits), 4 per allowed character: written, cut like any repr
    assert shown([2 ** 319]) == "[10679935179604550411975108530847760573...52080391110986289032027501148104346..."
    assert shown(2 ** 319) == "10679935179604550411975108530847760573...520803911109862890320275011481043468288"
    # one bit more: described by its number of digits (bits x log10(2)), wherever it is
    assert shown(2 ** 320) == "an integer of about 96 digits"
    assert shown([2 ** 320]) == "[an integer of about 96 digits]"
    assert clip(2 ** 400) == "an integer of about 120 digits"
    assert shown({"n": 10 ** 1000}) == "{'n': an integer of about 1000 digits}"


@pytest.mark.parametrize("limit", [5, 10, 20])
def test_a_described_integer_keeps_to_a_small_limit(limit):
    assert shown(10 ** 1000, limit) == "an integer of about 1000 digits"[:limit - 3] + "..."


def test_two_levels_of_nesting_are_shown():
    assert shown([[1]]) == "[[1]]"
    assert shown([[[1]]]) == "[[[...]]]"
    assert shown({"a": {"b": {"c": 1}}}) == "{'a': {'b': {...}}}"


class _Blank:
    """A value whose repr is empty: a list of 40 of them fits 80 characters."""

    def __repr__(self):
        return ""


def test_a_list_that_fits_the_limit_is_shown_whole():
    assert shown([_Blank()] * 40) == "[" + ", " * 39 + "]"          # 80 characters: repr's own
    assert shown([_Blank()] * 41) == "[" + ", " * 38 + "..."        # 82: cut


def test_a_long_string_inside_a_value_is_never_copied_whole():
    long = "y" * 10_000_000
    tracemalloc.start()
    try:
        text = shown([long])
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert text == "['" + "y" * 37 + "..." + "y" * 35 + "...", text
    assert peak < 1 << 20, peak
