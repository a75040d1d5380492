//! Choosing the backend: Redis when the config or `REDIS_URL` names one, else in memory.

use router::{Backend, RedisBackendConfig, RouterSettings};

use super::environ::Environment;
use super::error::ConfigError;

/// The backend the config selects and which setting selected it.
#[derive(Clone, Debug, Default)]
pub struct BackendChoice {
    /// What the router gets (`Debug` masks the Redis password).
    pub backend: Backend,
    /// `router_settings.redis_url`, `router_settings.redis_host`, `REDIS_URL`, or empty for memory.
    pub source: &'static str,
}

impl BackendChoice {
    /// A description safe to log: the URL with its password replaced by `***`.
    pub fn describe(&self) -> String {
        match &self.backend {
            Backend::Redis(cfg) => format!("redis {} (from {})", redact_url(&cfg.url), self.source),
            _ => "in-memory (single replica)".to_owned(),
        }
    }

    /// Whether state is shared through Redis.
    pub fn is_redis(&self) -> bool {
        matches!(self.backend, Backend::Redis(_))
    }

    /// The Redis URL, when the backend is Redis.
    #[cfg(test)]
    pub(crate) fn redis_url(&self) -> Option<&str> {
        match &self.backend {
            Backend::Redis(cfg) => Some(&cfg.url),
            _ => None,
        }
    }
}

/// `router_settings.redis_url`, else `redis_host`/`redis_port`/`redis_password`, else `REDIS_URL`, else memory.
pub(crate) fn choose_backend(
    settings: &RouterSettings,
    env: &Environment,
) -> Result<BackendChoice, ConfigError> {
    let (url, source) = if let Some(url) = &settings.redis_url {
        check_url(url.expose(), "router_settings.redis_url")?;
        (url.expose().to_owned(), "router_settings.redis_url")
    } else if let Some(host) = settings
        .redis_host
        .as_deref()
        .map(str::trim)
        .filter(|h| !h.is_empty())
    {
        let port = settings.redis_port.unwrap_or(6379);
        if port == 0 || port > u64::from(u16::MAX) {
            return Err(ConfigError::invalid(
                "router_settings.redis_port",
                format!("expected a port in 1..=65535, got {port}"),
            ));
        }
        if host.contains('/') || host.contains('@') {
            return Err(ConfigError::invalid(
                "router_settings.redis_host",
                "expected a host name or address (use router_settings.redis_url for a URL)",
            ));
        }
        let host = if host.contains(':') && !host.starts_with('[') {
            format!("[{host}]")
        } else {
            host.to_owned()
        };
        let auth = match &settings.redis_password {
            Some(p) if !p.expose().is_empty() => format!(":{}@", percent_encode(p.expose())),
            _ => String::new(),
        };
        (
            format!("redis://{auth}{host}:{port}/"),
            "router_settings.redis_host",
        )
    } else if let Some(url) = env.get("REDIS_URL").filter(|u| !u.trim().is_empty()) {
        check_url(&url, "REDIS_URL")?;
        (url, "REDIS_URL")
    } else {
        return Ok(BackendChoice::default());
    };
    let defaults = RedisBackendConfig::default();
    let key_prefix = settings
        .key_prefix
        .clone()
        .unwrap_or(defaults.key_prefix.clone());
    queue_core::Keyspace::new(key_prefix.clone())
        .map_err(|e| ConfigError::invalid("router_settings.key_prefix", e.to_string()))?;
    Ok(BackendChoice {
        backend: Backend::Redis(RedisBackendConfig {
            url,
            key_prefix,
            ..defaults
        }),
        source,
    })
}

fn check_url(url: &str, key: &str) -> Result<(), ConfigError> {
    let ok = ["redis://", "rediss://", "redis+unix://", "unix://"]
        .iter()
        .any(|scheme| url.starts_with(scheme));
    if ok {
        Ok(())
    } else {
        Err(ConfigError::invalid(
            key,
            format!(
                "expected a redis:// or rediss:// URL, got {}",
                redact_url(url)
            ),
        ))
    }
}

/// Percent-encodes everything but RFC 3986 unreserved characters, for a password inside a URL.
fn percent_encode(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for byte in text.bytes() {
        if byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(byte));
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

/// The URL with the password of its userinfo replaced by `***`.
pub(crate) fn redact_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return "***".to_owned();
    };
    // The userinfo ends at the last '@' before the path.
    let authority_end = rest.find('/').unwrap_or(rest.len());
    let Some(at) = rest[..authority_end].rfind('@') else {
        return url.to_owned();
    };
    let userinfo = &rest[..at];
    let user = match userinfo.split_once(':') {
        Some((user, _)) => format!("{user}:***"),
        None => "***".to_owned(),
    };
    format!("{scheme}://{user}{}", &rest[at..])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(yaml: &str) -> RouterSettings {
        serde_yaml::from_str(yaml).unwrap()
    }

    #[test]
    fn host_port_password_build_a_url() {
        let s = settings("redis_host: redis\nredis_port: 6380\nredis_password: 'p@ss:w/rd'\n");
        let choice = choose_backend(&s, &Environment::fixed(&[])).unwrap();
        assert_eq!(
            choice.redis_url(),
            Some("redis://:p%40ss%3Aw%2Frd@redis:6380/")
        );
        let shown = choice.describe();
        assert!(!shown.contains("p%40ss"), "{shown}");
        assert!(shown.contains("redis://:***@redis:6380/"), "{shown}");
        assert!(!format!("{choice:?}").contains("p%40ss"));
    }

    #[test]
    fn precedence_is_url_then_host_then_environment() {
        let env = Environment::fixed(&[("REDIS_URL", "redis://env:1/")]);
        let url = |s: &str| {
            let choice = choose_backend(&settings(s), &env).unwrap();
            choice.redis_url().unwrap_or("memory").to_owned()
        };
        assert_eq!(
            url("redis_url: redis://u:1/\nredis_host: h\n"),
            "redis://u:1/"
        );
        assert_eq!(url("redis_host: h\n"), "redis://h:6379/");
        assert_eq!(url("{}"), "redis://env:1/");
        assert!(!choose_backend(&settings("{}"), &Environment::fixed(&[]))
            .unwrap()
            .is_redis());
        let err = choose_backend(&settings("redis_url: 'http://x'"), &env).unwrap_err();
        assert!(
            err.to_string().contains("router_settings.redis_url"),
            "{err}"
        );
        let err =
            choose_backend(&settings("redis_host: h\nredis_port: 70000\n"), &env).unwrap_err();
        assert!(
            err.to_string().contains("router_settings.redis_port"),
            "{err}"
        );
        let err =
            choose_backend(&settings("redis_host: h\nkey_prefix: 'a{b'\n"), &env).unwrap_err();
        assert!(
            err.to_string().contains("router_settings.key_prefix"),
            "{err}"
        );
    }

    #[test]
    fn redaction_hides_passwords_only() {
        assert_eq!(redact_url("redis://:pw@h:1/0"), "redis://:***@h:1/0");
        assert_eq!(redact_url("rediss://user:pw@h:1"), "rediss://user:***@h:1");
        assert_eq!(redact_url("redis://h:1/"), "redis://h:1/");
    }
}
