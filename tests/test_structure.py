"""Repository rules from STYLE.md: file size limits and one-way imports between layers."""

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src" / "forge"

# a package may import from its own package and from lower layers only
LAYERS = {
    "errors": 0, "__init__": 0,
    "io": 1, "runtime": 1, "config": 1,
    "tokenizer": 2, "model": 2,
    "data": 3, "infer": 3,
    "train": 4, "image": 4,
    "align": 5, "serve": 5,
    "cli": 6,
}  # fmt: skip


def _package(path: Path) -> str:
    rel = path.relative_to(SRC)
    return rel.parts[0].removesuffix(".py")


def _forge_imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("forge."):
            found.add(node.module.split(".")[1])
        elif isinstance(node, ast.Import):
            found.update(a.name.split(".")[1] for a in node.names if a.name.startswith("forge."))
    return found


def test_no_source_file_over_600_lines() -> None:
    too_long = {
        str(p.relative_to(SRC)): n for p in SRC.rglob("*.py") if (n := len(p.read_text().splitlines())) > 600
    }
    assert not too_long, f"split these files (STYLE.md: under 600 lines): {too_long}"


def test_every_package_has_a_layer() -> None:
    packages = {_package(p) for p in SRC.rglob("*.py")}
    assert packages <= set(LAYERS), f"add {packages - set(LAYERS)} to LAYERS"


def test_imports_flow_one_way() -> None:
    bad = []
    for path in SRC.rglob("*.py"):
        own = _package(path)
        for imported in _forge_imports(path):
            if imported != own and LAYERS[imported] >= LAYERS[own]:
                bad.append(f"{path.relative_to(SRC)} imports forge.{imported}")
    assert not bad, "lower layers must not import higher or sibling ones:\n" + "\n".join(bad)


def test_checker_catches_a_violation(tmp_path: Path) -> None:
    bad = tmp_path / "x.py"
    bad.write_text("from forge.cli.main import main\nimport forge.train.loop\n")
    assert _forge_imports(bad) == {"cli", "train"}
