-- write_v1: creates a key record or changes fields of an existing one.
-- KEYS[1] the record hash (one JSON value per field; `spend` a plain number)
-- ARGV[1] 'create' (fails when the record exists) or 'update' (fails when it does not)
-- ARGV[2..] pairs of field name and JSON value; an empty value deletes the field
-- Reply: 1 done, 0 refused (exists on create, missing on update)
local exists = redis.call('EXISTS', KEYS[1]) == 1
if ARGV[1] == 'create' then
  if exists then return 0 end
  redis.call('HSET', KEYS[1], 'spend', '0')
elseif not exists then
  return 0
end
for i = 2, #ARGV, 2 do
  if ARGV[i + 1] == '' then
    redis.call('HDEL', KEYS[1], ARGV[i])
  else
    redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1])
  end
end
return 1
