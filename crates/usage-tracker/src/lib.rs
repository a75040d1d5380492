//! Per-deployment usage: RPM/TPM windows, in-flight leases, cooldowns and health statistics.
