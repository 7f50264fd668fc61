from __future__ import annotations

import logging

import pytest

from app.config import ConfigError, get_settings, load_settings


def test_defaults_without_environment() -> None:
    s = get_settings()
    assert s.openai_api_key is None
    assert s.codegen_base_url == "https://api.codegen.com"
    assert s.openai_timeout == 60.0
    assert s.log_level == "INFO"
    assert not s.has_openai and not s.has_codegen


def test_bad_value_names_the_variable(env) -> None:  # type: ignore[no-untyped-def]
    env(OPENAI_TIMEOUT="abc")
    with pytest.raises(ConfigError) as info:
        get_settings()
    assert "OPENAI_TIMEOUT" in str(info.value)


@pytest.mark.parametrize(
    ("name", "value"),
    [("OPENAI_TIMEOUT", "-1"), ("CODEGEN_MAX_RETRIES", "-2"), ("LOG_LEVEL", "LOUD"),
     ("CODEGEN_ORG_ID", "acme"), ("ENABLE_AI_LOGGING", "perhaps")],
)
def test_each_bad_value_is_refused(env, name: str, value: str) -> None:  # type: ignore[no-untyped-def]
    env(**{name: value})
    with pytest.raises(ConfigError, match=name):
        get_settings()


def test_secrets_are_never_shown(env, caplog: pytest.LogCaptureFixture) -> None:  # type: ignore[no-untyped-def]
    env(OPENAI_API_KEY="sk-very-secret-123", CODEGEN_TOKEN="cg-secret-456", CODEGEN_ORG_ID="7")
    s = get_settings()
    caplog.set_level(logging.DEBUG)
    logging.getLogger("t").debug("settings: %s %r", s, s)
    for text in (repr(s), str(s), caplog.text, str(s.model_dump())):
        assert "sk-very-secret-123" not in text
        assert "cg-secret-456" not in text
    assert s.openai_api_key is not None
    assert s.openai_api_key.get_secret_value() == "sk-very-secret-123"
    assert s.has_openai and s.has_codegen


def test_secret_value_not_echoed_in_config_error(env) -> None:  # type: ignore[no-untyped-def]
    env(FLOWER_BASIC_AUTH="admin:hunter2", OPENAI_MAX_RETRIES="x")
    # The bad variable is named; no secret input is echoed in the message.
    with pytest.raises(ConfigError) as info:
        load_settings(flower_basic_auth=123456)
    assert "hunter2" not in str(info.value)


def test_blank_secret_means_not_configured(env) -> None:  # type: ignore[no-untyped-def]
    env(OPENAI_API_KEY="  ", CODEGEN_ORG_ID="")
    s = get_settings()
    assert s.openai_api_key is None and s.codegen_org_id is None
