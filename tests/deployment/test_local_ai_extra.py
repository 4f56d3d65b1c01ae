"""The local AI provider's libraries are an extra (`local-ai`): a process without them starts and works.

Each process here runs with the extra's packages made uninstalled (a `sitecustomize` on PYTHONPATH whose finder
answers for them as for a package that is not there), so any import of them on a process's way up would stop
it. The ingress, the admin API and a worker start and do their work; a tenant on a hosted provider is
classified; a tenant on the local provider gets a clear, classified refusal (a ledger row, replayable once a
worker with the extra runs), never a crashed worker; `intake worker` says at start what is missing.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

import httpx
import orjson
import pytest
from sqlalchemy import Engine, text

from db.tenancy import bind_tenant
from pipelines.channels.signing import sign
from pipelines.inboxes import CreatedInbox
from tests.admin_server import make_key
from tests.factories import new_inbox
from tests.openai_server import openai_stub
from tests.processes import INTAKE, free_port, intake_ok, stop, wait_for, wait_until_serving, web_server, worker

EXTRA = ("numpy", "lingua", "vaderSentiment", "sklearn", "scipy")
SITECUSTOMIZE = f'''
import sys

EXTRA = {EXTRA!r}


class Uninstalled:
    """Answers for the local-ai extra's packages as the import system answers for a package not installed."""

    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] in EXTRA:
            raise ModuleNotFoundError(f"No module named {{name!r}}", name=name)
        return None


