-- queue_expire_owner v1 (body; runs after QUEUE_FRAGMENT)
-- KEYS: 1 owners zset
-- ARGV: 1 owner
-- Reply: 1 if the owner held a lease record, else 0. Its entries are dead from now on.
return redis.call('ZREM', KEYS[1], ARGV[1])
