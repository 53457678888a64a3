"""The Redis transport's Lua scripts: every change that must be atomic happens in one of them.

Each script is the `PRELUDE` (helpers) followed by its body. A script reads its inputs in
order with ``next_key()`` and ``next_arg()``, so the Python side lays them out in the same
order (`minitask.transport.redis_ops` builds every call) and every key a script touches is
in KEYS: none is built from a name inside Lua, which keeps each script runnable on a Redis
Cluster (all of a vhost's keys share one hash tag).

A script refuses with an error reply ``MT<code> <text>`` (a protocol error code: 404, 406,
409, 312, 313, 507) before it changes anything, and with ``STALE`` when the topology it was
given has changed meanwhile: the caller reloads it and tries again.

Layout of stream entries: field ``m`` is the message as published (protocol section 3.1),
``n`` how many times it was delivered before this copy was made (absent: never). A message
is never delivered twice from the same entry: giving it back (a reject, a lost worker) adds
a copy with ``n`` one higher and acks and deletes the original, so a delivery's count is
``n + 1`` and streams keep only what is waiting or being worked on.
"""

import re

from .redis_client import Script

__all__ = ["SCRIPTS"] + ["SNAPSHOT", "COMMIT", "PUBLISH", "FETCH", "SETTLE", "RETIRE",
                         "REGISTER", "RENEW", "DUE", "PROMOTE", "EXPIRE", "LOSE", "CLAIM",
                         "REVOKE", "PURGE", "LEASE"]

