"""The `sluice` command line: config overrides, and exit code 2 with one line for bad input."""

from __future__ import annotations

import pathlib
import subprocess
import sys

import pytest

from sluice import cli


def parse(*argv: str) -> cli.argparse.Namespace:
    return cli.build_parser().parse_args(["proxy", *argv])


def test_quick_start_flags_need_no_file() -> None:
    config = cli.proxy_config(parse("--upstream", "http://up:9/v1", "--port", "9001"))
    assert config.llm is not None
    assert config.llm.upstream.base_urls == ["http://up:9/v1"]
    assert config.listen.port == 9001
    assert config.listen.host == "0.0.0.0"


def test_no_arguments_serve_the_default_upstream_on_8080() -> None:
    config = cli.proxy_config(parse())
    assert config.llm is not None
    assert config.llm.upstream.base_urls == ["https://api.openai.com/v1"]
    assert config.listen.port == 8080


def test_flags_override_the_file(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "proxy.yaml"
    path.write_text("listen: {port: 7000}\nllm: {upstream: {endpoints: [http://a/v1]}}\n")
    config = cli.proxy_config(parse("--config", str(path), "--upstream", "http://b/v1"))
    assert config.llm is not None
    assert config.llm.upstream.base_urls == ["http://b/v1"]
    assert config.listen.port == 7000


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        pytest.param("llm: {pool: {clients: 0}}\n", "llm.pool.clients", id="range"),
        pytest.param("llm: [\n", "not valid YAML", id="yaml"),
    ],
)
def test_invalid_config_exits_2_with_one_line(
    tmp_path: pathlib.Path, content: str, expected: str
) -> None:
    path = tmp_path / "proxy.yaml"
    path.write_text(content)
    done = subprocess.run(
        [sys.executable, "-m", "sluice", "proxy", "--config", str(path)],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert done.returncode == 2
    assert done.stderr.count("\n") == 1
    assert expected in done.stderr
    assert "Traceback" not in done.stderr


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        pytest.param(["--scrape-interval", "0"], "--scrape-interval", id="interval-0"),
        pytest.param(["--scrape-interval", "nan"], "--scrape-interval", id="interval-nan"),
        pytest.param(["--secret-interval", "-1"], "--secret-interval", id="secret-interval-neg"),
        pytest.param(["--namespace", "Team_A"], "--namespace", id="namespace"),
    ],
)
def test_invalid_operator_flags_exit_2_with_one_line_before_any_connection(
    argv: list[str], expected: str
) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "sluice", "operator", *argv],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
        env={"PATH": "", "KUBECONFIG": "/nonexistent"},
    )
    assert done.returncode == 2
    assert done.stderr.count("\n") == 1
    assert expected in done.stderr


@pytest.mark.parametrize(
    ("environ", "argv", "expected"),
    [
        pytest.param({}, [], ("text", True), id="defaults"),
        pytest.param({"SLUICE_LOG_FORMAT": "json"}, [], ("json", True), id="the-images-env"),
        pytest.param({"SLUICE_LOG_FORMAT": "json"}, ["--log-format", "text"], ("text", True),
                     id="flag-wins"),
        pytest.param({}, ["--no-access-log"], ("text", False), id="no-access-log"),
    ],
)  # fmt: skip
def test_log_format_and_access_log_flags(
    monkeypatch: pytest.MonkeyPatch,
    environ: dict[str, str],
    argv: list[str],
    expected: tuple[str, bool],
) -> None:
    monkeypatch.delenv("SLUICE_LOG_FORMAT", raising=False)
    for name, value in environ.items():
        monkeypatch.setenv(name, value)
    args = parse(*argv)
    assert (args.log_format, args.access_log) == expected
