-- Count one finished chord member, and take the claim to send the body when it completes the header.
-- KEYS: .j .d .s .t .c (results/redis_chords.py)
-- ARGV: member, score, value, expires, claim token, claim seconds
-- Returns {count, size, claimed}; {-1, false, 0} once the chord is done.
if redis.call('GET', KEYS[5]) == 'done' then return {-1, false, 0} end
if redis.call('SISMEMBER', KEYS[2], ARGV[1]) == 0 then
    redis.call('ZADD', KEYS[1], ARGV[2], ARGV[3])
    redis.call('SADD', KEYS[2], ARGV[1])
end
local count = redis.call('ZCARD', KEYS[1])
local expires = tonumber(ARGV[4])
if expires > 0 then
    for i = 1, 4 do redis.call('EXPIRE', KEYS[i], expires) end
end
local size = redis.call('GET', KEYS[3])
local claimed = 0
if size and count == tonumber(size) + tonumber(redis.call('GET', KEYS[4]) or 0) then
    if redis.call('SET', KEYS[5], ARGV[5], 'NX', 'EX', tonumber(ARGV[6])) then claimed = 1 end
end
return {count, size, claimed}
