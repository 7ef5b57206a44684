"""Settings: working defaults, the environment, a TOML file, and a clear error for every bad value."""

from __future__ import annotations

import fnmatch
import os
import tomllib
from pathlib import Path

import pytest

import plugin_health
from plugin_health.config import EXAMPLES, Settings, load_settings
from plugin_health.errors import ConfigError


def test_defaults_need_no_configuration() -> None:
    settings = load_settings(environ={})
    assert settings == Settings()
    assert settings.plugin_dirs == [EXAMPLES]
    assert (settings.default_timeout, settings.default_memory_limit_mb, settings.failure_threshold) == (10.0, 512, 3)
    assert (settings.max_restarts, settings.restart_window, settings.backoff_base, settings.backoff_max) == (
        5,
        600.0,
        1.0,
        300.0,
    )
    assert settings.health_interval == 30.0
    assert settings.show_details == "when-authorized"
    assert settings.admin_token is None


def test_the_default_plugin_path_is_the_examples_the_package_ships() -> None:
    package = Path(plugin_health.__file__).parent
    assert load_settings(environ={}).plugin_dirs == [package / "examples" / "plugins"] == [EXAMPLES]
    shipped = sorted(path.relative_to(package).as_posix() for path in EXAMPLES.rglob("*.py"))
    assert [Path(name).stem for name in shipped] == ["billing", "cache", "clock", "database", "weather"]
    # Each is package data, so a wheel carries it (tests/e2e/test_install.py serves from one).
    pyproject = tomllib.loads((package.parent / "pyproject.toml").read_text())
    patterns = pyproject["tool"]["setuptools"]["package-data"]["plugin_health"]
    assert [name for name in shipped if not any(fnmatch.fnmatch(name, pattern) for pattern in patterns)] == []
    # A clone keeps its examples/plugins.
    assert (package.parent / "examples" / "plugins").resolve() == EXAMPLES


