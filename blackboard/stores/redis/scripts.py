"""The Lua scripts of the Redis store's group protocol.

Membership and partition ownership must change atomically with the checks that allow the
change, and a member may only read a partition while it holds the partition's lease, so these
steps are scripts (one round trip, nothing in between). The atomic commit itself is a
``WATCH``/``MULTI``/``EXEC`` (:mod:`blackboard.stores.redis.commit`); inside it, :data:`WRITE`
appends the commit's entries and acknowledges its inputs in one command instead of one per
entry.

Times are Redis server time (``TIME``), so members on machines whose clocks disagree still agree
on who is alive. A lease is the string ``<epoch>|<slot>|<token>`` (``<epoch>||`` when free); the
epoch rises on every take, so a lease value is never reused and works as a fencing token.

Scripts compute no key names except ``TRIM`` (the offsets hashes of the stream's groups), so
the store needs a standalone Redis (or one Redis Cluster shard holding all its keys).
"""

from __future__ import annotations

_NOW = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
"""

_EXPEL = """
local function expel_expired(members, tokens, subs, now)
  local gone = redis.call('ZRANGEBYSCORE', members, '-inf', now)
  for _, slot in ipairs(gone) do
    redis.call('ZREM', members, slot)
    redis.call('HDEL', tokens, slot)
    redis.call('HDEL', subs, slot)
  end
  return #gone
end
"""

#: KEYS members, tokens, subs, groups; ARGV slot, token, topics JSON, session ms, group,
#: group channel, rejoin ('1' or '0'). Registers the process as the slot's holder: a first
#: join supersedes an earlier holder of the slot; a rejoin (after the session ran out) does
#: not, and returns {-1} when another process holds the slot now. Returns {1, previous token}.
JOIN = (
    _NOW
    + _EXPEL
    + """
expel_expired(KEYS[1], KEYS[2], KEYS[3], now)
local previous = redis.call('HGET', KEYS[2], ARGV[1])
if ARGV[7] == '1' and previous and previous ~= ARGV[2] then
  return {-1}
end
redis.call('HSET', KEYS[2], ARGV[1], ARGV[2])
redis.call('HSET', KEYS[3], ARGV[1], ARGV[3])
redis.call('ZADD', KEYS[1], now + tonumber(ARGV[4]), ARGV[1])
redis.call('SADD', KEYS[4], ARGV[5])
redis.call('PUBLISH', ARGV[6], 'join')
return {1, previous}
"""
)

#: KEYS members, tokens, subs; ARGV slot, token, session ms, group channel.
#: Returns {1, expelled} when the session was extended, {0} when the member was expelled
#: (its session ran out), {-1} when another process holds the slot now.
HEARTBEAT = (
    _NOW
    + _EXPEL
    + """
local holder = redis.call('HGET', KEYS[2], ARGV[1])
if holder and holder ~= ARGV[2] then
  return {-1}
end
local expiry = redis.call('ZSCORE', KEYS[1], ARGV[1])
if not holder or not expiry or tonumber(expiry) <= now then
  redis.call('ZREM', KEYS[1], ARGV[1])
  redis.call('HDEL', KEYS[2], ARGV[1])
  redis.call('HDEL', KEYS[3], ARGV[1])
  redis.call('PUBLISH', ARGV[4], 'expelled')
  return {0}
end
redis.call('ZADD', KEYS[1], now + tonumber(ARGV[3]), ARGV[1])
local expelled = expel_expired(KEYS[1], KEYS[2], KEYS[3], now)
if expelled > 0 then
  redis.call('PUBLISH', ARGV[4], 'expelled')
end
return {1, expelled}
"""
)

#: KEYS lease, members, tokens; ARGV slot, token. Takes the partition if the caller holds its
#: slot and is alive, and the lease is free, held by a member that is gone, or by an earlier
#: process of the same slot. Returns the new lease value or false.
TAKE = (
    _NOW
    + """
if redis.call('HGET', KEYS[3], ARGV[1]) ~= ARGV[2] then
  return false
end
local mine = redis.call('ZSCORE', KEYS[2], ARGV[1])
if not mine or tonumber(mine) <= now then
  return false
