"""Assertions shared by test modules (importable because pytest puts tests/ on sys.path)."""

from __future__ import annotations

import pytest


def assert_same_stats(got: dict, expected: dict, name: str) -> None:
    """Equal statistics (None where nothing was measured; floats to rounding of the JSON round trip)."""
    assert got.keys() == expected.keys(), name
    for key, value in expected.items():
        assert (got[key] is None) == (value is None), f"{name}.{key}"
        if value is not None:
            assert got[key] == pytest.approx(value, rel=1e-9), f"{name}.{key}"
