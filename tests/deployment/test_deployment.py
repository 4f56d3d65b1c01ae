"""The deployment artefacts, checked without a container runtime: `compose.yaml` against the Compose
Specification's JSON schema (as vendored by check-jsonschema) and the fleet's own rules, and the `Dockerfile`
parsed by dockerfile-parse and held to the rules users expect (multi-stage, pinned images, a user that is not
root, a health check, the Procfile's processes as commands). Each rule is shown to refuse a broken copy.
"""

from __future__ import annotations

import io
import re
import shlex
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml
from check_jsonschema.builtin_schemas import get_builtin_schema
from dockerfile_parse import DockerfileParser

ROOT = Path(__file__).resolve().parents[2]
FLEET = ("web", "worker", "ai", "deliver", "outbound", "clock", "admin")


def procfile() -> dict[str, list[str]]:
    """Each process's `intake` arguments, with the Procfile's `${PORT:-8000}` defaults filled in."""
    found = {}
    for line in (ROOT / "Procfile").read_text().splitlines():
        name, _, command = line.partition(":")
        words = shlex.split(re.sub(r"\$\{[A-Z_]+:-(\d+)\}", r"\1", command))
        assert words[0] == "intake"
        found[name.strip()] = words[1:]
    return found


def image_problems(image: str) -> list[str]:
    tag = image.rpartition(":")[2] if ":" in image.rsplit("/", 1)[-1] else ""
    if not tag:
        return [f"{image}: no tag (means :latest)"]
    return [f"{image}: :latest is not a version"] if tag == "latest" else []


def in_container(args: list[str], service: dict[str, Any]) -> list[str]:
    """The Procfile's command as a container runs it: a process the Procfile keeps on 127.0.0.1 listens on
    the container's own interfaces (its loopback is its own), which is the same promise only when every port
    it publishes is bound to the host's loopback."""
    ports = [str(p) for p in service.get("ports", [])]
    if "--host" in args and args[args.index("--host") + 1] == "127.0.0.1" and all(
            p.startswith("127.0.0.1:") for p in ports):
        at = args.index("--host") + 1
        return [*args[:at], "0.0.0.0", *args[at + 1:]]  # noqa: S104 (inside the container only)
    return args


def compose_problems(doc: Any) -> list[str]:
    validator = jsonschema.Draft202012Validator(get_builtin_schema("vendor.compose-spec"))
    problems = [f"{'/'.join(map(str, e.absolute_path))}: {e.message[:200]}" for e in validator.iter_errors(doc)]
    if problems:
        return problems
    services = doc["services"]
    for service in services.values():
        if "image" in service and "build" not in service:
            problems += image_problems(service["image"])
    for name, args in procfile().items():
        service = services.get(name)
        if service is None:
            problems.append(f"the Procfile's {name} is not a service")
            continue
        if service.get("command") != in_container(args, service):
            problems.append(f"{name}: command {service.get('command')} is not the Procfile's {args}")
        env = service.get("environment", {})
        if "@pgbouncer:" not in env.get("DATABASE_URL", ""):
            problems.append(f"{name}: DATABASE_URL does not go through PgBouncer")
        if env.get("INTAKE_DB_PREPARED_STATEMENTS") != "false":
            problems.append(f"{name}: prepared statements through PgBouncer in transaction mode")
        if "@postgres:" not in env.get("INTAKE_LISTEN_DATABASE_URL", ""):
            problems.append(f"{name}: LISTEN does not have a direct connection")
        if not env.get("REDIS_SENTINELS") or "REDIS_URL" in env:
            problems.append(f"{name}: Redis is not reached through the Sentinels")
        if name in ("web", "worker") and service.get("deploy", {}).get("replicas", 1) < 2:
            problems.append(f"{name}: one replica, where the README scales it out")
        if name in ("web", "worker", "ai") and "INTAKE_ADMIN_DATABASE_URL" in env:
            problems.append(f"{name}: handed the maintenance connection")
    for name, service in services.items():
        for key, value in service.get("environment", {}).items():
            if re.search(r"PASSWORD|SECRET|KEY", key) and "${" not in str(value):
                problems.append(f"{name}: {key} is written in the file")
            if re.search(r"://[^:/@]+:[^$@/][^@/]*@", str(value)):
                problems.append(f"{name}: {key} has a password written in the file")
    if not any("--sentinel" in str(s.get("command", "")) for s in services.values()):
        problems.append("no Sentinel")
    if not any("pgvector" in s.get("image", "") for s in services.values()):
        problems.append("no pgvector PostgreSQL")
    return problems


