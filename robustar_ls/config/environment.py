"""Secrets, read from the environment only (never from a settings file)."""

from __future__ import annotations

import os

from robustar_ls.config.build import ConfigError


def check_basic_auth(user: str, password: str) -> None:
    """Basic auth is on with both user and password, off with neither; half-set is an error."""
    if bool(user) != bool(password):
        given, missing = (
            ("BASIC_AUTH_USER", "BASIC_AUTH_PASS")
            if user
            else ("BASIC_AUTH_PASS", "BASIC_AUTH_USER")
        )
        raise ConfigError(
            f"{given} is set but {missing} is not: set both to protect the backend with HTTP "
            "basic auth, or neither"
        )


def secrets_from_env(environ: dict[str, str] | None = None) -> dict[str, str]:
    """Secrets the entry points need, from the environment, never from a settings file
    (:class:`ConfigError` when only one of ``BASIC_AUTH_USER``/``BASIC_AUTH_PASS`` is set)."""
    env = os.environ if environ is None else environ
    check_basic_auth(env.get("BASIC_AUTH_USER", ""), env.get("BASIC_AUTH_PASS", ""))
    return {
        "label_studio_api_key": env.get("LABEL_STUDIO_API_KEY", "")
        or env.get("LABEL_STUDIO_USER_TOKEN", ""),
        "basic_auth_user": env.get("BASIC_AUTH_USER", ""),
        "basic_auth_pass": env.get("BASIC_AUTH_PASS", ""),
        "secret": env.get("ROBUSTAR_LS_SECRET", ""),
    }
