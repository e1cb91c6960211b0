-- STARTED as RedisBackend.mark_started writes it: never over a final state (a write that reached
-- Redis after the task's own final write changes nothing).
-- KEYS[1]: the result key. ARGV: the document, its expiry in seconds (0: none), then the final states.
-- Returns 1 when written, 0 when a final state was there.
local current = redis.call('GET', KEYS[1])
if current then
    local ok, document = pcall(cjson.decode, current)
    if ok and type(document) == 'table' then
        for i = 3, #ARGV do
            if document['status'] == ARGV[i] then return 0 end
        end
    end
end
if tonumber(ARGV[2]) > 0 then
    redis.call('SET', KEYS[1], ARGV[1], 'EX', ARGV[2])
else
    redis.call('SET', KEYS[1], ARGV[1])
end
redis.call('PUBLISH', KEYS[1], ARGV[1])
return 1
