-- queue_position v1 (body; runs after QUEUE_FRAGMENT)
-- KEYS: 1 queue zset
-- ARGV: 1 member
-- Reply: 0-based rank of the member, or nil if it is not queued.
return redis.call('ZRANK', KEYS[1], ARGV[1])
