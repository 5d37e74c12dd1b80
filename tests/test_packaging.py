"""The wheel holds every package under src/ at its mapped import name."""

import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _expected_packages() -> set[str]:
    roots = {"src/mamba_core": "mamba_core", "src/backends": "mamba_core.backends"}
    out = set()
    for folder, name in roots.items():
        for init in (ROOT / folder).rglob("__init__.py"):
            rel = init.parent.relative_to(ROOT / folder)
            out.add(".".join([name, *rel.parts]) if rel.parts else name)
    return out


def test_wheel_contains_every_package(tmp_path):
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            str(ROOT),
            "--no-deps",
            "--no-build-isolation",
            "-w",
            str(tmp_path),
            "-q",
        ],
        check=True,
        timeout=300,
    )
    (wheel,) = tmp_path.glob("mamba_core-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    packages = {n[: -len("/__init__.py")].replace("/", ".") for n in names if n.endswith("/__init__.py")}
    expected = _expected_packages()
    assert expected <= packages, f"missing from the wheel: {sorted(expected - packages)}"
    assert not any(n.startswith(("backends/", "tests/", "conformance/")) for n in names)
    # every module file of src/ is in the wheel too
    for folder, prefix in (
        ("src/mamba_core", "mamba_core"),
        ("src/backends", "mamba_core/backends"),
    ):
        for py in (ROOT / folder).rglob("*.py"):
            rel = py.relative_to(ROOT / folder).as_posix()
            assert f"{prefix}/{rel}" in names, f"{prefix}/{rel} missing from the wheel"
