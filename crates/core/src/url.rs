//! URL text as configuration and logs need it: the origin an http(s) URL names, and a URL
//! with its password hidden. Plain string work, so the modules that take URLs (configuration,
//! webhooks, the server's `Origin` check and delivery worker) share it without depending on
//! one another.

/// A URL fit for logs and error lines: any password in its user-info becomes `***`.
pub fn redact_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(authority_end);
    match authority.rsplit_once('@') {
        Some((userinfo, host)) => {
            let user = userinfo.split(':').next().unwrap_or_default();
            format!("{scheme}://{user}:***@{host}{tail}")
        }
        None => url.to_owned(),
    }
}

/// `scheme://host[:port]` of an http(s) URL, lower-cased; `None` for anything else.
pub fn origin_of(url: &str) -> Option<String> {
    let url = url.trim();
    let (scheme, rest) = url.split_once("://")?;
    let scheme = scheme.to_ascii_lowercase();
    if scheme != "http" && scheme != "https" {
        return None;
    }
    let authority = rest.split(['/', '?', '#']).next()?;
    if authority.is_empty() || authority.contains('@') || authority.contains(char::is_whitespace) {
        return None;
    }
    Some(format!("{scheme}://{}", authority.to_ascii_lowercase()))
}

/// Whether a cookie with `Domain=domain` reaches `host` (RFC 6265 §5.1.3 domain-match):
/// the host is the domain or one of its subdomains. Both are compared lower-cased; an IP
/// address matches nothing but itself.
pub fn domain_covers(domain: &str, host: &str) -> bool {
    let domain = domain.trim_start_matches('.');
    if host.eq_ignore_ascii_case(domain) {
        return true;
    }
    host.len() > domain.len() + 1
        && host
            .get(host.len() - domain.len()..)
            .is_some_and(|tail| tail.eq_ignore_ascii_case(domain))
        && host.as_bytes().get(host.len() - domain.len() - 1) == Some(&b'.')
        && host.parse::<std::net::IpAddr>().is_err()
}

/// The host of an http(s) URL, lower-cased, without port or brackets.
pub fn host_of(url: &str) -> Option<String> {
    let origin = origin_of(url)?;
    let authority = origin.split_once("://")?.1;
    let host = match authority.strip_prefix('[') {
        Some(v6) => v6.split(']').next()?,
        None => authority
            .rsplit_once(':')
            .map_or(authority, |(host, _)| host),
    };
    Some(host.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cookie_domain_covers_itself_and_its_subdomains_only() {
        assert!(domain_covers("example.com", "example.com"));
        assert!(domain_covers("example.com", "auth.example.com"));
        assert!(domain_covers("example.com", "a.b.EXAMPLE.com"));
        assert!(!domain_covers("example.com", "evil-example.com"));
        assert!(!domain_covers("example.com", "example.com.evil.com"));
        assert!(!domain_covers("example.com", "com"));
        assert_eq!(
            host_of("https://Auth.Example.com:8443/x").as_deref(),
            Some("auth.example.com")
        );
        assert_eq!(host_of("http://[::1]:80").as_deref(), Some("::1"));
        assert_eq!(host_of("http://127.0.0.1").as_deref(), Some("127.0.0.1"));
    }

    #[test]
    fn urls_are_redacted_for_logs() {
        assert_eq!(
            redact_url("postgres://tessera:hunter2@db:5432/x"),
            "postgres://tessera:***@db:5432/x"
        );
        assert_eq!(redact_url("redis://:pw@cache/0"), "redis://:***@cache/0");
        assert_eq!(redact_url("sqlite://tessera.db"), "sqlite://tessera.db");
        assert_eq!(redact_url("memory"), "memory");
    }
}
