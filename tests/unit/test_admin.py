"""minitask.admin's formatting: what `inspect` and `control` print for people."""

import time

import pytest

from minitask.admin import _describe_item, _reply_text, duration_text, format_mapping


@pytest.mark.parametrize("seconds, text", [
    (0, "0.00s"), (0.3456, "0.35s"), (9.994, "9.99s"), (42.04, "42.0s"), (60, "1m 00s"),
    (187, "3m 07s"), (3600, "1h 00m"), (18125, "5h 02m"), (183600, "2d 03h"),
])
def test_durations_read_as_people_say_them(seconds, text):
    assert duration_text(seconds) == text


def test_a_mapping_is_aligned_keys_and_readable_values():
    when = time.mktime((2030, 1, 2, 3, 4, 5, 0, 0, -1))
    text = format_mapping({"hostname": "w1", "uptime": 187.25, "pool": [11, 12],
                           "counts": {"success": 3, "failure": 1}, "eta": when,
                           "ratio": 0.1234567891, "beat": False, "broker": None,
                           "queues": []}, indent=2)
    assert text.splitlines() == [
        "  hostname  w1",
        "  uptime    3m 07s",
        "  pool      11, 12",
        "  counts    failure 1, success 3",
        "  eta       2030-01-02 03:04:05",
        "  ratio     0.123457",
        "  beat      no",
        "  broker    -",
        "  queues    -",
    ]


def test_an_inspected_task_is_one_line():
    assert _describe_item({"id": "t1", "name": "tasks.add", "runtime": 2.5, "worker_pid": 42,
                           "redelivered": True, "acks_late": False}) \
        == "tasks.add[t1]  running for 2.50s  pid 42  redelivered"
    assert _describe_item("tasks.add") == "tasks.add"


@pytest.mark.parametrize("reply, text", [
    ("pong", "pong"), ({"ok": "consuming from 'q'"}, "consuming from 'q'"),
    ({"error": "rate_limit: bad rate"}, "error: rate_limit: bad rate"),
    ({"a": 1, "bb": 2}, "\n  a   1\n  bb  2"),
])
def test_a_control_reply_reads_without_dict_reprs(reply, text):
    assert _reply_text(reply) == text
