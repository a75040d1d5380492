-- release_v1: a request of a virtual key ends (or never reached an upstream): its parallel slot frees, its
-- tokens settle, and a request the model group refused gives its rpm/tpm back.
-- KEYS[1] in-flight sorted set   KEYS[2] usage hash (see reserve_v1)
-- ARGV[1] request id   ARGV[2] window start of the reservation   ARGV[3] 1 = give rpm and tpm back
-- ARGV[4] estimated tokens reserved   ARGV[5] tokens the upstream reported (-1 unknown)
-- Reply: 1 when the request held a slot, else 0. Settling only touches the window it reserved in.
local held = redis.call('ZREM', KEYS[1], ARGV[1])
local w = tonumber(redis.call('HGET', KEYS[2], 'w') or '-1')
if w == tonumber(ARGV[2]) then
  local est = tonumber(ARGV[4])
  if ARGV[3] == '1' then
    redis.call('HINCRBY', KEYS[2], 'rpm', -1)
    redis.call('HINCRBY', KEYS[2], 'tpm', -est)
  elseif tonumber(ARGV[5]) >= 0 then
    redis.call('HINCRBY', KEYS[2], 'tpm', tonumber(ARGV[5]) - est)
  end
end
return held
