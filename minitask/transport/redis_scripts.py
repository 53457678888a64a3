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
local READY, READY_FIELDS = {}, {}       -- READY[level], and the ten as a list for HMGET
for level = 0, 9 do READY[level] = 'ready' .. level; READY_FIELDS[level + 1] = READY[level] end
local FINAL = {SUCCESS = true, FAILURE = true, REVOKED = true}

-- Lua numbers are doubles: integers are written with %d, never tostring() (1.7e+12).
local function int(n) return string.format('%d', n) end

-- Redis's clock, in milliseconds: the one clock every worker and client agrees on.
local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end

local function refuse(code, text) error({err = 'MT' .. code .. ' ' .. text}) end

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

-- Idle consumers block in XREAD on their queues' bells; one entry wakes them all.
local function ring(bell) redis.call('XADD', bell, 'MAXLEN', '1', '*', 'r', '1') end

local function queue_exists(queues, name) return redis.call('HEXISTS', queues, name) == 1 end

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

-- `why` marks a result the transport wrote itself (REVOKED, WorkerLostError): readers build
-- its meta from the state and this text.
local function store_result(result, state, content_type, payload, why, ttl_ms, now, failures,
                            task_id)
  if why then
    redis.call('XADD', result, 'MAXLEN', '1', '*', 's', state, 't', int(now), 'c', '',
               'p', '', 'w', why)
  else
    redis.call('XADD', result, 'MAXLEN', '1', '*', 's', state, 't', int(now),
               'c', content_type, 'p', payload)
  end
  redis.call('PEXPIRE', result, ttl_ms)
  if state == 'FAILURE' then
    redis.call('LPUSH', failures, int(now) .. ' ' .. task_id)
    redis.call('LTRIM', failures, 0, 49)
  end
end

-- A task that will never run (expired, revoked) is REVOKED, unless it has a final state.
local function store_final(result, state, why, ttl_ms, now, failures, task_id)
  if task_id ~= '' and not final_state(result) then
    store_result(result, state, '', '', why, ttl_ms, now, failures, task_id)
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
-- 'requeue') or when the caller says so (mode 'dead'); mode 'drop' keeps no copy, and stores
-- a REVOKED result when `why` is given. Then the original is acked and deleted.
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
  local entry = redis.call('XRANGE', stream, id, id)[1]
  local fields = entry and fields_of(entry[2]) or {}
  if task_id == '' and fields['m'] then       -- a sweeper names entries by id alone
    local ok, found = pcall(message_fields, fields['m'])
    if ok then task_id = found end
  end
  redis.call('XACK', stream, GROUP, id)
  redis.call('XDEL', stream, id)
  if redis.call('EXISTS', owner_stats) == 1 then     -- not for a consumer retired already
    redis.call('HINCRBY', owner_stats, 'unacked', -1)
  end
  clear_inflight(globals.inflight, task_id, owner)
  local exists = queue_exists(globals.queues, queue)
  if exists then redis.call('HINCRBY', stats, 'unacked', -1) end
  if mode == 'drop' then
    if why ~= '' then
      store_final(result, 'REVOKED', why, globals.ttl_ms, globals.now, globals.failures,
                  task_id)
    end
    return nil
  end
  if not entry or not exists then return nil end       -- nothing to copy, or nowhere to
  local deliveries = (tonumber(fields['n']) or 0) + 1
  if mode == 'dead' or (max_redeliveries and deliveries > max_redeliveries) then
    if not queue_exists(globals.queues, dead_name) then
      redis.call('HSET', globals.queues, dead_name, dead_definition)
      redis.call('INCR', globals.topology)
    end
    ensure_stream(dead)
    redis.call('XADD', dead, '*', 'm', fields['m'], 'n', int(deliveries))
    redis.call('HINCRBY', dead_stats, READY[level], 1)
    redis.call('HINCRBY', stats, 'dead_lettered', 1)
    ring(dead_bell)
    return {task_id, queue, dead_name}
  end
  ensure_stream(back)
  redis.call('XADD', back, '*', 'm', fields['m'], 'n', int(deliveries))
  redis.call('HINCRBY', stats, READY[level], 1)
  ring(bell)
  return nil
