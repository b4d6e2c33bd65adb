"""The CLI's own conventions: help text on every argument of the non-phase commands, and the global log flags."""

from __future__ import annotations

import argparse
import os

import pytest

from lorascope import cli

COMMANDS = ("validate", "grid", "run", "pull", "status")


def _subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    (sub,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    return dict(sub.choices)


@pytest.mark.parametrize("command", (None, *COMMANDS))
def test_every_argument_has_help(command):
    parser = cli.build_parser({})
    if command:
        parser = _subparsers(parser)[command]
    actions = [a for a in parser._actions if not isinstance(a, argparse._HelpAction | argparse._SubParsersAction)]
    assert actions
    missing = [a.option_strings[0] if a.option_strings else a.dest for a in actions if not (a.help or "").strip()]
    assert not missing, f"lorascope {command or ''}: arguments without help: {missing}"


def test_log_flags_set_the_level_for_this_process_and_its_children(monkeypatch, smoke_study_path, capsys):
    monkeypatch.delenv("LORASCOPE_LOG_LEVEL", raising=False)
    assert cli.main(["--log-level", "WARNING", "grid", str(smoke_study_path)]) == 0
    assert os.environ["LORASCOPE_LOG_LEVEL"] == "warning"  # `run --jobs N` children and the vLLM index inherit it
    assert cli.main(["-v", "grid", str(smoke_study_path)]) == 0
    assert os.environ["LORASCOPE_LOG_LEVEL"] == "debug"
    assert "18 cells" in capsys.readouterr().out
    cli.configure_logging("info")


def test_a_bad_log_level_from_the_environment_exits_2_naming_it(monkeypatch, smoke_study_path, capsys):
    monkeypatch.setenv("LORASCOPE_LOG_LEVEL", "chatty")
    assert cli.main(["grid", str(smoke_study_path)]) == 2
    err = capsys.readouterr().err
    assert "'chatty'" in err and "LORASCOPE_LOG_LEVEL" in err
    assert cli.main(["--log-level", "info", "grid", str(smoke_study_path)]) == 0  # the flag wins over the env


@pytest.mark.parametrize("argv, level", [
    (["grid", "{study}", "-v"], "debug"),
    (["grid", "{study}", "-qq"], "error"),
    (["grid", "{study}", "--log-level", "warning"], "warning"),
    (["-q", "grid", "{study}", "-v"], "debug"),  # both given: -v wins over -q, wherever each stands
])  # fmt: skip
def test_log_flags_work_after_the_subcommand_too(monkeypatch, smoke_study_path, argv, level):
    monkeypatch.delenv("LORASCOPE_LOG_LEVEL", raising=False)
    assert cli.main([a.format(study=smoke_study_path) for a in argv]) == 0
    assert os.environ["LORASCOPE_LOG_LEVEL"] == level
    cli.configure_logging("info")


def test_validate_warns_when_the_seeds_cannot_support_a_verdict(capsys):
    """Fewer than three seeds per method: `validate` says the report will be exploratory (jobs/smoke-methods.yaml has
    two); three seeds: no warning."""
    from pathlib import Path

    jobs = Path(__file__).resolve().parents[1] / "jobs"
    assert cli.main(["validate", str(jobs / "smoke-methods.yaml")]) == 0
    out = capsys.readouterr().out
    assert "warning: 2 seeds per method: H1a and H1b need at least 3 for a verdict" in out
    assert 't = 12.71 on 1 degree of freedom' in out and '"exploratory: 2 seeds"' in out
    assert cli.main(["validate", str(jobs / "smoke.yaml")]) == 0
    assert "warning" not in capsys.readouterr().out