PRELUDE = r"""
-- Inputs, in order: each script walks KEYS and ARGV with these.
local key_index, arg_index = 0, 0
local function next_key() key_index = key_index + 1; return KEYS[key_index] end
local function next_arg() arg_index = arg_index + 1; return ARGV[arg_index] end
local function next_number() return tonumber(next_arg()) end

local GROUP = 'w'
-- The counters of what waits in a queue's streams: READY[level] new messages (stream pN),
-- BACK[level] messages given back (stream bN); WAITING, all twenty for HMGET.
local READY = {[0] = 'ready0', 'ready1', 'ready2', 'ready3', 'ready4', 'ready5', 'ready6',
               'ready7', 'ready8', 'ready9'}
local BACK = {[0] = 'back0', 'back1', 'back2', 'back3', 'back4', 'back5', 'back6', 'back7',
              'back8', 'back9'}
local WAITING = {'ready0', 'ready1', 'ready2', 'ready3', 'ready4', 'ready5', 'ready6',
                 'ready7', 'ready8', 'ready9', 'back0', 'back1', 'back2', 'back3', 'back4',
                 'back5', 'back6', 'back7', 'back8', 'back9'}
local FINAL = {SUCCESS = true, FAILURE = true, REVOKED = true}

-- Lua numbers are doubles: integers are written with %d, never tostring() (1.7e+12).
local function int(n) return string.format('%d', n) end

-- Redis's clock, in milliseconds: the one clock every worker and client agrees on.
local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end

local function refuse(code, text) error({err = 'MT' .. code .. ' ' .. text}) end

-- The topology's next version. One made again after a wipe starts from the clock, in
-- microseconds, not from 1: a client still holding a version read before the wipe must
-- never find it in force under other rules (it would route by its stale copy).
local function bump_topology(key)
  if redis.call('EXISTS', key) == 1 then return redis.call('INCR', key) end
  local t = redis.call('TIME')
  local version = t[1] .. string.format('%06d', tonumber(t[2]))
  redis.call('SET', key, version)
  return tonumber(version)
end

-- What the Python side writes with redis_keys.pack: each field as <length>:<bytes>.
local function pack(...)
  local out = {}
  for i, field in ipairs({...}) do out[i] = #field .. ':' .. field end
  return table.concat(out)
end

-- The fields of an encoded message a script needs (protocol section 3.1: flags u8,
-- priority u8, not_before f64, expires_at f64, then the str8s message_id, exchange,
-- routing_key, type): task id, task name, expiry in ms (0: none).
local function str8(m, at)
  local length = string.byte(m, at)
  return string.sub(m, at + 1, at + length), at + 1 + length
end
local function message_fields(m)
  local expires_at = struct.unpack('>d', m, 11)
  local task_id, at = str8(m, 19)
  local exchange, at_key = str8(m, at)
  local key, at_type = str8(m, at_key)
  local name = str8(m, at_type)
  return task_id, name, math.floor(expires_at * 1000), exchange, key
end

-- A stream gets its consumer group when it is made, reading from the very start, so no
-- message is ever skipped, whoever writes first.
local function ensure_stream(stream)
  if redis.call('EXISTS', stream) == 0 then
    redis.call('XGROUP', 'CREATE', stream, GROUP, '0', 'MKSTREAM')
  end
end

-- A command on one key with many arguments (after `first`), a thousand at a time: Lua's
-- unpack() has a limit. Returns the sum of the replies (0 for no arguments at all).
local function call_many(command, key, items, first)
  local total = 0
  for at = 1, #items, 1000 do
    local chunk = first and {command, key, first} or {command, key}
    for i = at, math.min(at + 999, #items) do chunk[#chunk + 1] = items[i] end
    total = total + redis.call(unpack(chunk))
  end
  return total
end

-- Idle consumers block in XREAD on their queues' bells; one entry wakes them all.
local function ring(bell) redis.call('XADD', bell, 'MAXLEN', '~', '100', '*', 'r', '1') end

local function queue_exists(queues, name)
  if type(queues) == 'table' then                       -- globals, with their cache
    local known = queues.exists[name]
    if known == nil then
      known = redis.call('HEXISTS', queues.queues, name) == 1
      queues.exists[name] = known
    end
    return known
  end
  return redis.call('HEXISTS', queues, name) == 1
end

-- Scripts that settle many entries (SETTLE) add up counter changes and ring bells once, at
-- the end (`apply_counts`), and ask whether a queue exists once per queue.
local function new_globals(globals)
  globals.changes, globals.exists, globals.bells = {}, {}, {}
  return globals
end
local function count(globals, key, field, delta)
  local changes = globals.changes[key]
  if not changes then
    changes = {}
    globals.changes[key] = changes
  end
  changes[field] = (changes[field] or 0) + delta
end
local function apply_counts(globals)
  for key, changes in pairs(globals.changes) do
    -- A consumer's stats may be gone (retired): do not bring them back.
    if not globals.owner_stats[key] or redis.call('EXISTS', key) == 1 then
      for field, delta in pairs(changes) do
        if delta ~= 0 then redis.call('HINCRBY', key, field, delta) end
      end
    end
  end
  for bell in pairs(globals.bells) do ring(bell) end
end

-- An entry's fields as a table.
local function fields_of(list)
  local fields = {}
  for i = 1, #list, 2 do fields[list[i]] = list[i + 1] end
  return fields
end

-- A task's result: its latest state, the one entry of a stream of its own. Every waiter
-- blocked in XREAD on it wakes; one that comes later reads it at once.
local function final_state(result)
  local last = redis.call('XREVRANGE', result, '+', '-', 'COUNT', 1)[1]
  if last then
    local state = fields_of(last[2])['s']
    if FINAL[state] then return state end
  end
  return nil
end

-- Chords. A parked body waits in the delayed set at PARKED_AT (never due), with its record
-- in the chords hash: "b:<body id>" -> {id, result, ids, headers, chain, run, errbacks},
-- "l:<body id>" -> how many header results it still waits for, "w:<task id>" -> the bodies
-- waiting for that task's result, "p:<task id>" -> how many undecided bodies need that
-- result (it does not expire meanwhile). Each header result counts once: its "w:" field
-- goes with its first final result. The last SUCCESS releases the body (queued at once, or
-- when its countdown ends); a FAILURE or REVOKED fails it: FAILURE ChordError for the body
-- and the rest of its chain, its parked errbacks released instead.
-- Every script that stores results reads the chord keys first (read_chord_keys).
-- `why` marks a result the transport wrote itself, and `kind` says which: readers build its
-- meta from the state, the kind and this text (REVOKED: TaskRevokedError; FAILURE: no kind,
-- WorkerLostError; 'chord', ChordError; 'dead', DeadLetteredError).
local PARKED_AT = %d
local chords, store_result = {}, nil
local function read_chord_keys(ttl_ms, now)
  chords.hash, chords.delayed, chords.messages = next_key(), next_key(), next_key()
  chords.failures, chords.queues, chords.expiring = next_key(), next_key(), next_key()
  chords.given_up = next_key()
  chords.ttl_ms, chords.now = ttl_ms, now
end
-- Whether a queue's 'delayed' counter counts the delayed member numbered `serial`: not
-- when the queue was deleted and declared again after it was written (COMMIT's 'born').
-- Members written before serials were kept (nil) count.
local function counted(stats, serial)
  return not serial or tonumber(serial) > tonumber(redis.call('HGET', stats, 'born') or '0')
end

-- A parked message: {m = its delayed member, s = queue stats, b = bell, st = stream,
-- l = level, q = queue, t = task id, at = when it is due (ms), x = its expiry member or '',
-- n = its serial}.
local function unpark(parked)
  for _, p in ipairs(parked) do
    if redis.call('ZREM', chords.delayed, p.m) == 1 then
      redis.call('HDEL', chords.messages, p.m)
      if p.x ~= '' then redis.call('ZREM', chords.expiring, p.x) end
      if redis.call('HEXISTS', chords.queues, p.q) == 1 and counted(p.s, p.n) then
        redis.call('HINCRBY', p.s, 'delayed', -1)
      end
    end
  end
end
local function release(parked)
  for _, p in ipairs(parked) do
    local at = tonumber(p.at)
    if at > chords.now then                            -- a countdown: due then (PROMOTE)
      if redis.call('ZSCORE', chords.delayed, p.m) then
        redis.call('ZADD', chords.delayed, at, p.m)
        ring(p.b)
      end
    else                                               -- queued now, as PROMOTE does
      local data = redis.call('HGET', chords.messages, p.m)
      if redis.call('ZREM', chords.delayed, p.m) == 1 then
        redis.call('HDEL', chords.messages, p.m)
        local expires = p.x ~= '' and redis.call('ZSCORE', chords.expiring, p.x)
        if expires then redis.call('ZREM', chords.expiring, p.x) end
        if data and redis.call('HEXISTS', chords.queues, p.q) == 1 then
          if counted(p.s, p.n) then redis.call('HINCRBY', p.s, 'delayed', -1) end
          ensure_stream(p.st)
          local id = redis.call('XADD', p.st, '*', 'm', data)
          redis.call('HINCRBY', p.s, READY[tonumber(p.l)], 1)
          ring(p.b)
          if expires then
            redis.call('ZADD', chords.expiring, expires, pack(p.q, p.t, p.l, 'p', id))
          end
        end
      end
    end
  end
end
-- The body no longer needs its header's results: they expire result_expires after it is
-- queued (`later` ms from now, for a countdown).
local function unpin(body, later)
  for i, task_id in ipairs(body.ids) do
    if redis.call('HINCRBY', chords.hash, 'p:' .. task_id, -1) <= 0 then
      redis.call('HDEL', chords.hash, 'p:' .. task_id)
      redis.call('PEXPIRE', body.headers[i], chords.ttl_ms + later)
    end
  end
end
local function chord_decide(body, failed_id, state)
  redis.call('HDEL', chords.hash, 'b:' .. body.id, 'l:' .. body.id)
  if not failed_id then
    local later = 0
    for _, p in ipairs(body.run) do later = math.max(later, tonumber(p.at) - chords.now) end
    unpin(body, later)
    if final_state(body.result) then unpark(body.run) else release(body.run) end
    unpark(body.errbacks)                              -- (revoked meanwhile: never run)
    return
  end
  unpin(body, 0)
  unpark(body.run)
  release(body.errbacks)
  local why = 'chord ' .. body.id .. ': header task ' .. failed_id .. ' ended in ' .. state ..
              ', so the body never runs'
  if not final_state(body.result) then
    store_result(body.result, 'FAILURE', '', '', why, chords.ttl_ms, chords.now,
                 chords.failures, body.id, 'chord')
  end
  for _, link in ipairs(body.chain) do
    if not final_state(link[2]) then
      store_result(link[2], 'FAILURE', '', '', why, chords.ttl_ms, chords.now,
                   chords.failures, link[1], 'chord')
    end
  end
end
local function chord_final(task_id, state, waiting)
  redis.call('HDEL', chords.hash, 'w:' .. task_id)
  for _, body_id in ipairs(cjson.decode(waiting)) do
    if redis.call('HEXISTS', chords.hash, 'l:' .. body_id) == 1 then
      -- The record is read only to decide: a chord of n tasks costs n small steps.
      local left = redis.call('HINCRBY', chords.hash, 'l:' .. body_id, -1)
      if state ~= 'SUCCESS' or left <= 0 then
        local body = cjson.decode(redis.call('HGET', chords.hash, 'b:' .. body_id))
        if state ~= 'SUCCESS' then chord_decide(body, task_id, state) else chord_decide(body) end
      end
    end
  end
end
store_result = function(result, state, content_type, payload, why, ttl_ms, now, failures,
                        task_id, kind)
  if why then
    redis.call('XADD', result, 'MAXLEN', '1', '*', 's', state, 't', int(now), 'c', '',
               'p', '', 'w', why, 'k', kind or '')
  else
    redis.call('XADD', result, 'MAXLEN', '1', '*', 's', state, 't', int(now),
               'c', content_type, 'p', payload)
  end
  redis.call('PEXPIRE', result, ttl_ms)
  if state == 'FAILURE' then
    redis.call('LPUSH', failures, int(now) .. ' ' .. task_id)
    redis.call('LTRIM', failures, 0, 49)
  end
  if FINAL[state] then
    if not chords.hash then error('a result stored without the chord keys') end
    local watched = redis.call('HMGET', chords.hash, 'w:' .. task_id, 'p:' .. task_id)
    if watched[1] then chord_final(task_id, state, watched[1]) end
    if watched[2] and redis.call('HEXISTS', chords.hash, 'p:' .. task_id) == 1 then
      redis.call('PERSIST', result)                    -- a body still needs it
    end
  end
end
-- A task that will never run (expired, revoked) is REVOKED, unless it has a final state.
-- With its message `data` (a script that drops or dead-letters the message itself), a
-- message with headers also goes to the given-up stream: its errbacks and the rest of its
-- chain are for a worker to send (redis_givenup), as only the Python side routes.
local function has_headers(m)
  local at = 19                                        -- past the five str8 fields
  for _ = 1, 5 do at = at + 1 + (string.byte(m, at) or 0) end
  return (string.byte(m, at) or 0) + (string.byte(m, at + 1) or 0) > 0
end
local function store_final(result, state, why, ttl_ms, now, failures, task_id, kind, data)
  if task_id ~= '' and not final_state(result) then
    store_result(result, state, '', '', why, ttl_ms, now, failures, task_id, kind)
    if data and #data > 19 and has_headers(data) then
      redis.call('XADD', chords.given_up, '*', 'm', data, 's', state, 'w', why,
                 'k', kind or '')
    end
    return true
  end
  return false
end

-- inflight values: "STATE<TAB>consumer<TAB>task name".
local function inflight_owner(inflight, task_id)
  local value = redis.call('HGET', inflight, task_id)
  if not value then return nil end
  local state, owner = string.match(value, '^([^\t]*)\t([^\t]*)')
  return owner, state
end
local function clear_inflight(inflight, task_id, owner)
  if task_id ~= '' and inflight_owner(inflight, task_id) == owner then
    redis.call('HDEL', inflight, task_id)
  end
end

-- The owner of a pending entry idle for at least min_idle ms, or nil (acked, given back,
-- or renewed since).
local function pending_owner(stream, id, min_idle)
  local pending = redis.pcall('XPENDING', stream, GROUP, 'IDLE', min_idle, id, id, 1)
  if type(pending) ~= 'table' or pending.err or not pending[1] then return nil end
  return pending[1][2]
end

-- Give a delivered entry back. Its copy, one delivery older, goes to the tail of the
-- "returned" stream of its priority (read before that priority's new messages), or to the
-- dead-letter queue when it has been delivered more than max_redeliveries times (mode
-- 'requeue') or when the caller says so (mode 'dead'), its task FAILURE (DeadLetteredError);
-- mode 'release' (never started: a warm shutdown) copies it with the same count, never
-- dead-lettered; mode 'drop' keeps no copy, and stores a REVOKED result when `why` is given; mode 'reject'
-- keeps none either, its task FAILURE. Then the original is acked and deleted.
-- Nothing happens unless the entry is still pending for `owner`: acked meanwhile, or given
-- back by someone else, it stays as it is. Returns {task id, queue, dead-letter queue} when
-- the copy went to the dead-letter queue, else nil.
local function give_back(globals)
  local stream, stats, owner_stats, back, bell = next_key(), next_key(), next_key(),
                                                  next_key(), next_key()
  local dead, dead_stats, dead_bell, result = next_key(), next_key(), next_key(), next_key()
  local queue, id, owner, min_idle = next_arg(), next_arg(), next_arg(), next_arg()
  local level, mode, max_redeliveries = next_number(), next_arg(), tonumber(next_arg())
  local dead_name, dead_definition, task_id, why = next_arg(), next_arg(), next_arg(),
                                                   next_arg()
  if pending_owner(stream, id, min_idle) ~= owner then return nil end
  globals.owner_stats[owner_stats] = true
  local entry = redis.call('XRANGE', stream, id, id)[1]
  local fields = entry and fields_of(entry[2]) or {}
  if task_id == '' and fields['m'] then       -- a sweeper names entries by id alone
    local ok, found = pcall(message_fields, fields['m'])
    if ok then task_id = found end
  end
  redis.call('XACK', stream, GROUP, id)
  redis.call('XDEL', stream, id)
  count(globals, owner_stats, 'unacked', -1)
  clear_inflight(globals.inflight, task_id, owner)
  local exists = queue_exists(globals, queue)
  if exists then count(globals, stats, 'unacked', -1) end
  if mode == 'drop' or mode == 'reject' then
    if why ~= '' then
      store_final(result, 'REVOKED', why, globals.ttl_ms, globals.now, globals.failures,
                  task_id)
    elseif mode == 'reject' then                     -- given up on: it never runs again
      store_final(result, 'FAILURE', 'was rejected and dropped', globals.ttl_ms,
                  globals.now, globals.failures, task_id, 'dead', fields['m'])
    end
    return nil
  end
  if not entry or not exists then return nil end       -- nothing to copy, or nowhere to
  local deliveries = tonumber(fields['n']) or 0
  if mode ~= 'release' then deliveries = deliveries + 1 end
  if mode == 'dead' or (mode == 'requeue' and max_redeliveries
                        and deliveries > max_redeliveries) then
    if not queue_exists(globals, dead_name) then
      redis.call('HSET', globals.queues, dead_name, dead_definition)
      bump_topology(globals.topology)
      globals.exists[dead_name] = true
    end
    ensure_stream(dead)
    redis.call('XADD', dead, '*', 'm', fields['m'], 'n', int(deliveries))
    count(globals, dead_stats, READY[level], 1)
    count(globals, stats, 'dead_lettered', 1)
    globals.bells[dead_bell] = true
    store_final(result, 'FAILURE', 'was dead-lettered to \'' .. dead_name .. '\' (' ..
                (mode == 'dead' and 'rejected' or 'delivered ' .. int(deliveries) .. ' times') ..
                ')', globals.ttl_ms, globals.now, globals.failures, task_id, 'dead', fields['m'])
    return {task_id, queue, dead_name}
  end
  ensure_stream(back)
  redis.call('XADD', back, '*', 'm', fields['m'], 'n', int(deliveries))
  count(globals, stats, BACK[level], 1)
  globals.bells[bell] = true
  return nil
end
"""


