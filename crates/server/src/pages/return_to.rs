//! Where a browser may be sent after signing in (SPEC §3 `/ui/login?return_to=URL`). An
//! authentication server that redirects anywhere it is asked to is an open redirect: a link
//! to the real sign-in page that lands the user, signed in and trusting, on a look-alike
//! site. So `return_to` is judged by what a browser would do with it, parsed as browsers parse
//! (the WHATWG URL standard, via the `url` crate), and accepted only when it is:
//!
//! - a path on this server: starts with one `/` (not `//host` or `/\host`, which browsers
//!   read as another host, nor their percent-encoded forms), resolved against `public_url`;
//! - an absolute `http(s)` URL whose origin is `public_url`'s or one of `allowed_origins`;
//! - with `cookie_domain` set, an `https` URL whose host is that domain or a subdomain of it
//!   (the applications the session cookie is shared with).
//!
//! Whatever else is refused outright, never silently replaced: the pages answer 400 with a
//! page saying why (as Ory Kratos answers a `return_to` outside its allow list), so a broken
//! link is noticed by whoever made it rather than dropping users somewhere unexpected.
//! Userinfo (`https://example.com@evil.com`), backslashes, whitespace and control characters
//! (which browsers strip or rewrite before navigating) are refused wherever they appear.

use tessera_core::config::Config;
use tessera_core::url::domain_covers;
use url::{Host, Url};

/// Longer `return_to` values are refused: no real page needs more, and the value is echoed
/// into the sign-in form.
pub const MAX_LEN: usize = 2048;

/// The destinations a deployment allows, read once from its configuration.
#[derive(Debug, Clone)]
pub struct ReturnPolicy {
    /// `public_url`, the base relative paths resolve against; `None` only if it cannot be
    /// parsed as a URL, and then no relative path is accepted.
    public: Option<Url>,
    /// `allowed_origins` and `public_url`'s origin, serialised as `Url::origin` does (lower
    /// case, default ports left out), so they compare equal to a parsed URL's origin.
    origins: Vec<String>,
    /// `cookie_domain`, lower case.
    cookie_domain: Option<String>,
}

/// An accepted destination: absolute, normalised by the URL parser, safe to put in a
/// `Location` header and back into a form.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReturnTo(Url);

impl ReturnTo {
    pub fn as_str(&self) -> &str {
        self.0.as_str()
    }

    /// `scheme://host[:port]`, for the page's CSP `form-action` (browsers apply it to the
    /// redirect that follows the form's post).
    pub fn origin(&self) -> String {
        self.0.origin().ascii_serialization()
    }
}

/// Why a `return_to` was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    TooLong,
    /// Whitespace, control characters or a backslash: browsers rewrite these before
    /// navigating, so the text does not say where it leads.
    Malformed,
    /// Neither a path on this server nor a URL on an allowed origin.
    NotAllowed,
}

impl Refusal {
    /// What the page says, beside the sign-in form.
    pub fn message(self) -> &'static str {
        match self {
            Self::TooLong => "The address to return to after signing in is too long.",
            Self::Malformed => {
                "The address to return to after signing in contains spaces, control characters or backslashes."
            }
            Self::NotAllowed => {
                "The address to return to after signing in is not a page of this site or of a site it signs in to, so you will not be sent there."
            }
        }
    }
}

impl ReturnPolicy {
    pub fn from_config(config: &Config) -> Self {
        let public = Url::parse(&config.mail.public_url).ok();
        let mut origins: Vec<String> = config
            .allowed_origins
            .iter()
            .filter_map(|origin| Url::parse(origin).ok())
            .map(|url| url.origin().ascii_serialization())
            .collect();
        if let Some(public) = &public {
            origins.push(public.origin().ascii_serialization());
        }
        Self {
            public,
            origins,
            cookie_domain: config.cookie_domain.clone(),
        }
    }

    /// Where the browser goes after signing in when it asked for nothing: its devices.
    pub fn default_destination(&self) -> String {
        match &self.public {
            Some(public) => format!("{}/ui/devices", public.as_str().trim_end_matches('/')),
            None => "/ui/devices".to_owned(),
        }
    }

