"""The Lua scripts of the ``redis://`` consumer (:mod:`django_tasks_q.broker.transport.redis`).

Each runs as one step on the server: a message is always in its list, in
the delayed set, or recorded unacked -- never only in a worker's memory.
"""

#: Move due parked messages to their lists; the member is "<list key>\n<message>".
RELEASE_SCRIPT = r"""
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, tonumber(ARGV[2]))
for _, member in ipairs(due) do
    redis.call('ZREM', KEYS[1], member)
    local cut = string.find(member, '\n', 1, true)
    local key = string.sub(member, 1, cut - 1)
    redis.call('LPUSH', key, string.sub(member, cut + 1))
    redis.call('LPUSH', 'tasksq.wake:' .. key, 1)
    redis.call('LTRIM', 'tasksq.wake:' .. key, 0, 63)
end
return #due
"""
#: Take up to ARGV[2] messages from the lists KEYS[1..n-2], in order, and record each unacked
#: (hash KEYS[n-1], index KEYS[n], score ARGV[1]) in the same step -- except from a list whose
#: ARGV[2 + i] is "1" (consumed with no_ack: nobody would ack it, and kombu does not record those
#: either). Returns a flat list of (list, message, tag) triples; the tag is nil for a message that
#: is not kombu JSON (not recorded: the caller sets it aside).
POP_SCRIPT = r"""
local n = #KEYS - 2
local want = tonumber(ARGV[2])
local taken = {}
local i = 1
while i <= n and #taken < want * 3 do
    local item = redis.call('RPOP', KEYS[i])
    if not item then
        i = i + 1
    else
        local ok, message = pcall(cjson.decode, item)
        local props = ok and type(message) == 'table' and message['properties']
        local tag = type(props) == 'table' and props['delivery_tag']
        if type(tag) ~= 'string' then
            tag = false
        elseif ARGV[i + 2] ~= '1' then
            local info = type(props['delivery_info']) == 'table' and props['delivery_info'] or {}
            redis.call('ZADD', KEYS[n + 2], ARGV[1], tag)
            redis.call('HSET', KEYS[n + 1], tag, '[' .. item .. ',' .. cjson.encode(info['exchange'] or '') .. ','
                .. cjson.encode(info['routing_key'] or '') .. ']')
        end
        table.insert(taken, KEYS[i]); table.insert(taken, item); table.insert(taken, tag)
    end
end
return taken
"""
#: Put what a take returned but the consumer will not deliver back at the head of its list, as it
#: was: ARGV[1] is the stamp the take recorded with, then (list, message, tag, recorded) quadruples,
#: last taken first. A recorded entry goes back only while its record is still the take's own (its
#: index score is that stamp): a restore sweep may have put it back already, and another consumer
#: taken it again under the same tag. An entry never recorded (not kombu JSON, or consumed with
#: no_ack) goes back as is. The entry is pushed before its record is dropped (a failed push leaves
#: the record, for the sweep). Each list it returns to gets a wake token. Returns the count put back.
GIVE_BACK_SCRIPT = r"""
local stamp = tonumber(ARGV[1])
local back = 0
for i = 2, #ARGV, 4 do
    local key, item, tag, recorded = ARGV[i], ARGV[i + 1], ARGV[i + 2], ARGV[i + 3] == '1'
    local ours = not recorded
    if recorded then
        local score = redis.call('ZSCORE', KEYS[2], tag)
        ours = score ~= false and tonumber(score) == stamp
    end
    if ours then
        redis.call('RPUSH', key, item)
        if recorded then
            redis.call('ZREM', KEYS[2], tag)
            redis.call('HDEL', KEYS[1], tag)
        end
        redis.call('LPUSH', 'tasksq.wake:' .. key, 1)
        redis.call('LTRIM', 'tasksq.wake:' .. key, 0, 63)
        back = back + 1
    end
end
return back
"""
