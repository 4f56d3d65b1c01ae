"""`intake run` (what `make run` starts) brings the whole fleet up on embedded services and tears it down."""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import socket
import subprocess
import threading
from pathlib import Path

import httpx
import psutil
import psycopg
import pytest

from tests.processes import INTAKE, free_port, wait_for
from workers.embedded.ports import bind_problem

pytestmark = pytest.mark.services  # starts services of its own: never `offline`


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


# -- nothing exposed by default ----------------------------------------------------------------------------
def fleet_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    """`intake run` on the test stack (so the key it prints can be tried after it stops), its home its own."""
    env = {k: v for k, v in os.environ.items() if k not in ("INTAKE_METRICS_HOST", "INTAKE_WORKER_METRICS_HOST")}
    return {**env, "INTAKE_HOME": str(tmp_path / "home"), **extra}


def free_ports(count: int) -> list[int]:
    """`count` ports free now, the last one with a free port two above it (the AI worker's metrics)."""
    while True:
        ports = [free_port() for _ in range(count)]
        if len(set([*ports, ports[-1] + 2])) == count + 1 and not bind_problem("127.0.0.1", ports[-1] + 2):
            return ports


class Fleet:
    """One `intake run` in its own process group, what it printed, and the processes it started."""

    def __init__(self, env: dict[str, str], *args: str) -> None:
        self.proc = subprocess.Popen([INTAKE, "run", "--threads", "2", *args], env=env, stdout=subprocess.PIPE,
                                     stderr=subprocess.DEVNULL, start_new_session=True)
        self.printed: list[str] = []
        self.reader = threading.Thread(target=lambda: self.printed.extend(
            line.decode() for line in self.proc.stdout or ()), daemon=True)
        self.reader.start()

    def key(self) -> str:
        wait_for(lambda: any("ik_" in line for line in self.printed) or self.proc.poll() is not None, timeout=120)
        (key,) = {word for line in self.printed for word in line.split() if word.startswith("ik_")}
        return key

    def processes(self) -> list[psutil.Process]:
        root = psutil.Process(self.proc.pid)
        return [root, *root.children(recursive=True)]

    def listeners(self) -> set[tuple[str, int]]:
        found = set()
        for process in self.processes():
            try:
                found |= {(c.laddr.ip, c.laddr.port) for c in process.net_connections(kind="inet")
                          if c.status == psutil.CONN_LISTEN}
            except psutil.NoSuchProcess:
                pass
        return found

    def kill(self) -> None:
        """As a crash or `kill -9` ends it: nothing of it gets to clean up. Each process of the tree is
        stopped first, so none forks or restarts another meanwhile (the AI worker has a session of its own,
        out of reach of a signal to the group), then all are killed."""
        stopped: dict[int, psutil.Process] = {}
        while fresh := [p for p in self.processes() if p.pid not in stopped]:
            for process in fresh:
                with contextlib.suppress(psutil.NoSuchProcess):
                    process.send_signal(signal.SIGSTOP)
                stopped[process.pid] = process
        for process in stopped.values():
            with contextlib.suppress(psutil.NoSuchProcess):
                process.kill()
        psutil.wait_procs(list(stopped.values()), timeout=30)
        self.close()

    def stop(self) -> int:
        self.proc.send_signal(signal.SIGINT)
        code = self.proc.wait(timeout=120)
        self.close()
        return code

    def close(self) -> None:
        self.proc.wait(timeout=30)
        self.reader.join(timeout=10)
        if self.proc.stdout is not None:
            self.proc.stdout.close()


def test_the_procfile_opens_only_the_ingress() -> None:
    """Only `web`, the providers' door, listens on every interface; `admin` stays on the machine (published
    behind a TLS proxy, see the README), and no line opens the metrics (INTAKE_METRICS_HOST is unset)."""
    procfile = Path(__file__).resolve().parents[2] / "Procfile"
    lines = dict(line.split(": ", 1) for line in procfile.read_text().splitlines() if line.strip())
    hosts = {name: re.findall(r"--host (\S+)", command) for name, command in lines.items()}
    assert hosts.pop("web") == ["0.0.0.0"]  # noqa: S104
    assert hosts.pop("admin") == ["127.0.0.1"]
    assert {"worker", "ai", "clock"} <= set(hosts) and not any(hosts.values()), hosts  # the rest serve no HTTP
    assert not any("METRICS_HOST" in command for command in lines.values())


def status_with(base: str, key: str) -> int:
    return httpx.get(f"{base}/v1/admin/tenants", headers={"Authorization": f"Bearer {key}"}, timeout=10).status_code


