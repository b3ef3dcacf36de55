"""The Lua scripts a worker runs on Redis, each one atomic where a sequence of commands
would race with other workers."""

from __future__ import annotations

#: Renew the claims of the ids still owned by ARGV[2]: ``XCLAIM ... 0 id JUSTID`` resets
#: their idle time without raising their delivery count. An id another worker has reclaimed
#: meanwhile is left alone (a bare XCLAIM would steal it back, and both would run it).
#: Returns the ids renewed. KEYS[1] the stream; ARGV[1] the group, ARGV[2] the consumer,
#: ARGV[3..] the ids.
RENEW = """
local renewed = {}
for i = 3, #ARGV do
  local entry = redis.call('XPENDING', KEYS[1], ARGV[1], ARGV[i], ARGV[i], 1)
  if #entry == 1 and entry[1][2] == ARGV[2] then
    redis.call('XCLAIM', KEYS[1], ARGV[1], ARGV[2], 0, ARGV[i], 'JUSTID')
    table.insert(renewed, ARGV[i])
  end
end
return renewed
"""

#: Remove consumer ARGV[2] from group ARGV[1] only if nothing is pending for it:
#: XGROUP DELCONSUMER drops a consumer's pending entries, which would then never be
#: delivered again. Returns -1 when the consumer was kept.
DELETE_IF_IDLE = """
local pending = redis.call('XPENDING', KEYS[1], ARGV[1], '-', '+', 1, ARGV[2])
if #pending == 0 then
  return redis.call('XGROUP', 'DELCONSUMER', KEYS[1], ARGV[1], ARGV[2])
end
return -1
"""

#: Remove the group's consumers (but ARGV[3]) that hold nothing and have been idle for at
#: least ARGV[2] ms: workers that died after their messages were reclaimed.
FORGET_DEAD = """
local forgotten = {}
for _, consumer in ipairs(redis.call('XINFO', 'CONSUMERS', KEYS[1], ARGV[1])) do
  local info = {}
  for i = 1, #consumer, 2 do info[consumer[i]] = consumer[i + 1] end
  if info['name'] ~= ARGV[3] and tonumber(info['pending']) == 0
      and tonumber(info['idle']) >= tonumber(ARGV[2]) then
    redis.call('XGROUP', 'DELCONSUMER', KEYS[1], ARGV[1], info['name'])
    table.insert(forgotten, info['name'])
  end
end
return forgotten
"""

#: Finish a completion: acknowledge its message, drop its job records and count it out of
#: its key's unfinished completions. KEYS: stream, jobs hash, unfinished hash; ARGV: group,
#: message id, "{pipeline}:{key}".
FINISH = """
redis.call('XACK', KEYS[1], ARGV[1], ARGV[2])
redis.call('DEL', KEYS[2])
if redis.call('HINCRBY', KEYS[3], ARGV[3], -1) <= 0 then
  redis.call('HDEL', KEYS[3], ARGV[3])
end
return 1
"""
