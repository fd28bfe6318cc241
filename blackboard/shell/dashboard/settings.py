"""Dashboard settings, its API key from the environment, and the start-up check on where it
binds."""

from __future__ import annotations

import ipaddress
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, SecretStr
from pydantic_settings import SettingsConfigDict

from blackboard.envsettings import EnvSettings
from blackboard.errors import ConfigError
from observability.settings import RunSettings


def is_loopback(host: str) -> bool:
    """Whether ``host`` is a loopback address or ``localhost``."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


class ApiKeySettings(EnvSettings):
    """The dashboard's API key from ``BLACKBOARD_API_KEY``, kept as a :class:`SecretStr` so it
    never shows in a repr, a log line or an error message."""

    model_config = SettingsConfigDict(env_prefix="BLACKBOARD_")
    what = "dashboard setting"

    api_key: SecretStr | None = Field(
        default=None,
        description="the dashboard's API key: changes (replay, purge) need it, and reads off "
        "loopback (unset: changes refused, and binding off loopback refused)",
    )


#: The variable holding the dashboard's key.
API_KEY_ENV = ApiKeySettings.variable("api_key")


class DashboardSettings(BaseModel):
    """How the dashboard runs.

    Attributes:
        host: address to bind (loopback by default).
        port: TCP port.
        api_key: the key changes need (and reads, off loopback); None: changes refused.
        traces: directory of traced runs for the runs page (None: no runs page data).
        audit_log: JSON-lines file every action is appended to.
        sample_interval_s: how often lag and end offsets are sampled.
        window: samples kept per partition (the health window).
        lag_threshold: lag one worker is expected to absorb (desired worker count).
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    host: str = "127.0.0.1"
    port: int = 8321
    api_key: SecretStr | None = None
    traces: Path | None = None
    audit_log: Path = Path("blackboard-audit.jsonl")
    sample_interval_s: float = 2.0
    window: int = 10
    lag_threshold: int = 1000

    @classmethod
    def from_env(cls, **overrides: object) -> DashboardSettings:
        """Settings with the key from ``BLACKBOARD_API_KEY`` (:class:`ApiKeySettings`), the
        runs from ``BLACKBOARD_TRACES`` (:class:`~observability.settings.RunSettings`), and
        non-None ``overrides`` winning.

        Raises:
            ConfigError: see :meth:`check`.
        """
        values: dict[str, object] = {
            "api_key": ApiKeySettings.from_env().api_key,
            "traces": RunSettings.from_env().traces,
        }
        values.update({k: v for k, v in overrides.items() if v is not None})
        settings = cls.model_validate(values)
        settings.check()
        return settings

    @property
    def loopback(self) -> bool:
        """Whether the dashboard is bound to loopback only."""
        return is_loopback(self.host)

    def check(self) -> None:
        """Refuse settings that cannot be served safely.

        Raises:
            ConfigError: a non-loopback address without an API key, or a bad number.
        """
        if not self.loopback and not self.api_key:
            raise ConfigError(
                f"refusing to bind {self.host} without an API key: set {API_KEY_ENV} "
                "(or bind 127.0.0.1)"
            )
        if not 0 <= self.port <= 65535:
            raise ConfigError(f"--port must be 0-65535, got {self.port}")
        if self.sample_interval_s <= 0:
            raise ConfigError(f"sample interval must be positive, got {self.sample_interval_s}")
        if self.window < 2:
            raise ConfigError(f"health window must hold at least 2 samples, got {self.window}")
        if self.lag_threshold < 1:
            raise ConfigError(f"--lag-threshold must be at least 1, got {self.lag_threshold}")
