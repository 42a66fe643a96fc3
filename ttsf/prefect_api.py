"""Whether this process has a Prefect API to talk to, found the way Prefect finds it, without importing
Prefect (importing `prefect.settings` alone takes seconds: most of what `ttsf run --executor auto`
would save on a machine without a server).

Checked 2026-12-03 against Prefect 3.9.1's own code, `.venv/lib/python3.11/site-packages/prefect/
settings/`: `base.py` (`PrefectBaseSettings.settings_customise_sources`, `build_settings_config`),
`sources.py` (`ProfileSettingsTomlLoader`, `_get_profiles_path`, `_is_test_mode`), `constants.py`,
`profiles.toml` (the packaged default: active profile "ephemeral", no API URL) and
`models/api.py` (`APISettings.url`, env prefix `PREFECT_API_`); and Prefect 3's settings guide
(docs.prefect.io/v3/concepts/settings-and-profiles: environment variables, `.env`, `prefect.toml`,
`pyproject.toml`, then the active profile). `tests/test_cli_executor.py` compares this module with
`prefect.settings.Settings().api.url` for every source, so a Prefect upgrade that changes the rules
fails a test instead of silently choosing the wrong executor.

`api.url` comes from the first of these that sets it:
  1. the environment variable PREFECT_API_URL (names matched case-insensitively, as pydantic-settings
     does; set but empty counts as set: Prefect then has no URL and starts a temporary server);
  2. `./.env` (PREFECT_API_URL, parsed by python-dotenv as Prefect parses it);
  3. `./prefect.toml`, table `[api]`, key `url`;
  4. `./pyproject.toml`, table `[tool.prefect.api]`, key `url`;
  5. the active profile's PREFECT_API_URL: profile PREFECT_PROFILE, else the file's `active`; the file
     PREFECT_PROFILES_PATH (environment, `.env`, `prefect.toml` `profiles_path`, `pyproject.toml`
     `[tool.prefect] profiles_path`), else $PREFECT_HOME/profiles.toml, else ~/.prefect/profiles.toml;
     none of it in Prefect's test mode (PREFECT_TEST_MODE and its three aliases), where profiles are
     not read. A profiles file that is missing, unreadable or not valid TOML sets nothing (Prefect
     warns and goes on without it).
When Prefect is already imported in this process (a flow, a test harness), its own settings, context
included, are asked instead: that costs nothing then.
"""

from __future__ import annotations

import os
import sys
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

API_URL = "PREFECT_API_URL"
TEST_MODE_VARS = ("PREFECT_TEST_MODE", "PREFECT_UNIT_TEST_MODE", "PREFECT_TESTING_UNIT_TEST_MODE",
                  "PREFECT_TESTING_TEST_MODE")


@dataclass(frozen=True)
class PrefectApi:
    """The API URL Prefect would use (None: it would start a temporary server) and where it was set."""

    url: str | None
    source: str | None = None  # e.g. "PREFECT_API_URL in the environment", "profile 'local' in ~/.prefect/..."

    @property
    def configured(self) -> bool:
        return bool(self.url)


def configured_api(environ: Mapping[str, str] | None = None, cwd: Path | None = None) -> PrefectApi:
    """The Prefect API this process would talk to, from Prefect's settings sources in Prefect's order."""
    if environ is None and "prefect.settings" in sys.modules:
        return _from_prefect()
    environ = os.environ if environ is None else environ
    cwd = Path.cwd() if cwd is None else Path(cwd)
    env = {name.upper(): value for name, value in environ.items()}
    if API_URL in env:
        return PrefectApi(env[API_URL] or None, f"{API_URL} in the environment")
    dotenv = _dotenv(cwd / ".env")
    if dotenv.get(API_URL) is not None:
        return PrefectApi(dotenv[API_URL] or None, f"{API_URL} in {cwd / '.env'}")
    prefect_toml, pyproject = _toml(cwd / "prefect.toml"), _toml(cwd / "pyproject.toml")
    for data, keys, path in ((prefect_toml, ("api", "url"), cwd / "prefect.toml"),
                             (pyproject, ("tool", "prefect", "api", "url"), cwd / "pyproject.toml")):
        value = _get(data, keys)
        if value is not None:
            return PrefectApi(str(value) or None, f"{'.'.join(keys)} in {path}")
    if any(env.get(name) for name in TEST_MODE_VARS):
        return PrefectApi(None)
    profiles = _profiles_path(env, dotenv, prefect_toml, pyproject)
    data = _toml(profiles)
    name = env.get("PREFECT_PROFILE") or data.get("active")
    profile = data.get("profiles", {}).get(name) if isinstance(data.get("profiles"), dict) else None
    if isinstance(profile, dict) and profile.get(API_URL):
        return PrefectApi(str(profile[API_URL]), f"profile {name!r} in {profiles}")
    return PrefectApi(None)


def _from_prefect() -> PrefectApi:
    from prefect.settings import get_current_settings

    url = get_current_settings().api.url
    return PrefectApi(url or None, "Prefect's settings in this process" if url else None)


def _profiles_path(env: Mapping[str, str], dotenv: Mapping[str, str | None], prefect_toml: dict,
                   pyproject: dict) -> Path:
    for value in (env.get("PREFECT_PROFILES_PATH"), dotenv.get("PREFECT_PROFILES_PATH"),
                  _get(prefect_toml, ("profiles_path",)), _get(pyproject, ("tool", "prefect", "profiles_path"))):
        if value:
            return Path(str(value))
    if env.get("PREFECT_HOME"):
        return Path(env["PREFECT_HOME"]) / "profiles.toml"
    return Path.home() / ".prefect" / "profiles.toml"  # missing: Prefect's packaged default sets no URL


def _dotenv(path: Path) -> dict[str, str | None]:
    if not path.is_file():
        return {}
    try:
        from dotenv import dotenv_values  # python-dotenv: installed with Prefect, which reads .env with it
    except ImportError:  # pragma: no cover - Prefect is a dependency of ttsf
        return {}
    return {name.upper(): value for name, value in dotenv_values(path).items()}


def _toml(path: Path) -> dict:
    try:
        return tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError):
        return {}


def _get(data: dict, keys: tuple[str, ...]):
    for key in keys:
        if not isinstance(data, dict):
            return None
        data = data.get(key)
    return data
