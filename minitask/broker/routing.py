"""Exchanges and bindings: which queues a message goes to. Pure; no I/O, no clock.

The AMQP 0-9-1 model, as RabbitMQ implements it:

- ``direct``: a queue gets the message when its binding key equals the routing key.
- ``topic``: keys are words separated by ``.``; in a binding key ``*`` is exactly one word and
  ``#`` zero or more. Empty words are words (``"a..b"`` has three), and the empty key has none.
- ``fanout``: every bound queue, whatever the key.
- ``headers``: the binding's arguments are compared with the message headers; ``x-match``
  ``all`` (the default) needs every argument to match, ``any`` at least one. Arguments whose
  name starts with ``x-`` are not compared.
- the default exchange ``""`` routes to the queue named by the routing key and cannot be bound.

`Exchange.route()` returns a set of queue names, so a queue reached through two bindings gets
the message once. Topic exchanges keep a trie of binding words and a bounded cache of answers,
so thousands of bindings cost a walk of the trie per new key, not a scan of every binding.
"""

__all__ = ["EXCHANGE_TYPES", "Exchange", "split_words", "headers_match"]

EXCHANGE_TYPES = ("direct", "topic", "fanout", "headers")

# Routing keys seen by one topic exchange are usually few (one per task type or so); past this
# many the cache is dropped and refilled, which keeps memory bounded for random keys.
_TOPIC_CACHE_SIZE = 4096


def split_words(key):
    """The words of a topic routing or binding key: ``""`` has none, ``"a."`` has two."""
    return key.split(".") if key else []


class _TrieNode:
    __slots__ = ("children", "queues")

    def __init__(self):
        self.children = {}
        self.queues = {}       # queue name -> number of bindings ending here for it


class _TopicTrie:
    def __init__(self):
        self.root = _TrieNode()

    def add(self, pattern, queue):
        node = self.root
        for word in split_words(pattern):
            node = node.children.setdefault(word, _TrieNode())
        node.queues[queue] = node.queues.get(queue, 0) + 1

    def remove(self, pattern, queue):
        path = [self.root]
        for word in split_words(pattern):
            child = path[-1].children.get(word)
            if child is None:
                return
            path.append(child)
        node = path[-1]
        count = node.queues.get(queue, 0)
        if count <= 1:
            node.queues.pop(queue, None)
        else:
            node.queues[queue] = count - 1
        words = split_words(pattern)
        for depth in range(len(words), 0, -1):          # prune empty branches
            node = path[depth]
            if node.children or node.queues:
                break
            del path[depth - 1].children[words[depth - 1]]

    def match(self, words):
        found = set()
        seen = set()
        count = len(words)

        def walk(node, i):
            if (id(node), i) in seen:        # several '#' can reach the same place
                return
            seen.add((id(node), i))
            hash_node = node.children.get("#")
            if hash_node is not None:
                for j in range(i, count + 1):
                    walk(hash_node, j)
            if i == count:
                found.update(node.queues)
                return
            child = node.children.get(words[i])
            if child is not None:
                walk(child, i + 1)
            star = node.children.get("*")
            if star is not None:
                walk(star, i + 1)

        walk(self.root, 0)
        return found


class Exchange:
    """One exchange and its bindings. `route()` answers which queues get a message."""

    def __init__(self, name, type="direct", durable=True, auto_delete=False):
        if type not in EXCHANGE_TYPES:
            raise ValueError("exchange type %r: expected one of %s"
                             % (type, ", ".join(EXCHANGE_TYPES)))
        self.name = name
        self.type = type
        self.durable = durable
        self.auto_delete = auto_delete
        self.bindings = {}          # (queue, binding_key, frozen arguments) -> arguments
        self._direct = {}           # direct: binding key -> {queue: count}
        self._all = {}              # fanout/headers: queue -> count
        self._trie = _TopicTrie() if type == "topic" else None
        self._cache = {}

    def describe(self):
        return {"exchange": self.name, "type": self.type, "durable": self.durable,
                "auto_delete": self.auto_delete}

    def bind(self, queue, binding_key="", arguments=None):
        """Add a binding; binding twice with the same key and arguments is a no-op."""
        arguments = dict(arguments or {})
        ident = (queue, binding_key, _freeze(arguments))
        if ident in self.bindings:
            return False
        self.bindings[ident] = arguments
        if self.type == "direct":
            queues = self._direct.setdefault(binding_key, {})
            queues[queue] = queues.get(queue, 0) + 1
        elif self.type == "topic":
            self._trie.add(binding_key, queue)
            self._cache.clear()
        else:
            self._all[queue] = self._all.get(queue, 0) + 1
        return True

    def unbind(self, queue, binding_key="", arguments=None):
        ident = (queue, binding_key, _freeze(dict(arguments or {})))
        if self.bindings.pop(ident, None) is None:
            return False
        if self.type == "direct":
            _decrement(self._direct.get(binding_key, {}), queue)
            if not self._direct.get(binding_key, True):
                del self._direct[binding_key]
        elif self.type == "topic":
            self._trie.remove(binding_key, queue)
            self._cache.clear()
        else:
            _decrement(self._all, queue)
        return True

    def unbind_queue(self, queue):
        """Remove every binding of `queue` (the queue was deleted)."""
        for ident in [ident for ident in self.bindings if ident[0] == queue]:
            self.unbind(queue, ident[1], self.bindings[ident])

    def route(self, routing_key, headers=None):
        """The set of queue names a message with this key (and headers) goes to."""
        kind = self.type
        if kind == "direct":
            return set(self._direct.get(routing_key, ()))
        if kind == "topic":
            queues = self._cache.get(routing_key)
            if queues is None:
                if len(self._cache) >= _TOPIC_CACHE_SIZE:
                    self._cache.clear()
                queues = self._cache[routing_key] = frozenset(
                    self._trie.match(split_words(routing_key)))
            return set(queues)
        if kind == "fanout":
            return set(self._all)
        return {queue for (queue, _key, _frozen), arguments in self.bindings.items()
                if headers_match(arguments, headers or {})}


def headers_match(arguments, headers):
    """The headers exchange rule for one binding's arguments against a message's headers."""
    mode = str(arguments.get("x-match", "all")).lower()
    wanted = [(name, value) for name, value in arguments.items() if not name.startswith("x-")]
    if not wanted:
        return mode == "all"
    hits = (name in headers and (value is None or headers[name] == value)
            for name, value in wanted)
    return any(hits) if mode == "any" else all(hits)


def _decrement(counts, key):
    count = counts.get(key, 0)
    if count <= 1:
        counts.pop(key, None)
    else:
        counts[key] = count - 1


def _freeze(value):
    if isinstance(value, dict):
        return tuple(sorted((str(k), _freeze(v)) for k, v in value.items()))
    if isinstance(value, list):
        return tuple(_freeze(v) for v in value)
    return value