end
"""


def _script(body):
    return Script(PRELUDE + body)


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
local expected, changes = next_arg(), next_number()
if (redis.call('GET', topology) or '0') ~= expected then return redis.error_reply('STALE the topology changed') end
for _ = 1, changes do
  local hash, op, field, value = hashes[next_arg()], next_arg(), next_arg(), next_arg()
  if op == 'set' then redis.call('HSET', hash, field, value) else redis.call('HDEL', hash, field) end
end
for i = key_index + 1, #KEYS do redis.call('DEL', KEYS[i]) end
if changes > 0 then return redis.call('INCR', topology) end
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
# Per message, ARGV: data, task id, priority level, release time in ms (0: now), expiry in
# ms (0: never), immediate, mandatory, control, targets, then per target its queue name and
# max_length ('' none); KEYS: its result, then per target the queue's stats, consumers,
# bell and the stream of its priority.
PUBLISH = _script(r"""
local topology, stats, delayed, delayed_messages = next_key(), next_key(), next_key(),
                                                   next_key()
local expiring, control, kv = next_key(), next_key(), next_key()
local inflight, handovers, orphans, failures = next_key(), next_key(), next_key(), next_key()
local expected, ttl_ms, mode = next_arg(), next_number(), next_arg()
if (redis.call('GET', topology) or '0') ~= expected then return redis.error_reply('STALE the topology changed') end
local now = now_ms()

local record_key, record_value = next_arg(), next_arg()
local result = nil
if next_arg() == '1' then
  result = {key = next_key(), task_id = next_arg(), state = next_arg(),
            content_type = next_arg(), payload = next_arg(), store = next_arg() == '1'}
end

local messages = {}
for i = 1, next_number() do
  local m = {result = next_key(), data = next_arg(), task_id = next_arg(),
             level = next_number(), release = next_number(), expires = next_number(),
             immediate = next_arg() == '1', mandatory = next_arg() == '1',
             control = next_arg() == '1', targets = {}}
  for t = 1, next_number() do
    m.targets[t] = {name = next_arg(), max_length = tonumber(next_arg()), stats = next_key(),
                    consumers = next_key(), bell = next_key(), stream = next_key()}
  end
  messages[i] = m
end

-- Refusals, before anything is written. An immediate message reserves one unit of credit
-- a live consumer announced; that consumer's next fetch says what it really has left.
local function check(m)
  if m.control then return end
  if #m.targets == 0 and m.mandatory then
    local _, _, _, exchange, key = message_fields(m.data)
    refuse(312, 'message to exchange \'' .. exchange .. '\' with routing key \'' .. key ..
           '\' matched no queue')
  end
  if m.immediate and #m.targets > 0 then
    for _, target in ipairs(m.targets) do
      local consumers = redis.call('HGETALL', target.consumers)
      for c = 1, #consumers, 2 do
        local credit, live_until = string.match(consumers[c + 1], '^(%-?%d+) (%d+)$')
        if tonumber(credit) > 0 and tonumber(live_until) > now then
          m.reserve = {target.consumers, consumers[c], tonumber(credit) - 1, live_until}
          break
        end
      end
      if m.reserve then break end
    end
    if not m.reserve then
      local names = {}
      for t, target in ipairs(m.targets) do names[t] = '\'' .. target.name .. '\'' end
      refuse(313, 'no consumer of ' .. table.concat(names, ', ') .. ' can take the ' ..
             'message now')
    end
  end
  for _, target in ipairs(m.targets) do
    if target.max_length then
      local ready = 0
      for _, count in ipairs(redis.call('HMGET', target.stats, unpack(READY_FIELDS))) do
        ready = ready + (tonumber(count) or 0)
      end
      if ready >= target.max_length then
        refuse(507, 'queue \'' .. target.name .. '\' is full (max_length ' ..
               int(target.max_length) .. ')')
      end
    end
  end
end

local bells = {}
local function write(m)
  if m.control then
    redis.call('XADD', control, 'MAXLEN', '~', '1000', '*', 'm', m.data)
    return
  end
  if #m.targets == 0 then
    redis.call('HINCRBY', stats, 'unroutable', 1)      -- dropped, as AMQP does; counted
    return
  end
  if m.expires > 0 and m.expires <= now then
    store_final(m.result, 'REVOKED', 'expired before it was queued', ttl_ms, now, failures,
                m.task_id)
    return
  end
  if m.reserve then
    redis.call('HSET', m.reserve[1], m.reserve[2], int(m.reserve[3]) .. ' ' .. m.reserve[4])
  end
  for _, target in ipairs(m.targets) do
    redis.call('HINCRBY', target.stats, 'published', 1)
    if m.release > now then
      -- Delayed: held in Redis until it is due, then promoted to its stream (PROMOTE).
      local serial = int(redis.call('HINCRBY', stats, 'delayed_serial', 1))
      local member = pack(target.name, m.task_id, int(m.level), serial)
      redis.call('ZADD', delayed, m.release, member)
      redis.call('HSET', delayed_messages, member, m.data)
      redis.call('HINCRBY', target.stats, 'delayed', 1)
      bells[target.bell] = true         -- its consumers learn when to wake up for it
      if m.expires > 0 then
        redis.call('ZADD', expiring, m.expires,
                   pack(target.name, m.task_id, int(m.level), 'd', serial))
      end
    else
      ensure_stream(target.stream)
      local id = redis.call('XADD', target.stream, '*', 'm', m.data)
      redis.call('HINCRBY', target.stats, READY[m.level], 1)
      bells[target.bell] = true
      if m.expires > 0 then
        redis.call('ZADD', expiring, m.expires,
                   pack(target.name, m.task_id, int(m.level), 'p', id))
      end
    end
  end
