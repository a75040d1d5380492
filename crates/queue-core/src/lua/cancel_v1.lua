-- queue_cancel v1 (body; runs after QUEUE_FRAGMENT)
-- KEYS: 1 queue zset
-- ARGV: 1 member
-- Reply: 1 if the member was queued (and is now removed), else 0.
return q_remove(KEYS[1], ARGV[1])
