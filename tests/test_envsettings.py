"""Settings from ``BLACKBOARD_*`` variables: read by ``from_env`` only, explicit values win,
a bad value is one line, secrets never print, and no module reads a variable by hand."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from pydantic import SecretStr

from blackboard.blackboard import BlackboardSettings
from blackboard.envsettings import EnvSettings
from blackboard.errors import ConfigError
from blackboard.logs import LogSettings, configure_logging
from blackboard.redact import redact_url
from blackboard.shell.dashboard.settings import ApiKeySettings, DashboardSettings
from observability.runs import RunInfo, git_sha
from observability.settings import RunSettings, TraceSettings
from scheduler.ratelimit import RateLimit, RateLimitSettings
from scheduler.throttle import BackpressureSettings

ROOT = Path(__file__).resolve().parents[1]
CLI = [sys.executable, "-m", "blackboard.shell.cli.main"]


def test_code_built_settings_ignore_the_environment_and_from_env_reads_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("BLACKBOARD_URL", "memory:///elsewhere")
    monkeypatch.setenv("BLACKBOARD_PREFIX", "team-a")
    monkeypatch.setenv("BLACKBOARD_PARTITIONS", "3")
    monkeypatch.setenv("BLACKBOARD_BACKPRESSURE", "1")
    assert BlackboardSettings() == BlackboardSettings(url="memory://", prefix="bb", partitions=8)
    assert not BackpressureSettings().enabled
    read = BlackboardSettings.from_env()
    assert (read.url, read.prefix, read.partitions) == ("memory:///elsewhere", "team-a", 3)
    assert BackpressureSettings.from_env().enabled
    given = BlackboardSettings.from_env(prefix="mine", partitions=None)  # None: not given
    assert (given.prefix, given.partitions) == ("mine", 3)


def test_empty_variables_are_unset_and_names_match_in_any_case(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("BLACKBOARD_PARTITIONS", "")
    monkeypatch.setenv("blackboard_prefix", "lower")
    settings = BlackboardSettings.from_env()
    assert settings.partitions == 8 and settings.prefix == "lower"


@pytest.mark.parametrize(
    ("settings", "variable", "value", "line"),
    [
        (BlackboardSettings, "BLACKBOARD_PARTITIONS", "many", "invalid setting partitions: "),
        (BlackboardSettings, "BLACKBOARD_PREFIX", "a b", "invalid setting prefix: "),
        (BackpressureSettings, "BLACKBOARD_BACKPRESSURE", "maybe", "invalid backpressure setting "),
        (TraceSettings, "BLACKBOARD_TRACES_QUEUE", "0", "invalid trace setting max_queue: "),
        (TraceSettings, "BLACKBOARD_TRACES_FLUSH_S", "-1", "invalid trace setting flush_"),
    ],
)
def test_a_bad_variable_is_one_line_naming_the_field(
    monkeypatch: pytest.MonkeyPatch,
    settings: type[EnvSettings],
    variable: str,
    value: str,
    line: str,
) -> None:
    monkeypatch.setenv(variable, value)
    with pytest.raises(ConfigError) as caught:
        settings.from_env()
    assert str(caught.value).startswith(line) and "\n" not in str(caught.value)
    assert value not in str(caught.value).removeprefix(line)  # the value itself is not shown


def test_trace_variables_keep_their_names_and_code_wins(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BLACKBOARD_TRACES_QUEUE", "12")
    monkeypatch.setenv("BLACKBOARD_TRACES_BATCH", "34")
    monkeypatch.setenv("BLACKBOARD_TRACES_FLUSH_S", "0.5")
    assert TraceSettings.from_env().model_dump() == {
        "max_queue": 12,
        "batch_size": 34,
        "flush_interval_s": 0.5,
    }
    assert TraceSettings.from_env(max_queue=99).max_queue == 99
    assert TraceSettings().max_queue == 100_000


def test_run_variables_name_the_run_and_the_commit(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("BLACKBOARD_RUN_ID", "shared-run")
    monkeypatch.setenv("BLACKBOARD_GIT_SHA", "abc123")
    monkeypatch.setenv("BLACKBOARD_TRACES", str(tmp_path))
    assert RunSettings.from_env().traces == tmp_path
    assert git_sha() == "abc123"
    run = RunInfo.create(scenario="x", store="redis://u:pw@h:6379/0")
    assert run.run_id == "shared-run" and run.git_sha == "abc123"
    assert run.store == "redis://u:***@h:6379/0"
    assert RunInfo.create(scenario="x", run_id="mine").run_id == "mine"
    monkeypatch.setenv("BLACKBOARD_RUN_ID", "no/slashes")
    with pytest.raises(ConfigError, match="invalid run id 'no/slashes'"):
        RunInfo.create(scenario="x")


def test_the_rate_limit_url_comes_from_its_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    assert RateLimitSettings.from_env().url is None
    monkeypatch.setenv("BLACKBOARD_RATE_LIMIT_URL", "kafka://u:hunter2@x:9092")
    assert RateLimitSettings.from_env().url == "kafka://u:hunter2@x:9092"
    with pytest.raises(ConfigError) as caught:
        RateLimit(requests_per_s=1.0).limiter("bb.a")
    assert "kafka://u:***@x:9092" in str(caught.value) and "hunter2" not in str(caught.value)


def test_the_log_level_is_one_of_four_in_any_case(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BLACKBOARD_LOG_LEVEL", "WARNING")
    assert LogSettings.from_env().log_level == "warning"
    assert LogSettings.from_env(log_level="Debug").log_level == "debug"
    monkeypatch.setenv("BLACKBOARD_LOG_LEVEL", "loud")
    with pytest.raises(ConfigError, match=r"^invalid log setting log_level: Input should be "):
        configure_logging()
    configure_logging("warning", json=True)  # the suite's own configuration (conftest)


def test_a_bad_log_level_stops_the_cli_with_one_line() -> None:
    env = {**os.environ, "BLACKBOARD_LOG_LEVEL": "loud"}
    out = subprocess.run([*CLI, "types"], capture_output=True, text=True, timeout=60, env=env)
    assert out.returncode == 2 and out.stdout == ""
    assert out.stderr.splitlines() == [
        "blackboard: error: invalid log setting log_level: Input should be 'debug', 'info', "
        "'warning' or 'error'"
    ]


def test_the_api_key_is_a_secret_that_never_prints(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BLACKBOARD_API_KEY", "s3cret-key")
    settings = DashboardSettings.from_env(host="0.0.0.0")
    assert isinstance(settings.api_key, SecretStr)
    assert settings.api_key.get_secret_value() == "s3cret-key"
    for shown in (repr(settings), str(settings), repr(ApiKeySettings.from_env())):
        assert "s3cret-key" not in shown
    assert DashboardSettings.from_env(api_key="given").api_key == SecretStr("given")
    monkeypatch.delenv("BLACKBOARD_API_KEY")
    with pytest.raises(ConfigError, match="set BLACKBOARD_API_KEY"):
        DashboardSettings.from_env(host="0.0.0.0")


def test_store_urls_print_without_their_passwords(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BLACKBOARD_URL", "redis://app:hunter2@db:6379/0")
    settings = BlackboardSettings.from_env()
    assert settings.url == "redis://app:hunter2@db:6379/0"  # the store still gets it
    assert "hunter2" not in repr(settings) and "redis://app:***@db:6379/0" in repr(settings)


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("memory://", "memory://"),
        ("kafka://a:9092,b:9092?acks=all", "kafka://a:9092,b:9092?acks=all"),
        ("redis://:pw@h:6379/0", "redis://:***@h:6379/0"),
        ("redis://user@h:6379/0", "redis://user@h:6379/0"),
        ("rediss://u:p%40ss@h/1?password=x&db=2", "rediss://u:***@h/1?password=***&db=2"),
        ("kafka://h:9092?sasl.password=pw&sasl.username=u", "kafka://h:9092?sasl.password=***&sasl.username=u"),
        ("kafka://h:9092?sasl.oauthbearer.client.secret=s", "kafka://h:9092?sasl.oauthbearer.client.secret=***"),
    ],
)  # fmt: skip
def test_redact_url_masks_passwords_and_secret_query_values(url: str, shown: str) -> None:
    assert redact_url(url) == shown


_SOURCES = ("blackboard", "agents", "scheduler", "observability", "bench", "compose")
_BARE_READ = re.compile(r"""(os\.environ|getenv)\b[^\n]*["']BLACKBOARD_""")