end

if mode == 'all' then
  for _, m in ipairs(messages) do check(m) end
end
if record_key ~= '' then redis.call('HSET', kv, record_key, record_value) end
if result then
  if result.store then
    store_result(result.key, result.state, result.content_type, result.payload, nil, ttl_ms,
                 now, failures, result.task_id)
  end
  redis.call('HDEL', inflight, result.task_id)
  redis.call('HDEL', handovers, result.task_id)
  redis.call('ZREM', orphans, result.task_id)
end
for _, m in ipairs(messages) do
  if mode ~= 'all' then check(m) end
  write(m)
end
for bell in pairs(bells) do ring(bell) end
return #messages
""")

# -- consuming --------------------------------------------------------------------------------

# Take up to `credit` messages for a consumer from its queues: priority 0 first, within a
# priority the messages given back before the new ones, the queues taking turns (`first`
# rotates). Each queue's ready counters say which streams have anything, so an idle fetch
# reads no stream at all. Revoked and expired messages are flagged (1, 2) and malformed
# ones (3): the consumer drops them (SETTLE) rather than handing them to its worker.
#
# Returns {now, next due time or '', more ready (1/0), the bells' last ids, entries}, with
# per entry: queue index, level, 'b'|'p', id, message, earlier deliveries, flag. Returns
# {'GONE'} when the consumer is not registered: a sweeper presumed it dead.
FETCH = _script(r"""
local consumers, cstats, inflight, revoked = next_key(), next_key(), next_key(), next_key()
local delayed, expiring, orphans = next_key(), next_key(), next_key()
local consumer, credit, live_until = next_arg(), next_number(), next_arg()
local first, count = next_number(), next_number()
if redis.call('HEXISTS', consumers, consumer) == 0 then return {'GONE'} end
local now = now_ms()
local queues = {}
for q = 1, count do
  local queue = {name = next_arg(), stats = next_key(), consumers = next_key(),
                 bell = next_key(), streams = {b = {}, p = {}}}
  for level = 0, 9 do
    queue.streams.b[level] = next_key()
    queue.streams.p[level] = next_key()
  end
  local counts = redis.call('HMGET', queue.stats, unpack(READY_FIELDS))
  queue.ready = {}
  for level = 0, 9 do queue.ready[level] = tonumber(counts[level + 1]) or 0 end
  queue.taken = 0
  queues[q] = queue
end
local any_revoked = redis.call('ZCARD', revoked) > 0

