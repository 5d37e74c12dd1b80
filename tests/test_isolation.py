"""`import mamba_core` imports neither torch nor mlx; the backends do not import each other.

Each check runs in a fresh interpreter, because this test process may already have imported torch.
"""

import subprocess
import sys
from pathlib import Path

import pytest


def _spec_modules() -> list[str]:
    """Every module of the spec layer (src/mamba_core), found on disk so a new one is checked too."""
    root = Path(__file__).resolve().parents[1] / "src" / "mamba_core"
    names = []
    for py in sorted(root.rglob("*.py")):
        parts = py.relative_to(root).with_suffix("").parts
        if parts[-1] == "__main__":
            continue  # runs the CLI on import
        if parts[-1] == "__init__":
            parts = parts[:-1]
        names.append(".".join(("mamba_core", *parts)))
    return [*names, "mamba_core.backends"]


SPEC_MODULES = _spec_modules()


def _run(code: str) -> None:
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


def test_spec_layer_imports_no_framework():
    imports = "; ".join(f"import {m}" for m in SPEC_MODULES)
    _run(
        f"import sys; {imports}; bad = {{'torch', 'mlx'}} & set(sys.modules); "
        "sys.exit(f'framework imported: {bad}' if bad else 0)"
    )


def test_available_backends_reports_reasons_without_raising():
    _run(
        "import mamba_core; r = mamba_core.available_backends(); "
        "assert set(r) == {'torch', 'mlx'}; assert all(v is None or isinstance(v, str) for v in r.values())"
    )


def test_missing_backend_raises_typed_error_with_pip_hint():
    # Make the framework unimportable in a subprocess and ask for it.
    code = (
        "import sys; sys.modules['torch'] = None; sys.modules['mlx'] = None; sys.modules['mlx.core'] = None\n"
        "import mamba_core\n"
        "from mamba_core import BackendUnavailableError\n"
        "for name in ('torch', 'mlx'):\n"
        "    try:\n"
        "        mamba_core.get_backend(name)\n"
        "    except BackendUnavailableError as e:\n"
        "        assert isinstance(e, ImportError) and e.backend == name, e\n"
        "        assert 'pip install' in e.hint and name in str(e), e\n"
        "    else:\n"
        "        raise SystemExit(f'{name}: no error')\n"
        "r = mamba_core.available_backends()\n"
        "assert r['torch'] and r['mlx'], r\n"
    )
    _run(code)


@pytest.mark.parametrize("backend,other", [("torch", "mlx"), ("mlx", "torch")])
def test_backends_do_not_import_each_other(backend, other):
    pytest.importorskip(
        {"torch": "torch", "mlx": "mlx.core"}[backend],
        reason=f"{backend} not installed; conformance checks it is in CI",
    )
    _run(
        f"import sys, mamba_core.backends.{backend}; "
        f"sys.exit('{other} imported' if '{other}' in sys.modules else 0)"
    )


def test_unknown_backend_name():
    import mamba_core

    with pytest.raises(ValueError, match="jax"):
        mamba_core.get_backend("jax")
