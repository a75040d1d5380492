-- queue_depth v1 (body; runs after QUEUE_FRAGMENT)
-- KEYS: 1 queue zset
-- ARGV: none
-- Reply: number of queued entries (dead ones not yet reaped included).
return redis.call('ZCARD', KEYS[1])
