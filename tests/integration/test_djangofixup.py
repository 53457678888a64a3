"""What a forked pool process does with the database connections it inherits (djangofixup).

A forked child shares its parent's database sockets. A driver's close() (or its finaliser)
says goodbye on the socket, which would end the parent's session. Here a socket pair plays
the database: one end is the "server", the other sits in a driver-like connection object
held by a Django-like connection wrapper, and a real fork does the rest. No Django needed.
"""

import multiprocessing
import os
import socket

from minitask.worker import djangofixup


class DriverConnection:
    """Like psycopg's: a socket, and a close() that tells the server goodbye."""

    def __init__(self, sock):
        self.sock = sock

    def fileno(self):
        return self.sock.fileno()

    def close(self):
        os.write(self.fileno(), b"X")   # libpq's Terminate message


class Wrapper:
    """Like Django's BaseDatabaseWrapper: `connection` is the driver's, None once closed."""

    def __init__(self, connection):
        self.connection = connection


class Connections:
    """Like ``django.db.connections``."""

    def __init__(self, *wrappers):
        self.wrappers = wrappers

    def all(self, initialized_only=False):
        return list(self.wrappers)


def in_a_forked_child(function):
    """Run `function` in a forked child; returns what it returned (a picklable value)."""
    context = multiprocessing.get_context("fork")
    reader, writer = context.Pipe(duplex=False)

    def child():
        writer.send(function())
    process = context.Process(target=child)
    process.start()
    writer.close()
    try:
        assert reader.poll(10), "the child sent nothing back"
        return reader.recv()
    finally:
        process.join(10)
        if process.is_alive():
            process.kill()
        assert process.exitcode == 0


def nothing_arrived(server):
    server.setblocking(False)
    try:
        return server.recv(16) == b""   # b"" would be a closed peer
    except BlockingIOError:
        return True
    finally:
        server.setblocking(True)


def test_closing_an_inherited_connection_in_a_child_says_goodbye_on_the_parents_socket():
    server, client = socket.socketpair()
    with server, client:
        driver = DriverConnection(client)
        in_a_forked_child(lambda: driver.close())       # what must not happen
        assert server.recv(16) == b"X"


def test_a_forked_child_forgets_inherited_connections_without_a_byte_to_the_database():
    server, client = socket.socketpair()
    with server, client:
        driver = DriverConnection(client)
        sqlite_like = object()                          # no socket: just let go of it
        wrappers = Connections(Wrapper(driver), Wrapper(sqlite_like), Wrapper(None))
        fd = client.fileno()

        def child():
            dropped = djangofixup.forget_inherited_connections(wrappers)
            seen = {"dropped": dropped,
                    "wrappers": [w.connection is None for w in wrappers.wrappers],
                    "fd_points_at": os.readlink("/proc/self/fd/%d" % fd)}
            driver.close()              # a finaliser that runs anyway writes to /dev/null
            return seen

        seen = in_a_forked_child(child)
        assert seen == {"dropped": 2, "wrappers": [True, True, True],
                        "fd_points_at": os.devnull}
        assert nothing_arrived(server)
        # the parent's session is untouched and still talks
        assert wrappers.wrappers[0].connection is driver
        client.send(b"SELECT 1")
        assert server.recv(16) == b"SELECT 1"


def test_without_django_settings_nothing_is_imported_or_done(monkeypatch):
    monkeypatch.delenv("DJANGO_SETTINGS_MODULE", raising=False)
    assert not djangofixup.active()
    assert djangofixup.setup() is False
    assert djangofixup.forget_inherited_connections() == 0
