//! LiteLLM's `drop_params`: which body parameters an upstream call keeps.

use std::borrow::Cow;

use serde_json::{Map, Value};

use crate::request::Endpoint;
use crate::topology::Deployment;

/// OpenAI parameters of chat completions.
const CHAT: &[&str] = &[
    "messages",
    "model",
    "audio",
    "frequency_penalty",
    "function_call",
    "functions",
    "logit_bias",
    "logprobs",
    "max_completion_tokens",
    "max_tokens",
    "metadata",
    "modalities",
    "n",
    "parallel_tool_calls",
    "prediction",
    "presence_penalty",
    "prompt_cache_key",
    "reasoning_effort",
    "response_format",
    "safety_identifier",
    "seed",
    "service_tier",
    "stop",
    "store",
    "stream",
    "stream_options",
    "temperature",
    "tool_choice",
    "tools",
    "top_logprobs",
    "top_p",
    "user",
    "verbosity",
    "web_search_options",
];

/// OpenAI parameters of (legacy) completions.
const COMPLETIONS: &[&str] = &[
    "prompt",
    "model",
    "best_of",
    "echo",
    "frequency_penalty",
    "logit_bias",
    "logprobs",
    "max_tokens",
    "n",
    "presence_penalty",
    "seed",
    "stop",
    "stream",
    "stream_options",
    "suffix",
    "temperature",
    "top_p",
    "user",
];

/// OpenAI parameters of embeddings.
const EMBEDDINGS: &[&str] = &["input", "model", "dimensions", "encoding_format", "user"];

/// The OpenAI parameters of `endpoint` that `drop_params` keeps (`/model/info` lists them as
/// `supported_openai_params`).
pub fn openai_params(endpoint: Endpoint) -> &'static [&'static str] {
    match endpoint {
        Endpoint::ChatCompletions => CHAT,
        Endpoint::Completions => COMPLETIONS,
        Endpoint::Embeddings => EMBEDDINGS,
    }
}

/// Whether `name` is an OpenAI parameter of `endpoint`.
pub(crate) fn is_openai_param(endpoint: Endpoint, name: &str) -> bool {
    openai_params(endpoint).contains(&name)
}

/// The body a call to `d` sends: with `drop_params` (the deployment's, else `router_default`) only the
/// endpoint's OpenAI parameters are kept; `additional_drop_params` are removed either way. Borrowed when
/// nothing is dropped.
pub(crate) fn for_deployment<'a>(
    d: &Deployment,
    endpoint: Endpoint,
    body: &'a Map<String, Value>,
    router_default: bool,
) -> Cow<'a, Map<String, Value>> {
    let drop_unknown = d.drop_params.unwrap_or(router_default);
    let dropped = |k: &str| {
        (drop_unknown && !is_openai_param(endpoint, k))
            || d.additional_drop_params.iter().any(|p| p == k)
    };
    if !body.keys().any(|k| dropped(k)) {
        return Cow::Borrowed(body);
    }
    Cow::Owned(
        body.iter()
            .filter(|(k, _)| !dropped(k))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect(),
    )
}
