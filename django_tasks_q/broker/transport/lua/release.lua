-- Move due parked messages to their lists, and give each list a wake token.
-- KEYS[1]: the delayed sorted set, whose members are "<list key>\n<message>".
-- ARGV[1]: release what is due by this time; ARGV[2]: release at most this many.
-- Returns the number moved.
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, tonumber(ARGV[2]))
for _, member in ipairs(due) do
    redis.call('ZREM', KEYS[1], member)
    local cut = string.find(member, '\n', 1, true)
    local key = string.sub(member, 1, cut - 1)
    redis.call('LPUSH', key, string.sub(member, cut + 1))
    redis.call('LPUSH', ${WAKE_PREFIX} .. key, 1)
    redis.call('LTRIM', ${WAKE_PREFIX} .. key, 0, ${WAKE_CAP} - 1)
end
return #due
