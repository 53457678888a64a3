"""The Redis (and Valkey) transport: ``redis://``, ``rediss://``, ``redis+sentinel://``.

There is no broker process of ours: Redis holds the state and each client and worker does
the broker's work in scripts that change it atomically. The parts, one concept a module::

    redis_url        the URL: where, as whom, which virtual host, the transport's options
    redis_client     RESP over a socket: pipelines, retries, Sentinel, TLS (resp: the codec)
    redis_keys       the key schema of a virtual host
    redis_scripts    the Lua scripts: every change that must be atomic
    redis_ops        how each script call is laid out (pure)
    redis_topology   exchanges, queues, bindings; routing with the built-in broker's matcher
    redis_replies    what the scripts answer and store, read back
    redis_producer   Client: publish, declare, results, revoke, control, lease, status
    redis_consumer   Consumer: the worker's selectable, non-blocking side
    redis_reader     the consumer's reader: the socket the worker's selector waits on
    redis_liveness   heartbeats, sweeps of dead workers, the backstop, Redis's clock
    redis_status     the status report

This module is what ``BROKER_URL=redis://...`` selects (`minitask.transport.SCHEMES`).

How the model maps onto Redis:

- Exchanges, queues and bindings are three hashes under a version number. A client routes a
  message with the built-in broker's matcher against its cached copy, and the publish
  script writes it only if that version is still current (else STALE: reload, route again).
- A queue is twenty streams, two per priority 0..9 (0 first): messages given back (rejected
  with requeue, or held by a worker that was lost) and then new ones, each read by the
  consumer group ``w``. Counters per queue say which streams have messages ready, so a
  consumer with nothing to take reads none of them.
- An ack deletes the entry (XACK + XDEL): streams hold only what waits or is being worked
  on. A message given back is a copy at the tail of its priority's "returned" stream, its
  delivery count one higher; past ``max_redeliveries`` it goes to the dead-letter queue.
- Delayed messages (countdowns, ETAs) wait in a sorted set until shortly before they are due;
  whoever waits on Redis (a worker before each blocking read, a client waiting for a result)
  moves the due ones to their streams, and expires what expired, on Redis's own clock.
- Results are one-entry streams with an expiry: a waiter blocks in XREAD on its task's
  stream, so every waiter wakes when the result is stored, and a late one reads it at once.
- Remote control is one stream every worker reads; replies come back on a stream of the
  asker's own.

Durability: a publish returns once Redis holds the message (in memory, in the AOF buffer);
the URL's ``publish_confirm`` makes it wait for replicas or an fsync too (`redis_url`).
"""

from .redis_consumer import Consumer
from .redis_producer import Client

__all__ = ["Client", "Consumer", "client"]


def client(settings, client="minitask-client", on_connect=None, timeout=10.0):
    """A `Client` of the Redis the settings name (see `minitask.transport.client_for`)."""
    return Client(settings, client, on_connect, timeout)