local entries = {}
local function deliver(q, level, kind, entry)
  local fields = fields_of(entry[2])
  local data = fields['m'] or ''
  local flag = 0
  local ok, task_id, name, expires = pcall(message_fields, data)
  if not ok then
    flag = 3
  elseif any_revoked and task_id ~= '' and
      tonumber(redis.call('ZSCORE', revoked, task_id) or '0') > now then
    flag = 1
  elseif expires > 0 and expires <= now then
    flag = 2
  elseif task_id ~= '' then
    redis.call('HSET', inflight, task_id, 'RECEIVED\t' .. consumer .. '\t' .. name)
  end
  for _, value in ipairs({q, level, kind, entry[1], data, fields['n'] or '0', flag}) do
    entries[#entries + 1] = value
  end
end

for level = 0, 9 do
  for j = 0, count - 1 do
    if credit <= 0 then break end
    local q = (first + j) % count + 1
    local queue = queues[q]
    local ready = queue.ready[level]
    if ready > 0 then
      local want, got = math.min(credit, ready), 0
      for _, kind in ipairs({'b', 'p'}) do
        if got < want then
          local reply = redis.pcall('XREADGROUP', 'GROUP', GROUP, consumer, 'COUNT',
                                    want - got, 'STREAMS', queue.streams[kind][level], '>')
          if type(reply) == 'table' and reply[1] then
            for _, entry in ipairs(reply[1][2]) do
              got = got + 1
              deliver(q, level, kind, entry)
            end
          end
        end
      end
      -- Fewer than the counter promised: both streams are empty, whatever it said.
      queue.ready[level] = (got < want) and 0 or (ready - got)
      redis.call('HSET', queue.stats, READY[level], int(queue.ready[level]))
      queue.taken = queue.taken + got
      credit = credit - got
    end
  end
end

local more, bells = 0, {}
for q, queue in ipairs(queues) do
  if queue.taken > 0 then
    redis.call('HINCRBY', queue.stats, 'delivered', queue.taken)
    redis.call('HINCRBY', queue.stats, 'unacked', queue.taken)
  end
  for level = 0, 9 do
    if queue.ready[level] > 0 then more = 1 end
  end
  redis.call('HSET', queue.consumers, consumer, int(credit) .. ' ' .. live_until)
  local last = redis.call('XREVRANGE', queue.bell, '+', '-', 'COUNT', 1)[1]
  bells[q] = last and last[1] or '0-0'
end
local taken = #entries / 7
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

# A consumer's turn: acks ('ack'), acks of tasks that start now and are handed over to it
# ('handover': if it is lost, they fail with WorkerLostError), starts of tasks acked late
# ('start'), and entries given back ('back', see give_back). Also used by sweepers to give
# back the entries of consumers that are gone. Returns the tasks dead-lettered, each as
# {task id, queue, dead-letter queue}, for the caller to log.
SETTLE = _script(r"""
local globals = {topology = next_key(), queues = next_key(), inflight = next_key(),
                 handovers = next_key(), orphans = next_key(), failures = next_key()}
globals.ttl_ms, globals.now = next_number(), now_ms()
local dead_lettered = {}
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
  else                                                 -- 'ack' or 'handover'
    local stream, stats, owner_stats = next_key(), next_key(), next_key()
    local queue, id, owner, task_id, name = next_arg(), next_arg(), next_arg(), next_arg(),
                                            next_arg()
    if redis.call('XACK', stream, GROUP, id) == 1 then
      redis.call('XDEL', stream, id)
      redis.call('HINCRBY', owner_stats, 'unacked', -1)
      if queue_exists(globals.queues, queue) then
        redis.call('HINCRBY', stats, 'unacked', -1)
        redis.call('HINCRBY', stats, 'acked', 1)
      end
      clear_inflight(globals.inflight, task_id, owner)
      if op == 'handover' and task_id ~= '' then
        redis.call('HSET', globals.handovers, task_id, owner .. '\t' .. name)
        redis.call('ZREM', globals.orphans, task_id)
      end
    end
  end
end
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
      redis.call('HINCRBY', stats, 'delayed', -1)
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
local expired = 0
for _ = 1, next_number() do
  local stream, stats, result = next_key(), next_key(), next_key()
  local member, queue, task_id, level, kind, ref = next_arg(), next_arg(), next_arg(),
                                                   next_arg(), next_arg(), next_arg()
  local due = redis.call('ZSCORE', expiring, member)
  if due and tonumber(due) <= now then
    redis.call('ZREM', expiring, member)
    local waiting = false
    if kind == 'd' then
      local delayed_member = pack(queue, task_id, level, ref)
      if redis.call('ZREM', delayed, delayed_member) == 1 then
        redis.call('HDEL', delayed_messages, delayed_member)
        if queue_exists(queues, queue) then redis.call('HINCRBY', stats, 'delayed', -1) end
        waiting = true
      end
    elseif not pending_owner(stream, ref, 0) and redis.call('XDEL', stream, ref) == 1 then
      if queue_exists(queues, queue) then
        redis.call('HINCRBY', stats, READY[tonumber(level)], -1)
      end
      waiting = true
    end
    if waiting then
      store_final(result, 'REVOKED', 'expired', ttl_ms, now, failures, task_id)
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
local ttl_ms, why = next_number(), next_arg()
local now = now_ms()
local lost = {}
for _ = 1, next_number() do
  local result, task_id = next_key(), next_arg()
  local due = redis.call('ZSCORE', orphans, task_id)
  if due and tonumber(due) <= now then
    redis.call('ZREM', orphans, task_id)
    redis.call('HDEL', handovers, task_id)
    redis.call('HDEL', inflight, task_id)
    if store_final(result, 'FAILURE', why, ttl_ms, now, failures, task_id) then
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
for level = 0, 9 do redis.call('HSET', stats, READY[level], 0) end
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

SCRIPTS = [SNAPSHOT, COMMIT, PUBLISH, FETCH, SETTLE, RETIRE, REGISTER, RENEW, DUE, PROMOTE,
           EXPIRE, LOSE, CLAIM, REVOKE, PURGE, LEASE]
