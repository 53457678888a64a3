"""minitask.broker.admission: handshake shares of the connection slots, and the cap on
unfinished frames, as plain bookkeeping (no sockets)."""

from minitask.broker.admission import REFUSE, Admission, PartialFrames
from minitask.broker.session import AUTH_STAGE, HELLO_STAGE, OPEN


class Stub:
    """What the bookkeeping reads of a connection: its peer and its session's stage."""

    def __init__(self, **fields):
        self.__dict__.update(fields)


def conn(peer, stage=HELLO_STAGE):
    return Stub(peer_key=peer, session=Stub(stage=stage))


def admission(total=16, handshaking=4, per_peer=2):
    return Admission(total, handshaking, per_peer)


def test_newcomers_get_a_free_slot_while_every_share_has_room():
    book = admission()
    first = conn("10.0.0.1")
    assert book.admit("10.0.0.1", 0) is None
    book.add(first)
    assert book.admit("10.0.0.1", 1) is None
    assert book.count == 1


def test_a_peer_over_its_share_makes_room_by_dropping_its_own_oldest_handshake():
    book = admission()
    old, young = conn("10.0.0.1"), conn("10.0.0.1")
    other = conn("10.0.0.2")
    for each in (old, other, young):
        book.add(each)
    assert book.admit("10.0.0.1", 3) is old
    assert book.admit("10.0.0.2", 3) is None            # another peer still has room


def test_a_handshake_whose_hello_is_in_goes_after_those_that_sent_none():
    book = admission()
    answered = conn("10.0.0.1", AUTH_STAGE)             # older, but its HELLO is in
    parked = conn("10.0.0.1", HELLO_STAGE)
    book.add(answered)
    book.add(parked)
    assert book.admit("10.0.0.1", 2) is parked
    parked.session.stage = AUTH_STAGE
    assert book.admit("10.0.0.1", 2) is answered        # then simply the oldest


def test_when_all_handshakes_together_are_over_the_biggest_holder_gives_way():
    book = admission(handshaking=3, per_peer=2)
    big = [conn("10.0.0.1"), conn("10.0.0.1")]
    small = conn("10.0.0.2")
    for each in big + [small]:
        book.add(each)
    assert book.admit("10.0.0.3", 3) is big[0]


def test_slots_of_clients_past_their_handshake_are_never_taken():
    book = admission(total=2)
    client = conn("10.0.0.1")
    book.add(client)
    book.remove(client)                                 # WELCOMEd
    assert book.admit("10.0.0.1", 2) is REFUSE
    waiting = conn("10.0.0.1")
    book.add(waiting)
    assert book.admit("10.0.0.2", 2) is waiting         # at the cap: a handshake gives way


def test_removing_twice_or_a_stranger_changes_nothing():
    book = admission()
    mine = conn("10.0.0.1")
    book.add(mine)
    book.remove(mine)
    book.remove(mine)
    book.remove(conn("10.0.0.9", OPEN))
    assert book.count == 0 and book.waiting == {}


def test_partial_frames_sum_over_connections_and_cut_the_largest_first():
    partial = PartialFrames(max_bytes=100)
    a, b, c = conn("a"), conn("b"), conn("c")
    partial.hold(a, 60)
    partial.hold(b, 30)
    assert not partial.over
    partial.hold(c, 50)
    assert partial.over and partial.total == 140
    assert partial.largest() == [a]                     # 80 left: under the cap
    partial.hold(a, 0)
    partial.hold(b, 0)
    assert partial.total == 50 and list(partial.holders) == [c]


def test_partial_frames_cut_as_many_as_it_takes():
    partial = PartialFrames(max_bytes=10)
    holders = [conn(str(n)) for n in range(4)]
    for size, holder in zip((9, 8, 7, 6), holders):
        partial.hold(holder, size)
    assert partial.largest() == holders[:3]             # 30 bytes over: 9 + 8 + 7 >= 20
