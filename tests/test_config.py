"""Configuration loading: defaults, district file, environment; errors name the key, the value and the fix."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from plugin.config import ConfigError, create_private_file, load_config, public_url, resolve_secrets


def _write(tmp_path, text):
    path = tmp_path / "district.toml"
    path.write_text(text)
    return str(path)


def test_defaults_are_valid():
    cfg = load_config(env={})
    assert cfg["server"]["port"] == 5000 and cfg["database"]["url"].startswith("sqlite:///")
    assert cfg["sandbox"]["enabled"] is True
    assert public_url(cfg) == "http://127.0.0.1:5000"


def test_environment_overrides(tmp_path):
    cfg = load_config(env={"PORT": "8080", "HOST": "0.0.0.0", "DATABASE_URL": "postgresql+psycopg://db/tm"})
    assert cfg["server"]["port"] == 8080
    assert public_url(cfg) == "http://127.0.0.1:8080"
    assert cfg["database"]["url"] == "postgresql+psycopg://db/tm"


def test_district_file_with_sources(tmp_path):
    path = _write(tmp_path, """
mode = "production"
[server]
public_url = "https://trailmark.north.k12.us"
[[districts]]
slug = "north"
name = "North"
[[sources]]
name = "canvas-main"
kind = "canvas"
district = "north"
base_url = "https://north.instructure.com"
token = "env:CANVAS_TOKEN"
account_id = "1"
schedule = "*/30 * * * *"
""")
    cfg = load_config(env={"TRAILMARK_CONFIG": path})
    assert cfg["sandbox"]["enabled"] is False  # production turns the sandbox off unless asked
    [source] = cfg["sources"]
    assert source["token"] == "env:CANVAS_TOKEN" and source["max_removal_share"] == 0.10
    with pytest.raises(ConfigError, match="CANVAS_TOKEN is not set"):
        resolve_secrets(source)


def test_secret_from_file(tmp_path, monkeypatch):
    secret = tmp_path / "token"
    secret.write_text("s3cret\n")
    assert resolve_secrets({"name": "x", "token": f"file:{secret}"})["token"] == "s3cret"
    monkeypatch.setenv("MY_TOKEN", "abc")
    assert resolve_secrets({"name": "x", "oauth": {"client_secret": "env:MY_TOKEN"}})["oauth"]["client_secret"] == "abc"


@pytest.mark.parametrize("text,expected", [
    ('[server]\nport = "eighty"', "server.port: Not a valid integer"),
    ('[server]\nport = 70000', "server.port"),
    ('[server]\nbogus = 1', "server.bogus: Unknown field"),
    ('mode = "prod"', "mode: Must be one of: local, production"),
    ('[[districts]]\nslug = "North District"\nname = "N"', "districts[0].slug"),
    ('[[sources]]\nname = "a"\nkind = "blackboard"\ndistrict = "sandbox"', "sources[0].kind"),
    ('[[sources]]\nname = "a"\nkind = "canvas"\ndistrict = "nowhere"', "no [[districts]] entry"),
    ('[[sources]]\nname = "a"\nkind = "canvas"\ndistrict = "sandbox"\ntoken = "abc123"', "never inline"),
    ('[[platforms]]\ndistrict = "sandbox"\nissuer = "x"\nclient_id = "c"\ndeployment_ids = ["1"]', "auth_login_url"),
    ('[server\nport = 1', "not valid TOML"),
])
def test_invalid_files_name_the_key(tmp_path, text, expected):
    with pytest.raises(ConfigError) as exc:
        load_config(env={"TRAILMARK_CONFIG": _write(tmp_path, text)})
    assert expected in str(exc.value)


def test_bad_value_is_shown(tmp_path):
    with pytest.raises(ConfigError, match="got 'eighty'"):
        load_config(env={"TRAILMARK_CONFIG": _write(tmp_path, '[server]\nport = "eighty"')})


def test_inline_secret_value_is_not_echoed(tmp_path):
    with pytest.raises(ConfigError) as exc:
        load_config(env={"TRAILMARK_CONFIG": _write(
            tmp_path, '[[sources]]\nname = "a"\nkind = "canvas"\ndistrict = "sandbox"\ntoken = "abc123"')})
    assert "abc123" not in str(exc.value)


def test_missing_district_file(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(env={"TRAILMARK_CONFIG": str(tmp_path / "nope.toml")})


def test_duplicate_source_names(tmp_path):
    text = "\n".join('[[sources]]\nname = "a"\nkind = "fake"\ndistrict = "sandbox"' for _ in range(2))
    with pytest.raises(ConfigError, match="used twice"):
        load_config(env={"TRAILMARK_CONFIG": _write(tmp_path, text)})


def test_example_file_is_valid(monkeypatch):
    from pathlib import Path

    example = Path(__file__).parent.parent / "config" / "example.toml"
    for name in ("CANVAS_TOKEN", "MOODLE_TOKEN", "ONEROSTER_CLIENT_SECRET"):
        monkeypatch.setenv(name, "x")
    cfg = load_config(env={"TRAILMARK_CONFIG": str(example)})
    assert cfg["districts"] and cfg["sources"]


def _make_key(path: str) -> tuple[bool, str]:
    created = create_private_file(Path(path), os.urandom(16).hex().encode())
    return created, Path(path).read_text()


def test_processes_starting_together_agree_on_one_secret_file(tmp_path: Path) -> None:
    """Several workers or schedulers started at once each find the key file whole, and the same one."""
    import multiprocessing

    path = tmp_path / "var" / "secret_key"
    with multiprocessing.get_context("fork").Pool(6) as pool:
        results = pool.map(_make_key, [str(path)] * 24)

    assert sum(created for created, _ in results) == 1
    assert {text for _, text in results} == {path.read_text()} and len(path.read_text()) == 32
    assert path.stat().st_mode & 0o777 == 0o600
    assert [p.name for p in path.parent.iterdir()] == ["secret_key"]  # no temporary files left behind
