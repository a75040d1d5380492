//! The provider table: LiteLLM's provider prefixes (`openai/`, `azure/`, `hosted_vllm/`, ...) and how each one's
//! upstream is spoken to (API shape, default base, the variable holding its key).

/// How a deployment's upstream is spoken to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum ProviderKind {
    /// OpenAI's API or any OpenAI-compatible server (vLLM, Ollama, ...): `{base}/chat/completions`, Bearer key.
    OpenAi,
    /// Azure OpenAI: `{base}/openai/deployments/{model}/...?api-version=`, `api-key` header.
    Azure,
}

/// What the table says about one provider prefix.
pub(super) struct ProviderSpec {
    pub(super) kind: ProviderKind,
    pub(super) default_base: Option<&'static str>,
    pub(super) key_env: Option<&'static str>,
    /// The base must end in `/v1` (Ollama's OpenAI-compatible API lives there).
    pub(super) wants_v1: bool,
}

impl ProviderSpec {
    pub(super) const OPENAI_COMPATIBLE: ProviderSpec = ProviderSpec {
        kind: ProviderKind::OpenAi,
        default_base: None,
        key_env: None,
        wants_v1: false,
    };
}

pub(super) fn provider_spec(provider: &str) -> Option<ProviderSpec> {
    let openai = |default_base, key_env| ProviderSpec {
        kind: ProviderKind::OpenAi,
        default_base,
        key_env,
        wants_v1: false,
    };
    Some(match provider {
        "openai" | "text-completion-openai" => {
            openai(Some("https://api.openai.com/v1"), Some("OPENAI_API_KEY"))
        }
        "custom_openai" | "openai_like" | "litellm_proxy" => openai(None, None),
        "hosted_vllm" => openai(None, Some("HOSTED_VLLM_API_KEY")),
        "lm_studio" => openai(Some("http://localhost:1234/v1"), Some("LM_STUDIO_API_KEY")),
        "ollama" | "ollama_chat" => ProviderSpec {
            wants_v1: true,
            ..openai(Some("http://localhost:11434"), None)
        },
        "groq" => openai(Some("https://api.groq.com/openai/v1"), Some("GROQ_API_KEY")),
        "together_ai" => openai(
            Some("https://api.together.xyz/v1"),
            Some("TOGETHERAI_API_KEY"),
        ),
        "deepseek" => openai(
            Some("https://api.deepseek.com/v1"),
            Some("DEEPSEEK_API_KEY"),
        ),
        "mistral" => openai(Some("https://api.mistral.ai/v1"), Some("MISTRAL_API_KEY")),
        "fireworks_ai" => openai(
            Some("https://api.fireworks.ai/inference/v1"),
            Some("FIREWORKS_AI_API_KEY"),
        ),
        "openrouter" => openai(
            Some("https://openrouter.ai/api/v1"),
            Some("OPENROUTER_API_KEY"),
        ),
        "perplexity" => openai(
            Some("https://api.perplexity.ai"),
            Some("PERPLEXITYAI_API_KEY"),
        ),
        "deepinfra" => openai(
            Some("https://api.deepinfra.com/v1/openai"),
            Some("DEEPINFRA_API_KEY"),
        ),
        "xai" => openai(Some("https://api.x.ai/v1"), Some("XAI_API_KEY")),
        "azure" | "azure_text" => ProviderSpec {
            kind: ProviderKind::Azure,
            default_base: None,
            key_env: Some("AZURE_API_KEY"),
            wants_v1: false,
        },
        _ => return None,
    })
}

/// Azure `api-version` used when neither the deployment nor `AZURE_API_VERSION` names one.
pub(super) const AZURE_DEFAULT_API_VERSION: &str = "2024-10-21";
