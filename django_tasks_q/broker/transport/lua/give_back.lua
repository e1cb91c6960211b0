-- Put what a take returned but the consumer will not deliver back at the head of its list, as it
-- was. KEYS[1], KEYS[2]: the unacked hash and its index. ARGV[1] is the stamp the take recorded
-- with, then (list, message, tag, recorded) quadruples, last taken first. A recorded entry goes
-- back only while its record is still the take's own (its index score is that stamp): a restore
-- sweep may have put it back already, and another consumer taken it again under the same tag. An
-- entry never recorded (not kombu JSON, or consumed with no_ack) goes back as is. The entry is
-- pushed before its record is dropped (a failed push leaves the record, for the sweep). Each list
-- it returns to gets a wake token. Returns the count put back.
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
        redis.call('LPUSH', ${WAKE_PREFIX} .. key, 1)
        redis.call('LTRIM', ${WAKE_PREFIX} .. key, 0, ${WAKE_CAP} - 1)
        back = back + 1
    end
end
return back
