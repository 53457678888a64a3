"""Celery's argsrepr and kwargsrepr ("hiding sensitive information in arguments"): call
options that travel with the message and are shown in place of the arguments, where the
worker shows them (its error e-mails), and in the running task's request. They were refused
("unknown option argsrepr")."""

import types

import pytest

from minitask import config, protocol, task
from minitask.exceptions import ConfigurationError
from minitask.message import TaskMessage
from minitask.sending import compose_message
from minitask.worker.mail import compose

from taskkit import isolated_tasks  # noqa: E402,F401  (fixtures)

pytestmark = pytest.mark.usefixtures("isolated_tasks")


@task(name="tests.argsrepr.charge")
def charge(account, card=None):
    return account


def round_trip(message):
    return TaskMessage.from_bytes(protocol.encode_message(message.encode()))


def test_they_travel_with_the_call_and_change_nothing_else():
    message, _ = compose_message(charge.name, ("acct",), {"card": "1234 5678"}, charge,
                                 argsrepr="(<account>,)", kwargsrepr="{'card': '****'}")
    back = round_trip(message)
    assert (back.args, back.kwargs) == (("acct",), {"card": "1234 5678"})
    assert back.shown_args() == ("(<account>,)", "{'card': '****'}")
    plain = round_trip(compose_message(charge.name, ("acct",), {}, charge)[0])
    assert "argsrepr" not in plain.to_dict() and plain.argsrepr is None
    assert plain.shown_args() == ("('acct',)", "{}")


def test_anything_but_text_is_refused_where_it_is_given():
    with pytest.raises(ConfigurationError, match="argsrepr 3: expected text"):
        compose_message(charge.name, (), {}, charge, argsrepr=3)
    with pytest.raises(ConfigurationError, match="kwargsrepr"):
        charge.build_message(("acct",), kwargsrepr={"card": "****"})


def test_the_error_email_shows_them_instead_of_the_arguments():
    message = TaskMessage(charge.name, ("acct",), {"card": "1234 5678"})
    message.kwargsrepr = "{'card': '**** 5678'}"
    settings = config.Settings({"ADMINS": [("Ops", "ops@example.com")]})
    outcome = types.SimpleNamespace(result=KeyError("x"), traceback="Traceback ...")
    body = compose(settings, charge, message, outcome, "w1").get_content()
    assert "1234 5678" not in body
    assert "args: ('acct',) kwargs: {'card': '**** 5678'}" in body