    /// Judges `raw` (see the module documentation).
    pub fn check(&self, raw: &str) -> Result<ReturnTo, Refusal> {
        if raw.len() > MAX_LEN {
            return Err(Refusal::TooLong);
        }
        if raw
            .chars()
            .any(|c| c.is_whitespace() || c.is_control() || c == '\\')
        {
            return Err(Refusal::Malformed);
        }
        if raw.starts_with('/') {
            return self.check_path(raw);
        }
        let url = Url::parse(raw).map_err(|_| Refusal::NotAllowed)?;
        if !matches!(url.scheme(), "http" | "https")
            || !url.username().is_empty()
            || url.password().is_some()
        {
            return Err(Refusal::NotAllowed);
        }
        let origin = url.origin().ascii_serialization();
        let on_allowed_origin = self.origins.contains(&origin);
        let under_cookie_domain = url.scheme() == "https"
            && match (&self.cookie_domain, url.host()) {
                (Some(domain), Some(Host::Domain(host))) => domain_covers(domain, host),
                _ => false,
            };
        if on_allowed_origin || under_cookie_domain {
            Ok(ReturnTo(url))
        } else {
            Err(Refusal::NotAllowed)
        }
    }

    /// A path on this server. `//host` is another host to a browser; so is `/%2F/host` to
    /// servers that decode the path before redirecting again, so encoded slashes,
    /// backslashes and percent signs right after the first `/` are refused too.
    fn check_path(&self, raw: &str) -> Result<ReturnTo, Refusal> {
        let second = raw.get(1..4).unwrap_or_default().to_ascii_lowercase();
        if raw.starts_with("//") || ["%2f", "%5c", "%25"].contains(&second.as_str()) {
            return Err(Refusal::NotAllowed);
        }
        let public = self.public.as_ref().ok_or(Refusal::NotAllowed)?;
        let url = public.join(raw).map_err(|_| Refusal::NotAllowed)?;
        // Belt and braces: whatever the parser made of it must still be this server.
        if url.origin() != public.origin() || !url.username().is_empty() {
            return Err(Refusal::NotAllowed);
        }
        Ok(ReturnTo(url))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use std::path::Path;

    use tessera_core::config::ConfigLayer;

    use super::*;

    fn policy(settings: &str) -> ReturnPolicy {
        let config = ConfigLayer::from_toml(settings, Path::new("test.toml"))
            .unwrap()
            .resolve()
            .unwrap();
        ReturnPolicy::from_config(&config)
    }

    /// `public_url` `https://auth.example.com`, an app on its own origin, and `cookie_domain`.
    fn example() -> ReturnPolicy {
        policy(
            "issuer = \"https://auth.example.com\"\n\
             allowed_origins = [\"https://auth.example.com\", \"https://app.partner.org:8443\"]\n\
             cookie_domain = \"example.com\"",
        )
    }

    fn accepted(policy: &ReturnPolicy, raw: &str) -> String {
        match policy.check(raw) {
            Ok(to) => to.as_str().to_owned(),
            Err(refusal) => panic!("{raw} refused: {refusal:?}"),
        }
    }

    #[test]
    fn paths_on_this_server_are_accepted_and_made_absolute() {
        let p = example();
        assert_eq!(accepted(&p, "/"), "https://auth.example.com/");
        assert_eq!(
            accepted(&p, "/ui/devices?x=1#top"),
            "https://auth.example.com/ui/devices?x=1#top"
        );
        // Dot segments stay on this server.
        assert_eq!(accepted(&p, "/a/../../b"), "https://auth.example.com/b");
        // A `javascript:` lookalike that is a path is just a path.
        assert_eq!(
            accepted(&p, "/javascript:alert(1)"),
            "https://auth.example.com/javascript:alert(1)"
        );
    }

    #[test]
    fn allowed_origins_public_url_and_the_cookie_domain_are_accepted() {
        let p = example();
        for raw in [
            "https://auth.example.com/after",
            "HTTPS://AUTH.EXAMPLE.COM/after",
            "https://app.partner.org:8443/welcome?x=1",
            "https://example.com/",
            "https://app.example.com/dashboard",
            "https://a.b.example.com:8443/deep",
        ] {
            assert!(p.check(raw).is_ok(), "{raw}");
        }
        let to = p.check("https://app.partner.org:8443/welcome").unwrap();
        assert_eq!(to.origin(), "https://app.partner.org:8443");
    }

    #[test]
    fn open_redirect_attempts_are_refused() {
        let p = example();
        for raw in [
            // Another site, plainly or dressed up.
            "https://evil.com",
            "https://evil.com/https://auth.example.com",
            "https://example.com.evil.com/",
            "https://evil-example.com/",
            "https://auth.example.com.evil.com/",
            // Scheme-relative and scheme-without-slashes forms of another host.
            "//evil.com",
            "//evil.com/path",
            "///evil.com",
            "https:evil.com",
            "https:/evil.com",
            "https:///evil.com",
            // Userinfo: the host is the part after the `@`.
            "https://example.com@evil.com",
            "https://auth.example.com@evil.com/",
            "https://auth.example.com:pw@evil.com/",
            "https://user@auth.example.com/",
            // Backslashes, which browsers read as slashes.
            "/\\evil.com",
            "\\\\evil.com",
            "/\\/evil.com",
            "https://auth.example.com\\@evil.com",
            "https:\\\\evil.com",
            // Encoded slashes and backslashes right after the first slash.
            "/%2F%2Fevil.com",
            "/%2f/evil.com",
            "/%5C%5Cevil.com",
            "/%252F%252Fevil.com",
            "%2F%2Fevil.com",
            // Whitespace and control characters that browsers strip.
            "/\t/evil.com",
            "/\n/evil.com",
            " https://evil.com",
            "https://auth.example.com/\u{0}",
            // Schemes that run code or are not web pages.
            "javascript:alert(1)",
            "JavaScript://auth.example.com/%0Aalert(1)",
            "data:text/html,<script>alert(1)</script>",
            "file:///etc/passwd",
            "ftp://auth.example.com/",
            // Plain http under the cookie domain: only https hosts share the session.
            "http://app.example.com/",
            // Not a path and not a URL.
            "dashboard",
            "",
            // The right host on another port is another origin.
            "https://app.partner.org/welcome",
            "http://app.partner.org:8443/welcome",
        ] {
            assert!(p.check(raw).is_err(), "{raw:?} was accepted");
        }
        assert_eq!(
            p.check(&format!("/{}", "a".repeat(MAX_LEN))),
            Err(Refusal::TooLong)
        );
        assert_eq!(p.check("/\\evil.com"), Err(Refusal::Malformed));
        assert_eq!(p.check("https://evil.com"), Err(Refusal::NotAllowed));
    }

    #[test]
    fn without_a_cookie_domain_its_subdomains_are_other_sites() {
        let p = policy(
            "issuer = \"https://auth.example.com\"\nallowed_origins = \"https://auth.example.com\"",
        );
        assert!(p.check("https://auth.example.com/x").is_ok());
        assert!(p.check("/x").is_ok());
        assert_eq!(
            p.check("https://app.example.com/"),
            Err(Refusal::NotAllowed)
        );
        assert_eq!(p.check("https://example.com/"), Err(Refusal::NotAllowed));
    }

    #[test]
    fn public_url_with_a_path_and_default_ports_compare_as_origins() {
        let p = policy(
            "issuer = \"https://id.example.org\"\npublic_url = \"https://id.example.org/auth\"\n\
             allowed_origins = \"https://shop.example.net:443\"",
        );
        assert_eq!(accepted(&p, "/home"), "https://id.example.org/home");
        assert!(p.check("https://shop.example.net/cart").is_ok());
        assert_eq!(
            p.default_destination(),
            "https://id.example.org/auth/ui/devices"
        );
    }
}
