"""The package map of docs/architecture.md, held by the code: who may import whom, and file sizes."""
from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parent.parent / "src" / "resnetlab"
DOC = Path(__file__).resolve().parent.parent / "docs" / "architecture.md"

# Left to right: a package may import only those before it (and itself). "__init__" is the
# package root (resnetlab/__init__.py, which re-exports the public API); "entry" is the command's
# entry point (it loads the CLI), "__main__" runs it.
LAYERS = ["config", "autorecipe", "data", "models", "engine", "inference", "bench", "reports", "api", "__init__", "cli",
          "entry", "__main__"]
ANYWHERE = {"errors", "files", "cpu", "downloads", "guest"}  # no resnetlab imports of their own beyond each other
MAX_LINES = 300
LONG_FILES: dict[str, str] = {}  # path under src/resnetlab -> why it may exceed MAX_LINES (none today)


def top_module(path: Path) -> str:
    """The first component under resnetlab/: 'engine' for engine/train.py, 'api' for api.py."""
    return path.relative_to(SRC).parts[0].removesuffix(".py")


def resnetlab_imports(path: Path) -> list[tuple[int, str]]:
    """(line, top module) of every resnetlab import in `path`, relative ones resolved, those
    inside functions included (a lazy import is still a dependency)."""
    package = path.relative_to(SRC).parent.parts  # () for a module at the top
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level:
            base = package[: len(package) - (node.level - 1)]
            names = [".".join(("resnetlab", *base, node.module))] if node.module else \
                [".".join(("resnetlab", *base, alias.name)) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            names = [node.module or ""]
        else:
            continue
        for name in names:
            parts = name.split(".")
            if parts[0] == "resnetlab":
                found.append((node.lineno, parts[1] if len(parts) > 1 else "__init__"))
    return found


def layering_violations(files) -> list[str]:
    problems = []
    for path in files:
        here = top_module(path)
        if here not in LAYERS and here not in ANYWHERE:
            problems.append(f"{path.relative_to(SRC)}: '{here}' is not in the package map (add it to LAYERS and docs/architecture.md)")
            continue
        for line, target in resnetlab_imports(path):
            if target == here or target in ANYWHERE:
                continue
            if here in ANYWHERE:
                problems.append(f"{path.relative_to(SRC)}:{line} imports resnetlab.{target}; {here} may import only {sorted(ANYWHERE)}")
            elif target not in LAYERS:
                problems.append(f"{path.relative_to(SRC)}:{line} imports resnetlab.{target}, which is not in the package map")
            elif LAYERS.index(target) > LAYERS.index(here):
                problems.append(f"{path.relative_to(SRC)}:{line}: {here} imports {target}, which comes after it")
    return problems


def source_files() -> list[Path]:
    return sorted(SRC.rglob("*.py"))


def test_packages_import_only_those_to_their_left():
    assert layering_violations(source_files()) == []


def test_the_checker_sees_a_backward_import_even_inside_a_function(tmp_path, monkeypatch):
    """The check itself can fail: a data module that imports the engine lazily, a relative import
    that climbs into cli, and a module outside the map are all reported."""
    fake = tmp_path / "resnetlab"
    (fake / "data").mkdir(parents=True)
    (fake / "data" / "bad.py").write_text("def f():\n    from resnetlab.engine import train_step\n")
    (fake / "models" / "sub").mkdir(parents=True)
    (fake / "models" / "sub" / "bad.py").write_text("from ...cli import main\nfrom ..registry import create_model\n")
    (fake / "newthing.py").write_text("import resnetlab.errors\n")
    monkeypatch.setitem(globals(), "SRC", fake)
    problems = layering_violations(sorted(fake.rglob("*.py")))
    assert len(problems) == 3, problems
    assert "data/bad.py:2: data imports engine" in problems[0]
    assert "models/sub/bad.py:1: models imports cli" in problems[1]
    assert "'newthing' is not in the package map" in problems[2]


def test_the_documented_map_is_the_enforced_one():
    shown = " -> ".join(name for name in LAYERS if not name.startswith("__"))
    assert shown in DOC.read_text(), f"docs/architecture.md should show the import order {shown}"


def test_no_source_file_is_longer_than_the_limit():
    long = {str(p.relative_to(SRC)): n for p in source_files() if (n := len(p.read_text().splitlines())) > MAX_LINES}
    unexplained = {p: n for p, n in long.items() if p not in LONG_FILES}
    assert unexplained == {}, f"files over {MAX_LINES} lines: split them, or list them in LONG_FILES with a reason"
    stale = set(LONG_FILES) - set(long)
    assert not stale, f"LONG_FILES lists {sorted(stale)}, now within {MAX_LINES} lines: take them off the list"