end
local epoch = 0
local current = redis.call('GET', KEYS[1])
if current then
  local e, owner, token = string.match(current, '^(%d+)|([^|]*)|(.*)$')
  epoch = tonumber(e)
  if owner ~= '' and owner ~= ARGV[1] then
    local expiry = redis.call('ZSCORE', KEYS[2], owner)
    local holder = redis.call('HGET', KEYS[3], owner)
    if expiry and tonumber(expiry) > now and holder == token then
      return false
    end
  end
end
local lease = tostring(epoch + 1) .. '|' .. ARGV[1] .. '|' .. ARGV[2]
redis.call('SET', KEYS[1], lease)
return lease
"""
)

#: KEYS leases...; ARGV group channel, expected lease values... Frees every lease that still
#: has the expected value. Returns how many were freed.
RELEASE = """
local freed = 0
for i, key in ipairs(KEYS) do
  local lease = ARGV[i + 1]
  if redis.call('GET', key) == lease then
    local epoch = string.match(lease, '^(%d+)|')
    redis.call('SET', key, epoch .. '||')
    freed = freed + 1
  end
end
if freed > 0 then
  redis.call('PUBLISH', ARGV[1], 'released')
end
return freed
"""

#: KEYS members, tokens, subs, leases...; ARGV slot, token, group channel, lease values...
#: Frees the member's leases and removes it, if the slot is still the caller's.
LEAVE = """
for i = 4, #KEYS do
  local lease = ARGV[i]
  if redis.call('GET', KEYS[i]) == lease then
    redis.call('SET', KEYS[i], string.match(lease, '^(%d+)|') .. '||')
  end
end
if redis.call('HGET', KEYS[2], ARGV[1]) == ARGV[2] then
  redis.call('ZREM', KEYS[1], ARGV[1])
  redis.call('HDEL', KEYS[2], ARGV[1])
  redis.call('HDEL', KEYS[3], ARGV[1])
