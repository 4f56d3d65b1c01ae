"""`intake run` (what `make run` starts) brings the whole fleet up on embedded services and tears it down."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import threading
from pathlib import Path

import httpx
import psutil
import psycopg

from tests.processes import INTAKE, free_port, wait_for


def test_run_serves_a_demo_tenant_end_to_end(tmp_path: Path, stack: dict[str, str]) -> None:
    env = {k: v for k, v in os.environ.items()
           if k not in ("DATABASE_URL", "REDIS_URL", "INTAKE_ADMIN_DATABASE_URL", "INTAKE_SECRET_KEY")}
    env.update({"INTAKE_HOME": str(tmp_path / "home"), "INTAKE_WORKER_METRICS_PORT": "0",
                "INTAKE_CLOCK_METRICS_PORT": "0"})
    port, admin_port = free_port(), free_port()
    proc = subprocess.Popen([INTAKE, "run", "--port", str(port), "--admin-port", str(admin_port), "--threads", "2"],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    printed: list[str] = []
    reader = threading.Thread(target=lambda: printed.extend(line.decode() for line in proc.stdout or ()), daemon=True)
    reader.start()
    try:
        def healthy() -> bool:
            try:
                return httpx.get(base + "/readyz", timeout=1).status_code == 200
            except httpx.TransportError:
                return False

        wait_for(healthy, timeout=90, interval=0.5)
        demo = json.loads((tmp_path / "home" / "demo.json").read_text())
        assert set(demo["inboxes"]) == {"twilio", "whatsapp", "postmark", "mailgun", "sendgrid", "telegram", "api"}
        telegram = demo["inboxes"]["telegram"]
        response = httpx.post(
            f"{base}/v1/webhooks/telegram/{telegram['id']}",
            headers={"X-Telegram-Bot-Api-Secret-Token": telegram["secrets"]["secret_token"]},
            json={"update_id": 1, "message": {"message_id": 1, "date": 1700000000, "chat": {"id": 42, "type": "private"},
                                              "from": {"id": 42, "first_name": "Ada"}, "text": "Where is my order?"}},
        )
        assert response.status_code == 200
        socket_dir = tmp_path / "home" / "postgres"
        url = f"postgresql://postgres@/intake?host={socket_dir}"

        def stored() -> bool:
            with psycopg.connect(url) as conn:
                row = conn.execute("SELECT content FROM messages").fetchone()
            return row is not None and row[0] == "Where is my order?"

        wait_for(stored, timeout=60, interval=0.5)

        # The AI worker is a process of its own below normal priority; the message gets classified.
        def classified() -> bool:
            with psycopg.connect(url) as conn:
                return conn.execute("SELECT count(*) FROM ai_classifications").fetchone() == (1,)

        wait_for(classified, timeout=90, interval=0.5)
        workers = [p for p in psutil.Process(proc.pid).children(recursive=True) if "dramatiq" in p.cmdline()]
        ai = [p for p in workers if p.cmdline()[p.cmdline().index("--queues") + 1] == "ai"]
        assert ai and {p.nice() for p in ai} == {10}
        assert {p.nice() for p in workers if p not in ai} == {0}
        # Replies go out through a worker of their own, on the outbound queue.
        assert [p for p in workers if p.cmdline()[p.cmdline().index("--queues") + 1] == "outbound"]

        # The printed operator key signs in to the admin API and the console.
        (key,) = {word for line in printed for word in line.split() if word.startswith("ik_")}
        admin = f"http://127.0.0.1:{admin_port}"
        assert any(f"{admin}/" in line for line in printed)

        def tenants() -> httpx.Response | None:
            try:
                return httpx.get(f"{admin}/v1/admin/tenants", headers={"Authorization": f"Bearer {key}"}, timeout=2)
            except httpx.TransportError:
                return None

        wait_for(lambda: tenants() is not None, timeout=60, interval=0.5)
        listed = tenants()
        assert listed is not None and listed.status_code == 200
        assert demo["tenant_id"] in {item["id"] for item in listed.json()["items"]}
        assert httpx.get(f"{admin}/v1/admin/tenants", headers={"Authorization": "Bearer ik_wrong"}).status_code == 401
    finally:
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=90)
        reader.join(timeout=10)
        if proc.stdout is not None:
            proc.stdout.close()
    assert proc.returncode == 0
    assert any("Intake is running" in line for line in printed)
    status = subprocess.run([INTAKE, "services", "status", "--json"], env=env, capture_output=True, text=True)
    assert json.loads(status.stdout)["postgres_running"] is False  # it stopped what it started