# When a parked chord body is due: never (2**52 ms is in the year 142,000).
PARKED_AT = 2 ** 52
PRELUDE = PRELUDE.replace("local PARKED_AT = %d", "local PARKED_AT = %d" % PARKED_AT)


def _blocks(prelude):
    """The prelude's blocks (separated by blank lines), each with the names it defines."""
    for block in prelude.strip().split("\n\n"):
        names = re.findall(r"^local function (\w+)", block, re.M)
        for assigned in re.findall(r"^local ([\w, ]+?) =", block, re.M):
            names += [name.strip() for name in assigned.split(",")]
        yield names, block


_BLOCKS = list(_blocks(PRELUDE))


def _script(body):
    """A script of `body` and the prelude blocks it uses, directly or through another
    block: the prelude is run on every call, so each script defines only what it needs."""
    needed, chosen = body, []
    for names, block in reversed(_BLOCKS):
        if any(re.search(r"\b%s\b" % name, needed) for name in names):
            chosen.append(block)
            needed += block
    return Script("\n\n".join(reversed(chosen)) + "\n" + body)


# -- topology ---------------------------------------------------------------------------------

# The whole topology, read at once: its version and the three hashes.
SNAPSHOT = _script(r"""
local topology, exchanges, queues, bindings = next_key(), next_key(), next_key(), next_key()
return {redis.call('GET', topology) or '0', redis.call('HGETALL', exchanges),
        redis.call('HGETALL', queues), redis.call('HGETALL', bindings)}
""")

# Apply changes the caller decided on from topology version `expected`, if it is still the
# version: HSET/HDEL on the exchanges, queues and bindings hashes, and DEL of the keys of
# deleted queues. Returns the version now in force.
COMMIT = _script(r"""
local topology = next_key()
local hashes = {exchanges = next_key(), queues = next_key(), bindings = next_key()}
local serials = next_key()
local expected, changes = next_arg(), next_number()
if (redis.call('GET', topology) or '0') ~= expected then return redis.error_reply('STALE the topology changed') end
for _ = 1, changes do
  local name, op, field, value = next_arg(), next_arg(), next_arg(), next_arg()
  local hash = hashes[name]
  if op == 'set' then
    -- A queue made (or made again after a delete) counts none of the delayed messages and
    -- parked bodies already numbered: they were another queue's (see `counted`).
    if name == 'queues' then
      local stats = next_key()
      if redis.call('HEXISTS', hash, field) == 0 then
        redis.call('HSET', stats, 'born', redis.call('HGET', serials, 'delayed_serial') or '0')
      end
    end
    redis.call('HSET', hash, field, value)
  else
    redis.call('HDEL', hash, field)
  end
end
for i = key_index + 1, #KEYS do redis.call('DEL', KEYS[i]) end
if changes > 0 then return bump_topology(topology) end
return tonumber(expected)
""")

