"""Config precedence, validation, and errors that say where a bad value came from."""

from __future__ import annotations

import json

import pytest
from rt.core.cli import main
from rt.core.config import parse_bytes
from rt.core.errors import ConfigError
from rt.core.profile_registry import load_config


def test_defaults():
    config = load_config(environ={})
    assert config.parallel.tp == 1 and config.server.port == 8000 and config.plugins == ()


def test_precedence_profile_config_env_cli(tmp_path):
    user = tmp_path / "mine.toml"
    user.write_text('[scheduler]\nmax_num_seqs = 3\n[server]\nport = 7001\nhost = "0.0.0.0"\n')
    config = load_config(
        "latency",
        str(user),
        environ={"RT_SERVER__PORT": "7002", "RT_API_KEY": "sekrit"},
        cli=[("server.port", "7003", "--set server.port=7003")],
    )
    assert config.compile.mode == "background"  # from the profile
    assert config.scheduler.max_num_seqs == 3  # config file beats profile
    assert config.server.host == "0.0.0.0"  # config file
    assert config.server.api_key == "sekrit"  # env alias
    assert config.server.port == 7003  # CLI beats env beats file


def test_a_users_toml_file_is_a_profile(tmp_path):
    user = tmp_path / "edge.toml"
    user.write_text('description = "mine"\n[parallel]\ntp = 3\n')
    assert load_config(str(user), environ={}).parallel.tp == 3


def test_unknown_key_names_key_file_and_line(tmp_path):
    path = tmp_path / "bad.toml"
    path.write_text('[server]\nhost = "x"\n\nprot = 9000\n')
    with pytest.raises(ConfigError) as info:
        load_config(config_file=str(path), environ={})
    message = str(info.value)
    assert "unknown config key 'server.prot'" in message
    assert f"config file ({path}, line 4)" in message
    assert "did you mean 'server.port'?" in message


def test_unknown_section_is_an_error():
    with pytest.raises(
        ConfigError,
        match=r"unknown config key 'sever.port' from environment variable RT_SEVER__PORT",
    ):
        load_config(environ={"RT_SEVER__PORT": "1"})


def test_bad_value_names_key_value_and_source():
    with pytest.raises(ConfigError) as info:
        load_config(environ={}, cli=[("compile.mode", "fast", "--set compile.mode=fast")])
    message = str(info.value)
    assert (
        "compile.mode" in message and "'fast'" in message and "--set compile.mode=fast" in message
    )
    with pytest.raises(
        ConfigError,
        match=r"bad value for parallel.tp: 'two' from environment variable RT_PARALLEL__TP",
    ):
        load_config(environ={"RT_PARALLEL__TP": "two"})


def test_bad_value_in_profile_names_line(tmp_path):
    path = tmp_path / "p.toml"
    path.write_text("[cache]\nblock_size = 0\n")
    with pytest.raises(ConfigError, match=r"cache.block_size: 0 from profile .*line 2"):
        load_config(str(path), environ={})


def test_unknown_profile_lists_available():
    with pytest.raises(
        ConfigError, match=r"unknown profile 'fast'; available: fast-startup, latency, throughput"
    ):
        load_config("fast", environ={})


def test_types_are_coerced_from_strings():
    config = load_config(
        environ={"RT_GRAPHS__CAPTURE_SIZES": "1,2,4", "RT_STARTUP__SEQUENTIAL": "yes"},
        cli=[("model.max_model_len", "none", "--set")],
    )
    assert config.graphs.capture_sizes == (1, 2, 4)
    assert config.startup.sequential is True
    assert config.model.max_model_len is None


def test_plugins_accumulate_across_sources(tmp_path):
    path = tmp_path / "p.toml"
    path.write_text('plugins = ["shm-broadcast", "p2p-table"]\n')
    config = load_config(
        str(path), environ={"RT_PLUGINS": "extra"}, cli=[("plugins", "no:p2p-table", "-p")]
    )
    assert config.plugins == ("shm-broadcast", "p2p-table", "extra", "no:p2p-table")


def test_parse_bytes():
    assert parse_bytes("1GiB") == 1 << 30
    assert parse_bytes("512MB") == 512_000_000
    with pytest.raises(ValueError):
        parse_bytes("lots")


def test_cli_set_flag_and_bad_key(capsys):
    assert main(["profiles", "latency", "--json", "--set", "server.port=9100"]) == 0
    resolved = json.loads(capsys.readouterr().out)
    assert resolved["config"]["server"]["port"] == 9100
    assert resolved["config"]["compile"]["mode"] == "background"
    assert main(["profiles", "--set", "server.prot=1"]) == 2
    assert (
        "unknown config key 'server.prot' from command-line --set server.prot=1"
        in capsys.readouterr().err
    )


def test_profiles_json_lists_the_three(capsys):
    assert main(["profiles", "--json"]) == 0
    names = [p["name"] for p in json.loads(capsys.readouterr().out)]
    assert names == ["fast-startup", "latency", "throughput"]
