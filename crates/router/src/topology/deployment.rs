//! [`Deployment`]: one upstream model endpoint of a model group, with what every call to it sends alike.

use std::time::Duration;

use reqwest::header::{HeaderMap, HeaderName, HeaderValue};
use serde_json::{Map, Value};

use super::provider_table::{auth_header, Auth, ProviderKind, ANTHROPIC_VERSION};
use crate::config::Secret;
use crate::request::Endpoint;

/// A deployment: one upstream model endpoint of a model group.
#[derive(Debug)]
pub(crate) struct Deployment {
    /// Stable id (model_info.id or a hash of the entry), the same on every replica.
    pub(crate) id: String,
    /// The model group.
    pub(crate) group: String,
    /// (group, id) as the usage store names it.
    pub(crate) dref: usage_tracker::DeploymentRef,
    /// `litellm_params.model` as configured (`azure/my-deployment`).
    pub(crate) litellm_model: String,
    /// The provider prefix (`openai`, `azure`, `hosted_vllm`, ...).
    pub(crate) provider: String,
    pub(crate) kind: ProviderKind,
    /// Which header carries the key.
    pub(crate) auth: Auth,
    /// The model name sent upstream (the part after the provider prefix).
    pub(crate) model: String,
    /// Base URL without trailing slash (OpenAI-compatible: the `/v1` base; Azure: the resource endpoint).
    pub(crate) api_base: String,
    pub(crate) api_key: Option<Secret>,
    pub(crate) api_version: Option<String>,
    pub(crate) rpm: Option<u64>,
    pub(crate) tpm: Option<u64>,
    /// simple-shuffle `weight`.
    pub(crate) weight: Option<f64>,
    pub(crate) max_parallel: Option<u32>,
    pub(crate) max_input_tokens: Option<u64>,
    /// `order`: lower tiers first.
    pub(crate) tier: u32,
    pub(crate) timeout: Option<Duration>,
    pub(crate) stream_timeout: Option<Duration>,
    pub(crate) cooldown_time: Option<Duration>,
    /// `num_retries`, else `max_retries`.
    pub(crate) num_retries: Option<u32>,
    /// `drop_params` of the deployment (else the router's).
    pub(crate) drop_params: Option<bool>,
    /// `additional_drop_params`: body parameters never sent to this deployment.
    pub(crate) additional_drop_params: Vec<String>,
    pub(crate) mock_response: Option<String>,
    pub(crate) mock_delay: Option<Duration>,
    pub(crate) tags: Vec<String>,
    /// `model_info` as configured besides `id` and `max_input_tokens` (mode, costs, `base_model`, ...).
    pub(crate) model_info: Map<String, Value>,
    /// USD per prompt token (`input_cost_per_token`), for spend.
    pub(crate) input_cost_per_token: Option<f64>,
    /// USD per completion token (`output_cost_per_token`).
    pub(crate) output_cost_per_token: Option<f64>,
    /// Body parameters applied when the client did not send them.
    pub(crate) body_defaults: Map<String, Value>,
    /// `extra_body`: merged into every upstream body.
    pub(crate) extra_body: Map<String, Value>,
    /// Extra headers (`extra_headers`, `organization`).
    pub(crate) headers: Vec<(String, String)>,
    /// URLs and headers of upstream calls, built from the fields above.
    pub(crate) prepared: Prepared,
}

impl Deployment {
    /// The endpoint URL of this deployment.
    pub(crate) fn url(&self, endpoint: Endpoint) -> String {
        match self.kind {
            ProviderKind::OpenAi => format!("{}{}", self.api_base, endpoint.path()),
            ProviderKind::Azure => format!(
                "{}/openai/deployments/{}{}?api-version={}",
                self.api_base,
                self.model,
                endpoint.path(),
                self.api_version.as_deref().unwrap_or_default()
            ),
            // The Messages API answers chat completions; other endpoints are refused before a call.
            ProviderKind::Anthropic => format!("{}/v1/messages", self.api_base),
        }
    }
}

/// What every upstream call of one deployment sends alike, built once with the deployment: the endpoint URLs
/// (parsed) and the headers (credentials, extra headers). Parsing a URL and formatting the key header on
/// every call took about a twentieth of the proxy's CPU.
#[derive(Debug, Default)]
pub(crate) struct Prepared {
    /// Indexed by [`endpoint_index`]; `None` when the base does not make a valid URL.
    urls: [Option<reqwest::Url>; 3],
    headers: HeaderMap,
}

impl Prepared {
    pub(super) fn of(d: &Deployment) -> Prepared {
        let endpoints = [
            Endpoint::ChatCompletions,
            Endpoint::Completions,
            Endpoint::Embeddings,
        ];
        Prepared {
            urls: endpoints.map(|e| reqwest::Url::parse(&d.url(e)).ok()),
            headers: headers(d),
        }
    }

    /// The parsed URL of `endpoint`; `None` when the base does not make a valid URL.
    pub(crate) fn url(&self, endpoint: Endpoint) -> Option<&reqwest::Url> {
        self.urls[endpoint_index(endpoint)].as_ref()
    }

    /// Credentials and extra headers.
    pub(crate) fn headers(&self) -> &HeaderMap {
        &self.headers
    }
}

fn endpoint_index(endpoint: Endpoint) -> usize {
    match endpoint {
        Endpoint::ChatCompletions => 0,
        Endpoint::Completions => 1,
        Endpoint::Embeddings => 2,
    }
}

/// The credentials header of the provider, its version header and the extra headers.
fn headers(d: &Deployment) -> HeaderMap {
    let mut h = HeaderMap::new();
    if d.kind == ProviderKind::Anthropic {
        h.insert(
            HeaderName::from_static("anthropic-version"),
            HeaderValue::from_static(ANTHROPIC_VERSION),
        );
    }
    if let Some(key) = &d.api_key {
        let (name, value) = match auth_header(d.auth, &d.api_base) {
            Auth::Bearer | Auth::AzureAiByHost => (
                HeaderName::from_static("authorization"),
                format!("Bearer {}", key.expose()),
            ),
            Auth::ApiKey => (HeaderName::from_static("api-key"), key.expose().to_owned()),
            Auth::XApiKey => (
                HeaderName::from_static("x-api-key"),
                key.expose().to_owned(),
            ),
        };
        if let Ok(mut v) = HeaderValue::from_str(&value) {
            v.set_sensitive(true);
            h.insert(name, v);
        }
    }
    // Validated at startup.
    for (name, value) in &d.headers {
        if let (Ok(n), Ok(v)) = (
            HeaderName::from_bytes(name.as_bytes()),
            HeaderValue::from_str(value),
        ) {
            h.insert(n, v);
        }
    }
    h
}
