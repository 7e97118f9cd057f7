"""The `trailmark` command for district IT."""

from __future__ import annotations

import subprocess
import sys


def test_platform_add_list_remove(runner):
    args = ["platform", "add", "--issuer", "https://moodle.example.edu", "--client-id", "abc",
            "--deployment-id", "1", "--deployment-id", "2", "--auth-url", "https://moodle.example.edu/mod/lti/auth.php",
            "--token-url", "https://moodle.example.edu/mod/lti/token.php",
            "--jwks-url", "https://moodle.example.edu/mod/lti/certs.php", "--district", "north", "--family", "moodle"]
    out = runner.invoke(args=args)
    assert out.exit_code == 0, out.output
    assert "http://localhost/lti/login" in out.output
    listing = runner.invoke(args=["platform", "list"]).output
    assert "https://moodle.example.edu" in listing and "deployments=1,2" in listing
    out = runner.invoke(args=["platform", "remove", "--issuer", "https://moodle.example.edu", "--client-id", "abc",
                              "--yes"])
    assert out.exit_code == 0
    assert "moodle.example.edu" not in runner.invoke(args=["platform", "list"]).output


def test_platform_add_rejects_bad_urls_and_unknown_district(runner):
    out = runner.invoke(args=["platform", "add", "--issuer", "lms", "--client-id", "a", "--deployment-id", "1",
                              "--auth-url", "x", "--token-url", "y", "--jwks-url", "z", "--district", "north"])
    assert out.exit_code != 0 and "expected a URL" in out.output
    out = runner.invoke(args=["platform", "add", "--issuer", "https://a.edu", "--client-id", "a", "--deployment-id",
                              "1", "--auth-url", "https://a.edu/1", "--token-url", "https://a.edu/2", "--jwks-url",
                              "https://a.edu/3", "--district", "atlantis"])
    assert out.exit_code != 0 and "No district 'atlantis'" in out.output


def test_platform_add_needs_a_district_when_there_are_several(runner):
    out = runner.invoke(args=["platform", "add", "--issuer", "https://a.edu", "--client-id", "a", "--deployment-id",
                              "1", "--auth-url", "https://a.edu/1", "--token-url", "https://a.edu/2", "--jwks-url",
                              "https://a.edu/3"])
    assert out.exit_code != 0 and "--district" in out.output


def test_remove_unknown_platform(runner):
    out = runner.invoke(args=["platform", "remove", "--issuer", "https://x.edu", "--client-id", "a", "--yes"])
    assert out.exit_code != 0 and "No platform" in out.output


def test_config_check(runner):
    out = runner.invoke(args=["config", "check"])
    assert out.exit_code == 0 and "Configuration is valid" in out.output


def test_db_upgrade(runner):
    out = runner.invoke(args=["db", "upgrade"])
    assert out.exit_code == 0 and "up to date" in out.output


def test_invalid_configuration_stops_the_command(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text('[server]\nport = "eighty"\n')
    proc = subprocess.run([sys.executable, "-c", "from plugin.cli import main; main()", "config", "check"],
                          env={"TRAILMARK_CONFIG": str(bad), "PATH": "/usr/bin:/bin"}, capture_output=True, text=True,
                          cwd=tmp_path)
    assert proc.returncode == 2
    assert "server.port" in proc.stderr and "Traceback" not in proc.stderr