def test_no_module_reads_a_blackboard_variable_by_hand() -> None:
    """Every ``BLACKBOARD_*`` variable is a settings field; none is read from os.environ."""
    hits = [
        f"{path.relative_to(ROOT)}:{n}"
        for package in _SOURCES
        for path in sorted((ROOT / package).rglob("*.py"))
        for n, line in enumerate(path.read_text().splitlines(), 1)
        if _BARE_READ.search(line)
    ]
    assert hits == []


@pytest.mark.parametrize(
    "url",
    [
        "redis://u:hunter2@127.0.0.1:1/0?trim_interval_s=-5",  # a bad option of ours
        "redis://u:hunter2@127.0.0.1:notaport/0",  # the client refuses it
        "kafka://?sasl.password=hunter2",  # no broker
        "kafka://h:1?sasl.password=hunter2&transactional.id=x",  # a key the store sets
        "kafka://hostonly?sasl.password=hunter2",  # not host:port
        "nosuch://u:hunter2@h",  # an unknown scheme
    ],
)
def test_a_bad_store_url_is_refused_without_its_password(url: str) -> None:
    from blackboard.stores import open_store

    with pytest.raises(ConfigError) as info:
        open_store(url).close()
    assert "hunter2" not in str(info.value) and "***" in str(info.value)
    assert "\n" not in str(info.value)
