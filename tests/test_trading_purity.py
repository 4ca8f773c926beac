"""The trading core stays pure: no broker, database, event loop or global settings inside."""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
FORBIDDEN_MODULES = ("ib_async", "sqlite3", "asyncio", "core.settings")
GET_SETTINGS = re.compile(r"\bget_settings\b")


def impurities(package: Path) -> list[str]:
    """`file:line: what` for every forbidden import (or get_settings use) under `package`."""
    found = []
    for path in sorted(package.rglob("*.py")):
        name = path.relative_to(package.parent)
        source = path.read_text(encoding="utf-8")
        for node in ast.walk(ast.parse(source, filename=str(path))):
            if isinstance(node, ast.Import):
                modules = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                modules = [node.module or ""]
                if node.module == "core":
                    modules += [f"core.{alias.name}" for alias in node.names]
            else:
                continue
            for module in modules:
                if any(module == bad or module.startswith(f"{bad}.") for bad in FORBIDDEN_MODULES):
                    found.append(f"{name}:{node.lineno}: imports {module}")
        for lineno, line in enumerate(source.splitlines(), start=1):
            if GET_SETTINGS.search(line):
                found.append(f"{name}:{lineno}: uses get_settings")
    return found


def test_trading_package_imports_no_broker_database_loop_or_settings() -> None:
    problems = impurities(ROOT / "trading")
    assert not problems, "the trading core must stay pure:\n" + "\n".join(problems)


def test_purity_check_names_file_and_line_of_each_forbidden_import(tmp_path: Path) -> None:
    package = tmp_path / "trading"
    package.mkdir()
    (package / "ok.py").write_text("import math\nfrom core.money import round_to_tick\n")
    (package / "bad.py").write_text(
        "import math\n"
        "from ib_async import Order\n"
        "import sqlite3, asyncio\n"
        "from core import settings\n"
        "from core.settings import Settings\n"
        "x = get_settings()\n"
    )
    assert impurities(package) == [
        "trading/bad.py:2: imports ib_async",
        "trading/bad.py:3: imports sqlite3",
        "trading/bad.py:3: imports asyncio",
        "trading/bad.py:4: imports core.settings",
        "trading/bad.py:5: imports core.settings",
        "trading/bad.py:6: uses get_settings",
    ]
