//! The provider table: LiteLLM's provider prefixes (`openai/`, `azure/`, `groq/`, `anthropic/`, ...) and how
//! each one's upstream is spoken to (API shape, default base, the variables holding its base and key, the auth
//! header), as LiteLLM 1.108.7 resolves them.

/// How a deployment's upstream is spoken to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum ProviderKind {
    /// OpenAI's API or any OpenAI-compatible server (vLLM, Ollama, Groq, ...): `{base}/chat/completions`.
    OpenAi,
    /// Azure OpenAI: `{base}/openai/deployments/{model}/...?api-version=`, `api-key` header.
    Azure,
    /// Anthropic's Messages API: `{base}/v1/messages`, `x-api-key` and `anthropic-version` headers.
    Anthropic,
}

/// Which header carries the deployment's key.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Auth {
    /// `Authorization: Bearer KEY`.
    Bearer,
    /// `api-key: KEY` (Azure OpenAI).
    ApiKey,
    /// `x-api-key: KEY` (Anthropic).
    XApiKey,
    /// Azure AI Foundry: `api-key` on Azure OpenAI v1 hosts (`*.services.ai.azure.com`, `*.openai.azure.com`),
    /// `Authorization: Bearer` elsewhere (LiteLLM's `api_key_header_for_base`).
    AzureAiByHost,
}

/// What the table says about one provider prefix.
#[derive(Clone, Copy, Debug)]
pub(crate) struct ProviderSpec {
    pub(crate) kind: ProviderKind,
    /// The base used when neither the deployment nor `base_env` names one; `None`: an `api_base` is required.
    pub(crate) default_base: Option<&'static str>,
    /// Variables naming the base, in LiteLLM's order (`GROQ_API_BASE`).
    pub(crate) base_env: &'static [&'static str],
    /// Variables holding the key when the deployment names none, in LiteLLM's order (`GROQ_API_KEY`).
    pub(crate) key_env: &'static [&'static str],
    pub(crate) auth: Auth,
    /// The base must end in `/v1` (Ollama's OpenAI-compatible API lives there).
    pub(crate) wants_v1: bool,
    /// What the README table says about how the provider is called.
    pub(crate) note: &'static str,
}

impl ProviderSpec {
    /// A mock deployment's spec when its prefix is not in the table: it never calls an upstream.
    pub(super) const OPENAI_COMPATIBLE: ProviderSpec = openai(None, &[], &[], "");
}

const fn openai(
    default_base: Option<&'static str>,
    base_env: &'static [&'static str],
    key_env: &'static [&'static str],
    note: &'static str,
) -> ProviderSpec {
    ProviderSpec {
        kind: ProviderKind::OpenAi,
        default_base,
        base_env,
        key_env,
        auth: Auth::Bearer,
        wants_v1: false,
        note,
    }
}