# -- publishing -------------------------------------------------------------------------------

# Publish messages routed by the caller under topology version `expected`, with, before
# them, optionally a durable setting (the beat's send record) and a task's result (a worker
# storing what a task returned along with the messages it unlocks).
#
# Mode 'all': every message is checked (mandatory, immediate, full queues) before anything
# is written, so a refusal leaves everything as it was. Mode 'each': each message is
# checked and written in turn; a refusal stops there (publish_many).
#
# Messages come in groups that go to the same queues at the same priority. Per group, ARGV:
# control, immediate, level, targets, per target its queue name and max_length ('' none),
# then the count of messages and each message; KEYS: per target the queue's stats, bell and
# stream of that priority (and its consumers when immediate), then the result of each
# message that has an expiry. Everything else a message needs is read from it here.
PUBLISH = _script(r"""
local topology, stats, delayed, delayed_messages = next_key(), next_key(), next_key(),
                                                   next_key()
local expiring, control = next_key(), next_key()
local expected, ttl_ms, mode, ahead_ms = next_arg(), next_number(), next_arg(), next_number()
if (redis.call('GET', topology) or '0') ~= expected then
  return redis.error_reply('STALE the topology changed')
end
local now = now_ms()
-- The chord keys come when anything here may store a result or park a chord's body.
if next_arg() == '1' then read_chord_keys(ttl_ms, now) end

local record, result = nil, nil
if next_arg() == '1' then record = {kv = next_key(), key = next_arg(), value = next_arg()} end
if next_arg() == '1' then
  result = {key = next_key(), inflight = next_key(), handovers = next_key(),
            orphans = next_key(), failures = next_key(), handed = next_key(),
            task_id = next_arg(),
            state = next_arg(), content_type = next_arg(), payload = next_arg(),
            store = next_arg() == '1'}
  result.guard = next_arg() == '1' and next_key() or result.key
  result.running = next_arg() == '1'
  -- As Celery's result backends: a SUCCESS stored is never replaced by another state. A
  -- copy of a task that succeeded which ends otherwise (dropped as revoked or expired,
  -- failed, retried), and the rest of its chain, change nothing and publish nothing (void).
  -- A running task's own state (update_state) is never stored over a final result; the
  -- task stays running, so none of its bookkeeping goes.
  if result.running then
    result.kept = final_state(result.key) ~= nil
  elseif result.state ~= 'SUCCESS' then
    result.void = final_state(result.guard) == 'SUCCESS'
    result.kept = result.void or final_state(result.key) == 'SUCCESS'
  end
end

local messages, targets = {}, {}
for _ = 1, next_number() do
  local group = {control = next_arg() == '1', immediate = next_arg() == '1',
                 level = next_number(), park = next_arg(), targets = {}}
  for t = 1, next_number() do
    local target = {name = next_arg(), max_length = tonumber(next_arg()),
                    stats = next_key(), bell = next_key(), stream = next_key(),
                    level = group.level, planned = 0, published = 0, added = 0, delayed = 0}
    if group.immediate then target.consumers = next_key() end
    group.targets[t] = target
    targets[#targets + 1] = target
  end
  for _ = 1, next_number() do
    local data = next_arg()
    local not_before, expires = struct.unpack('>dd', data, 3)
    local m = {data = data, group = group, flags = string.byte(data, 1),
               release = math.floor(not_before * 1000) - ahead_ms,
               expires = math.floor(expires * 1000), task_id = str8(data, 19)}
    if m.expires > 0 then m.result = next_key() end
    if group.park == 'body' then
      m.park = {result = next_key(), ids = {}, headers = {}, chain = {}}
      for i = 1, next_number() do m.park.ids[i], m.park.headers[i] = next_arg(), next_key() end
      for i = 1, next_number() do m.park.chain[i] = {next_arg(), next_key()} end
    end
    m.expired = m.expires > 0 and m.expires <= now
    m.queued = not m.expired and m.release <= now and group.park == ''
    messages[#messages + 1] = m
  end
end

-- Refusals, before a message is written. An immediate message reserves one unit of the
-- credit a live consumer announced; that consumer's next fetch says what it has left.
local reserved = {}
local function check(m)
  local group = m.group
  if group.control then return end
  if #group.targets == 0 then
    if m.flags % 2 == 1 then                            -- mandatory
      local _, _, _, exchange, key = message_fields(m.data)
      refuse(312, 'message to exchange \'' .. exchange .. '\' with routing key \'' .. key ..
             '\' matched no queue')
    end
    return
  end
  if math.floor(m.flags / 2) % 2 == 1 then              -- immediate
    for _, target in ipairs(group.targets) do
      local consumers = redis.call('HGETALL', target.consumers)
      for c = 1, #consumers, 2 do
        local credit, live_until = string.match(consumers[c + 1], '^(%-?%d+) (%d+)$')
        local slot = target.consumers .. '\0' .. consumers[c]
        local left = tonumber(credit) - (reserved[slot] or 0)
        if left > 0 and tonumber(live_until) > now then
          m.reserve = {target.consumers, consumers[c], slot, credit, live_until}
          break
        end
      end
      if m.reserve then break end
    end
    if not m.reserve then
      local names = {}
      for t, target in ipairs(group.targets) do names[t] = '\'' .. target.name .. '\'' end
      refuse(313, 'no consumer of ' .. table.concat(names, ', ') .. ' can take the ' ..
             'message now')
    end
    reserved[m.reserve[3]] = (reserved[m.reserve[3]] or 0) + 1
  end
  if m.queued then
    for _, target in ipairs(group.targets) do
      if target.max_length then
        if not target.ready then
          target.ready = 0
          for _, waiting in ipairs(redis.call('HMGET', target.stats, unpack(WAITING))) do
            target.ready = target.ready + (tonumber(waiting) or 0)
          end
        end
        if target.ready + target.planned >= target.max_length then
          refuse(507, 'queue \'' .. target.name .. '\' is full (max_length ' ..
                 int(target.max_length) .. ')')
        end
      end
      target.planned = target.planned + 1
    end
  end
end

local unroutable, written = 0, 0
local bodies, body = {}, nil         -- chord bodies parked now; the last, for its errbacks
local parked_now = {}
local function write(m)
  local group = m.group
  written = written + 1
  if group.park ~= '' then m.members = {} end
  if m.park then
    -- Sent again (a client's retry, or twice in this call), or run already: held or done,
    -- not parked twice.
    body = m
    m.skip = parked_now[m.task_id] or
             redis.call('HEXISTS', chords.hash, 'l:' .. m.task_id) == 1 or
             final_state(m.park.result) ~= nil
    if m.skip then return end
    parked_now[m.task_id] = true
    m.errbacks = {}
    bodies[#bodies + 1] = m
  elseif group.park == 'errback' then
    if not body or body.skip then return end
    m.members = body.errbacks                 -- its parked copies are the body's errbacks
  end
  if group.control then
    redis.call('XADD', control, 'MAXLEN', '~', '1000', '*', 'm', m.data)
    return
  end
  if #group.targets == 0 then
    unroutable = unroutable + 1                         -- dropped, as AMQP does; counted
    return
  end
  if m.expired then
    store_final(m.result, 'REVOKED', 'expired before it was queued', ttl_ms, now, nil,
                m.task_id, nil, m.data)
    m.skip = true
    return
  end
  if m.reserve then
    local r = m.reserve
    redis.call('HSET', r[1], r[2], int(tonumber(r[4]) - reserved[r[3]]) .. ' ' .. r[5])
  end
  local level = int(group.level)
  for _, target in ipairs(group.targets) do
    target.published = target.published + 1
    if not m.queued then
      -- Delayed: held in Redis until it is due, then promoted to its stream (PROMOTE).
      -- Parked (a chord's body, its errbacks): never due until the chord is decided.
      local serial = int(redis.call('HINCRBY', stats, 'delayed_serial', 1))
      local member = pack(target.name, m.task_id, level, serial)
      local expiry = m.expires > 0 and pack(target.name, m.task_id, level, 'd', serial) or ''
      if m.members then
        m.members[#m.members + 1] = {m = member, s = target.stats, b = target.bell,
                                     st = target.stream, l = level, q = target.name,
                                     t = m.task_id, at = int(m.release), x = expiry,
                                     n = serial}
      end
      redis.call('ZADD', delayed, group.park == '' and m.release or PARKED_AT, member)
      redis.call('HSET', delayed_messages, member, m.data)
      target.delayed = target.delayed + 1
      if expiry ~= '' then redis.call('ZADD', expiring, m.expires, expiry) end
    else
      if target.added == 0 then ensure_stream(target.stream) end
      local id = redis.call('XADD', target.stream, '*', 'm', m.data)
      target.added = target.added + 1
      if m.expires > 0 then
        redis.call('ZADD', expiring, m.expires, pack(target.name, m.task_id, level, 'p', id))
      end
    end
  end
end

-- The counters, once per target; and the bells, which wake the queues' idle consumers
-- (for a delayed message, so that they learn when to look again).
local function finish()
  for _, target in ipairs(targets) do
    if target.published > 0 then
      redis.call('HINCRBY', target.stats, 'published', target.published)
      if target.added > 0 then
        redis.call('HINCRBY', target.stats, READY[target.level], target.added)
      end
      if target.delayed > 0 then redis.call('HINCRBY', target.stats, 'delayed', target.delayed) end
      ring(target.bell)
    end
  end
  if unroutable > 0 then redis.call('HINCRBY', stats, 'unroutable', unroutable) end
end

-- A body parked now: decided at once when its header's results are in already (a failed
-- one fails it), else recorded, with each header task it waits for.
local function park(m)
  local record = {id = m.task_id, result = m.park.result, ids = {}, headers = {},
                  chain = m.park.chain, run = m.members, errbacks = m.errbacks}
  local seen, states = {}, {}
  for i, id in ipairs(m.park.ids) do
    if not seen[id] then
      seen[id] = true
      record.ids[#record.ids + 1] = id
      record.headers[#record.headers + 1] = m.park.headers[i]
      states[#states + 1] = final_state(m.park.headers[i]) or ''
      redis.call('HINCRBY', chords.hash, 'p:' .. id, 1)         -- its result must stay
      redis.call('PERSIST', m.park.headers[i])
    end
  end
  local waiting = {}
  for i, id in ipairs(record.ids) do
    local state = states[i]
    if state ~= '' and state ~= 'SUCCESS' then return chord_decide(record, id, state) end
    if state == '' then waiting[#waiting + 1] = id end
  end
  if #waiting == 0 then return chord_decide(record) end
  redis.call('HSET', chords.hash, 'b:' .. record.id, cjson.encode(record),
             'l:' .. record.id, #waiting)
  for _, id in ipairs(waiting) do
    local field = 'w:' .. id
    local listed = redis.call('HGET', chords.hash, field)
    listed = listed and cjson.decode(listed) or {}
    listed[#listed + 1] = record.id
    redis.call('HSET', chords.hash, field, cjson.encode(listed))
  end
end

local function park_all()
  for _, m in ipairs(bodies) do
    if not m.skip then park(m) end
  end
end

if result and result.void then
  messages = {}
  if result.guard ~= result.key then return 0 end    -- not this worker's task: untouched
end
if mode == 'all' then
  for _, m in ipairs(messages) do check(m) end
end
if record then redis.call('HSET', record.kv, record.key, record.value) end
if result then
  if result.store and not result.kept then
    store_result(result.key, result.state, result.content_type, result.payload, nil, ttl_ms,
                 now, result.failures, result.task_id)
  end
  if not result.running then
    redis.call('HDEL', result.inflight, result.task_id)
    redis.call('HDEL', result.handovers, result.task_id)
    redis.call('HDEL', result.handed, result.task_id)
    redis.call('ZREM', result.orphans, result.task_id)
  end
end
for _, m in ipairs(messages) do
  if mode ~= 'all' then
    local ok, refusal = pcall(check, m)
    if not ok then
      park_all()                -- what was written before the refusal is kept and counted
      finish()
      error(refusal)
    end
  end
  write(m)
end
park_all()
finish()
return written
""")

