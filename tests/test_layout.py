"""The layout's import rules: the IB adapter (ib/) is the only production code that imports
ib_async, and core/ sits below the adapter and the store (no import runs back up)."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# Not production code: the tests, the simulated gateway (it speaks the protocol, it imports no
# client) and the benchmarks (they drive a real ib_async client against the gateway).
NOT_PRODUCTION = ("tests", "ibsim", "bench")

# Production modules outside ib/ that still import ib_async, each with its reason. The list
# only shrinks: a module that stops importing ib_async must leave it (the test says so).
IB_ASYNC_OUTSIDE_ADAPTER: dict[str, str] = {
    # The day trader's working entries keep IB's Trade (status, fills, log) to time out,
    # cancel and finish each entry; moving that is moving the entry order book into ib/.
    "bots/entry_orders.py": "holds and reads ib_async Trades of working entry BUYs",
    # The exit side's questions to IB: open trades of our sells (the protective set and the
    # exit-through-stop path act on those Trades), reqContractDetails, reqPositions, the
    # cancel-and-confirm wait and the order snapshot. Moving it changes the exit path.
    "bots/exit_broker.py": "the exit side's broker queries return ib_async Trades/Contracts",
}


def production_modules(root: Path = ROOT) -> list[Path]:
    """Every .py file of the project outside the tests, the gateway and the benchmarks."""
    return sorted(
        path
        for path in root.rglob("*.py")
        if path.relative_to(root).parts[0] not in NOT_PRODUCTION
        and not any(part.startswith(".") for part in path.relative_to(root).parts)
        and path.name != "conftest.py"
    )


def imported_modules(path: Path) -> list[tuple[int, str]]:
    """(line, module) for every import in `path`, at any depth (a function's own imports too);
    `from pkg import name` counts as `pkg` and `pkg.name`."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.append((node.lineno, node.module))
            found += [(node.lineno, f"{node.module}.{alias.name}") for alias in node.names]
    return found


def importers_of(package: str, root: Path = ROOT) -> dict[str, list[int]]:
    """{module path: lines} for every production module that imports `package`."""
    found: dict[str, list[int]] = {}
    for path in production_modules(root):
        lines = sorted(
            {n for n, module in imported_modules(path) if module.split(".")[0] == package}
        )
        if lines:
            found[path.relative_to(root).as_posix()] = lines
    return found


def test_only_the_ib_adapter_imports_ib_async() -> None:
    outside = {
        name: lines
        for name, lines in importers_of("ib_async").items()
        if not name.startswith("ib/") and name not in IB_ASYNC_OUTSIDE_ADAPTER
    }
    assert not outside, (
        "ib_async outside the IB adapter (put it behind an ib/ function): "
        + ", ".join(f"{name}:{lines}" for name, lines in outside.items())
    )


def test_the_allow_list_names_only_modules_that_still_import_ib_async() -> None:
    stale = set(IB_ASYNC_OUTSIDE_ADAPTER) - set(importers_of("ib_async"))
    assert not stale, f"no longer imports ib_async, take it off the allow-list: {sorted(stale)}"


def test_core_imports_neither_the_adapter_nor_the_store_nor_ib_async() -> None:
    """core/ (settings, clock, logs, money, cli) is below ib/ and the store: it imports
    neither, and does not even name ib_async (its logger is ib.session's business)."""
    problems = []
    for path in sorted((ROOT / "core").glob("*.py")):
        name = path.relative_to(ROOT).as_posix()
        for lineno, module in imported_modules(path):
            top = module.split(".")[0]
            if top in ("ib", "ib_async", "observability"):
                problems.append(f"{name}:{lineno}: imports {module}")
        if "ib_async" in path.read_text(encoding="utf-8"):
            problems.append(f"{name}: names ib_async")
    assert not problems, "core/ must stay below the adapter and the store:\n" + "\n".join(problems)


def test_layout_check_finds_every_importer_but_the_tests_gateway_and_benchmarks(
    tmp_path: Path,
) -> None:
    for name, text in {
        "bot.py": "import math\nfrom ib_async import Stock\n",
        "bots/deep.py": "def f():\n    import ib_async.util\n",
        "ib/convert.py": "from ib_async import Order\n",
        "tests/test_x.py": "from ib_async import IB\n",
        "ibsim/wire.py": "import ib_async\n",
        "bench/bench_x.py": "import ib_async\n",
        "clean.py": "from ib import session\n",
    }.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    assert importers_of("ib_async", tmp_path) == {
        "bot.py": [2],
        "bots/deep.py": [2],
        "ib/convert.py": [1],
    }