/// Every supported prefix with its spec, in the README table's order.
pub(crate) const PROVIDERS: &[(&str, ProviderSpec)] = &[
    (
        "openai",
        openai(
            Some("https://api.openai.com/v1"),
            &["OPENAI_BASE_URL", "OPENAI_API_BASE"],
            &["OPENAI_API_KEY"],
            "OpenAI API",
        ),
    ),
    (
        "text-completion-openai",
        openai(
            Some("https://api.openai.com/v1"),
            &["OPENAI_BASE_URL", "OPENAI_API_BASE"],
            &["OPENAI_API_KEY"],
            "OpenAI API",
        ),
    ),
    (
        "azure",
        ProviderSpec {
            kind: ProviderKind::Azure,
            default_base: None,
            base_env: &["AZURE_API_BASE"],
            key_env: &["AZURE_API_KEY"],
            auth: Auth::ApiKey,
            wants_v1: false,
            note: "Azure OpenAI deployment URLs with `api-version`",
        },
    ),
    (
        "azure_text",
        ProviderSpec {
            kind: ProviderKind::Azure,
            default_base: None,
            base_env: &["AZURE_API_BASE"],
            key_env: &["AZURE_API_KEY"],
            auth: Auth::ApiKey,
            wants_v1: false,
            note: "Azure OpenAI deployment URLs with `api-version`",
        },
    ),
    (
        "anthropic",
        ProviderSpec {
            kind: ProviderKind::Anthropic,
            default_base: Some("https://api.anthropic.com"),
            base_env: &["ANTHROPIC_API_BASE", "ANTHROPIC_BASE_URL"],
            key_env: &["ANTHROPIC_API_KEY"],
            auth: Auth::XApiKey,
            wants_v1: false,
            note: "natively: Messages API (`/v1/messages`), translated to and from OpenAI's shapes",
        },
    ),
    (
        "groq",
        openai(
            Some("https://api.groq.com/openai/v1"),
            &["GROQ_API_BASE"],
            &["GROQ_API_KEY"],
            "OpenAI-compatible",
        ),
    ),
    (
        "together_ai",
        openai(
            Some("https://api.together.ai/v1"),
            &["TOGETHER_AI_API_BASE"],
            &[
                "TOGETHER_API_KEY",
                "TOGETHER_AI_API_KEY",
                "TOGETHERAI_API_KEY",
                "TOGETHER_AI_TOKEN",
            ],
            "OpenAI-compatible",
        ),
    ),
    (
        "fireworks_ai",
        openai(
            Some("https://api.fireworks.ai/inference/v1"),
            &["FIREWORKS_API_BASE"],
            &[
                "FIREWORKS_API_KEY",
                "FIREWORKS_AI_API_KEY",
                "FIREWORKSAI_API_KEY",
            ],
            "OpenAI-compatible",
        ),
    ),
    (
        "deepseek",
        openai(
            Some("https://api.deepseek.com/beta"),
            &["DEEPSEEK_API_BASE"],
            &["DEEPSEEK_API_KEY"],
            "OpenAI-compatible",
        ),
    ),
    (
        "mistral",
        ProviderSpec {
            wants_v1: true,
            ..openai(
                Some("https://api.mistral.ai/v1"),
                &["MISTRAL_AZURE_API_BASE"],
                &["MISTRAL_AZURE_API_KEY", "MISTRAL_API_KEY"],
                "OpenAI-compatible; `/v1` added to a base without it",
            )
        },
    ),
    (
        "openrouter",
        openai(
            Some("https://openrouter.ai/api/v1"),
            &["OPENROUTER_API_BASE"],
            &["OPENROUTER_API_KEY", "OR_API_KEY"],
            "OpenAI-compatible",
        ),
    ),
    (
        "xai",
        openai(
            Some("https://api.x.ai/v1"),
            &["XAI_API_BASE"],
            &["XAI_API_KEY"],
            "OpenAI-compatible",
        ),
    ),
    (
        "perplexity",
        openai(
            Some("https://api.perplexity.ai"),
            &["PERPLEXITY_API_BASE"],
            &["PERPLEXITYAI_API_KEY", "PERPLEXITY_API_KEY"],
            "OpenAI-compatible",
        ),
    ),
    (
        "deepinfra",
        openai(
            Some("https://api.deepinfra.com/v1/openai"),
            &["DEEPINFRA_API_BASE"],
            &["DEEPINFRA_API_KEY"],
            "OpenAI-compatible",
        ),
    ),
    (
        "hosted_vllm",
        openai(
            None,
            &["HOSTED_VLLM_API_BASE"],
            &["HOSTED_VLLM_API_KEY"],
            "OpenAI-compatible; `api_base` required",
        ),
    ),
    (
        "lm_studio",
        openai(
            Some("http://localhost:1234/v1"),
            &["LM_STUDIO_API_BASE"],
            &["LM_STUDIO_API_KEY"],
            "OpenAI-compatible",
        ),
    ),
    (
        "ollama",
        ProviderSpec {
            wants_v1: true,
            ..openai(
                Some("http://localhost:11434"),
                &["OLLAMA_API_BASE"],
                &["OLLAMA_API_KEY"],
                "Ollama's OpenAI-compatible `/v1` API (LiteLLM calls `/api/generate`)",
            )
        },
    ),
    (
        "ollama_chat",
        ProviderSpec {
            wants_v1: true,
            ..openai(
                Some("http://localhost:11434"),
                &["OLLAMA_API_BASE"],
                &["OLLAMA_API_KEY"],
                "Ollama's OpenAI-compatible `/v1` API (LiteLLM calls `/api/chat`)",
            )
        },
    ),
    (
        "gemini",
        openai(
            Some("https://generativelanguage.googleapis.com/v1beta/openai"),
            &["GEMINI_API_BASE"],
            &["GEMINI_API_KEY", "GOOGLE_API_KEY"],
            "Gemini's OpenAI-compatible endpoint (LiteLLM calls `generateContent`)",
        ),
    ),
    (
        "cohere",
        openai(
            Some("https://api.cohere.ai/compatibility/v1"),
            &["COHERE_API_BASE"],
            &["COHERE_API_KEY", "CO_API_KEY"],
            "Cohere's OpenAI-compatible endpoint (LiteLLM calls `/v2/chat`)",
        ),
    ),
    (
        "azure_ai",
        ProviderSpec {
            auth: Auth::AzureAiByHost,
            ..openai(
                None,
                &["AZURE_AI_API_BASE"],
                &["AZURE_AI_API_KEY"],
                "OpenAI-compatible; `api_base` required",
            )
        },
    ),
    (
        "custom_openai",
        openai(None, &[], &[], "OpenAI-compatible; `api_base` required"),
    ),
    (
        "openai_like",
        openai(None, &[], &[], "OpenAI-compatible; `api_base` required"),
    ),
    (
        "litellm_proxy",
        openai(
            None,
            &["LITELLM_PROXY_API_BASE"],
            &["LITELLM_PROXY_API_KEY"],
            "OpenAI-compatible; `api_base` required",
        ),
    ),
];

/// The spec of `provider`, if the table knows it.
pub(crate) fn provider_spec(provider: &str) -> Option<ProviderSpec> {
    PROVIDERS
        .iter()
        .find(|(name, _)| *name == provider)
        .map(|(_, spec)| *spec)
}

