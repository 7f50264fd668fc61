"""``aiw check`` (and ``aiw up``, and a worker at start) says when the webhook secrets
cannot be decrypted with the key this process has, or when every container would make a
key of its own: not only the first failed delivery."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from cryptography.fernet import Fernet

from app.config import get_settings
from app.webhooks import register_endpoint
from app.webhooks.crypto import key_problems, key_warning
from tests.plugins.cli import run_aiw
from tests.plugins.webhooks import RecordingPublisher


def test_a_key_that_cannot_decrypt_the_stored_secrets_is_reported(
    webhook_db: RecordingPublisher, env: Any, tmp_path: Path
) -> None:
    register_endpoint("http://127.0.0.1:9/a")
    register_endpoint("http://127.0.0.1:9/b")
    assert key_problems(get_settings()) == []  # the key that registered them
    env(AIW_SECRET_KEY=Fernet.generate_key().decode())  # another process, another key
    (problem,) = key_problems(get_settings())
    assert "2 of 2 enabled webhook endpoint(s)" in problem and "cannot decrypt" in problem
    assert os.environ["AIW_SECRET_KEY"] not in problem  # never the key itself

    cli_env = {k: v for k, v in os.environ.items() if not k.startswith(("OPENAI_", "CODEGEN_"))}
    result = run_aiw("check", env=cli_env, cwd=tmp_path)
    assert result.code == 1, result
    assert "webhook key: FAILED" in result.out
    assert "cannot decrypt" in result.err and "Traceback" not in result.err


def test_no_key_with_a_shared_database_is_reported(
    pg_database_factory: Callable[[], str], tmp_path: Path
) -> None:
    from app.config import load_settings
    from app.db import migrate
    from app.db.session import dispose_engines

    url = pg_database_factory()
    migrate.upgrade(url)
    settings = load_settings(DATABASE_URL=url, AIW_DATA_DIR=str(tmp_path))
    try:
        assert key_problems(settings) == []  # no endpoint yet: nothing fails
        warning = key_warning(settings)
    finally:
        dispose_engines()
    assert warning is not None
    assert warning.startswith("AIW_SECRET_KEY is not set while the database is shared")
    assert "Fernet.generate_key" in warning  # how to make one
    assert not (tmp_path / "secret.key").exists()  # the check creates nothing
