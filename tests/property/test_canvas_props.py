"""Signatures as data: any signature, and any workflow built of them, survives its JSON form
(json.dumps of the signature itself, or of `to_dict()`) and minitask's own serializers, and
comes back equal, of the same kind, with the same ids."""

import json
import pickle

from hypothesis import given
from hypothesis import strategies as st

from minitask import chain, chord, group, serialization, signature
from minitask.canvas import Signature

JSON_SCALARS = (st.none() | st.booleans() | st.integers(min_value=-2 ** 53, max_value=2 ** 53)
                | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=20))
JSON_VALUES = st.recursive(
    JSON_SCALARS,
    lambda children: (st.lists(children, max_size=3)
                      | st.dictionaries(st.text(max_size=8), children, max_size=3)),
    max_leaves=8)
NAMES = st.from_regex(r"[a-z][a-z0-9_]{0,10}(\.[a-z][a-z0-9_]{0,10}){0,2}", fullmatch=True)
OPTIONS = st.fixed_dictionaries({}, optional={
    "countdown": st.integers(min_value=0, max_value=3600),
    "queue": st.text(min_size=1, max_size=12),
    "priority": st.integers(min_value=0, max_value=9),
    "task_id": st.uuids().map(str),
    "expires": st.floats(min_value=1, max_value=1e6),
})


@st.composite
def task_signatures(draw):
    sig = Signature(draw(NAMES), draw(st.lists(JSON_VALUES, max_size=3)),
                    draw(st.dictionaries(st.text(min_size=1, max_size=8), JSON_VALUES,
                                         max_size=3)),
                    draw(OPTIONS), immutable=draw(st.booleans()))
    if draw(st.booleans()):
        sig.link(Signature(draw(NAMES), draw(st.lists(JSON_SCALARS, max_size=2))))
    return sig


WORKFLOWS = st.recursive(
    task_signatures(),
    lambda parts: (st.lists(parts, min_size=1, max_size=3).map(chain)
                   | st.lists(parts, max_size=3).map(group)
                   | st.tuples(st.lists(parts, max_size=3), parts).map(
                       lambda pair: chord(*pair))),
    max_leaves=6)


def same(a, b):
    return type(a) is type(b) and a == b and json.dumps(a.to_dict(), sort_keys=True) == \
        json.dumps(b.to_dict(), sort_keys=True)


@given(WORKFLOWS)
def test_a_signature_survives_the_json_text_of_itself_and_of_its_dict_form(sig):
    assert same(signature(json.loads(json.dumps(sig))), sig)
    assert same(signature(json.loads(json.dumps(sig.to_dict()))), sig)


@given(WORKFLOWS, st.sampled_from(["json", "pickle"]))
def test_a_signature_survives_minitasks_serializers_inside_a_message_body(sig, serializer):
    content_type, body = serialization.dumps({"chain": [sig.to_dict()]}, serializer)
    [back] = serialization.loads(body, content_type)["chain"]
    assert same(signature(back), sig)
    assert same(pickle.loads(pickle.dumps(sig)), sig)


@given(WORKFLOWS)
def test_a_frozen_workflow_keeps_every_id_through_json(sig):
    frozen = sig.clone()
    frozen.freeze()
    rebuilt = signature(json.loads(json.dumps(frozen)))
    assert same(rebuilt, frozen)
    before = json.dumps(rebuilt.to_dict(), sort_keys=True)
    rebuilt.freeze()                    # every id is there already: nothing changes
    assert json.dumps(rebuilt.to_dict(), sort_keys=True) == before
