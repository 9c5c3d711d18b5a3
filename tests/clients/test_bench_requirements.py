"""`lstm-serve bench` without its extra: a clear error naming what to install, exit 2, before any service.bench
import; and the serving code never needs the Python client."""

from __future__ import annotations

import pkgutil
import subprocess
import sys
from pathlib import Path

import service
from service.cli import BENCH_REQUIREMENTS, bench_requirements_message, missing_bench_modules
from tests.clients.blocker import blocking

ROOT = Path(__file__).resolve().parents[2]


def run_python(code: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)


def test_missing_modules_are_found_without_importing_them() -> None:
    assert missing_bench_modules() == []  # the dev install has the bench extra and the client
    assert missing_bench_modules(["psutil", "no_such_module_xyz", "json"]) == ["no_such_module_xyz"]
    assert set(BENCH_REQUIREMENTS) >= {"psutil", "matplotlib", "lstm_serve_client"}


def test_the_message_names_the_extra_and_the_client() -> None:
    message = bench_requirements_message(["psutil", "lstm_serve_client"])
    assert "pip install 'lstm-serve[bench]'" in message
    assert "pip install ./clients/python" in message
    assert "psutil" in message and "lstm_serve_client" in message


def test_bench_without_psutil_exits_2_naming_the_extra(tmp_path: Path) -> None:
    code = blocking("psutil", "matplotlib") + (
        "from service.cli import main\n"
        f"code = main(['bench', '--short', '--out', {str(tmp_path)!r}])\n"
        "assert not [m for m in sys.modules if m.startswith('service.bench')], 'service.bench was imported'\n"
        "sys.exit(code)\n"
    )
    proc = run_python(code)
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    assert "missing psutil, matplotlib" in proc.stderr
    assert "pip install 'lstm-serve[bench]'" in proc.stderr
    assert not any(tmp_path.iterdir())  # nothing ran


def test_bench_without_the_client_exits_2_naming_it(tmp_path: Path) -> None:
    code = blocking("lstm_serve_client") + (
        f"from service.cli import main\nsys.exit(main(['bench', '--short', '--out', {str(tmp_path)!r}]))\n"
    )
    proc = run_python(code)
    assert proc.returncode == 2, proc.stderr
    assert "missing lstm_serve_client" in proc.stderr
    assert "pip install ./clients/python" in proc.stderr


def test_no_serving_module_imports_the_client() -> None:
    """Every module under service/ except the bench (and service.client itself, and __main__, which serves)
    imports with the client unimportable, as in the serving install (`pip install .`, the Dockerfile)."""
    names = sorted(
        m.name
        for m in pkgutil.walk_packages(service.__path__, "service.")
        if not m.name.startswith(("service.bench", "service.client", "service.__main__"))
    )
    assert "service.app" in names and "service.cli" in names
    code = blocking("lstm_serve_client", "service.client") + (
        "import importlib\n"
        f"for name in {names!r}:\n"
        "    importlib.import_module(name)\n"
        "assert 'lstm_serve_client' not in sys.modules and 'service.client' not in sys.modules\n"
        "print('imported', len(sys.modules))\n"
    )
    proc = run_python(code)
    assert proc.returncode == 0, proc.stderr