# -- consuming --------------------------------------------------------------------------------

# Take up to `credit` messages for a consumer from its queues: priority 0 first, within a
# priority the messages given back before the new ones, the queues taking turns (`first`
# rotates). Each queue's counters say which streams have anything waiting, so a fetch reads
# only those, and an idle fetch reads none. Revoked and expired messages are flagged (1, 2) and malformed
# ones (3): the consumer drops them (SETTLE) rather than handing them to its worker.
#
# Returns {now, next due time or '', more ready (1/0), the bells' last ids, entries}, with
# per entry "queue-index level b|p id earlier-deliveries flag", then the message. Returns
# {'GONE'} when the consumer is not registered: a sweeper presumed it dead.
FETCH = _script(r"""
local consumers, cstats, inflight, revoked = next_key(), next_key(), next_key(), next_key()
local delayed, expiring, orphans = next_key(), next_key(), next_key()
local consumer, credit, live_until = next_arg(), next_number(), next_arg()
local first, count = next_number(), next_number()
if redis.call('HEXISTS', consumers, consumer) == 0 then return {'GONE'} end
-- A consumer paused since this FETCH was sent (behind its reader's XREAD) takes nothing.
if redis.call('HEXISTS', cstats, 'paused') == 1 then credit = 0 end
local now = now_ms()
local queues = {}
for q = 1, count do
  local queue = {name = next_arg(), stats = next_key(), consumers = next_key(),
                 bell = next_key(), streams = {b = {}, p = {}}}
  for level = 0, 9 do
    queue.streams.b[level] = next_key()
    queue.streams.p[level] = next_key()
  end
  local counts = redis.call('HMGET', queue.stats, unpack(WAITING))
  queue.waiting = {p = {}, b = {}}
  for level = 0, 9 do
    queue.waiting.p[level] = tonumber(counts[level + 1]) or 0
    queue.waiting.b[level] = tonumber(counts[level + 11]) or 0
  end
  queue.taken = 0
  queues[q] = queue
end
local any_revoked = redis.call('ZCARD', revoked) > 0

local entries, received = {}, {}
local RECEIVED = 'RECEIVED\t' .. consumer
local function expiry_and_task(data)       -- the task's name is not needed here
  if #data < 19 or #data < 19 + string.byte(data, 19) then error('short') end
  return math.floor(struct.unpack('>d', data, 11) * 1000), str8(data, 19)
end
-- The message and its earlier deliveries of an entry, and whether minitask wrote it: it
-- writes m [n] (read without a table of fields); another program's entry may have other
-- fields, in any order.
local function message_of(fields)
  if fields[1] == 'm' and (fields[3] == nil or (fields[3] == 'n' and fields[5] == nil)) then
    local before = tonumber(fields[4] or '0')
    if before then return fields[2], before, true end
  end
  local data, before = '', 0
  for i = 1, #fields - 1, 2 do
    if fields[i] == 'm' then data = fields[i + 1]
    elseif fields[i] == 'n' then before = tonumber(fields[i + 1]) or 0 end
  end
  return data, before, false
end
-- Deliver an entry. Returns whether a queue counter counted it: minitask wrote it, and it is
-- a message (a malformed one is flagged, and dropped by the consumer).
local function deliver(q, level, kind, entry)
  local data, before, ours = message_of(entry[2])
  local flag = 0
  local ok, expires, task_id = pcall(expiry_and_task, data)
  if not ok then
    flag = 3
  elseif any_revoked and task_id ~= '' and
      tonumber(redis.call('ZSCORE', revoked, task_id) or '0') > now then
    flag = 1
  elseif expires > 0 and expires <= now then
    flag = 2
  elseif task_id ~= '' then
    received[#received + 1] = task_id
    received[#received + 1] = RECEIVED
  end
  -- Two values an entry: the reply of a fetch of hundreds is cut up quickly.
  entries[#entries + 1] = q .. ' ' .. level .. ' ' .. kind .. ' ' .. entry[1] .. ' ' ..
                          int(before) .. ' ' .. flag
  entries[#entries + 1] = data
  return ours and flag ~= 3
end

-- XREADGROUP; a stream another program created (an XADD before minitask's first) has no
-- group, which is made then, from its start, so that nothing already in it is passed over.
local function read_group(stream, consumer, count)
  local reply = redis.pcall('XREADGROUP', 'GROUP', GROUP, consumer, 'COUNT', count,
                            'STREAMS', stream, '>')
  if type(reply) == 'table' and reply.err and string.find(reply.err, 'NOGROUP', 1, true)
      and redis.call('EXISTS', stream) == 1 then
    redis.call('XGROUP', 'CREATE', stream, GROUP, '0')
    reply = redis.pcall('XREADGROUP', 'GROUP', GROUP, consumer, 'COUNT', count,
                        'STREAMS', stream, '>')
  end
  return reply
end

local COUNTERS = {b = BACK, p = READY}
for level = 0, 9 do
  for j = 0, count - 1 do
    if credit <= 0 then break end
    local q = (first + j) % count + 1
    local queue = queues[q]
    for _, kind in ipairs({'b', 'p'}) do
      local waiting = queue.waiting[kind][level]
      if credit > 0 and waiting > 0 then
        -- The counter counts minitask's messages: an entry another program wrote (run, or
        -- dropped as malformed) takes no counted place, so the read goes on past it.
        local want, counted, read, empty = math.min(credit, waiting), 0, 0, false
        for _ = 1, 4 do
          local asked, got = math.min(want - counted, credit - read), 0
          if asked <= 0 then break end
          local reply = read_group(queue.streams[kind][level], consumer, asked)
          if type(reply) == 'table' and reply[1] then
            for _, entry in ipairs(reply[1][2]) do
              got = got + 1
              if deliver(q, level, kind, entry) then counted = counted + 1 end
            end
          end
          read = read + got
          -- Fewer than asked: the stream is empty, whatever the counter said.
          if got < asked then empty = true break end
          if counted >= want then break end
        end
        queue.waiting[kind][level] = empty and 0 or math.max(0, waiting - counted)
        redis.call('HSET', queue.stats, COUNTERS[kind][level],
                   int(queue.waiting[kind][level]))
        queue.taken = queue.taken + read
        credit = credit - read
      end
    end
  end
end
call_many('HSET', inflight, received)

local more, bells = 0, {}
for q, queue in ipairs(queues) do
  if queue.taken > 0 then
    redis.call('HINCRBY', queue.stats, 'delivered', queue.taken)
    redis.call('HINCRBY', queue.stats, 'unacked', queue.taken)
  end
  for level = 0, 9 do
    if queue.waiting.p[level] + queue.waiting.b[level] > 0 then more = 1 end
  end
  redis.call('HSET', queue.consumers, consumer, int(credit) .. ' ' .. live_until)
  local last = redis.call('XREVRANGE', queue.bell, '+', '-', 'COUNT', 1)[1]
  bells[q] = last and last[1] or '0-0'
end
local taken = #entries / 2
if taken > 0 then
  redis.call('HINCRBY', cstats, 'unacked', int(taken))
  redis.call('HINCRBY', cstats, 'delivered', int(taken))
end

local next_due = nil
for _, schedule in ipairs({delayed, expiring, orphans}) do
  local head = redis.call('ZRANGE', schedule, 0, 0, 'WITHSCORES')
  if head[2] and (not next_due or tonumber(head[2]) < next_due) then
    next_due = tonumber(head[2])
  end
end
return {int(now), next_due and int(next_due) or '', more, bells, entries}
""")

