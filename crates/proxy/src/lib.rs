//! The `llm-scheduler` OpenAI-compatible HTTP server.
