use super::*;

fn load(text: &str, vars: &[(&str, &str)]) -> Result<Config, ConfigError> {
    let vars = vars.to_vec();
    parse(text, move |overrides| {
        let mut env = Environment::fixed(&vars);
        for (k, v) in overrides {
            env = env.with(&k, &v);
        }
        env
    })
}

const MINIMAL: &str =
    "model_list:\n  - model_name: g\n    litellm_params:\n      model: openai/x\n";

#[test]
fn a_minimal_config_runs_in_memory_and_open() {
    let config = load(MINIMAL, &[]).unwrap();
    assert_eq!(config.router.model_list.len(), 1);
    assert!(!config.backend.is_redis());
    assert!(config.master_key.is_none());
    assert_eq!(config.max_request_size, 10 * 1024 * 1024);
    assert!(
        config.unimplemented_keys.is_empty(),
        "{:?}",
        config.unimplemented_keys
    );
}

#[test]
fn litellm_settings_merge_into_router_settings_and_router_settings_win() {
    let config = load(
        &format!(
            "{MINIMAL}router_settings:\n  num_retries: 1\nlitellm_settings:\n  num_retries: 5\n  request_timeout: 30\n  \
             fallbacks: [{{g: [h]}}]\n  cache: true\n  cache_params: {{type: local, ttl: 60}}\n  allowed_fails: 4\n  \
             cooldown_time: 7\n  set_verbose: true\n  json_logs: true\n"
        ),
        &[],
    )
    .unwrap();
    let s = &config.router.settings;
    assert_eq!(s.num_retries, Some(1));
    assert_eq!(s.timeout, Some(30.0));
    assert_eq!(s.allowed_fails, Some(4));
    assert_eq!(s.cooldown_time, Some(7.0));
    assert_eq!(s.cache_responses, Some(true));
    assert_eq!(s.cache_kwargs.as_ref().and_then(|c| c.ttl), Some(60.0));
    assert_eq!(s.fallbacks.as_ref().map(Vec::len), Some(1));
    assert!(config.verbose && config.json_logs);
    assert_eq!(config.overridden_keys, vec!["litellm_settings.num_retries"]);
}

#[test]
fn unimplemented_keys_are_collected_with_their_paths() {
    let config = load(
        &format!(
            "{MINIMAL}      temperature: 0.2\n      vertex_project: p\n    custom_key: 1\n\
             router_settings:\n  provider_budget_config: {{}}\n\
             litellm_settings:\n  success_callback: [langfuse]\n  drop_params: true\n  stream_timeout: 5\n\
             \x20 require_auth_for_metrics_endpoint: true\n\
             general_settings:\n  database_url: postgres://x\n  master_key: sk-fine-and-random-0001\n\
             guardrails: []\n"
        ),
        &[],
    )
    .unwrap();
    // drop_params, stream_timeout and require_auth_for_metrics_endpoint are LiteLLM settings read here.
    assert!(config.metrics_require_auth);
    assert_eq!(config.router.settings.drop_params, Some(true));
    assert_eq!(config.router.settings.stream_timeout, Some(5.0));
    assert_eq!(
        config.unimplemented_keys,
        vec![
            "general_settings.database_url",
            "guardrails",
            "litellm_settings.success_callback",
            "model_list[0].custom_key",
            "model_list[0].litellm_params.vertex_project",
            "router_settings.provider_budget_config",
        ]
    );
}

#[test]
fn a_moved_key_is_reported_under_its_own_section() {
    let err = load(
        &format!("{MINIMAL}litellm_settings:\n  request_timeout: soon\n"),
        &[],
    )
    .unwrap_err();
    let text = err.to_string();
    assert!(text.contains("litellm_settings.request_timeout"), "{text}");
    let config = load(
        &format!(
            "{MINIMAL}litellm_settings:\n  cache_params: {{type: redis, host: h, supported_call_types: [acompletion]}}\n"
        ),
        &[],
    )
    .unwrap();
    assert_eq!(
        config.unimplemented_keys,
        vec!["litellm_settings.cache_params.supported_call_types"]
    );
}

#[test]
fn wrong_types_name_the_key_path() {
    for (yaml, path) in [
        ("model_list:\n  - model_name: g\n    litellm_params:\n      model: openai/x\n      rpm: lots\n",
         "model_list[0].litellm_params.rpm"),
        ("model_list: {a: 1}\n", "model_list"),
        (&format!("{MINIMAL}router_settings:\n  fallbacks: 3\n"), "router_settings.fallbacks"),
        (&format!("{MINIMAL}general_settings:\n  allow_weak_master_key: maybe\n"),
         "general_settings.allow_weak_master_key"),
        (&format!("{MINIMAL}general_settings:\n  max_request_size_mb: -1\n"),
         "general_settings.max_request_size_mb"),
        ("- a\n- b\n", "(top level)"),
    ] {
        let err = load(yaml, &[]).unwrap_err();
        assert!(err.to_string().contains(path), "{path}: {err}");
    }
    assert!(matches!(load("a: [", &[]), Err(ConfigError::Yaml(_))));
}