/// The supported prefixes, comma separated (for messages).
pub(crate) fn known_prefixes() -> String {
    let names: Vec<&str> = PROVIDERS.iter().map(|(name, _)| *name).collect();
    names.join(", ")
}

/// One row of the provider table: how a `litellm_params.model` prefix is called.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct ProviderInfo {
    /// The prefix (`groq` for `groq/llama-3.1-8b-instant`).
    pub prefix: &'static str,
    /// The base used when the deployment and the environment name none; `None`: `api_base` is required.
    pub default_api_base: Option<&'static str>,
    /// Environment variables read for the base, in order.
    pub api_base_env: &'static [&'static str],
    /// Environment variables read for the key when the deployment names none, in order.
    pub api_key_env: &'static [&'static str],
    /// The header carrying the key.
    pub auth_header: &'static str,
    /// How the provider is called.
    pub how: &'static str,
}

/// The supported provider prefixes, in the README table's order.
pub fn providers() -> Vec<ProviderInfo> {
    PROVIDERS
        .iter()
        .map(|(prefix, s)| ProviderInfo {
            prefix,
            default_api_base: s.default_base,
            api_base_env: s.base_env,
            api_key_env: s.key_env,
            auth_header: match s.auth {
                Auth::Bearer => "`Authorization: Bearer`",
                Auth::ApiKey => "`api-key`",
                Auth::XApiKey => "`x-api-key` (+ `anthropic-version`)",
                Auth::AzureAiByHost => {
                    "`api-key` on `*.services.ai.azure.com` / `*.openai.azure.com`, else Bearer"
                }
            },
            how: s.note,
        })
        .collect()
}

/// The provider table as the README shows it (Markdown).
pub fn provider_table_markdown() -> String {
    let code = |v: &[&str]| -> String {
        if v.is_empty() {
            "-".to_owned()
        } else {
            v.iter()
                .map(|n| format!("`{n}`"))
                .collect::<Vec<_>>()
                .join(", ")
        }
    };
    let mut out = String::from(
        "| prefix | default `api_base` | base variables | key variables | key header | called as |\n\
         |---|---|---|---|---|---|\n",
    );
    for p in providers() {
        out.push_str(&format!(
            "| `{}/` | {} | {} | {} | {} | {} |\n",
            p.prefix,
            p.default_api_base
                .map_or_else(|| "required".to_owned(), |b| format!("`{b}`")),
            code(p.api_base_env),
            code(p.api_key_env),
            p.auth_header,
            p.how,
        ));
    }
    out
}

/// Azure `api-version` used when neither the deployment nor `AZURE_API_VERSION` names one.
pub(super) const AZURE_DEFAULT_API_VERSION: &str = "2024-10-21";

/// The `anthropic-version` header sent to Anthropic (LiteLLM's default).
pub(crate) const ANTHROPIC_VERSION: &str = "2023-06-01";

/// Azure OpenAI v1 hosts, where Azure AI Foundry takes the key in `api-key`.
const AZURE_OPENAI_V1_HOST_SUFFIXES: &[&str] = &[".services.ai.azure.com", ".openai.azure.com"];

/// The header that carries the key for `auth` on `api_base`.
pub(crate) fn auth_header(auth: Auth, api_base: &str) -> Auth {
    match auth {
        Auth::AzureAiByHost => {
            let host = reqwest::Url::parse(api_base)
                .ok()
                .and_then(|u| u.host_str().map(str::to_ascii_lowercase));
            if host.is_some_and(|h| AZURE_OPENAI_V1_HOST_SUFFIXES.iter().any(|s| h.ends_with(s))) {
                Auth::ApiKey
            } else {
                Auth::Bearer
            }
        }
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_prefix_is_listed_once() {
        let mut names: Vec<&str> = PROVIDERS.iter().map(|(n, _)| *n).collect();
        let before = names.len();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), before);
        for family in [
            "anthropic",
            "groq",
            "together_ai",
            "fireworks_ai",
            "deepseek",
            "mistral",
            "openrouter",
            "xai",
            "perplexity",
            "hosted_vllm",
            "ollama",
            "ollama_chat",
            "gemini",
            "azure_ai",
            "cohere",
        ] {
            assert!(provider_spec(family).is_some(), "{family}");
        }
    }

    #[test]
    fn the_readme_lists_the_table() {
        let readme = include_str!("../../../../README.md");
        let table = provider_table_markdown();
        assert!(
            readme.contains(&table),
            "README.md's provider table differs from the code's; it should read:\n{table}"
        );
    }

    #[test]
    fn azure_ai_takes_its_header_from_the_host() {
        let by_host = |base| auth_header(Auth::AzureAiByHost, base);
        assert_eq!(
            by_host("https://r.services.ai.azure.com/models"),
            Auth::ApiKey
        );
        assert_eq!(by_host("https://r.openai.azure.com"), Auth::ApiKey);
        assert_eq!(
            by_host("https://m.eastus2.models.ai.azure.com"),
            Auth::Bearer
        );
    }
}
