//! Cross-crate integration tests: several replicas sharing one Redis, with faults.