# A consumer's turn: acks, per stream ('acks'; with `handover`, of tasks that start now and
# are handed over to the consumer: if it is lost, they fail with WorkerLostError), starts
# of tasks acked late ('start'), and entries given back ('back', see give_back). Also used
# by sweepers to give back the entries of consumers that are gone. Returns the tasks dead-lettered, each as
# {task id, queue, dead-letter queue}, for the caller to log.
SETTLE = _script(r"""
local globals = new_globals({topology = next_key(), queues = next_key(),
                             inflight = next_key(), handovers = next_key(),
                             orphans = next_key(), failures = next_key(),
                             handed_messages = next_key(), owner_stats = {}})
globals.ttl_ms, globals.now = next_number(), now_ms()
read_chord_keys(globals.ttl_ms, globals.now)
local dead_lettered, done, handed, kept_messages = {}, {}, {}, {}
for _ = 1, next_number() do
  local op = next_arg()
  if op == 'back' then
    local dead = give_back(globals)
    if dead then dead_lettered[#dead_lettered + 1] = dead end
  elseif op == 'start' then
    local stream, id, owner, task_id, name = next_key(), next_arg(), next_arg(), next_arg(),
                                             next_arg()
    if task_id ~= '' and pending_owner(stream, id, 0) == owner then
      redis.call('HSET', globals.inflight, task_id, 'STARTED\t' .. owner .. '\t' .. name)
    end
  else                                                 -- 'acks' of one stream
    local stream, stats, owner_stats = next_key(), next_key(), next_key()
    local queue, owner, handover = next_arg(), next_arg(), next_arg() == '1'
    local ids, task_ids, names, messages = {}, {}, {}, {}
    for i = 1, next_number() do
      ids[i], task_ids[i] = next_arg(), next_arg()
      if handover then names[i], messages[i] = next_arg(), next_arg() end
    end
    local kept = ids
    if call_many('XACK', stream, ids, GROUP) < #ids then
      -- Some were given back meanwhile (a sweeper took this consumer for dead), and deleted
      -- then: only the entries still there were this consumer's to ack.
      kept = {}
      for i, id in ipairs(ids) do
        if redis.call('XRANGE', stream, id, id)[1] then kept[#kept + 1] = id else
          task_ids[i] = '' end
      end
    end
    if handover then
      -- A message with a workflow (sent along only then) is kept while its task runs: if
      -- its worker is lost, LOSE hands it to the given-up stream, whose sender runs its
      -- errbacks (redis_givenup).
      for i = 1, #ids do
        if task_ids[i] ~= '' and messages[i] ~= '' then
          kept_messages[#kept_messages + 1] = task_ids[i]
          kept_messages[#kept_messages + 1] = messages[i]
        end
      end
    end
    call_many('XDEL', stream, kept)
    for i, task_id in ipairs(task_ids) do
      if task_id ~= '' then
        if handover then
          handed[#handed + 1] = task_id
          handed[#handed + 1] = owner .. '\t' .. names[i]
        end
        done[#done + 1] = task_id
      end
    end
    globals.owner_stats[owner_stats] = true
    count(globals, owner_stats, 'unacked', -#kept)
    if queue_exists(globals, queue) then
      count(globals, stats, 'unacked', -#kept)
      count(globals, stats, 'acked', #kept)
    end
  end
end
-- What the acks change, a command per kind rather than per ack.
call_many('HDEL', globals.inflight, done)
if #handed > 0 then
  call_many('HSET', globals.handovers, handed)
  call_many('HSET', globals.handed_messages, kept_messages)
  local handed_ids = {}
  for i = 1, #handed, 2 do handed_ids[#handed_ids + 1] = handed[i] end
  call_many('ZREM', globals.orphans, handed_ids)
end
apply_counts(globals)
return dead_lettered
""")

