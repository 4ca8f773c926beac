"""The bots stay wiring: no class in the two bots or their pieces grows past 400 lines."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
MAX_CLASS_LINES = 400


def oversized_classes(paths: list[Path]) -> list[str]:
    """`file:Class (n lines)` for every top-level class longer than MAX_CLASS_LINES."""
    found = []
    for path in paths:
        for node in ast.parse(path.read_text(encoding="utf-8")).body:
            if isinstance(node, ast.ClassDef):
                lines = (node.end_lineno or node.lineno) - node.lineno + 1
                if lines > MAX_CLASS_LINES:
                    found.append(f"{path.name}:{node.name} ({lines} lines)")
    return found


def test_no_class_of_the_exit_manager_or_the_bots_pieces_is_over_400_lines() -> None:
    paths = [ROOT / "exit_manager.py", *sorted((ROOT / "bots").glob("*.py"))]
    assert not oversized_classes(paths)


def test_no_class_of_the_day_trader_is_over_400_lines() -> None:
    """The day trader was one 948-line class (loop, data feed, wallet, risk check and fill
    book at once); it is wiring now, its pieces in bots/day_*.py and bots/entry_*.py."""
    assert (ROOT / "bots" / "day_bot.py").exists()
    assert not oversized_classes([ROOT / "day_trader.py"])


def test_the_size_check_names_the_class_and_its_length(tmp_path: Path) -> None:
    big = tmp_path / "big.py"
    big.write_text("class Small:\n    pass\n\n\nclass Big:\n" + "    x = 1\n" * 400)
    assert oversized_classes([big]) == ["big.py:Big (401 lines)"]
