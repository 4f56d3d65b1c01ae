"""The code's layout holds, as pyproject.toml's import contracts declare it (run by import-linter): layers
import only downwards (config <- db <- pipelines <- workers), the ingress, the workers and the admin process do
not import one another, nothing in production imports the bench, and no module imports itself back through
others, whether at module level, inside a function or under TYPE_CHECKING. Each piece can then be read,
tested and reused from where it sits."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def test_the_import_contracts_are_kept() -> None:
    lint = Path(sys.executable).with_name("lint-imports")
    result = subprocess.run([str(lint), "--no-cache"], cwd=ROOT, capture_output=True, text=True, timeout=300,
                            check=False)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    assert "0 broken" in result.stdout


@pytest.mark.parametrize("module", ["workers.broker", "workers.queues", "workers.web.app", "workers.cli.main"])
def test_importing_has_no_side_effects(module: str) -> None:
    """Importing builds no broker, reads no settings and starts nothing: the process's entry point does."""
    code = (f"import {module}, dramatiq.broker as b, config.settings as s; "
            "assert b.global_broker is None, 'a broker was built'; "
            "assert s.get_settings.cache_info().currsize == 0, 'settings were read'")
    env = {"PATH": "/usr/bin:/bin", "REDIS_URL": "redis://127.0.0.1:1/0"}
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True,
                            timeout=60, check=False)
    assert result.returncode == 0, result.stderr[-2000:]
