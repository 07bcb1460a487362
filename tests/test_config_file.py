"""`--config batchib.toml` (or BATCHIB_CONFIG): every run option from a file, the
command line winning; `--print-config` shows the result without the key."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

from tests.conftest import CliRun

CONFIG = """
[run]
model = "gpt-5.4"
concurrency = 8
param = ["seed=7"]
inputs = ["in.jsonl"]
output = "from-config.jsonl"
timeout = 30
"""


def test_config_file_supplies_options_and_the_command_line_wins(
    tmp_path: Path, run_batchib: Callable[..., CliRun], api_key: str
) -> None:
    (tmp_path / "batchib.toml").write_text(CONFIG)

    run = run_batchib("--config", "batchib.toml", "--print-config", "-c", "3")

    assert run.status == 0, run.stderr
    effective = json.loads(run.stdout)
    assert effective["defaults"]["model"] == "gpt-5.4"
    assert effective["defaults"]["params"] == {"seed": 7}
    assert effective["inputs"] == ["in.jsonl"]
    assert effective["output"] == "from-config.jsonl"
    assert effective["timeout_s"] == 30.0
    assert effective["concurrency"] == 3  # the command line wins
    assert api_key not in run.stdout + run.stderr
    assert effective["api_key"] == "ApiKey('***')"


def test_config_from_the_environment_variable(
    tmp_path: Path, run_batchib: Callable[..., CliRun]
) -> None:
    (tmp_path / "batchib.toml").write_text(CONFIG)

    run = run_batchib("--print-config", env={"BATCHIB_CONFIG": "batchib.toml"})

    assert run.status == 0, run.stderr
    assert json.loads(run.stdout)["concurrency"] == 8


def test_print_config_prints_even_when_the_config_asks_for_a_dry_run(
    tmp_path: Path, run_batchib: Callable[..., CliRun]
) -> None:
    (tmp_path / "batchib.toml").write_text(CONFIG + "dry_run = true\n")
    (tmp_path / "in.jsonl").write_text('{"prompt": "hi"}\n')

    dry = run_batchib("--config", "batchib.toml")
    printed = run_batchib("--config", "batchib.toml", "--print-config")

    assert dry.status == 0, dry.stderr
    assert dry.stdout.startswith("model ") and "prompt tok" in dry.stdout  # the estimate
    assert printed.status == 0, printed.stderr
    assert json.loads(printed.stdout)["concurrency"] == 8


def test_unknown_settings_in_the_config_are_a_usage_error(
    tmp_path: Path, run_batchib: Callable[..., CliRun]
) -> None:
    (tmp_path / "batchib.toml").write_text('[run]\nmodle = "gpt-5.4"\napi_key = "x"\n')

    run = run_batchib("--config", "batchib.toml", "in.jsonl", "-o", "o.jsonl")

    assert run.status == 2
    assert "unknown settings: api_key, modle" in run.stderr