sys.meta_path.insert(0, Uninstalled())
'''
WORKER_ENV = {"INTAKE_JOB_MIN_BACKOFF_MS": "100", "INTAKE_JOB_MAX_BACKOFF_MS": "300", "INTAKE_JOB_MAX_RETRIES": "2"}
HOSTED_ANSWER = json.dumps({"category": "billing", "priority": "normal", "sentiment": "neutral", "sentiment_score": 0,
                            "language": "de", "confidence": 0.8, "reasoning": "Asks about an invoice.", "team": None})


@pytest.fixture
def without_extra(tmp_path: Path) -> dict[str, str]:
    """An environment in which the extra's packages cannot be imported."""
    (tmp_path / "sitecustomize.py").write_text(SITECUSTOMIZE)
    return {"PYTHONPATH": str(tmp_path)}


def run_python(code: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", code], env={**os.environ, **env}, capture_output=True, text=True,
                          timeout=120, check=False, cwd=Path(__file__).resolve().parents[2])


def test_the_processes_modules_and_the_pure_python_parts_need_no_extra(without_extra: dict[str, str]) -> None:
    code = """
import importlib
for name in ("numpy", "lingua", "vaderSentiment", "sklearn", "scipy"):
    try:
        importlib.import_module(name)
    except ModuleNotFoundError:
        pass
    else:
        raise SystemExit(f"{name} was importable")
import workers.web.app, workers.admin.app, workers.cli.main, pipelines.ingest, pipelines.knowledge
from pipelines.ai import language, libraries
from pipelines.ai.language import Evidence
from pipelines.ai.local import LocalProvider
assert libraries.missing() == list(libraries.EVERY), libraries.missing()
hinted = language.decide("ok", Evidence(hint="de-DE"))
assert (hinted.language, hinted.source) == ("de", "channel"), hinted
bare = language.decide("ok")
assert bare.source == "none" and "no language detector" in bare.reason, bare
vectors, _ = LocalProvider(64).embed(["refunds take five days"])
assert len(vectors[0]) == 64
try:
    LocalProvider(64).classify(None)
except libraries.LocalAIMissing as exc:
    assert (exc.status, exc.code) == (501, "local_ai_not_installed")
    assert "local-ai" in str(exc) and "numpy" in str(exc)
    print("refused")
"""
    result = run_python(code, without_extra)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip() == "refused"


def post_api(base: str, inbox: CreatedInbox, msg_id: str, text_: str) -> None:
    body = orjson.dumps({"id": msg_id, "type": "message", "sent_at": datetime.now(UTC).isoformat(), "text": text_,
                         "contact": {"external_id": f"c-{msg_id}", "name": "Ada"}})
    url = f"{base}/v1/webhooks/api/{inbox.id}"
    headers, signed = sign("api", inbox.secrets, url, body, "application/json")
    assert httpx.post(url, content=signed, headers=headers, timeout=10).status_code == 200


def rows(engine: Engine, inbox: CreatedInbox, sql: str) -> list[tuple[object, ...]]:
    with engine.begin() as conn:
        bind_tenant(conn, inbox.tenant_id)
        return [tuple(r) for r in conn.execute(text(sql)).all()]


def test_the_fleet_runs_without_the_extra(stack: dict[str, str], app_engine: Engine, admin_engine: Engine,
                                          without_extra: dict[str, str], tmp_path: Path) -> None:
    local = new_inbox(app_engine, "api", settings={"ai_drafts": False})
    hosted = new_inbox(app_engine, "api", settings={"ai_drafts": False})
    with app_engine.begin() as conn:
        bind_tenant(conn, hosted.tenant_id)
        conn.execute(text("UPDATE tenants SET settings = jsonb_set(settings, '{ai}', '{\"provider\": \"openai\"}')"))
    log = tmp_path / "worker.log"
    with openai_stub() as (url, stub):
        stub.default_content = HOSTED_ANSWER
        ai_env = {**without_extra, **WORKER_ENV, "INTAKE_AI_BASE_URL": url, "INTAKE_AI_API_KEY": "sk-test",
                  "INTAKE_LOG_LEVEL": "info"}
        with web_server(env=without_extra) as base, worker(processes=1, threads=2, env=ai_env, log=log):
            post_api(base, local, "l1", "Hallo, meine Rechnung ist doppelt.")
            post_api(base, hosted, "h1", "Hallo, meine Rechnung ist doppelt.")
            # The hosted tenant is classified; the local one's message is stored and its AI job set aside.
            wait_for(lambda: rows(app_engine, hosted, "SELECT provider FROM ai_classifications") == [("openai",)])
            wait_for(lambda: rows(app_engine, local, "SELECT exception_type FROM job_failures "
                                                     "WHERE actor = 'assist_messages'") == [("LocalAIMissing",)])
    assert rows(app_engine, local, "SELECT count(*) FROM messages") == [(1,)]
    assert rows(app_engine, local, "SELECT count(*) FROM ai_classifications") == [(0,)]
    ((message, attempts, status),) = rows(app_engine, local, "SELECT exception_message, attempts, status "
                                                             "FROM job_failures")
    assert "local-ai" in str(message) and attempts == 1 and status == "dead"  # permanent: not retried
    logged = log.read_text()
    assert "worker.local_ai.missing" in logged and "Traceback" not in logged.split("worker.local_ai.missing")[0]

    # The admin API starts and serves; training, which needs the extra, is refused with its reason.
    operator = make_key(admin_engine)
    port = free_port()
    admin = subprocess.Popen([INTAKE, "admin", "--port", str(port)], env={**os.environ, **without_extra},
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        admin_base = f"http://127.0.0.1:{port}"
        wait_until_serving(admin_base, admin)
        with httpx.Client(base_url=admin_base, headers=operator.headers, timeout=30) as api:
            assert api.get(f"/v1/admin/tenants/{local.tenant_id}").status_code == 200
            added = api.post(f"/v1/admin/tenants/{local.tenant_id}/ai/examples", json={
                "examples": [{"text": "my invoice is wrong", "category": "billing"},
                             {"text": "where is my parcel", "category": "shipping"}], "create_categories": True})
            assert added.status_code == 201, added.text
            refused = api.post(f"/v1/admin/tenants/{local.tenant_id}/ai/train")
            assert refused.status_code == 501, refused.text
            assert refused.json()["error"] == "local_ai_not_installed" and "local-ai" in refused.json()["detail"]
    finally:
        stop(admin)

    # With the extra (this run's own environment), the operator replays the set-aside job and it is classified.
    (failure,) = rows(app_engine, local, "SELECT id FROM job_failures WHERE actor = 'assist_messages'")
    intake_ok("dlq", "replay", str(failure[0]))
    with worker(processes=1, threads=2, env=WORKER_ENV, queues=("ai",)):
        wait_for(lambda: rows(app_engine, local, "SELECT provider FROM ai_classifications") == [("local",)])
