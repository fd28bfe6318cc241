"""Settings read from ``BLACKBOARD_*`` environment variables, with pydantic-settings.

Every variable is one field of one :class:`EnvSettings` subclass, declared in the layer that
owns it (``blackboard``, ``scheduler``, ``observability``); the variable is the class's
``env_prefix`` plus the field name in capitals, or the field's ``validation_alias``.
``python -m blackboard.shell.cli.envdocs`` prints them all as the README's table.

:meth:`EnvSettings.from_env` reads the variables (unset or empty ones are skipped, names match
in any case), lets explicit values win and reports a bad value as one
:class:`~blackboard.errors.ConfigError` line. Settings constructed in code are the values and
defaults written there: the environment is read by ``from_env`` alone, so a test, a benchmark
or a simulation that builds its settings does not change with the shell it runs in. A field
holding another :class:`EnvSettings` class (default :func:`nested`) is filled by that class
from its own variables, never from one variable of JSON.
"""

from __future__ import annotations

from collections.abc import Callable
from contextvars import ContextVar
from typing import TYPE_CHECKING, Any, ClassVar, Self, TypeVar

from pydantic import PrivateAttr, ValidationError
from pydantic_settings import (
    BaseSettings,
    EnvSettingsSource,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    SettingsError,
)

from blackboard.errors import ConfigError
from blackboard.redact import redact_url

if TYPE_CHECKING:
    from pydantic.fields import FieldInfo

E = TypeVar("E", bound="EnvSettings")

#: True while :meth:`EnvSettings.from_env` builds settings (nested ones included).
_FROM_ENV: ContextVar[bool] = ContextVar("blackboard_settings_from_env", default=False)


class EnvSettings(BaseSettings):
    """Base of the settings classes filled from the environment (see the module docstring).

    Subclasses set ``model_config = SettingsConfigDict(env_prefix=...)`` and :attr:`what`.
    """

    model_config = SettingsConfigDict(
        frozen=True,
        extra="forbid",
        env_ignore_empty=True,
        case_sensitive=False,
        validate_by_name=True,
        validate_by_alias=True,
    )

    #: What error lines call one of these settings: ``invalid <what> <field>: …``.
    what: ClassVar[str] = "setting"

    _read_env: bool = PrivateAttr(default=False)

    @property
    def read_env(self) -> bool:
        """Whether these settings came from :meth:`from_env` (the environment was read)."""
        return self._read_env

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        """Values given in code, then (in :meth:`from_env`) the process environment; no
        ``.env`` or secrets files."""
        return init_settings, _OwnVariables(settings_cls)

    @classmethod
    def from_env(cls, **overrides: Any) -> Self:
        """Settings from the environment, explicit non-None ``overrides`` winning.

        Raises:
            ConfigError: a value is invalid (one line naming it: ``invalid <what> <field>: …``).
        """
        token = _FROM_ENV.set(True)
        try:
            made = cls(**{k: v for k, v in overrides.items() if v is not None})
            made._read_env = True
            return made
        except ValidationError as exc:
            raise cls.config_error(exc) from None
        except SettingsError as exc:  # a value pydantic-settings could not decode
            raise ConfigError(f"invalid {cls.what}s: {exc}") from None
        finally:
            _FROM_ENV.reset(token)

    @classmethod
    def config_error(cls, exc: ValidationError) -> ConfigError:
        """The one line reporting the first error of ``exc`` (never the value itself)."""
        err = exc.errors()[0]
        loc = err["loc"]
        name = ".".join(map(str, (cls.field_named(str(loc[0])), *loc[1:]))) if loc else ""
        msg = str(err["msg"]).removeprefix("Value error, ")  # a validator's own text
        if not name:
            return ConfigError(f"invalid {cls.what}s: {msg}")
        return ConfigError(f"invalid {cls.what} {name}: {msg}")

    @classmethod
    def field_named(cls, key: str) -> str:
        """The field ``key`` names: a field name, or a variable name in any case."""
        if key in cls.model_fields:
            return key
        for name in cls.model_fields:
            if cls.variable(name).lower() == key.lower():
                return name
        return key

    @classmethod
    def variable(cls, name: str) -> str:
        """The environment variable of field ``name`` (in capitals)."""
        alias = cls.model_fields[name].validation_alias
        if isinstance(alias, str):
            return alias.upper()
        return f"{cls.model_config.get('env_prefix', '')}{name}".upper()

    @classmethod
    def variables(cls) -> dict[str, str]:
        """Field name → variable, for every field read from the environment."""
        return {n: cls.variable(n) for n, f in cls.model_fields.items() if not _is_nested(f)}

    def __repr_args__(self) -> Any:
        for name, value in super().__repr_args__():
            yield name, redact_url(value) if isinstance(value, str) and "://" in value else value


def nested(kind: type[E]) -> Callable[[], E]:
    """The default factory of a field holding ``kind`` settings: read from their own variables
    when the outer settings come from :meth:`EnvSettings.from_env` (a bad one is reported as
    ``kind``'s), else ``kind``'s defaults."""

    def make() -> E:
        return kind.from_env() if _FROM_ENV.get() else kind()

    return make


def _is_nested(field: FieldInfo) -> bool:
    kind = field.annotation
    return isinstance(kind, type) and issubclass(kind, EnvSettings)


class _OwnVariables(EnvSettingsSource):
    """The environment while :meth:`EnvSettings.from_env` runs, except for fields holding
    nested :class:`EnvSettings` (those read their own variables)."""

    def __call__(self) -> dict[str, Any]:
        return super().__call__() if _FROM_ENV.get() else {}

    def get_field_value(self, field: FieldInfo, field_name: str) -> tuple[Any, str, bool]:
        if _is_nested(field):
            return None, field_name, False
        return super().get_field_value(field, field_name)