#[test]
fn environment_references_resolve_and_coerce() {
    let config = load(
        &format!(
            "{MINIMAL}      api_key: os.environ/KEY\nrouter_settings:\n  redis_host: os.environ/RH\n  \
             redis_port: os.environ/RP\n  redis_password: os.environ/RPW\n\
             general_settings:\n  master_key: os.environ/MK\n  max_request_size_mb: os.environ/SIZE\n  \
             allow_weak_master_key: os.environ/WEAK\n"
        ),
        &[("KEY", "sk-upstream"), ("RH", "10.0.0.5"), ("RP", "6380"), ("RPW", "12345"), ("MK", "sk-1234"),
          ("SIZE", "2"), ("WEAK", "true")],
    )
    .unwrap();
    let p = &config.router.model_list[0].litellm_params;
    assert_eq!(
        p.api_key.as_ref().map(router::Secret::expose),
        Some("sk-upstream")
    );
    assert_eq!(
        match &config.backend.backend {
            router::Backend::Redis(redis) => Some(redis.url.as_str()),
            router::Backend::Memory => None,
        },
        Some("redis://:12345@10.0.0.5:6380/")
    );
    assert_eq!(config.max_request_size, 2 * 1024 * 1024);
    assert!(config
        .master_key
        .as_ref()
        .is_some_and(|k| k.matches("sk-1234")));
}

#[test]
fn a_missing_variable_is_named_with_its_key() {
    let err = load(
        &format!("{MINIMAL}      api_key: os.environ/OPENAI_API_KEY_FOR_TEST\n"),
        &[],
    )
    .unwrap_err();
    let text = err.to_string();
    assert!(text.contains("OPENAI_API_KEY_FOR_TEST"), "{text}");
    assert!(
        text.contains("model_list[0].litellm_params.api_key"),
        "{text}"
    );
    let err = load(
        &format!("{MINIMAL}litellm_settings:\n  request_timeout: os.environ/NOPE\n"),
        &[],
    )
    .unwrap_err();
    assert!(
        err.to_string().contains("litellm_settings.request_timeout"),
        "{err}"
    );
}

#[test]
fn environment_variables_section_feeds_references() {
    let config = load(
        &format!("environment_variables:\n  MK: sk-from-the-file-0001\n{MINIMAL}general_settings:\n  master_key: os.environ/MK\n"),
        &[("MK", "sk-from-the-process-01")],
    )
    .unwrap();
    assert!(config
        .master_key
        .as_ref()
        .is_some_and(|k| k.matches("sk-from-the-file-0001")));
}

#[test]
fn publicly_known_master_keys_are_refused_unless_allowed() {
    let weak = format!("{MINIMAL}general_settings:\n  master_key: sk-1234\n");
    let err = load(&weak, &[]).unwrap_err();
    let text = err.to_string();
    assert!(
        text.contains("general_settings.master_key") && text.contains("allow_weak_master_key"),
        "{text}"
    );
    assert!(!text.contains("sk-1234"), "{text}");
    let allowed = format!("{weak}  allow_weak_master_key: true\n");
    assert!(load(&allowed, &[]).unwrap().master_key.is_some());
    let from_env = load(MINIMAL, &[("LITELLM_MASTER_KEY", "changeme")]).unwrap_err();
    assert!(
        from_env.to_string().contains("publicly known"),
        "{from_env}"
    );
}

#[test]
fn yaml_anchors_and_merge_keys_work() {
    let config = load(
        "x-base: &base\n  model: openai/x\n  rpm: 3\nmodel_list:\n  - model_name: g\n    litellm_params:\n      <<: *base\n      tpm: 9\n",
        &[],
    )
    .unwrap();
    let p = &config.router.model_list[0].litellm_params;
    assert_eq!((p.rpm, p.tpm), (Some(3), Some(9)));
    // A top-level key only used as an anchor is still reported (it is not a config key).
    assert_eq!(config.unimplemented_keys, vec!["x-base"]);
}

#[test]
fn an_empty_file_is_a_config_without_models() {
    let config = load("", &[]).unwrap();
    assert!(config.router.model_list.is_empty());
}

