"""The CLI documents itself: every subcommand and every option has help text."""

from __future__ import annotations

import argparse

import pytest

from dfp_ray.cli import build_parser, main


def _walk(parser: argparse.ArgumentParser, path: str):
    yield path, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from _walk(sub, f"{path} {name}")


def test_every_option_has_help():
    missing = []
    for path, parser in _walk(build_parser(), "dfp-ray"):
        for action in parser._actions:
            if isinstance(action, (argparse._HelpAction, argparse._SubParsersAction)):
                continue
            if not action.help or action.help == argparse.SUPPRESS:
                missing.append(f"{path} {'/'.join(action.option_strings) or action.dest}")
    assert not missing, f"options without help: {missing}"


@pytest.mark.parametrize("command", ["demo", "run", "datagen", "fingerprint", "report"])
def test_subcommands_are_registered(command, capsys):
    with pytest.raises(SystemExit) as exc:
        main([command, "--help"])
    assert exc.value.code == 0
    assert "usage: dfp-ray " + command in capsys.readouterr().out


def test_no_command_prints_help_and_fails(capsys):
    assert main([]) == 2
    assert "COMMAND" in capsys.readouterr().out


@pytest.mark.parametrize("command", [["run", "--input-file", "x.json"], ["stream", "--input-topic", "t"],
                                     ["labels", "list"]])
def test_a_bad_override_is_named_and_exits_2_in_every_command(command, capsys, tmp_path):
    """run, stream and labels report an unusable configuration the same way: the dotted field."""
    code = main([*command, "--set", f"state_dir={tmp_path}", "--set", "autoencoder.epochs=0"])
    assert code == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "autoencoder.epochs" in err