# -- liveness ---------------------------------------------------------------------------------

# A consumer is gone (it closed, or a sweeper found its heartbeat expired): forget it, and
# orphan the tasks handed over to it, which fail with WorkerLostError at `grace_ms` from now
# unless a worker claims them first (LOSE, CLAIM). Its entries must have been given back
# already (SETTLE); it leaves the consumer groups of the streams where it holds none.
RETIRE = _script(r"""
local consumers, heartbeat, cstats, wake = next_key(), next_key(), next_key(), next_key()
local handovers, orphans = next_key(), next_key()
local consumer, grace_ms = next_arg(), next_number()
local now = now_ms()
redis.call('HDEL', consumers, consumer)
redis.call('DEL', heartbeat, cstats, wake)
for _ = 1, next_number() do redis.call('HDEL', next_key(), consumer) end   -- qconsumers
local orphaned = 0
for _ = 1, next_number() do
  local task_id = next_arg()
  local value = redis.call('HGET', handovers, task_id)
  if value and string.match(value, '^([^\t]*)') == consumer then
    redis.call('HSET', handovers, task_id, string.sub(value, #consumer + 1))
    redis.call('ZADD', orphans, now + grace_ms, task_id)
    orphaned = orphaned + 1
  end
end
for i = key_index + 1, #KEYS do
  local pending = redis.pcall('XPENDING', KEYS[i], GROUP, '-', '+', 1, consumer)
  if type(pending) == 'table' and not pending.err and not pending[1] then
    redis.pcall('XGROUP', 'DELCONSUMER', KEYS[i], GROUP, consumer)
  end
end
return orphaned
""")

# A consumer arrives: its description for status and sweepers, its first heartbeat, its
# counters from zero, its wake stream empty.
REGISTER = _script(r"""
local consumers, heartbeat, cstats, wake = next_key(), next_key(), next_key(), next_key()
local consumer, description, ttl_ms, prefetch = next_arg(), next_arg(), next_arg(), next_arg()
redis.call('HSET', consumers, consumer, description)
redis.call('SET', heartbeat, '1', 'PX', ttl_ms)
redis.call('DEL', cstats, wake)
redis.call('HSET', cstats, 'prefetch', prefetch, 'unacked', 0, 'delivered', 0)
return 1
""")

# A live consumer's renewal, every few seconds: its heartbeat, its credit in its queues, and
# the lease on every entry it holds (XCLAIM to itself with JUSTID resets the entry's idle
# time and leaves its delivery count alone), so the backstop never takes what it still
# works on however long that takes. {'GONE'} when a sweeper already presumed it dead.
RENEW = _script(r"""
local consumers, heartbeat, cstats = next_key(), next_key(), next_key()
local consumer, ttl_ms, credit, live_until = next_arg(), next_arg(), next_arg(), next_arg()
local prefetch, description = next_arg(), next_arg()
if redis.call('HEXISTS', consumers, consumer) == 0 then return {'GONE'} end
redis.call('SET', heartbeat, '1', 'PX', ttl_ms)
redis.call('HSET', cstats, 'prefetch', prefetch)
if description ~= '' then redis.call('HSET', consumers, consumer, description) end
for _ = 1, next_number() do
  redis.call('HSET', next_key(), consumer, credit .. ' ' .. live_until)
end
for _ = 1, next_number() do
  local stream, command = next_key(), {'XCLAIM', '', GROUP, consumer, 0}
  command[2] = stream
  for _ = 1, next_number() do command[#command + 1] = next_arg() end
  command[#command + 1] = 'JUSTID'
  redis.call(unpack(command))
end
return {'OK'}
""")

# -- time -------------------------------------------------------------------------------------

# What is due now (read only): delayed messages to promote, messages that expire, orphans
# that fail; and when the next thing is due ('' when nothing is).
DUE = _script(r"""
local delayed, expiring, orphans = next_key(), next_key(), next_key()
local limit = next_arg()
local now = now_ms()
local due, next_due = {}, nil
for i, schedule in ipairs({delayed, expiring, orphans}) do
  due[i] = redis.call('ZRANGEBYSCORE', schedule, '-inf', now, 'LIMIT', 0, limit)
  local head = redis.call('ZRANGE', schedule, 0, 0, 'WITHSCORES')
  if head[2] and (not next_due or tonumber(head[2]) < next_due) then
    next_due = tonumber(head[2])
  end
end
return {int(now), due[1], due[2], due[3], next_due and int(next_due) or ''}
""")

# Delayed messages that are due move to their streams. Per member, ARGV: member, queue, task
# id, level, serial; KEYS: the queue's stats, bell and stream of that level.
PROMOTE = _script(r"""
local queues, delayed, delayed_messages, expiring = next_key(), next_key(), next_key(),
                                                    next_key()
local now = now_ms()
local promoted = 0
for _ = 1, next_number() do
  local stats, bell, stream = next_key(), next_key(), next_key()
  local member, queue, task_id, level, serial = next_arg(), next_arg(), next_arg(),
                                                next_arg(), next_arg()
  local due = redis.call('ZSCORE', delayed, member)
  if due and tonumber(due) <= now then
    local data = redis.call('HGET', delayed_messages, member)
    redis.call('ZREM', delayed, member)
    redis.call('HDEL', delayed_messages, member)
    local expiry_member = pack(queue, task_id, level, 'd', serial)
    local expires = redis.call('ZSCORE', expiring, expiry_member)
    if expires then redis.call('ZREM', expiring, expiry_member) end
    if data and queue_exists(queues, queue) then              -- else: deleted meanwhile
      if counted(stats, serial) then redis.call('HINCRBY', stats, 'delayed', -1) end
      ensure_stream(stream)
      local id = redis.call('XADD', stream, '*', 'm', data)
      redis.call('HINCRBY', stats, READY[tonumber(level)], 1)
      ring(bell)
      if expires then
        redis.call('ZADD', expiring, expires, pack(queue, task_id, level, 'p', id))
      end
      promoted = promoted + 1
    end
  end
end
return promoted
""")

