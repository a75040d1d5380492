//! Model groups, deployments, routing strategies, admission, retries, fallbacks and provider clients.
