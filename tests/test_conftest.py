"""The order `make test` hands test files to its two processes (tests/conftest.py)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from tests.conftest import _LONGEST, pytest_collection_modifyitems

TESTS = Path(__file__).resolve().parent


@dataclass
class _Item:
    path: Path
    name: str
    marks: tuple[str, ...] = field(default=())

    def get_closest_marker(self, name: str) -> str | None:
        return name if name in self.marks else None


def test_the_longest_files_exist() -> None:
    found = {p.name for p in TESTS.rglob("test_*.py")}
    assert set(_LONGEST) <= found, set(_LONGEST) - found


def test_longest_files_first_then_slow_ones_each_file_together_in_its_own_order() -> None:
    unit, slow, demo = TESTS / "unit" / "test_a.py", TESTS / "b" / "test_b.py", TESTS / _LONGEST[0]
    second = TESTS / "dags" / _LONGEST[1]
    items = [
        _Item(unit, "u1"),
        _Item(slow, "s1"),  # a file with one slow test is a slow file
        _Item(slow, "s2", ("slow",)),
        _Item(second, "l2", ("slow",)),
        _Item(unit, "u2"),
        _Item(demo, "l1", ("slow",)),
    ]
    pytest_collection_modifyitems(items)  # type: ignore[arg-type]
    assert [it.name for it in items] == ["l1", "l2", "s1", "s2", "u1", "u2"]