# Messages whose time is up before they were delivered: removed, their tasks REVOKED. One
# already delivered is left to its worker, which checks the expiry itself. Per member, ARGV:
# member, queue, task id, level, kind ('p' in a stream, 'd' delayed), entry id or serial;
# KEYS: the stream of that level, the queue's stats, the task's result.
EXPIRE = _script(r"""
local queues, delayed, delayed_messages, expiring = next_key(), next_key(), next_key(),
                                                    next_key()
local failures, ttl_ms = next_key(), next_number()
local now = now_ms()
read_chord_keys(ttl_ms, now)
local expired = 0
for _ = 1, next_number() do
  local stream, stats, result = next_key(), next_key(), next_key()
  local member, queue, task_id, level, kind, ref = next_arg(), next_arg(), next_arg(),
                                                   next_arg(), next_arg(), next_arg()
  local due = redis.call('ZSCORE', expiring, member)
  if due and tonumber(due) <= now then
    redis.call('ZREM', expiring, member)
    local waiting, data = false, nil
    if kind == 'd' then
      local delayed_member = pack(queue, task_id, level, ref)
      data = redis.call('HGET', delayed_messages, delayed_member)
      if redis.call('ZREM', delayed, delayed_member) == 1 then
        redis.call('HDEL', delayed_messages, delayed_member)
        if queue_exists(queues, queue) and counted(stats, ref) then
          redis.call('HINCRBY', stats, 'delayed', -1)
        end
        waiting = true
      end
    elseif not pending_owner(stream, ref, 0) then
      local entry = redis.call('XRANGE', stream, ref, ref)[1]
      if entry and redis.call('XDEL', stream, ref) == 1 then
        if queue_exists(queues, queue) then
          redis.call('HINCRBY', stats, READY[tonumber(level)], -1)
        end
        data, waiting = fields_of(entry[2])['m'], true
      end
    end
    if waiting then
      store_final(result, 'REVOKED', 'expired', ttl_ms, now, failures, task_id, nil,
                  data or nil)
      expired = expired + 1
    end
  end
end
return expired
""")

# Orphaned tasks whose grace period is over fail with WorkerLostError. Per task, ARGV: its
# id; KEYS: its result.
LOSE = _script(r"""
local orphans, handovers, inflight, failures = next_key(), next_key(), next_key(), next_key()
local handed = next_key()
local ttl_ms, why = next_number(), next_arg()
local now = now_ms()
read_chord_keys(ttl_ms, now)
local lost = {}
for _ = 1, next_number() do
  local result, task_id = next_key(), next_arg()
  local due = redis.call('ZSCORE', orphans, task_id)
  if due and tonumber(due) <= now then
    redis.call('ZREM', orphans, task_id)
    redis.call('HDEL', handovers, task_id)
    redis.call('HDEL', inflight, task_id)
    -- Its message, kept at the handover when it has a workflow: to the given-up stream.
    local data = redis.call('HGET', handed, task_id)
    redis.call('HDEL', handed, task_id)
    if store_final(result, 'FAILURE', why, ttl_ms, now, failures, task_id, nil,
                   data or nil) then
      lost[#lost + 1] = task_id
    end
  end
end
return lost
""")

# A worker back after losing its connection names the handed-over tasks it still runs: they
# are its own again (and no longer fail when their grace period ends).
CLAIM = _script(r"""
local handovers, orphans = next_key(), next_key()
local consumer = next_arg()
local claimed = 0
for _ = 1, next_number() do
  local task_id = next_arg()
  local value = redis.call('HGET', handovers, task_id)
  if value then
    local name = string.match(value, '\t(.*)$') or ''
    redis.call('HSET', handovers, task_id, consumer .. '\t' .. name)
    redis.call('ZREM', orphans, task_id)
    claimed = claimed + 1
  end
end
return claimed
""")

# -- revocations, queues, leases --------------------------------------------------------------

# Revoke tasks: remembered until their results would expire, REVOKED stored for those not
# delivered yet (a delivered one is left to its worker, told through the control stream).
# Per task, ARGV: its id; KEYS: its result.
REVOKE = _script(r"""
local revoked, control, inflight, handovers, failures = next_key(), next_key(), next_key(),
                                                         next_key(), next_key()
local ttl_ms, command = next_number(), next_arg()
local now = now_ms()
read_chord_keys(ttl_ms, now)
redis.call('ZREMRANGEBYSCORE', revoked, '-inf', now)
for _ = 1, next_number() do
  local result, task_id = next_key(), next_arg()
  redis.call('ZADD', revoked, now + ttl_ms, task_id)
  if redis.call('HEXISTS', inflight, task_id) == 0 and
      redis.call('HEXISTS', handovers, task_id) == 0 then
    store_final(result, 'REVOKED', 'revoked', ttl_ms, now, failures, task_id)
  end
end
redis.call('XADD', control, 'MAXLEN', '~', '1000', '*', 'm', command)
return 1
""")

# Drop every message of a queue that waits (not those being worked on); returns how many.
PURGE = _script(r"""
local queues, stats = next_key(), next_key()
local queue, client = next_arg(), next_arg()
local definition = redis.call('HGET', queues, queue)
if not definition then refuse(404, 'no queue \'' .. queue .. '\'') end
local owner = cjson.decode(definition)['owner']
if owner and owner ~= cjson.null and owner ~= client then
  refuse(409, 'queue \'' .. queue .. '\' is exclusive to another connection')
end
local purged = 0
for i = key_index + 1, #KEYS do
  if redis.call('EXISTS', KEYS[i]) == 1 then
    while true do
      local reply = redis.pcall('XREADGROUP', 'GROUP', GROUP, 'mt.purge', 'COUNT', 1000,
                                'STREAMS', KEYS[i], '>')
      if type(reply) ~= 'table' or not reply[1] or #reply[1][2] == 0 then break end
      for _, entry in ipairs(reply[1][2]) do
        redis.call('XACK', KEYS[i], GROUP, entry[1])
        redis.call('XDEL', KEYS[i], entry[1])
        purged = purged + 1
      end
    end
    redis.pcall('XGROUP', 'DELCONSUMER', KEYS[i], GROUP, 'mt.purge')
  end
end
for level = 0, 9 do redis.call('HSET', stats, READY[level], 0, BACK[level], 0) end
return purged
""")

# Take or renew a lease: granted when free, expired, or already the holder's.
LEASE = _script(r"""
local lease = next_key()
local holder, ttl_ms = next_arg(), next_arg()
local current = redis.call('GET', lease)
if not current or current == holder then
  redis.call('SET', lease, holder, 'PX', ttl_ms)
  current = holder
end
return {current, redis.call('PTTL', lease)}
""")

# Delete a lock only while it is still the caller's (it may have expired and been taken).
UNLOCK = _script(r"""
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
""")

SCRIPTS = [SNAPSHOT, COMMIT, PUBLISH, FETCH, SETTLE, RETIRE, REGISTER, RENEW, DUE, PROMOTE,
           EXPIRE, LOSE, CLAIM, REVOKE, PURGE, LEASE, UNLOCK]
