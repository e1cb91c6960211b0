-- A state RedisBackend writes without waiting (STARTED, RECEIVED), kept from replacing a later one: it may
-- reach Redis after a write that went out on another connection.
-- KEYS[1]: the result key. ARGV[1]: the document; ARGV[2]: its expiry in seconds (0: none);
-- ARGV[3]: 'never' -- write unless the stored status is one of ARGV[4..] (STARTED: the final states), or
-- 'only' -- write only over no status or one of ARGV[4..] (RECEIVED: RECEIVED).
-- Returns 1 when written, 0 when the stored state stays.
local current = redis.call('GET', KEYS[1])
if current then
    local ok, document = pcall(cjson.decode, current)
    local listed = false
    if ok and type(document) == 'table' then
        for i = 4, #ARGV do
            if document['status'] == ARGV[i] then listed = true end
        end
    end
    if (ARGV[3] == 'never') == listed then return 0 end
end
if tonumber(ARGV[2]) > 0 then
    redis.call('SET', KEYS[1], ARGV[1], 'EX', ARGV[2])
else
    redis.call('SET', KEYS[1], ARGV[1])
end
redis.call('PUBLISH', KEYS[1], ARGV[1])
return 1
