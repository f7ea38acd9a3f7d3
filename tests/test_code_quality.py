"""The code passes the project's linter (ruff rules in pyproject.toml)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_ruff_is_clean() -> None:
    ruff = shutil.which("ruff") or str(Path(sys.executable).parent / "ruff")
    if not Path(ruff).exists():
        pytest.skip("ruff is not installed (pip install -e '.[test]')")
    result = subprocess.run(
        [ruff, "check", "trainer", "engines", "streamer", "bench", "tests"],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_serving_packages_do_not_import_torch() -> None:
    """Serving must not need torch: import the streamer and the runtime with torch blocked."""
    code = (
        "import sys\n"
        "class Block:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name == 'torch' or name.startswith('torch.'):\n"
        "            raise ImportError('torch is blocked in this test')\n"
        "sys.meta_path.insert(0, Block())\n"
        "import streamer.app, streamer.session, streamer.track, streamer.worker, streamer.mixer\n"
        "import engines.runtime, engines.build\n"
        "assert 'torch' not in sys.modules\n"
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


# Which of the project's packages each part may import (function-local imports included).
# "streamer -> engines.runtime, engines.export -> trainer, trainer imports neither, bench and
# tests may use everything, nothing imports them; common is the bottom and imports nothing".
ALLOWED = {
    "common": set(),
    "trainer": {"common", "trainer"},
    "engines.runtime": {"common", "engines.runtime"},
    "engines": {"common", "trainer", "engines"},
    "streamer": {"common", "engines.runtime", "streamer"},
}
# The torch backend runs the trainer's own model: the one runtime module allowed to reach it.
EXCEPTIONS = {"engines.runtime.torch_backend": {"engines.wrap", "trainer"}}
PROJECT = ("common", "trainer", "engines", "streamer", "bench", "tests")


def project_imports(path: Path) -> set[str]:
    import ast

    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        names = [a.name for a in node.names] if isinstance(node, ast.Import) else []
        if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module]
        found.update(n for n in names if n.split(".")[0] in PROJECT)
    return found


def layer(module: str) -> str:
    return "engines.runtime" if module.startswith("engines.runtime") else module.split(".")[0]


def test_imports_go_one_way() -> None:
    bad = []
    for path in sorted(ROOT.glob("*/**/*.py")):
        module = ".".join(path.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")
        if layer(module) not in ALLOWED:
            continue  # bench, tests
        for imported in project_imports(path):
            allowed = ALLOWED[layer(module)] | EXCEPTIONS.get(module, set())
            if not any(imported == a or imported.startswith(a + ".") for a in allowed):
                bad.append(f"{module} imports {imported}")
    assert not bad, "\n".join(bad)


def test_common_needs_only_the_standard_library() -> None:
    import ast

    for path in sorted((ROOT / "common").glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import | ast.ImportFrom):
                names = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or ""]
                for name in names:
                    top = name.split(".")[0]
                    # _typeshed: the standard library's type stubs (imported for type checking only)
                    ok = top in ("__future__", "_typeshed") or top in sys.stdlib_module_names
                    assert ok, f"{path.name} imports {name}"