def test_environment_variables(tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    env = {
        "PLUGIN_HEALTH_PLUGIN_PATH": f"{tmp_path / 'a'}{os.pathsep}{tmp_path / 'b'}",
        "PLUGIN_HEALTH_DEFAULT_TIMEOUT": "2.5",
        "PLUGIN_HEALTH_MAX_RESTARTS": "0",
        "PLUGIN_HEALTH_SHOW_DETAILS": "never",
        "PLUGIN_HEALTH_ADMIN_TOKEN": "s3cret",
        "UNRELATED": "ignored",
    }
    settings = load_settings(environ=env)
    assert settings.plugin_dirs == [tmp_path / "a", tmp_path / "b"]
    assert settings.default_timeout == 2.5
    assert settings.max_restarts == 0
    assert settings.show_details == "never"
    assert settings.admin_token == "s3cret"


@pytest.mark.parametrize(
    ("variable", "value", "expected"),
    [
        ("PLUGIN_HEALTH_DEFAULT_TIMEOUT", "ten", "a positive number"),
        ("PLUGIN_HEALTH_DEFAULT_TIMEOUT", "-1", "a positive number"),
        ("PLUGIN_HEALTH_DEFAULT_TIMEOUT", "nan", "a positive number"),
        ("PLUGIN_HEALTH_DEFAULT_TIMEOUT", "inf", "a positive number"),
        ("PLUGIN_HEALTH_DEFAULT_MEMORY_LIMIT_MB", "0", "a whole number >= 1"),
        ("PLUGIN_HEALTH_FAILURE_THRESHOLD", "1.5", "a whole number >= 1"),
        ("PLUGIN_HEALTH_MAX_RESTARTS", "-1", "a whole number >= 0"),
        ("PLUGIN_HEALTH_SHOW_DETAILS", "sometimes", "never | when-authorized | always"),
        ("PLUGIN_HEALTH_HEALTH_INTERVAL", "", "a positive number"),
        ("PLUGIN_HEALTH_BACKOFF_MAX", "0.5", ">= PLUGIN_HEALTH_BACKOFF_BASE"),
        ("PLUGIN_HEALTH_HOST_MODE", "sometimes", "auto | embedded | external"),
        ("PLUGIN_HEALTH_OWNER_PID", "-3", "a whole number >= 0"),
    ],
)
def test_bad_values_name_the_variable(variable: str, value: str, expected: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load_settings(environ={variable: value})
    assert caught.value.variable == variable
    assert variable in str(caught.value)
    assert expected in str(caught.value)


def test_overrides_win_and_unknown_keys_are_refused() -> None:
    settings = load_settings({"default_timeout": 1, "PLUGIN_HEALTH_FAILURE_THRESHOLD": 7},
                             environ={"PLUGIN_HEALTH_DEFAULT_TIMEOUT": "5"})
    assert (settings.default_timeout, settings.failure_threshold) == (1.0, 7)
    with pytest.raises(ConfigError, match="a known setting"):
        load_settings({"default_timeuot": 1}, environ={})


def test_config_file(tmp_path: Path) -> None:
    path = tmp_path / "plugin-health.toml"
    path.write_text('default_timeout = 3\n[plugins.billing]\napi_key = "abc"\n')
    settings = load_settings(environ={"PLUGIN_HEALTH_CONFIG_FILE": str(path), "PLUGIN_HEALTH_MAX_RESTARTS": "2"})
    assert settings.default_timeout == 3.0
    assert settings.max_restarts == 2
    assert settings.plugins == {"billing": {"api_key": "abc"}}


@pytest.mark.parametrize(
    ("content", "expected"),
    [("default_timeout = \n", "valid TOML"), ("plugins = 3\n", "a table of tables"), ("bogus = 1\n", "known setting")],
)
def test_bad_config_file(tmp_path: Path, content: str, expected: str) -> None:
    path = tmp_path / "bad.toml"
    path.write_text(content)
    with pytest.raises(ConfigError, match=expected):
        load_settings(environ={"PLUGIN_HEALTH_CONFIG_FILE": str(path)})


def test_missing_config_file_names_the_variable(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="PLUGIN_HEALTH_CONFIG_FILE"):
        load_settings(environ={"PLUGIN_HEALTH_CONFIG_FILE": str(tmp_path / "nope.toml")})


def test_external_host_needs_a_shared_store() -> None:
    env = {"PLUGIN_HEALTH_HOST_MODE": "external", "PLUGIN_HEALTH_STORE_URL": "memory://"}
    with pytest.raises(ConfigError, match=r"PLUGIN_HEALTH_HOST_MODE.*memory:// store cannot be shared"):
        load_settings(environ=env)
    assert load_settings(environ={"PLUGIN_HEALTH_HOST_MODE": " External "}).host_mode == "external"


def test_env_example_holds_valid_defaults() -> None:
    example = Path(__file__).resolve().parents[1] / ".env.example"
    values = dict(
        line.split("=", 1) for line in example.read_text().splitlines() if line and not line.startswith("#")
    )
    settings_only = {k: v for k, v in values.items() if k not in ("PLUGIN_HEALTH_BIND", "PLUGIN_HEALTH_THREADS")}
    assert load_settings(environ=settings_only) == Settings()


@pytest.mark.parametrize("where", ["environment", "overrides", "file"])
def test_a_plugin_directory_that_does_not_exist_stops_the_service(tmp_path: Path, where: str) -> None:
    missing = tmp_path / "no-such-plugins"
    value = f"{tmp_path}{os.pathsep}{missing}"
    environ: dict[str, str] = {}
    overrides: dict[str, str] = {}
    if where == "environment":
        environ["PLUGIN_HEALTH_PLUGIN_PATH"] = value
    elif where == "overrides":
        overrides["plugin_path"] = value
    else:
        config = tmp_path / "plugin-health.toml"
        config.write_text(f"plugin_path = {value!r}\n")
        environ["PLUGIN_HEALTH_CONFIG_FILE"] = str(config)
    with pytest.raises(ConfigError) as caught:
        load_settings(overrides, environ=environ)
    message = str(caught.value)
    assert "PLUGIN_HEALTH_PLUGIN_PATH" in message
    assert str(missing) in message
    assert "does not exist" in message


def test_a_plugin_path_entry_that_is_a_file_stops_the_service(tmp_path: Path) -> None:
    plugin = tmp_path / "plugin.py"
    plugin.write_text("")
    with pytest.raises(ConfigError, match=r"PLUGIN_HEALTH_PLUGIN_PATH.*is not a directory"):
        load_settings(environ={"PLUGIN_HEALTH_PLUGIN_PATH": str(plugin)})


def test_existing_plugin_directories_and_empty_entries_are_fine(tmp_path: Path) -> None:
    settings = load_settings(environ={"PLUGIN_HEALTH_PLUGIN_PATH": f"{tmp_path}{os.pathsep}{os.pathsep}"})
    assert settings.plugin_dirs == [tmp_path]
    assert load_settings(environ={"PLUGIN_HEALTH_PLUGIN_PATH": ""}).plugin_dirs == []


def test_overrides_name_a_config_file_as_the_environment_does(tmp_path: Path) -> None:
    # An app's config holds it as PLUGIN_HEALTH_CONFIG_FILE (create_app and the extension pass app.config).
    path = tmp_path / "plugin-health.toml"
    path.write_text("default_timeout = 3\n")
    for key in ("config_file", "PLUGIN_HEALTH_CONFIG_FILE"):
        assert load_settings({key: path}, environ={}).default_timeout == 3.0, key


def test_paths_may_be_path_objects(tmp_path: Path) -> None:
    settings = load_settings({"PLUGIN_HEALTH_PLUGIN_PATH": tmp_path, "run_dir": tmp_path / "run"}, environ={})
    assert (settings.plugin_path, settings.run_dir) == (str(tmp_path), str(tmp_path / "run"))
    with pytest.raises(ConfigError, match=r"^PLUGIN_HEALTH_RUN_DIR=3 is invalid: expected a string$"):
        load_settings({"PLUGIN_HEALTH_RUN_DIR": 3}, environ={})