#[tokio::test]
async fn router_errors_name_the_key_where_the_file_has_it() {
    for (settings, path) in [
        (
            "litellm_settings:\n  fallbacks: [{g: [nowhere]}]\n",
            "litellm_settings.fallbacks[0].g[0]",
        ),
        (
            "litellm_settings:\n  context_window_fallbacks: [{nowhere: [g]}]\n",
            "litellm_settings.context_window_fallbacks[0].nowhere",
        ),
        (
            "litellm_settings:\n  cache: true\n  cache_params: {type: memcached}\n",
            "litellm_settings.cache_params.type",
        ),
        (
            "router_settings:\n  fallbacks: [{g: [nowhere]}]\n",
            "router_settings.fallbacks[0].g[0]",
        ),
    ] {
        let config = load(&format!("{MINIMAL}{settings}"), &[]).unwrap();
        match config.build_router().await {
            Err(router::RouterError::InvalidConfig { path: got, .. }) => {
                assert_eq!(got, path, "{settings}")
            }
            other => panic!("{settings}: expected a config error, got {other:?}"),
        }
    }
}

#[test]
fn client_side_overrides_are_off_unless_allowed() {
    assert!(!load(MINIMAL, &[]).unwrap().allow_client_side_overrides);
    let allowed = load(
        &format!("{MINIMAL}general_settings:\n  allow_client_side_overrides: true\n"),
        &[],
    )
    .unwrap();
    assert!(allowed.allow_client_side_overrides);
    assert!(
        allowed.unimplemented_keys.is_empty(),
        "{:?}",
        allowed.unimplemented_keys
    );
}

#[test]
fn connection_settings_have_defaults_and_are_checked() {
    let config = load(MINIMAL, &[]).unwrap();
    assert_eq!(config.connections, ConnectionSettings::default());
    assert_eq!(
        config.connections.keepalive_timeout,
        Duration::from_secs(75)
    );
    let config = load(
        &format!(
            "{MINIMAL}general_settings:\n  header_read_timeout: 2.5\n  keepalive_timeout: 1\n  \
             body_read_timeout: 4\n  max_connections: 3\n"
        ),
        &[],
    )
    .unwrap();
    let c = config.connections;
    assert_eq!(c.header_read_timeout, Duration::from_millis(2500));
    assert_eq!(c.keepalive_timeout, Duration::from_secs(1));
    assert_eq!(c.body_read_timeout, Duration::from_secs(4));
    assert_eq!(c.max_connections, 3);
    assert!(config.unimplemented_keys.is_empty());
    for (key, value) in [
        ("header_read_timeout", "0"),
        ("keepalive_timeout", "-1"),
        ("body_read_timeout", "1e12"),
        ("max_connections", "0"),
    ] {
        let err = load(
            &format!("{MINIMAL}general_settings:\n  {key}: {value}\n"),
            &[],
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains(&format!("general_settings.{key}")), "{err}");
    }
    let mut c = ConnectionSettings::default();
    c.set_keepalive_secs("--keepalive-timeout", 5.0).unwrap();
    assert_eq!(c.keepalive_timeout, Duration::from_secs(5));
    let err = c
        .set_keepalive_secs("--keepalive-timeout", f64::NAN)
        .unwrap_err();
    assert!(err.to_string().contains("--keepalive-timeout"), "{err}");
}

#[tokio::test]
async fn errors_of_the_caches_own_redis_name_the_cache_params() {
    let config = load(
        &format!(
            "{MINIMAL}litellm_settings:\n  cache: true\n  cache_params: {{type: redis, host: h, port: 70000}}\n"
        ),
        &[],
    )
    .unwrap();
    let err = config.build_router().await.expect_err("a bad port");
    let text = err.to_string();
    assert!(
        text.contains("litellm_settings.cache_params.port"),
        "{text}"
    );
}

#[test]
fn litellms_cluster_sentinel_and_tls_keys_are_read_where_litellm_writes_them() {
    let config = load(
        &format!(
            "{MINIMAL}litellm_settings:\n  cache: true\n  cache_params: {{type: redis, \
             redis_startup_nodes: [{{host: 127.0.0.1, port: '7001'}}], ssl: true, ssl_ca_certs: /ca.pem}}\n"
        ),
        &[],
    )
    .unwrap();
    assert!(
        config.unimplemented_keys.is_empty(),
        "{:?}",
        config.unimplemented_keys
    );
    let config = load(
        &format!(
            "{MINIMAL}router_settings:\n  sentinel_nodes: [[127.0.0.1, 26379]]\n  service_name: mymaster\n  \
             sentinel_password: s\n  redis_password: p\n"
        ),
        &[],
    )
    .unwrap();
    assert!(
        config.unimplemented_keys.is_empty(),
        "{:?}",
        config.unimplemented_keys
    );
}
