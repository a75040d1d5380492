//! The binary's command line: `--version`, `check-config` (validation, masking, `os.environ/` errors) and start-up
//! failures. No server stays up.

mod common;

use common::{repo_root, run};

fn example(name: &str) -> String {
    repo_root()
        .join("examples")
        .join(name)
        .display()
        .to_string()
}

const EXAMPLE_ENV: &[(&str, &str)] = &[
    ("OPENAI_API_KEY", "sk-openai-secret-value-1"),
    (
        "AZURE_API_BASE",
        "https://example-resource.openai.azure.com",
    ),
    ("AZURE_API_KEY", "azure-secret-value-0000001"),
    ("REDIS_HOST", "redis.internal"),
    ("REDIS_PORT", "6380"),
    ("REDIS_PASSWORD", "redis-secret-pw"),
    ("LITELLM_MASTER_KEY", "sk-master-secret-value-9"),
];

#[test]
fn version_is_printed() {
    let (code, out, _) = run(&["--version"], &[]);
    assert_eq!(code, 0);
    assert!(out.starts_with("llm-scheduler "), "{out}");
}

#[test]
fn check_config_describes_the_examples_with_secrets_masked() {
    let (code, out, err) = run(&["check-config", &example("mock-config.yaml")], &[]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("gpt-4o (2 deployments)"), "{out}");
    assert!(
        out.contains("gpt-4o-mock-a -> openai/gpt-4o (mock_response)"),
        "{out}"
    );
    assert!(out.contains("in-memory"), "{out}");
    assert!(out.contains("fallbacks: gpt-4o -> gpt-4o-mini"), "{out}");
    assert!(!out.contains("sk-local-dev-key"), "{out}");

    let (code, out, err) = run(&["check-config", &example("config.yaml")], EXAMPLE_ENV);
    assert_eq!(code, 0, "{err}");
    for secret in [
        "sk-openai-secret-value-1",
        "azure-secret-value-0000001",
        "redis-secret-pw",
        "sk-master-secret-value-9",
    ] {
        assert!(!out.contains(secret), "{secret} printed:\n{out}");
    }
    assert!(
        out.contains("redis redis://:***@redis.internal:6380/"),
        "{out}"
    );
    assert!(
        out.contains(
            "gpt-4o-azure -> azure/gpt-4o-prod at https://example-resource.openai.azure.com"
        ),
        "{out}"
    );
    assert!(out.contains("api_key sk-…ue-1"), "{out}");
    assert!(out.contains("llama-3.1-8b (1 deployment)"), "{out}");

    let compose_env = [
        ("REDIS_HOST", "127.0.0.1"),
        ("REDIS_PORT", "6390"),
        ("LITELLM_MASTER_KEY", "sk-local-dev-key"),
    ];
    let (code, out, err) = run(
        &["check-config", &example("compose-config.yaml")],
        &compose_env,
    );
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("redis redis://127.0.0.1:6390/"), "{out}");
}

/// A LiteLLM config naming many providers by prefix, with no `api_base` where LiteLLM has a default, is valid;
/// a prefix that is not supported is reported and fails the check.
#[test]
fn check_config_accepts_provider_prefixes_and_fails_on_unsupported_ones() {
    let (code, out, err) = run(&["check-config", &example("providers-config.yaml")], &[]);
    assert_eq!(code, 0, "{out}\n{err}");
    assert!(out.contains("is valid"), "{out}");
    let mut prefixes = std::collections::BTreeSet::new();
    for line in out.lines().filter(|l| l.trim_start().starts_with("- ")) {
        if let Some((_, model)) = line.split_once(" -> ") {
            prefixes.insert(model.split('/').next().unwrap_or_default().to_owned());
        }
    }
    assert!(prefixes.len() >= 10, "{prefixes:?}\n{out}");
    assert!(
        out.contains("anthropic/claude-sonnet-4-5 at https://api.anthropic.com"),
        "{out}"
    );
    assert!(
        out.contains("groq/llama-3.1-8b-instant at https://api.groq.com/openai/v1"),
        "{out}"
    );
    assert!(!out.contains("error:"), "{out}");

    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("config.yaml");
    std::fs::write(
        &path,
        "model_list:\n  - model_name: a\n    litellm_params: { model: groq/llama }\n  \
         - model_name: b\n    litellm_params: { model: bedrock/anthropic.claude-v2 }\n",
    )
    .unwrap();
    let (code, out, err) = run(&["check-config", &path.display().to_string()], &[]);
    assert_eq!(code, 1, "{out}\n{err}");
    assert!(
        out.contains("error: model_list[1] (b -> bedrock/anthropic.claude-v2) is skipped"),
        "{out}"
    );
    assert!(out.contains("supported prefixes: openai"), "{out}");
    assert!(err.contains("not supported"), "{err}");
}

