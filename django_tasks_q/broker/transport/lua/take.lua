-- Take up to ARGV[2] messages from the lists KEYS[1..n-2], in order, and record each unacked
-- (hash KEYS[n-1], index KEYS[n], score ARGV[1]) in the same step -- except from a list whose
-- ARGV[2 + i] is "1" (consumed with no_ack: nobody would ack it, and kombu does not record those
-- either). Returns a flat list of (list, message, tag) triples; the tag is false (None to Python)
-- for a message that is not kombu JSON (not recorded: the caller sets it aside).
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