end
redis.call('PUBLISH', ARGV[3], 'left')
return 1
"""

#: KEYS lease_1, stream_1, …, lease_n, stream_n; ARGV group, consumer, budget, then per
#: partition its expected lease and cursor ('>' for new entries, or an entry ID: the
#: consumer's pending entries after it). Reads each partition whose lease is still the
#: expected one (a paused member whose partitions moved cannot move the group's
#: last-delivered ID past entries the new owner would then never see).
#: Returns per partition {0} lease lost, {2, error} the read failed (no group), {1} not read
#: (budget spent), or {1, entries, delivery counts (ID, count, …) of history entries, next
#: cursor}.
READ = """
local group, consumer = ARGV[1], ARGV[2]
local budget = tonumber(ARGV[3])
local out = {}
for i = 1, #KEYS / 2 do
  local stream = KEYS[2 * i]
  local cursor = ARGV[3 + 2 * i]
  if redis.call('GET', KEYS[2 * i - 1]) ~= ARGV[2 + 2 * i] then
    out[i] = {0}
  elseif budget <= 0 then
    out[i] = {1}
  else
    local res = redis.pcall(
      'XREADGROUP', 'GROUP', group, consumer, 'COUNT', budget, 'STREAMS', stream, cursor)
    if type(res) == 'table' and res['err'] then
      out[i] = {2, res['err']}
    else
      local entries = {}
      if res then
        entries = res[1][2]
      end
      local counts = {}
      local next_cursor = cursor
      if cursor ~= '>' then
        if #entries > 0 then
          local first, last = entries[1][1], entries[#entries][1]
          local pending = redis.call(
            'XPENDING', stream, group, first, last, #entries, consumer)
          for _, p in ipairs(pending) do
            counts[#counts + 1] = p[1]
            counts[#counts + 1] = p[4]
          end
        end
        if #entries < budget then
          next_cursor = '>'
        else
          next_cursor = entries[#entries][1]
        end
      end
      budget = budget - #entries
      out[i] = {1, entries, counts, next_cursor}
    end
  end
end
return out
"""

#: Sent with ``EVAL`` (not ``EVALSHA``) inside a commit's ``MULTI``: an unknown script would
#: fail at ``EXEC`` alone while the transaction's other commands ran. The ``#!lua`` line (no
#: flags) declares a script that writes, so Redis refuses it out of memory when it is queued,
#: which aborts the whole transaction as a refused ``XADD`` did.
#: KEYS streams; ARGV append time (ms), group, entry count n, then per entry four values:
#: control (stream index in KEYS * 8 + 1 key present + 2 value present + 4 headers present),
#: key, value, headers (empty when absent); then per acknowledged range three values: stream
#: index, first offset, end offset (exclusive). Appends each entry with ID ``0-*`` and the
#: fields ``k``, ``v``, ``h`` (those present) and ``t``, in order, as
#: :func:`blackboard.stores.redis.entries.entry_fields`; acknowledges entries
#: ``0-(first+1)`` … ``0-end``. Returns n.
WRITE = """#!lua
local t, group, n = ARGV[1], ARGV[2], tonumber(ARGV[3])
local pos = 4
for _ = 1, n do
  local control = tonumber(ARGV[pos])
  local mask = control % 8
  local fields = {}
  if mask % 2 == 1 then
    fields[#fields + 1] = 'k'
    fields[#fields + 1] = ARGV[pos + 1]
  end
  if math.floor(mask / 2) % 2 == 1 then
    fields[#fields + 1] = 'v'
    fields[#fields + 1] = ARGV[pos + 2]
  end
  if mask >= 4 then
    fields[#fields + 1] = 'h'
    fields[#fields + 1] = ARGV[pos + 3]
  end
  fields[#fields + 1] = 't'
  fields[#fields + 1] = t
  redis.call('XADD', KEYS[math.floor(control / 8)], '0-*', unpack(fields))
  pos = pos + 4
end
while pos + 2 <= #ARGV do
  local stream = KEYS[tonumber(ARGV[pos])]
  local offset, stop = tonumber(ARGV[pos + 1]), tonumber(ARGV[pos + 2])
  while offset < stop do
    local last = math.min(stop, offset + 1000)
    local ids = {}
    for id = offset + 1, last do
      ids[#ids + 1] = '0-' .. string.format('%d', id)
    end
    redis.call('XACK', stream, group, unpack(ids))
    offset = last
  end
  pos = pos + 3
end
return n
"""

#: KEYS stream; ARGV group, consumer, batch. Moves every pending entry of the stream's group
#: to the consumer (XAUTOCLAIM with min-idle 0: the caller holds the partition's lease, so the
#: previous owner is gone). Returns the claimed IDs.
CLAIM = """
local ids = {}
local cursor = '0-0'
repeat
  local res = redis.call(
    'XAUTOCLAIM', KEYS[1], ARGV[1], ARGV[2], 0, cursor, 'COUNT', ARGV[3], 'JUSTID')
  cursor = res[1]
  for _, id in ipairs(res[2]) do
    ids[#ids + 1] = id
  end
until cursor == '0-0'
return ids
"""

#: KEYS stream; ARGV key prefix. Trims the stream below the lowest offset every consumer group
#: of it has committed (entries below a group's committed offset are acknowledged). A stream
#: without groups, or with a group that has committed nothing on it, is left alone.
#: Returns how many entries were removed.
TRIM = """
if redis.call('EXISTS', KEYS[1]) == 0 then
  return 0
end
local groups = redis.call('XINFO', 'GROUPS', KEYS[1])
if #groups == 0 then
  return 0
end
local field = string.match(KEYS[1], '^' .. ARGV[1]:gsub('%p', '%%%0') .. 's:(.*)$')
local low = nil
for _, info in ipairs(groups) do
  local name = nil
  for j = 1, #info, 2 do
    if info[j] == 'name' then
      name = info[j + 1]
    end
  end
  local committed = redis.call('HGET', ARGV[1] .. 'g:' .. name .. ':offsets', field)
  if not committed then
    return 0
  end
  local offset = tonumber(string.match(committed, '^(%d+):'))
  if low == nil or offset < low then
    low = offset
  end
end
if low == 0 then
  return 0
end
return redis.call('XTRIM', KEYS[1], 'MINID', '0-' .. tostring(low + 1))
"""