#[test]
fn a_missing_environment_variable_is_named_with_its_key() {
    let env: Vec<(&str, &str)> = EXAMPLE_ENV
        .iter()
        .copied()
        .filter(|(k, _)| *k != "AZURE_API_KEY")
        .collect();
    let (code, out, err) = run(&["check-config", &example("config.yaml")], &env);
    assert_eq!(code, 1, "{out}");
    assert!(err.contains("AZURE_API_KEY"), "{err}");
    assert!(
        err.contains("model_list[1].litellm_params.api_key"),
        "{err}"
    );

    // The server refuses to start the same way.
    let (code, _, err) = run(&["--config", &example("config.yaml"), "--port", "0"], &env);
    assert_eq!(code, 1);
    assert!(err.contains("AZURE_API_KEY"), "{err}");
}

#[test]
fn bad_configs_are_refused_with_the_key_path() {
    let dir = tempfile::tempdir().unwrap();
    let cases = [
        ("general_settings:\n  master_key: sk-1234\n", "publicly known"),
        (
            "model_list:\n  - model_name: g\n    litellm_params:\n      model: openai/x\n      rpm: many\n",
            "model_list[0].litellm_params.rpm",
        ),
        ("litellm_settings:\n  num_retries: [1]\n", "litellm_settings.num_retries"),
        // Checked by the router on the merged router_settings, reported where the file has it.
        (
            "model_list:\n  - model_name: g\n    litellm_params:\n      model: openai/x\n\
             litellm_settings:\n  fallbacks: [{g: [nowhere]}]\n",
            "invalid config at `litellm_settings.fallbacks[0].g[0]`: unknown model group `nowhere`",
        ),
        ("model_list: [\n", "YAML"),
    ];
    for (i, (text, needle)) in cases.iter().enumerate() {
        let path = dir.path().join(format!("c{i}.yaml"));
        std::fs::write(&path, text).unwrap();
        let (code, _, err) = run(&["check-config", path.to_str().unwrap()], &[]);
        assert_eq!(code, 1, "{text}");
        assert!(err.contains(needle), "{needle}: {err}");
    }
    let (code, _, err) = run(&["check-config", "/nonexistent/config.yaml"], &[]);
    assert_eq!(code, 1);
    assert!(err.contains("cannot read config file"), "{err}");
    let (code, _, err) = run(&[], &[]);
    assert_eq!(code, 1);
    assert!(err.contains("--config"), "{err}");
}

#[test]
fn zero_workers_are_refused_by_the_server_only() {
    let config = example("mock-config.yaml");
    let (code, _, err) = run(&["--workers", "0", "--config", &config], &[]);
    assert_eq!(code, 1);
    assert!(err.contains("--workers"), "{err}");
    // The variable is the server's: other subcommands ignore it.
    let (code, out, err) = run(
        &["check-config", &config],
        &[("LLM_SCHEDULER_WORKERS", "0")],
    );
    assert_eq!(code, 0, "{out}{err}");
}
