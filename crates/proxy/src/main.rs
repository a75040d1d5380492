//! `llm-scheduler`: the OpenAI-compatible proxy binary.

fn main() {}
