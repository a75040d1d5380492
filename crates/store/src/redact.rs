//! Redis URLs as logs and error messages show them: [`redact_url`].

/// Query parameters that carry a password (`redis+unix:///run/redis.sock?pass=...`).
const SECRET_PARAMS: [&str; 2] = ["pass", "password"];

/// The URL with every password replaced by `***`: the password of its userinfo (the user name is kept)
/// and the value of a `pass` or `password` query parameter. Text that is not a URL is shown as `***`
/// (it may be anything, a bare password included).
///
/// ```
/// use store::redact_url;
///
/// assert_eq!(redact_url("redis://:hunter2@h:6379/0"), "redis://:***@h:6379/0");
/// assert_eq!(redact_url("rediss://app:hunter2@h:6380"), "rediss://app:***@h:6380");
/// assert_eq!(redact_url("redis+unix:///run/r.sock?db=1&pass=hunter2"), "redis+unix:///run/r.sock?db=1&pass=***");
/// assert_eq!(redact_url("redis://h:6379/"), "redis://h:6379/");
/// ```
pub fn redact_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return "***".to_owned();
    };
    let (location, query) = match rest.split_once('?') {
        Some((location, query)) => (location, Some(query)),
        None => (rest, None),
    };
    let mut out = String::with_capacity(url.len());
    out.push_str(scheme);
    out.push_str("://");
    // The userinfo ends at the last '@': an unencoded password may hold '/' or '@', a host and a port never
    // do. Unix socket URLs have no userinfo, and their path may hold '@'.
    let unix = scheme.ends_with("unix");
    match location.rfind('@').filter(|_| !unix) {
        Some(at) => {
            match location[..at].split_once(':') {
                Some((user, _)) => {
                    out.push_str(user);
                    out.push_str(":***");
                }
                None => out.push_str("***"),
            }
            out.push_str(&location[at..]);
        }
        None => out.push_str(location),
    }
    if let Some(query) = query {
        out.push('?');
        for (i, pair) in query.split('&').enumerate() {
            if i > 0 {
                out.push('&');
            }
            match pair.split_once('=') {
                Some((key, _)) if SECRET_PARAMS.iter().any(|p| key.eq_ignore_ascii_case(p)) => {
                    out.push_str(key);
                    out.push_str("=***");
                }
                _ => out.push_str(pair),
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::redact_url;

    #[test]
    fn passwords_are_hidden_and_nothing_else() {
        assert_eq!(redact_url("redis://:pw@h:1/0"), "redis://:***@h:1/0");
        assert_eq!(redact_url("rediss://user:pw@h:1"), "rediss://user:***@h:1");
        assert_eq!(redact_url("redis://h:1/"), "redis://h:1/");
        assert_eq!(redact_url("redis://pw@h:1"), "redis://***@h:1");
        assert_eq!(redact_url("redis://[::1]:6379/2"), "redis://[::1]:6379/2");
    }

    #[test]
    fn unencoded_slashes_and_ats_in_a_password_stay_hidden() {
        assert_eq!(redact_url("redis://:p/w@h:1/0"), "redis://:***@h:1/0");
        assert_eq!(redact_url("redis://u:p@w@h:1"), "redis://u:***@h:1");
    }

    #[test]
    fn query_passwords_are_hidden() {
        assert_eq!(
            redact_url("redis+unix:///tmp/a@b.sock?db=2&pass=pw"),
            "redis+unix:///tmp/a@b.sock?db=2&pass=***"
        );
        assert_eq!(
            redact_url("redis://h:1/?PASSWORD=pw&x=1"),
            "redis://h:1/?PASSWORD=***&x=1"
        );
    }

    #[test]
    fn text_that_is_not_a_url_is_hidden_whole() {
        assert_eq!(redact_url("hunter2"), "***");
    }
}
