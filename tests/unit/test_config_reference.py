"""docs/configuration.md is generated from the parser (one place documents each flag) and current."""

from __future__ import annotations

from pathlib import Path

from rankserve.cli import HELP, config_reference, main, serve_parser
from rankserve.config import FIELDS

DOC = Path(__file__).resolve().parents[2] / "docs" / "configuration.md"


def test_committed_reference_is_current():
    assert DOC.read_text(encoding="utf-8") == config_reference(), (
        "docs/configuration.md is stale: rankserve config-reference > docs/configuration.md"
    )


def test_every_setting_has_help_that_says_more_than_its_name():
    for name in FIELDS:
        assert name in HELP, f"--{name.replace('_', '-')} has no help text (cli.HELP)"
        assert len(HELP[name].split()) > len(name.split("_")) + 1, name


def test_every_serve_flag_is_in_the_reference():
    text = config_reference()
    serve = serve_parser()
    flags = [f for a in serve._actions for f in a.option_strings if f.startswith("--") and f != "--help"]
    assert len(flags) > len(FIELDS)
    for flag in flags:
        assert f"`{flag}`" in text, flag
    assert "`RANKSERVE_MAX_PASSAGES`" in text and "`NIM_MODEL_PATH`" in text


def test_the_command_prints_it(capsys):
    assert main(["config-reference"]) == 0
    assert capsys.readouterr().out == config_reference()
