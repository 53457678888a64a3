"""The README's reference sections stay in step with the code they describe."""

import os
import re

from minitask.cli import build_parser
from minitask.config import ALIASES, DEFAULTS

README = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__)))), "README.md")


def readme():
    with open(README, encoding="utf-8") as handle:
        return handle.read()


def section(title):
    text = readme()
    start = text.index("\n## %s\n" % title)
    end = text.find("\n## ", start + 1)
    return text[start:end if end != -1 else None]


def test_the_first_screen_gives_the_two_commands():
    first_screen = readme().split("---", 1)[0]
    assert "python3 -m minitask demo" in first_screen
    assert "python3 tests/run.py" in first_screen


def test_every_setting_is_in_the_configuration_table_with_its_aliases():
    table = section("Configuration")
    for name in DEFAULTS:
        row = next((line for line in table.splitlines() if line.startswith("| `%s` |" % name)),
                   None)
        assert row is not None, name
        for alias, target in ALIASES.items():
            if target == name:
                assert "`%s`" % alias in row, (name, alias)


def test_every_command_and_flag_is_in_the_command_line_table():
    table = section("Command line")
    parser = build_parser()
    commands = parser._subparsers._group_actions[0].choices
    for name, subparser in commands.items():
        row = next((line for line in table.splitlines() if line.startswith("| `%s" % name)),
                   None)
        assert row is not None, name
        for action in subparser._actions:
            flags = action.option_strings
            if not flags or set(flags) & {"--help", "--json", "--broker"}:
                continue
            assert any(re.search(r"(?<![\w-])%s(?![\w-])" % re.escape(flag), row)
                       for flag in flags), (name, flags)


def test_every_example_is_linked_from_the_guide():
    examples = os.path.join(os.path.dirname(README), "examples")
    guide = section("The guide")
    for name in sorted(os.listdir(examples)):
        if re.match(r"\d\d_.*\.py$", name):
            assert "(examples/%s)" % name in guide, name


def test_every_celery_option_in_the_three_lists_is_in_the_readme():
    from minitask.options import (
        CALL_ACCEPTED, CALL_REFUSED, PUBLISH_OPTIONS, TASK_ACCEPTED, TASK_REFUSED,
    )
    options = section("The guide")
    for name in (list(TASK_ACCEPTED) + list(TASK_REFUSED) + list(CALL_ACCEPTED)
                 + list(CALL_REFUSED) + list(PUBLISH_OPTIONS)):
        assert re.search(r"`%s[`=( ]" % name, options), name


def test_every_celery_setting_accepted_silently_is_named_in_the_configuration_section():
    from minitask.celery_settings import ACCEPTED
    configuration = section("Configuration")
    for name in ACCEPTED:
        assert "`%s" % name in configuration, name
