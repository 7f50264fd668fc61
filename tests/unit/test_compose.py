"""docker-compose.yml, checked by real validators and by the rules of this project.

Validators:

- ``compose-spec`` (a dev dependency: Python bindings of the Rust ``compose_spec``
  crate, a strict parser of the Compose Specification: unknown keys, bad
  durations, bad ``depends_on`` conditions, bad port syntax are errors). It does
  not resolve YAML merge keys or ``${VAR}`` interpolation, so the file is loaded
  with PyYAML (which resolves ``<<: *anchor`` as Compose does) and interpolated
  here with the values of ``.env.example`` first, as ``docker compose`` would.
- ``docker compose config`` or ``docker-compose config`` (v1), when installed and
  working (no engine is needed for ``config``); skipped otherwise.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.plugins.services import REPO_ROOT

COMPOSE = REPO_ROOT / "docker-compose.yml"
ENV_EXAMPLE = REPO_ROOT / ".env.example"
REQUIRED = {
    "POSTGRES_PASSWORD": "example-password",
    "FLOWER_BASIC_AUTH": "admin:example",
    "AIW_SECRET_KEY": "u1XZkzKbTX8kZ3Pk7YQwC9d0mY0s6bQm0jv2o8lZ0XU=",
}

_VAR = re.compile(r"\$\$|\$\{([A-Za-z_][A-Za-z0-9_]*)(?:(:?[-?])([^}]*))?\}")


def env_example() -> dict[str, str]:
    values = {}
    for line in ENV_EXAMPLE.read_text().splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            key, _, value = line.partition("=")
            values[key.strip()] = value.strip()
    return values


def interpolate(value: Any, env: dict[str, str]) -> Any:
    """Compose's ``${VAR}``, ``${VAR:-default}``, ``${VAR:?error}``, ``$$`` rules."""
    if isinstance(value, dict):
        return {k: interpolate(v, env) for k, v in value.items()}
    if isinstance(value, list):
        return [interpolate(v, env) for v in value]
    if not isinstance(value, str):
        return value

    def replace(m: re.Match[str]) -> str:
        if m.group(0) == "$$":
            return "$"
        name, op, arg = m.group(1), m.group(2), m.group(3)
        current = env.get(name)
        empty = current is None or (op is not None and op.startswith(":") and current == "")
        if op in (":-", "-") and empty:
            return arg
        if op in (":?", "?") and empty:
            raise ValueError(f"required variable {name} is missing: {arg}")
        return current or ""

    return _VAR.sub(replace, value)


def compose_variables() -> set[str]:
    return {m.group(1) for m in _VAR.finditer(COMPOSE.read_text()) if m.group(1)}


def loaded() -> dict[str, Any]:
    data = yaml.safe_load(COMPOSE.read_text())
    assert isinstance(data, dict)
    return data


def test_compose_spec_parser_accepts_the_file() -> None:
    compose_spec = pytest.importorskip("compose_spec")
    resolved = interpolate(loaded(), {**env_example(), **REQUIRED})
    compose = compose_spec.PyCompose.from_json(json.dumps(resolved))
    assert set(compose.service_names()) == {
        "redis", "postgres", "migrate", "worker", "worker-webhooks", "worker-agent-runs",
        "worker-maintenance", "beat", "flower", "metrics",
    }


def test_compose_spec_parser_would_catch_mistakes() -> None:
    compose_spec = pytest.importorskip("compose_spec")
    resolved = interpolate(loaded(), {**env_example(), **REQUIRED})
    resolved["services"]["worker"]["depends_on"]["migrate"]["condition"] = "service_done"
    with pytest.raises(ValueError, match="service_done"):
        compose_spec.PyCompose.from_json(json.dumps(resolved))


def test_required_secrets_have_no_default() -> None:
    with pytest.raises(ValueError, match="POSTGRES_PASSWORD"):
        interpolate(loaded(), env_example())  # .env.example leaves them empty on purpose
    with pytest.raises(ValueError, match="AIW_SECRET_KEY"):
        interpolate(loaded(), {**env_example(), **REQUIRED, "AIW_SECRET_KEY": ""})


def test_the_projects_rules() -> None:
    services = loaded()["services"]
    for name, service in services.items():
        assert "healthcheck" in service, f"{name} has no healthcheck"
    workers = {name: s for name, s in services.items() if name.startswith("worker")}
    # Bulkheads: one service per kind of work, each on its own queue, all scalable.
    assert sorted(w["command"][2] for w in workers.values()) == [
        "agent-runs", "ai", "maintenance", "webhooks",
    ]
    for worker in workers.values():
        assert "container_name" not in worker and "ports" not in worker  # --scale worker=N
    assert "replicas" not in services["beat"].get("deploy", {})
    assert "FLOWER_BASIC_AUTH" in services["flower"]["environment"]
    assert services["flower"]["command"][0] == "flower"  # `aiw flower` enforces the login
    assert any("postgres-data:" in v for v in services["postgres"]["volumes"])
    assert "postgres-data" in loaded()["volumes"]
    for depends in (*workers, "beat", "metrics"):
        assert services[depends]["depends_on"]["migrate"]["condition"] == (
            "service_completed_successfully"
        )


def test_every_compose_variable_is_in_env_example() -> None:
    documented = set(env_example())
    assert compose_variables() - documented == set()


def _compose_cli() -> list[str] | None:
    docker = shutil.which("docker")
    if docker:
        probe = subprocess.run([docker, "compose", "version"], capture_output=True, timeout=30)
        if probe.returncode == 0:
            return [docker, "compose"]
    legacy = shutil.which("docker-compose")
    return [legacy] if legacy else None


def test_docker_compose_config_accepts_the_file(tmp_path: Path) -> None:
    cli = _compose_cli()
    if cli is None:
        pytest.skip("neither `docker compose` nor `docker-compose` is installed")
    shutil.copy(COMPOSE, tmp_path / "docker-compose.yml")
    env = env_example() | REQUIRED
    (tmp_path / ".env").write_text("".join(f"{k}={v}\n" for k, v in env.items()))
    done = subprocess.run(
        [*cli, "config", "-q"], cwd=tmp_path, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    # And it refuses to run without the secrets.
    (tmp_path / ".env").write_text("".join(f"{k}={v}\n" for k, v in env_example().items()))
    done = subprocess.run(
        [*cli, "config", "-q"], cwd=tmp_path, capture_output=True, text=True, timeout=60
    )
    assert done.returncode != 0 and "POSTGRES_PASSWORD" in done.stderr
