"""The command's help: every option explains itself, with its default and choices; the README lists them all."""

import argparse
import pathlib
import re

from shmring.cli import build_parser

ROOT = pathlib.Path(__file__).resolve().parents[2]


def subcommands() -> dict[str, argparse.ArgumentParser]:
    (sub,) = [a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction)]
    return dict(sub.choices)


def options(parser: argparse.ArgumentParser) -> list[argparse.Action]:
    return [a for a in parser._actions if not isinstance(a, argparse._HelpAction)]


def help_entry(parser: argparse.ArgumentParser, action: argparse.Action) -> str:
    """The text `--help` prints for `action`, on one line."""
    formatter = parser._get_formatter()
    formatter.add_argument(action)
    return " ".join(formatter.format_help().split())


def test_every_option_of_every_command_has_help_with_its_default_and_choices():
    commands = subcommands()
    assert {"serve", "capture-cdp", "publish", "tail", "stat", "ls", "gc", "flush", "doctor", "demo"} <= set(commands)
    for name, parser in [("shmring", build_parser()), *commands.items()]:
        for action in options(parser):
            where = f"shmring {name} {'/'.join(action.option_strings) or action.dest}"
            assert action.help and action.help.strip(), f"{where} has no help text"
            shown = help_entry(parser, action)
            if action.default not in (None, False, argparse.SUPPRESS):
                assert "default" in shown, f"{where}: its default ({action.default!r}) is not shown: {shown}"
            for choice in action.choices or ():
                if not isinstance(action, argparse._SubParsersAction):
                    assert str(choice) in shown, f"{where}: choice {choice!r} is not listed: {shown}"


def test_defaults_are_shown_as_the_values_they_are():
    serve = subcommands()["serve"]
    text = " ".join(serve.format_help().split())
    assert "(default: 65536)" in text and "(default: batch)" in text and "(choices: minimal," not in text
    tail = " ".join(subcommands()["tail"].format_help().split())
    assert "(choices: minimal, standard, verbose, raw)" in tail  # the metavar L hides them from the usage
    assert "(default: json)" in tail


def readme_command_rows() -> dict[str, str]:
    text = (ROOT / "README.md").read_text()
    table = text[text.index("| command | what it does |"):]
    table = table[:table.index("\n\n")]
    rows = {}
    for line in table.splitlines()[2:]:
        cell = line.split(" | ")[0]
        for usage in re.findall(r"`shmring ([a-z-]+)([^`]*)`", cell):
            rows[usage[0]] = usage[1]
    return rows


def test_the_readme_command_table_lists_every_command_and_option():
    rows = readme_command_rows()
    for name, parser in subcommands().items():
        assert name in rows, f"the README's command table has no row for `shmring {name}`"
        for action in options(parser):
            if action.option_strings:
                assert any(re.search(rf"(?<![\w-]){re.escape(o)}(?![\w-])", rows[name])
                           for o in action.option_strings), f"README: `shmring {name}` lacks {action.option_strings}"
