-- Reserve the next start slot of one rate limit (GCRA) on Redis's clock.
-- KEYS[1]: the limit's key, holding the time its next slot is free (seconds, as text).
-- ARGV[1]: seconds between two starts.
-- Returns the wait before the reserved slot, as text: Redis truncates Lua numbers to integers.
-- The key expires ${KEEP_AFTER_MS} ms after its last slot, so an idle task leaves nothing behind.
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local interval = tonumber(ARGV[1])
local slot = math.max(tonumber(redis.call('GET', KEYS[1]) or '0'), now)
local following = slot + interval
redis.call('SET', KEYS[1], string.format('%.6f', following),
           'PX', math.ceil((following - now) * 1000) + ${KEEP_AFTER_MS})
return string.format('%.6f', slot - now)