def test_run_listens_only_on_its_host_and_its_key_lives_as_long_as_it_does(tmp_path: Path, base: str) -> None:
    port, admin_port, clock_metrics, worker_metrics = free_ports(4)
    env = fleet_env(tmp_path, INTAKE_WORKER_METRICS_PORT=str(worker_metrics),
                    INTAKE_CLOCK_METRICS_PORT=str(clock_metrics))
    args = ("--host", "127.0.0.1", "--port", str(port), "--admin-port", str(admin_port))

    # A run that is killed cannot revoke its key: that key still works until the next run starts.
    first = Fleet(env, *args)
    try:
        killed_key = first.key()
    finally:
        first.kill()
    assert status_with(base, killed_key) == 200

    second = Fleet(env, *args)
    try:
        key = second.key()
        expected = {("127.0.0.1", p) for p in (port, admin_port, worker_metrics, worker_metrics + 2, clock_metrics)}
        with contextlib.suppress(AssertionError):  # not in time: the assertion below says which is missing
            wait_for(lambda: expected <= second.listeners() or second.proc.poll() is not None, timeout=300,
                     interval=0.5)
        listening = second.listeners()
        assert expected <= listening, f"not listening: {expected - listening}"
        exposed = {(ip, p) for ip, p in listening if ip in ("0.0.0.0", "::")}  # noqa: S104
        assert not exposed, f"listening on every interface: {exposed}"
        assert all(ip == "127.0.0.1" for ip, _ in listening), listening
        for metrics_port in (worker_metrics, worker_metrics + 2, clock_metrics):
            assert httpx.get(f"http://127.0.0.1:{metrics_port}/metrics", timeout=10).status_code == 200
        # The second run revoked the key of the one killed before it; its own works.
        assert status_with(base, killed_key) == 401
        assert status_with(f"http://127.0.0.1:{admin_port}", key) == 200
    finally:
        code = second.stop()
    assert code == 0
    assert status_with(base, key) == 401  # revoked when it stopped
    assert not (tmp_path / "home" / "run_key").exists()  # nothing left for the next run to revoke


@pytest.mark.parametrize(("taken", "flag"), [("admin", "--admin-port"), ("web", "--port"),
                                             ("clock metrics", "INTAKE_CLOCK_METRICS_PORT")])
def test_run_refuses_a_taken_port_before_it_starts_anything(tmp_path: Path, taken: str, flag: str) -> None:
    ports = dict(zip(("web", "admin", "clock metrics", "worker metrics"), free_ports(4), strict=True))
    env = {k: v for k, v in os.environ.items()
           if k not in ("DATABASE_URL", "REDIS_URL", "INTAKE_ADMIN_DATABASE_URL", "INTAKE_SECRET_KEY")}
    env.update({"INTAKE_HOME": str(tmp_path / "home"), "INTAKE_WORKER_METRICS_PORT": str(ports["worker metrics"]),
                "INTAKE_CLOCK_METRICS_PORT": str(ports["clock metrics"])})
    with socket.socket() as other:  # another program, as a newcomer's machine has them
        other.bind(("127.0.0.1", ports[taken]))
        other.listen()
        result = subprocess.run([INTAKE, "run", "--port", str(ports["web"]), "--admin-port", str(ports["admin"])],
                                env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 1
    assert f"port {ports[taken]} " in result.stderr and flag in result.stderr
    assert "ik_" not in result.stdout + result.stderr and "Console" not in result.stdout
    # Nothing started: no embedded services, no key, no demo tenant.
    assert not (tmp_path / "home" / "postgres").exists() and not (tmp_path / "home" / "redis").exists()


@pytest.mark.parametrize(("args", "extra", "said"), [
    (["--admin-port", "8000", "--port", "8000"], {}, "both listen on port 8000"),
    (["--host", "bad host"], {}, "--host"),
    (["--host", "ü\u202e.example"], {}, "--host"),
    (["--host", "a" * 300], {}, "--host"),
    (["--host", "192.0.2.1"], {}, "not an address of this machine"),
    ([], {"INTAKE_METRICS_HOST": "192.0.2.1"}, "INTAKE_METRICS_HOST"),
    ([], {"INTAKE_METRICS_HOST": "0.0.0.0; rm -rf /"}, "INTAKE_METRICS_HOST"),
    ([], {"INTAKE_METRICS_HOST": ""}, "INTAKE_METRICS_HOST"),
], ids=["same-port", "space", "unicode", "long", "foreign", "metrics-foreign", "metrics-shell", "metrics-empty"])
def test_run_refuses_a_host_it_cannot_listen_on(tmp_path: Path, args: list[str], extra: dict[str, str],
                                               said: str) -> None:
    env = {**fleet_env(tmp_path, INTAKE_WORKER_METRICS_PORT=str(free_port()), INTAKE_CLOCK_METRICS_PORT="0"),
           **extra}
    result = subprocess.run([INTAKE, "run", "--port", str(free_port()), "--admin-port", str(free_port()), *args],
                            env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 1, result.stdout + result.stderr
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith("error: ") and said in line
    assert not (tmp_path / "home").exists()  # refused before anything was made