def dockerfile_problems(text: str) -> list[str]:
    # On a file object of its own: given no path, the parser would write its content to ./Dockerfile.
    parser = DockerfileParser(fileobj=io.BytesIO(text.encode()), cache_content=True, env_replace=True)
    problems = []
    stages = [i for i in parser.structure if i["instruction"] == "FROM"]
    if len(stages) < 2:
        problems.append("not multi-stage: the build's tools end up in the image")
    first = parser.structure.index(stages[0]) if stages else 0
    # Global ARGs (before the first FROM) with their defaults: what the FROM lines name unless overridden.
    args = dict(i["value"].split("=", 1) for i in parser.structure[:first]
                if i["instruction"] == "ARG" and "=" in i["value"])
    for stage in stages:
        image = stage["value"].split()[0]
        image = re.sub(r"\$\{(\w+)\}", lambda m: args.get(m.group(1), m.group(0)), image)
        problems += image_problems(image.strip("\"'"))
    last = parser.structure[parser.structure.index(stages[-1]):] if stages else []
    users = [i["value"].split(":")[0].strip() for i in last if i["instruction"] == "USER"]
    if not users or users[-1] in ("root", "0"):
        problems.append("the final stage runs as root")
    if not any(i["instruction"] == "HEALTHCHECK" for i in last):
        problems.append("no HEALTHCHECK")
    if not any(i["instruction"] == "COPY" and "--from=" in i["value"] for i in last):
        problems.append("the final stage copies nothing from the build stage")
    entrypoint = [i["value"] for i in last if i["instruction"] == "ENTRYPOINT"]
    if entrypoint != ['["intake"]']:
        problems.append(f"ENTRYPOINT is {entrypoint}, not intake: the Procfile's processes are its commands")
    if not any(i["instruction"] == "CMD" and '"serve"' in i["value"] for i in last):
        problems.append("the default command is not the web")
    return problems


def test_compose_file_is_valid_and_runs_the_fleet_as_the_readme_describes() -> None:
    assert compose_problems(yaml.safe_load((ROOT / "compose.yaml").read_text())) == []


def test_dockerfile_is_multi_stage_pinned_unprivileged_and_checked() -> None:
    assert dockerfile_problems((ROOT / "Dockerfile").read_text()) == []
    # Every Procfile process is a command the image runs (the header lists them for `docker run`).
    header = (ROOT / "Dockerfile").read_text()
    for args in procfile().values():
        assert f"IMAGE {args[0]}" in header or args[0] == "serve"


@pytest.mark.parametrize(("change", "problem"), [
    (lambda d: d["services"]["web"].update(command="serve"), "is not the Procfile's"),
    (lambda d: d["services"]["worker"].update(replicas="two"), "services/worker"),
    (lambda d: d["services"]["redis-primary"].update(image="redis"), "no tag"),
    (lambda d: d["services"]["postgres"].update(image="pgvector/pgvector:latest"), ":latest"),
    (lambda d: d["services"]["web"]["environment"].update(INTAKE_DB_PREPARED_STATEMENTS="true"),
     "prepared statements"),
    (lambda d: d["services"]["ai"]["environment"].update(DATABASE_URL="postgresql://a:hunter2@pgbouncer:6432/i"),
     "password written"),
    (lambda d: d["services"].pop("clock"), "clock is not a service"),
    (lambda d: d.update(services=[1, 2]), "services"),
])
def test_a_broken_compose_file_is_refused(change: Any, problem: str) -> None:
    doc = yaml.safe_load((ROOT / "compose.yaml").read_text())
    change(doc)
    assert any(problem in p for p in compose_problems(doc)), compose_problems(doc)


@pytest.mark.parametrize(("old", "new", "problem"), [
    ("USER 10001:10001", "USER root", "runs as root"),
    ("USER 10001:10001\n", "", "runs as root"),
    ("python:3.11.11-slim-bookworm", "python:latest", ":latest"),
    ("python:3.11.11-slim-bookworm", "python", "no tag"),
    ("HEALTHCHECK", "# HEALTHCHECK", "no HEALTHCHECK"),
    ('ENTRYPOINT ["intake"]', 'ENTRYPOINT ["sh"]', "ENTRYPOINT"),
])
def test_a_broken_dockerfile_is_refused(old: str, new: str, problem: str) -> None:
    text = (ROOT / "Dockerfile").read_text()
    assert old in text
    problems = dockerfile_problems(text.replace(old, new))
    assert any(problem in p for p in problems), problems


def test_a_single_stage_dockerfile_is_refused() -> None:
    single = "FROM python:3.11.11-slim-bookworm\nUSER 1000\nHEALTHCHECK CMD true\nENTRYPOINT [\"intake\"]\n"
    assert "not multi-stage: the build's tools end up in the image" in dockerfile_problems(single)
