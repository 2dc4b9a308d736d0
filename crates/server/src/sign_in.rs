//! Where a proxy sends a browser that `/v1/verify` refused: the sign-in page, with the URL the
//! browser asked for as its `return_to`, percent-encoded.
//!
//! A proxy cannot always build that link itself: nginx has no way to percent-encode
//! `$request_uri`, so a query holding `&` would be cut at the first one. So a 401 of
//! `/v1/verify` carries the finished link in `X-Auth-Login`, and the proxy only redirects to it.
//! The original URL is read from what the proxy reports: `X-Original-URL` (nginx, set in its
//! configuration), or `X-Forwarded-Proto` + `X-Forwarded-Host` + `X-Forwarded-Uri` (Caddy's
//! `forward_auth`, Traefik's `forwardAuth`). What is not a plain http(s) URL is left out,
//! and the link then opens the sign-in page without a `return_to`; the page checks the target
//! against `allowed_origins` and `cookie_domain` at sign-in anyway, so a forged header can at
//! worst name a URL the page refuses.
//!
//! Only the refusal pays for this: the 200 answer of `/v1/verify` never reads these headers.

use axum::http::{HeaderMap, HeaderName, HeaderValue};

/// The header of a 401 from `/v1/verify` that holds the sign-in link.
pub static X_AUTH_LOGIN: HeaderName = HeaderName::from_static("x-auth-login");

/// Longer original URLs are left out of the link: browsers and proxies cap a request line
/// near 8 KiB, and the encoded URL may be three times its length.
const MAX_URL: usize = 2048;

/// `{public_url}/ui/login`, with `?return_to=` and the original URL when the proxy reported a
/// sane one.
pub fn login_link(headers: &HeaderMap, public_url: &str) -> HeaderValue {
    let mut link = format!("{public_url}/ui/login");
    if let Some(original) = original_url(headers) {
        link.push_str("?return_to=");
        percent_encode_into(&original, &mut link);
    }
    HeaderValue::from_str(&link).unwrap_or_else(|_| HeaderValue::from_static("/ui/login"))
}

/// The URL the client asked the proxy for, if the proxy reported it sanely.
fn original_url(headers: &HeaderMap) -> Option<String> {
    let text = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::trim)
    };
    if let Some(url) = text("x-original-url") {
        let (scheme, rest) = url.split_once("://")?;
        let authority_end = rest.find('/').unwrap_or(rest.len());
        let (host, path) = rest.split_at(authority_end);
        let path = if path.is_empty() { "/" } else { path };
        return build(scheme, host, path);
    }
    // A proxy chain may list several values; the first was written by the proxy nearest the
    // client, and names what the client asked for.
    let first = |name: &str| text(name).and_then(|v| v.split(',').next()).map(str::trim);
    build(
        first("x-forwarded-proto")?,
        first("x-forwarded-host")?,
        text("x-forwarded-uri").unwrap_or("/"),
    )
}

/// `scheme://host/path` when each part is what it should be: an http(s) scheme, a host name
/// or address with an optional port (no user-info, no spaces), a path starting with one `/`
/// in visible ASCII.
fn build(scheme: &str, host: &str, path: &str) -> Option<String> {
    let scheme = scheme.to_ascii_lowercase();
    let host_ok = !host.is_empty()
        && host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b':' | b'[' | b']'));
    let path_ok = path.starts_with('/')
        && !path.starts_with("//")
        && path.bytes().all(|b| b.is_ascii_graphic());
    let url = format!("{scheme}://{}{path}", host.to_ascii_lowercase());
    ((scheme == "http" || scheme == "https") && host_ok && path_ok && url.len() <= MAX_URL)
        .then_some(url)
}

/// RFC 3986 §2: every byte but the unreserved characters, so the value survives as one query
/// parameter whatever `&`, `=`, `#` or `+` it holds.
fn percent_encode_into(text: &str, out: &mut String) {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    for byte in text.bytes() {
        if byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(byte));
        } else {
            out.push('%');
            out.push(char::from(HEX[usize::from(byte >> 4)]));
            out.push(char::from(HEX[usize::from(byte & 0xf)]));
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;

    fn link(pairs: &[(&str, &str)]) -> String {
        let mut headers = HeaderMap::new();
        for (name, value) in pairs {
            headers.append(
                HeaderName::from_bytes(name.as_bytes()).unwrap(),
                HeaderValue::from_str(value).unwrap(),
            );
        }
        login_link(&headers, "https://auth.example.com")
            .to_str()
            .unwrap()
            .to_owned()
    }

    const LOGIN: &str = "https://auth.example.com/ui/login";

    #[test]
    fn the_original_url_is_encoded_whole_from_nginx() {
        assert_eq!(
            link(&[("x-original-url", "https://App.example.com/a/b?x=1&y=2+3#")]),
            format!(
                "{LOGIN}?return_to=https%3A%2F%2Fapp.example.com%2Fa%2Fb%3Fx%3D1%26y%3D2%2B3%23"
            )
        );
        assert_eq!(
            link(&[("x-original-url", "http://app.example.com:8443")]),
            format!("{LOGIN}?return_to=http%3A%2F%2Fapp.example.com%3A8443%2F")
        );
    }

    #[test]
    fn the_original_url_is_assembled_from_forwarded_headers() {
        assert_eq!(
            link(&[
                ("x-forwarded-proto", "https"),
                ("x-forwarded-host", "app.example.com, proxy.internal"),
                ("x-forwarded-uri", "/p?q=%20&r=1"),
            ]),
            format!("{LOGIN}?return_to=https%3A%2F%2Fapp.example.com%2Fp%3Fq%3D%2520%26r%3D1")
        );
        // No path reported: the root.
        assert_eq!(
            link(&[
                ("x-forwarded-proto", "http"),
                ("x-forwarded-host", "[::1]:8080")
            ]),
            format!("{LOGIN}?return_to=http%3A%2F%2F%5B%3A%3A1%5D%3A8080%2F")
        );
    }

    #[test]
    fn anything_insane_leaves_the_return_to_out() {
        for pairs in [
            &[][..],
            &[("x-original-url", "javascript:alert(1)")],
            &[("x-original-url", "ftp://app.example.com/")],
            &[("x-original-url", "https://user@app.example.com/")],
            &[("x-original-url", "https:///path")],
            &[("x-original-url", "https://app.example.com//evil.example/")],
            &[("x-forwarded-host", "app.example.com")],
            &[
                ("x-forwarded-proto", "https"),
                ("x-forwarded-host", "evil.example/x"),
            ],
            &[
                ("x-forwarded-proto", "https"),
                ("x-forwarded-host", "app.example.com"),
                ("x-forwarded-uri", "no-slash"),
            ],
        ] {
            assert_eq!(link(pairs), LOGIN, "{pairs:?}");
        }
        let long = format!("https://app.example.com/{}", "a".repeat(MAX_URL));
        assert_eq!(link(&[("x-original-url", &long)]), LOGIN);
    }
}
