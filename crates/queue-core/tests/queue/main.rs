//! Behavioural tests of the queue: each body is written once over `QueueOps` and run against a real
//! redis-server (testkit) and the in-memory backend.

mod common;

mod concurrency;
mod equivalence;
mod fragment;
mod keys;
mod leases;
mod ordering;
mod recovery;
