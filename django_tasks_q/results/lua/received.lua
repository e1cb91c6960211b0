-- RECEIVED as RedisBackend.mark_received writes it: only where nothing later is recorded (no key yet,
-- or RECEIVED), so a RECEIVED that reaches Redis after the task's STARTED, a custom state or its
-- final write changes nothing.
-- KEYS[1]: the result key. ARGV: the document, its expiry in seconds (0: none).
-- Returns 1 when written, 0 when a later state was there.
local current = redis.call('GET', KEYS[1])
if current then
    local ok, document = pcall(cjson.decode, current)
    if not ok or type(document) ~= 'table' or document['status'] ~= 'RECEIVED' then return 0 end
end
if tonumber(ARGV[2]) > 0 then
    redis.call('SET', KEYS[1], ARGV[1], 'EX', ARGV[2])
else
    redis.call('SET', KEYS[1], ARGV[1])
end
redis.call('PUBLISH', KEYS[1], ARGV[1])
return 1
