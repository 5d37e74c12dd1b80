"""The layer boundary, read from the source: the spec layer imports no framework, backends import no
orchestration (load path, conversion, training loop, CLI), and the spec calls backends only via the API."""

import ast
from pathlib import Path

import pytest

from mamba_core.registry import BACKEND_API

SRC = Path(__file__).resolve().parents[1] / "src"
FRAMEWORKS = ("torch", "mlx", "safetensors.torch", "safetensors.mlx")
# spec modules that orchestrate: a backend importing one would point the dependency the wrong way
ORCHESTRATION = (
    "mamba_core.train",
    "mamba_core.loading",
    "mamba_core.conversion",
    "mamba_core.cli",
    "mamba_core.commands",
    "mamba_core.conformance",
)


def _imports(path: Path) -> list[tuple[int, str]]:
    """(line, module) for every import in the file, function-local ones included."""
    out = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            out.append((node.lineno, node.module))
    return out


def _under(module: str, roots) -> bool:
    return any(module == r or module.startswith(r + ".") for r in roots)


@pytest.mark.parametrize("path", sorted((SRC / "mamba_core").rglob("*.py")), ids=lambda p: p.name)
def test_spec_layer_imports_no_framework(path):
    found = [f"{path.name}:{line} imports {m}" for line, m in _imports(path) if _under(m, FRAMEWORKS)]
    assert not found, found


@pytest.mark.parametrize(
    "path", sorted((SRC / "backends").rglob("*.py")), ids=lambda p: p.parent.name + "/" + p.name
)
def test_backends_import_no_orchestration(path):
    found = [f"{path.name}:{line} imports {m}" for line, m in _imports(path) if _under(m, ORCHESTRATION)]
    assert not found, found


def test_spec_calls_backends_only_through_the_api():
    """``module.<name>`` / ``backend.<name>`` attribute calls in the spec layer name only BACKEND_API."""
    outside = []
    for path in sorted((SRC / "mamba_core").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if (
                isinstance(node, ast.Attribute)
                and isinstance(node.value, ast.Name)
                and node.value.id in ("module", "backend", "other")
                and node.attr not in BACKEND_API
            ):
                outside.append(f"{path.name}:{node.lineno} {node.value.id}.{node.attr}")
    assert not outside, outside
