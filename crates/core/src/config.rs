//! Configuration per SPEC §2: every setting has one key, read from the TOML file, then the
//! environment (`TESSERA_` + KEY), then `serve` flags (`--key-with-dashes`); later sources win.
//! Each source is a `figment` provider of raw values; figment layers them and tags every
//! value with the metadata of its source. One parser per key turns the winner into a typed
//! value, so the three sources cannot drift apart and every error names the key and where its
//! value came from. The sources are read here rather than by figment's own `Toml` and `Env`
//! providers: the file must refuse unknown keys with a one-line message, and environment
//! values must stay text (figment's `Env` would turn `[a]` into a list and `1` into a number)
//! and be read through a lookup that tests can replace.

use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use figment::value::{Dict, Map, Value};
use figment::{Figment, Metadata, Profile, Provider};

use crate::keys::Algorithm;
use crate::url::{origin_of, redact_url};
use crate::webhooks::{EventType, Webhook, WebhookSecret};

/// One setting: its key and what `--help` says of it.
pub struct Setting {
    pub key: &'static str,
    pub help: &'static str,
}

/// Every key Tessera reads, in the order of SPEC §2.
pub const SETTINGS: &[Setting] = &[
    Setting { key: "listen", help: "address to listen on [default: 127.0.0.1:8080]" },
    Setting { key: "database", help: "sqlite://PATH, postgres://… or memory [default: sqlite://tessera.db]" },
    Setting { key: "database_pool_size", help: "PostgreSQL connections per node [default: 10]" },
    Setting { key: "redis", help: "redis://… carries the revocation feed over pub/sub [default: unset]" },
    Setting { key: "redis_prefix", help: "prefix of every Redis key and channel [default: tessera:]" },
    Setting { key: "issuer", help: "the `iss` claim and metadata issuer [default: http://<listen>]" },
    Setting { key: "audience", help: "the `aud` claim of access tokens [default: tessera]" },
    Setting { key: "signing_alg", help: "EdDSA, ES256, RS256 or HS256 [default: EdDSA]" },
    Setting { key: "access_token_ttl", help: "access token lifetime [default: 15m]" },
    Setting { key: "refresh_token_ttl", help: "absolute lifetime of a refresh family [default: 30d]" },
    Setting { key: "refresh_grace", help: "window in which the previous refresh token may be replayed [default: 10s; 0: off]" },
    Setting { key: "session_idle_timeout", help: "cookie session idle timeout [default: 24h]" },
    Setting { key: "session_absolute_timeout", help: "cookie session absolute timeout [default: 7d]" },
    Setting { key: "revocation_mode", help: "none, cached or strict [default: cached]" },
    Setting { key: "max_staleness", help: "feed silence before cached falls back to strict [default: 5s]" },
    Setting { key: "token_cache_size", help: "verified access tokens held per node, keyed by the token's hash [default: 65536; 0: off]" },
    Setting { key: "token_cache_ttl", help: "how long a verified access token is held before its signature is checked again [default: 60s]" },
    Setting { key: "cookie_name", help: "session cookie name [default: __Host-tessera_session]" },
    Setting { key: "cookie_secure", help: "Secure cookies and the __Host- prefix; false for plain-HTTP development [default: true]" },
    Setting { key: "cookie_domain", help: "a domain such as example.com whose subdomains share the session cookie (then named __Secure-…) [default: unset, host-only]" },
    Setting { key: "allowed_origins", help: "comma-separated origins allowed on cookie requests [default: the issuer's origin]" },
    Setting { key: "master_key_file", help: "file holding the master key, created 0600 [default: tessera.key beside the database]" },
    Setting { key: "login_max_failures", help: "failed logins per account per window before 429, except from that account's known devices [default: 5]" },
    Setting { key: "device_max_failures", help: "failed logins per device cookie per window [default: 10]" },
    Setting { key: "login_ip_max_failures", help: "failed logins per client address per window [default: 100]" },
    Setting { key: "login_failure_window", help: "the window the failure limits count in [default: 15m]" },
    Setting { key: "signup_ip_max", help: "sign-ups per client address per hour [default: 20]" },
    Setting { key: "trusted_proxies", help: "comma-separated CIDRs whose X-Forwarded-For is believed [default: none]" },
    Setting { key: "http_header_timeout", help: "a connection that has not sent its headers by then is closed [default: 10s]" },
    Setting { key: "http_idle_timeout", help: "idle keep-alive connections are closed after it [default: 60s]" },
    Setting { key: "max_connections", help: "open connections per node, beyond which new ones wait [default: 4096]" },
    Setting { key: "public_url", help: "base of the links in mails and of the pages [default: the issuer]" },
    Setting { key: "smtp_url", help: "smtps://host:465, smtp://host:587 (STARTTLS) or smtp://host:port?tls=none; user and password in the URL [default: unset, no mail is sent]" },
    Setting { key: "mail_from", help: "the From of mails [default: Tessera <no-reply@localhost>]" },
    Setting { key: "require_verified_email", help: "refuse login and the password grant until the address is verified [default: false]" },
    Setting { key: "recovery_max", help: "recovery mails per account per hour [default: 5]" },
    Setting { key: "metrics_listen", help: "address of /metrics, served there only; port 0 picks a free one [default: 127.0.0.1:9464]" },
];

/// Keys only the TOML file sets: their values are tables, which have no environment or flag
/// form. `[[webhooks]]` (SPEC §3): each table has `url`, `secret` and `events`.
pub const FILE_ONLY: &[&str] = &["webhooks"];

/// One source's values under the metadata that names where they came from: the file by its
/// path, the environment and the flags by an interpolater that spells a key the way that
/// source does (`TESSERA_ACCESS_TOKEN_TTL`, `--access-token-ttl`).
struct Layer {
    metadata: Metadata,
    values: Dict,
}

impl Provider for Layer {
    fn metadata(&self) -> Metadata {
        self.metadata.clone()
    }

    fn data(&self) -> Result<Map<Profile, Dict>, figment::Error> {
        Ok(Profile::Default.collect(self.values.clone()))
    }
}

/// One or more sources' settings, layered but not yet interpreted.
#[derive(Debug, Clone, Default)]
pub struct ConfigLayer {
    figment: Figment,
}

/// One clear line naming the key (SPEC §2).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct ConfigError(String);

impl ConfigError {
    fn invalid(key: &str, source: &Metadata, expected: &str) -> Self {
        Self(format!(
            "invalid value for `{key}` ({}): expected {expected}",
            from(key, source)
        ))
    }

    fn missing(key: &str, source: &Metadata) -> Self {
        Self(format!("missing key `{key}` {}", from(key, source)))
    }

    fn unknown(key: &str, source: &Metadata) -> Self {
        Self(format!("unknown key `{key}` {}", from(key, source)))
    }
}

/// Where a key's value was read, as an error message names it.
fn from(key: &str, source: &Metadata) -> String {
    match &source.source {
        Some(figment::Source::File(path)) => format!("in {}", path.display()),
        _ => format!("from {}", source.interpolate(&Profile::Default, &[key])),
    }
}

fn known(key: &str) -> Option<&'static str> {
    SETTINGS.iter().map(|s| s.key).find(|k| *k == key)
}

fn known_in_file(key: &str) -> Option<&'static str> {
    known(key).or_else(|| FILE_ONLY.iter().copied().find(|k| *k == key))
}

pub fn env_name(key: &str) -> String {
    format!("TESSERA_{}", key.to_ascii_uppercase())
}

/// Items of a list setting: a TOML array of strings, or comma-separated text.
fn list(value: &Value) -> Option<Vec<String>> {
    match value {
        Value::String(_, text) => Some(
            text.split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(str::to_owned)
                .collect(),
        ),
        Value::Array(_, items) => items
            .iter()
            .map(|v| v.as_str().map(str::to_owned))
            .collect(),
        _ => None,
    }
}

/// A value as the user wrote it, for an error message that quotes it.
fn shown(value: &Value) -> String {
    match value {
        Value::String(_, text) => text.clone(),
        Value::Char(_, c) => c.to_string(),
        Value::Bool(_, b) => b.to_string(),
        Value::Num(_, n) => n
            .to_i128()
            .map(|n| n.to_string())
            .or_else(|| n.to_u128().map(|n| n.to_string()))
            .or_else(|| n.to_f64().map(|n| n.to_string()))
            .unwrap_or_default(),
        Value::Array(..) => "a list".to_owned(),
        Value::Dict(..) => "a table".to_owned(),
        Value::Empty(..) => "nothing".to_owned(),
    }
}

impl ConfigLayer {
    fn of(metadata: Metadata, values: Dict) -> Self {
        Self {
            figment: Figment::from(Layer { metadata, values }),
        }
    }

    /// Parses a TOML file's text. Unknown keys are refused so a typo cannot silently leave a
    /// default in force.
    pub fn from_toml(text: &str, path: &Path) -> Result<Self, ConfigError> {
        let table: toml::Table = text.parse().map_err(|e: toml::de::Error| {
            ConfigError(format!(
                "{}: not valid TOML: {}",
                path.display(),
                e.message()
            ))
        })?;
        if let Some(key) = table.keys().find(|key| known_in_file(key).is_none()) {
            return Err(ConfigError(format!(
                "unknown key `{key}` in {}",
                path.display()
            )));
        }
        let values = Value::serialize(&table)
            .ok()
            .and_then(Value::into_dict)
            .ok_or_else(|| ConfigError(format!("{}: not a TOML table", path.display())))?;
        Ok(Self::of(Metadata::from("TOML file", path), values))
    }

    /// Reads `path`; a missing file is an empty layer only when `required` is false (the
    /// implicit `tessera.toml`), an error when the user named it.
    pub fn from_toml_file(path: &Path, required: bool) -> Result<Self, ConfigError> {
        match std::fs::read_to_string(path) {
            Ok(text) => Self::from_toml(&text, path),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && !required => Ok(Self::default()),
            Err(e) => Err(ConfigError(format!(
                "cannot read config file {}: {e}",
                path.display()
            ))),
        }
    }

    /// `TESSERA_<KEY>` for every key, looked up through `lookup` (the process environment in
    /// production, a map in tests). Values stay text, as the per-key parsers expect, and
    /// variables that are not settings are not read at all.
    pub fn from_env(lookup: impl Fn(&str) -> Option<String>) -> Self {
        let values = SETTINGS
            .iter()
            .filter_map(|s| lookup(&env_name(s.key)).map(|v| (s.key.to_owned(), Value::from(v))))
            .collect();
        let metadata = Metadata::named("environment variable")
            .interpolater(|_: &Profile, keys: &[&str]| env_name(&keys.join(".")));
        Self::of(metadata, values)
    }

    /// Key/value pairs given as command-line flags.
    pub fn from_flags<'a>(
        pairs: impl IntoIterator<Item = (&'a str, String)>,
    ) -> Result<Self, ConfigError> {
        let mut values = Dict::new();
        for (key, value) in pairs {
            let Some(key) = known(key) else {
                return Err(ConfigError(format!("unknown setting `{key}`")));
            };
            values.insert(key.to_owned(), Value::from(value));
        }
        let metadata =
            Metadata::named("command-line flag").interpolater(|_: &Profile, keys: &[&str]| {
                format!("--{}", keys.join(".").replace('_', "-"))
            });
        Ok(Self::of(metadata, values))
    }

    /// `self` over `lower`: each key `self` sets wins.
    #[must_use]
    pub fn over(self, lower: Self) -> Self {
        Self {
            figment: lower.figment.merge(self.figment),
        }
    }

    /// The winning value of `key` and the metadata of the source it came from.
    fn value(&self, key: &str) -> Option<(Value, &Metadata)> {
        let value = self.figment.find_value(key).ok()?;
        let source = self.figment.get_metadata(value.tag())?;
        Some((value, source))
    }

    fn text(&self, key: &'static str) -> Result<Option<(String, &Metadata)>, ConfigError> {
        match self.value(key) {
            None => Ok(None),
            Some((Value::String(_, text), source)) => Ok(Some((text.trim().to_owned(), source))),
            Some((Value::Num(_, n), source)) => match n.to_i128() {
                Some(n) => Ok(Some((n.to_string(), source))),
                None => Err(ConfigError::invalid(key, source, "a string")),
            },
            Some((Value::Bool(_, b), source)) => Ok(Some((b.to_string(), source))),
            Some((_, source)) => Err(ConfigError::invalid(key, source, "a string")),
        }
    }

    fn parsed<T>(
        &self,
        key: &'static str,
        expected: &str,
        parse: impl Fn(&str) -> Option<T>,
    ) -> Result<Option<T>, ConfigError> {
        match self.text(key)? {
            None => Ok(None),
            Some((text, source)) => parse(&text)
                .map(Some)
                .ok_or_else(|| ConfigError::invalid(key, source, expected)),
        }
    }

    /// A positive duration of at least `min`, in whole milliseconds (the resolution of every
    /// stored time); `0` only where `zero_means_off`.
    fn duration_of(
        &self,
        key: &'static str,
        default: Duration,
        min: Duration,
        zero_means_off: bool,
    ) -> Result<Duration, ConfigError> {
        let expected = if zero_means_off {
            "a duration such as 15m, 30d or 10s, or 0 for off"
        } else if min >= Duration::from_secs(1) {
            "a duration of whole seconds such as 15m, 30d or 10s"
        } else {
            "a duration such as 15m, 30d, 10s or 500ms"
        };
        let parsed = self.parsed(key, expected, |text| {
            let duration = humantime::parse_duration(text).ok()?;
            if duration.is_zero() {
                return zero_means_off.then_some(duration);
            }
            let whole = if min >= Duration::from_secs(1) {
                duration.subsec_nanos() == 0
            } else {
                duration.subsec_nanos() % 1_000_000 == 0
            };
            (whole && duration >= min).then_some(duration)
        })?;
        Ok(parsed.unwrap_or(default))
    }

    fn pool_size(&self) -> Result<u32, ConfigError> {
        Ok(self
            .parsed("database_pool_size", "a whole number from 1 to 1000", |t| {
                t.parse::<u32>().ok().filter(|n| (1..=1000).contains(n))
            })?
            .unwrap_or(10))
    }

    fn redis(&self) -> Result<Option<String>, ConfigError> {
        self.parsed("redis", "a redis:// URL", |t| {
            (t.starts_with("redis://") || t.starts_with("rediss://")).then(|| t.to_owned())
        })
    }

    fn redis_prefix(&self) -> Result<String, ConfigError> {
        Ok(self
            .parsed("redis_prefix", "printable characters without spaces", |t| {
                (!t.chars().any(|c| c.is_whitespace() || c.is_control())).then(|| t.to_owned())
            })?
            .unwrap_or_else(|| "tessera:".to_owned()))
    }

    fn count(&self, key: &'static str, default: u32, max: u32) -> Result<u32, ConfigError> {
        Ok(self
            .parsed(key, &format!("a whole number from 1 to {max}"), |t| {
                t.parse::<u32>().ok().filter(|n| (1..=max).contains(n))
            })?
            .unwrap_or(default))
    }

    fn address(&self, key: &'static str, default: SocketAddr) -> Result<SocketAddr, ConfigError> {
        Ok(self
            .parsed(key, "an address such as 127.0.0.1:8080", |t| {
                t.parse::<SocketAddr>().ok()
            })?
            .unwrap_or(default))
    }

    /// `token_cache_size = 0` turns the cache off; the size is bounded so that a typo cannot
    /// reserve gigabytes (each entry holds the claims, about half a kibibyte).
    fn token_cache(&self) -> Result<TokenCacheLimits, ConfigError> {
        let size = self
            .parsed(
                "token_cache_size",
                "a whole number from 0 to 16777216",
                |t| t.parse::<usize>().ok().filter(|n| *n <= 1 << 24),
            )?
            .unwrap_or(65_536);
        Ok(TokenCacheLimits {
            size,
            ttl: self.duration("token_cache_ttl", Duration::from_secs(60))?,
        })
    }

    /// SPEC §2's guessing limits.
    fn guessing(&self) -> Result<GuessingLimits, ConfigError> {
        Ok(GuessingLimits {
            login_max_failures: self.count("login_max_failures", 5, 1_000_000)?,
            device_max_failures: self.count("device_max_failures", 10, 1_000_000)?,
            login_ip_max_failures: self.count("login_ip_max_failures", 100, 1_000_000)?,
            window: self.whole_seconds("login_failure_window", Duration::from_secs(15 * 60))?,
            signup_ip_max: self.count("signup_ip_max", 20, 1_000_000)?,
            recovery_max: self.count("recovery_max", 5, 1_000_000)?,
        })
    }

    /// How long a client may hold a connection without using it, and how many it may hold.
    fn http(&self) -> Result<HttpLimits, ConfigError> {
        Ok(HttpLimits {
            header_timeout: self.duration("http_header_timeout", Duration::from_secs(10))?,
            idle_timeout: self.duration("http_idle_timeout", Duration::from_secs(60))?,
            max_connections: self.count("max_connections", 4096, 1_000_000)?,
        })
    }

    fn trusted_proxies(&self) -> Result<Vec<ipnet::IpNet>, ConfigError> {
        const EXPECTED: &str = "CIDRs such as 10.0.0.0/8 or addresses, comma-separated";
        let Some((value, source)) = self.value("trusted_proxies") else {
            return Ok(Vec::new());
        };
        let items = list(&value)
            .ok_or_else(|| ConfigError::invalid("trusted_proxies", source, EXPECTED))?;
        items
            .iter()
            .map(|item| {
                item.parse::<ipnet::IpNet>()
                    .or_else(|_| item.parse::<std::net::IpAddr>().map(ipnet::IpNet::from))
                    .map(|net| net.trunc())
                    .ok()
            })
            .collect::<Option<Vec<_>>>()
            .ok_or_else(|| ConfigError::invalid("trusted_proxies", source, EXPECTED))
    }

    fn duration(&self, key: &'static str, default: Duration) -> Result<Duration, ConfigError> {
        self.duration_of(key, default, Duration::from_millis(1), false)
    }

    fn duration_or_off(
        &self,
        key: &'static str,
        default: Duration,
    ) -> Result<Duration, ConfigError> {
        self.duration_of(key, default, Duration::from_millis(1), true)
    }

    fn whole_seconds(&self, key: &'static str, default: Duration) -> Result<Duration, ConfigError> {
        self.duration_of(key, default, Duration::from_secs(1), false)
    }

    /// A domain name of two labels or more (a cookie for `com` is refused by browsers, and a
    /// single label is nothing a browser shares); a leading dot, as older `Domain` syntax
    /// wrote it, is dropped. An IP address has no subdomains, so it is no cookie domain.
    fn cookie_domain(&self) -> Result<Option<String>, ConfigError> {
        self.parsed(
            "cookie_domain",
            "a domain name such as example.com (no scheme, port or path)",
            |t| {
                let domain = t.strip_prefix('.').unwrap_or(t).to_ascii_lowercase();
                let labels: Vec<&str> = domain.split('.').collect();
                let label_ok = |l: &&str| {
                    !l.is_empty()
                        && l.len() <= 63
                        && !l.starts_with('-')
                        && !l.ends_with('-')
                        && l.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
                };
                let numeric = domain.parse::<std::net::Ipv4Addr>().is_ok();
                (labels.len() >= 2
                    && labels.iter().all(label_ok)
                    && !numeric
                    && domain.len() <= 253)
                    .then_some(domain)
            },
        )
    }

    fn origins(&self) -> Result<Option<Vec<String>>, ConfigError> {
        const EXPECTED: &str =
            "origins such as https://app.example.com (scheme://host[:port], comma-separated)";
        let Some((value, source)) = self.value("allowed_origins") else {
            return Ok(None);
        };
        let items = list(&value)
            .ok_or_else(|| ConfigError::invalid("allowed_origins", source, EXPECTED))?;
        items
            .iter()
            .map(|item| {
                origin_of(item).filter(|o| o == &item.trim_end_matches('/').to_ascii_lowercase())
            })
            .collect::<Option<Vec<_>>>()
            .map(Some)
            .ok_or_else(|| ConfigError::invalid("allowed_origins", source, EXPECTED))
    }

    /// The `[[webhooks]]` tables (SPEC §3); none by default. Each error names the table and
    /// field, `webhooks[1].events`, as they count in the file from 0.
    fn webhooks(&self) -> Result<Vec<Webhook>, ConfigError> {
        const FIELDS: [&str; 3] = ["url", "secret", "events"];
        let Some((value, source)) = self.value("webhooks") else {
            return Ok(Vec::new());
        };
        let Value::Array(_, tables) = value else {
            return Err(ConfigError::invalid(
                "webhooks",
                source,
                "[[webhooks]] tables, each with url, secret and events",
            ));
        };
        let mut webhooks: Vec<Webhook> = Vec::with_capacity(tables.len());
        for (i, table) in tables.iter().enumerate() {
            let key = |field: &str| format!("webhooks[{i}].{field}");
            let Some(table) = table.as_dict() else {
                return Err(ConfigError::invalid(
                    &format!("webhooks[{i}]"),
                    source,
                    "a table with url, secret and events",
                ));
            };
            if let Some(field) = table.keys().find(|k| !FIELDS.contains(&k.as_str())) {
                return Err(ConfigError::unknown(&key(field), source));
            }
            let text = |field: &str| match table.get(field) {
                None => Err(ConfigError::missing(&key(field), source)),
                Some(Value::String(_, text)) => Ok(text.as_str()),
                Some(_) => Err(ConfigError::invalid(&key(field), source, "a string")),
            };
            let url = text("url")?.trim();
            if origin_of(url).is_none() || url.contains(char::is_whitespace) {
                return Err(ConfigError::invalid(
                    &key("url"),
                    source,
                    "an http:// or https:// URL",
                ));
            }
            if webhooks.iter().any(|w| w.url == url) {
                // The URL names the endpoint in the outbox and finds its secret at delivery.
                return Err(ConfigError::invalid(
                    &key("url"),
                    source,
                    "a URL no other [[webhooks]] table uses",
                ));
            }
            let secret = text("secret")?;
            if secret.trim().is_empty() {
                return Err(ConfigError::invalid(
                    &key("secret"),
                    source,
                    "a non-empty string",
                ));
            }
            let names = EventType::ALL.map(EventType::as_str).join(", ");
            let Some(listed) = table.get("events") else {
                return Err(ConfigError::missing(&key("events"), source));
            };
            let mut events = Vec::new();
            for item in listed.as_array().unwrap_or_default() {
                let Some(event) = item.as_str().and_then(EventType::parse) else {
                    let shown = shown(item);
                    return Err(ConfigError::invalid(
                        &key("events"),
                        source,
                        &format!("events among {names} (not `{shown}`)"),
                    ));
                };
                if !events.contains(&event) {
                    events.push(event);
                }
            }
            if events.is_empty() {
                return Err(ConfigError::invalid(
                    &key("events"),
                    source,
                    &format!("a non-empty list of events among {names}"),
                ));
            }
            webhooks.push(Webhook {
                url: url.to_owned(),
                secret: WebhookSecret::new(secret.to_owned()),
                events,
            });
        }
        Ok(webhooks)
    }

    /// SPEC §2's mail keys; `public_url` defaults to `issuer`.
    fn mail(&self, issuer: &str) -> Result<MailSettings, ConfigError> {
        let public_url = self
            .parsed("public_url", "an http(s) URL", |t| {
                origin_of(t).map(|_| t.trim_end_matches('/').to_owned())
            })?
            .unwrap_or_else(|| issuer.to_owned());
        let smtp_url = self.parsed(
            "smtp_url",
            "smtps://host:465, smtp://host:587 or smtp://host:port?tls=none",
            |t| SmtpUrl::parse(t).map(|_| t.to_owned()),
        )?;
        let mail_from = self
            .parsed(
                "mail_from",
                "a mailbox such as Tessera <no-reply@example.com>",
                |t| mailbox_address(t).map(|_| t.to_owned()),
            )?
            .unwrap_or_else(|| "Tessera <no-reply@localhost>".to_owned());
        let require_verified_email = self
            .parsed("require_verified_email", "true or false", boolean)?
            .unwrap_or(false);
        Ok(MailSettings {
            public_url,
            smtp_url,
            mail_from,
            require_verified_email,
        })
    }

    /// The issuer, by default `http://<listen>`; a wildcard `listen` has no such default.
    fn issuer(&self, listen: SocketAddr) -> Result<String, ConfigError> {
        match self.parsed("issuer", "an http(s) URL", |t| {
            origin_of(t).map(|_| t.trim_end_matches('/').to_owned())
        })? {
            Some(issuer) => Ok(issuer),
            None if listen.ip().is_unspecified() => Err(ConfigError(format!(
                "`issuer` must be set when `listen` is a wildcard address ({listen}): the \
                 default issuer http://{listen} is no address a client can use, so every \
                 browser Origin would be refused and every mailed link broken"
            ))),
            None => Ok(format!("http://{listen}")),
        }
    }

    /// Applies SPEC §2's defaults to what the layers leave unset.
    pub fn resolve(&self) -> Result<Config, ConfigError> {
        let listen = self.address("listen", SocketAddr::from(([127, 0, 0, 1], 8080)))?;
        let non_empty = |t: &str| Some(t.to_owned()).filter(|t| !t.is_empty());
        let database = self
            .parsed("database", "sqlite://PATH, postgres://… or memory", |t| {
                (t == "memory"
                    || t.starts_with("sqlite:")
                    || t.starts_with("postgres://")
                    || t.starts_with("postgresql://"))
                .then(|| t.to_owned())
            })?
            .unwrap_or_else(|| "sqlite://tessera.db".to_owned());

        let issuer = self.issuer(listen)?;
        let audience = self
            .parsed("audience", "a non-empty string", non_empty)?
            .unwrap_or_else(|| "tessera".to_owned());
        let signing_alg = self
            .parsed("signing_alg", "one of EdDSA, ES256, RS256, HS256", |t| {
                t.parse::<Algorithm>().ok()
            })?
            .unwrap_or(Algorithm::EdDSA);
        let revocation_mode = self
            .parsed(
                "revocation_mode",
                "one of none, cached, strict",
                RevocationMode::parse,
            )?
            .unwrap_or(RevocationMode::Cached);
        let cookie_secure = self
            .parsed("cookie_secure", "true or false", boolean)?
            .unwrap_or(true);
        let cookie_name = self.parsed(
            "cookie_name",
            "a cookie name (letters, digits, - and _)",
            |t| {
                (!t.is_empty()
                    && t.chars()
                        .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_'))
                .then(|| t.to_owned())
            },
        )?;
        let cookie_domain = self.cookie_domain()?;
        let cookie_name = session_cookie_name(cookie_name, cookie_domain.as_deref(), cookie_secure)
            .map_err(|(name, expected)| match self.value("cookie_name") {
                Some((_, source)) => ConfigError(format!(
                    "invalid value for `cookie_name` ({}): {name} {expected}",
                    from("cookie_name", source)
                )),
                None => ConfigError(format!("`cookie_name` {name} {expected}")),
            })?;
        let allowed_origins = match self.origins()? {
            Some(origins) => origins,
            None => origin_of(&issuer).into_iter().collect(),
        };
        let master_key_file = self
            .parsed("master_key_file", "a file path", |t| {
                non_empty(t).map(PathBuf::from)
            })?
            .unwrap_or_else(|| default_master_key_file(&database));
        Ok(Config {
            listen,
            database,
            database_pool_size: self.pool_size()?,
            redis: self.redis()?,
            redis_prefix: self.redis_prefix()?,
            audience,
            signing_alg,
            // JWT `exp` is whole seconds (RFC 7519 §2).
            access_token_ttl: self
                .whole_seconds("access_token_ttl", Duration::from_secs(15 * 60))?,
            refresh_token_ttl: self
                .duration("refresh_token_ttl", Duration::from_secs(30 * 86_400))?,
            refresh_grace: self.duration_or_off("refresh_grace", Duration::from_secs(10))?,
            session_idle_timeout: self
                .duration("session_idle_timeout", Duration::from_secs(86_400))?,
            session_absolute_timeout: self
                .duration("session_absolute_timeout", Duration::from_secs(7 * 86_400))?,
            revocation_mode,
            max_staleness: self.duration("max_staleness", Duration::from_secs(5))?,
            token_cache: self.token_cache()?,
            cookie_name,
            cookie_secure,
            cookie_domain,
            allowed_origins,
            master_key_file,
            webhooks: self.webhooks()?,
            guessing: self.guessing()?,
            trusted_proxies: self.trusted_proxies()?,
            http: self.http()?,
            metrics_listen: self
                .address("metrics_listen", SocketAddr::from(([127, 0, 0, 1], 9464)))?,
            mail: self.mail(&issuer)?,
            issuer,
        })
    }
}

fn boolean(text: &str) -> Option<bool> {
    match text.to_ascii_lowercase().as_str() {
        "true" | "1" | "yes" | "on" => Some(true),
        "false" | "0" | "no" | "off" => Some(false),
        _ => None,
    }
}

/// The session cookie's name (SPEC §2). By default `__Host-tessera_session`, a host-only
/// cookie; with a `cookie_domain`, `__Secure-tessera_session`, since browsers refuse a
/// `__Host-` cookie that carries `Domain`, so a configured `__Host-` name is refused rather
/// than silently dropped by every browser. Without `cookie_secure` (plain-HTTP development)
/// both prefixes go, as browsers refuse either without `Secure`. The error is the name and
/// what is wrong with it.
fn session_cookie_name(
    configured: Option<String>,
    cookie_domain: Option<&str>,
    cookie_secure: bool,
) -> Result<String, (String, &'static str)> {
    let name = match (configured, cookie_domain) {
        (Some(name), Some(_)) if name.starts_with("__Host-") => {
            return Err((
                name,
                "cannot be used with `cookie_domain`: browsers refuse a __Host- cookie with a \
                 Domain; use a __Secure- name, or unset cookie_domain",
            ))
        }
        (Some(name), _) => name,
        (None, Some(_)) => "__Secure-tessera_session".to_owned(),
        (None, None) => "__Host-tessera_session".to_owned(),
    };
    if cookie_secure {
        return Ok(name);
    }
    Ok(["__Host-", "__Secure-"]
        .iter()
        .find_map(|prefix| name.strip_prefix(prefix))
        .map_or_else(|| name.clone(), str::to_owned))
}

/// The address inside a mailbox (`Name <a@b>` or `a@b`), if it looks like one.
fn mailbox_address(text: &str) -> Option<&str> {
    let address = match (text.rfind('<'), text.strip_suffix('>')) {
        (Some(open), Some(inner)) => inner.get(open + 1..)?,
        (None, None) => text,
        _ => return None,
    };
    let (local, domain) = address.split_once('@')?;
    (!local.is_empty()
        && !domain.is_empty()
        && !address.contains(|c: char| c.is_whitespace() || c.is_control() || c == '<'))
    .then_some(address)
}

/// How mail leaves (SPEC §2 `smtp_url`): the transport security is in the URL, so a typo
/// cannot silently send a password over a plain connection.
#[derive(Clone, PartialEq, Eq)]
pub struct SmtpUrl {
    pub host: String,
    pub port: u16,
    pub security: SmtpSecurity,
    pub user: Option<String>,
    pub password: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SmtpSecurity {
    /// `smtps://`: TLS from the first byte (RFC 8314), port 465 by default.
    Tls,
    /// `smtp://`: STARTTLS, required (a server that does not offer it is not used), port 587
    /// by default.
    StartTls,
    /// `smtp://…?tls=none`: no encryption, for a local test server only.
    None,
}

impl SmtpUrl {
    /// Parses `smtps://[user[:password]@]host[:port]`, `smtp://…` or `smtp://…?tls=none`;
    /// user and password are percent-decoded.
    pub fn parse(text: &str) -> Option<Self> {
        let (scheme, rest) = text.trim().split_once("://")?;
        let (rest, query) = match rest.split_once('?') {
            Some((rest, query)) => (rest, Some(query)),
            None => (rest, None),
        };
        let rest = rest.trim_end_matches('/');
        let security = match (scheme.to_ascii_lowercase().as_str(), query) {
            ("smtps", None) => SmtpSecurity::Tls,
            ("smtp", None) => SmtpSecurity::StartTls,
            ("smtp", Some("tls=none")) => SmtpSecurity::None,
            _ => return None,
        };
        let (userinfo, hostport) = match rest.rsplit_once('@') {
            Some((userinfo, hostport)) => (Some(userinfo), hostport),
            None => (None, rest),
        };
        if hostport.contains('/') {
            return None;
        }
        let default_port = if security == SmtpSecurity::Tls {
            465
        } else {
            587
        };
        let (host, port) = match hostport.rsplit_once(':') {
            Some((host, port)) if !host.ends_with(']') || hostport.starts_with('[') => {
                (host, port.parse::<u16>().ok().filter(|p| *p > 0)?)
            }
            _ => (hostport, default_port),
        };
        let host = host.trim_start_matches('[').trim_end_matches(']');
        if host.is_empty() || host.contains(char::is_whitespace) {
            return None;
        }
        let (user, password) = match userinfo {
            None => (None, None),
            Some(info) => match info.split_once(':') {
                Some((user, password)) => {
                    (Some(percent_decode(user)?), Some(percent_decode(password)?))
                }
                None => (Some(percent_decode(info)?), None),
            },
        };
        Some(Self {
            host: host.to_owned(),
            port,
            security,
            user,
            password,
        })
    }
}

/// The host, port and security, never the password.
impl fmt::Debug for SmtpUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SmtpUrl")
            .field("host", &self.host)
            .field("port", &self.port)
            .field("security", &self.security)
            .field("user", &self.user)
            .finish_non_exhaustive()
    }
}

fn percent_decode(text: &str) -> Option<String> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while let Some(&byte) = bytes.get(i) {
        if byte == b'%' {
            let hex = text.get(i + 1..i + 3)?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(byte);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// `tessera.key` in the SQLite file's folder, so database and key travel together; in the
/// working directory for other stores.
fn default_master_key_file(database: &str) -> PathBuf {
    let path = database
        .strip_prefix("sqlite://")
        .or_else(|| database.strip_prefix("sqlite:"))
        .map(|rest| rest.split('?').next().unwrap_or(rest));
    match path.and_then(|p| Path::new(p).parent()) {
        Some(dir) if !dir.as_os_str().is_empty() => dir.join("tessera.key"),
        _ => PathBuf::from("tessera.key"),
    }
}

impl fmt::Debug for Config {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Config")
            .field("listen", &self.listen)
            .field("database", &redact_url(&self.database))
            .field("database_pool_size", &self.database_pool_size)
            .field("redis", &self.redis.as_deref().map(redact_url))
            .field("redis_prefix", &self.redis_prefix)
            .field("issuer", &self.issuer)
            .field("signing_alg", &self.signing_alg)
            .field("revocation_mode", &self.revocation_mode)
            .field("webhooks", &self.webhooks)
            .field("public_url", &self.mail.public_url)
            .field("smtp_url", &self.mail.smtp_url.as_deref().map(redact_url))
            .finish_non_exhaustive()
    }
}

/// How many verified access tokens a node remembers, and for how long.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TokenCacheLimits {
    /// Entries held at most; 0: every token's signature is checked on every request.
    pub size: usize,
    /// An entry is dropped this long after its token was verified, whatever its `exp`.
    pub ttl: Duration,
}

/// How a node checks that a valid-looking credential has not been revoked (SPEC §5).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RevocationMode {
    None,
    Cached,
    Strict,
}

impl RevocationMode {
    fn parse(text: &str) -> Option<Self> {
        match text {
            "none" => Some(Self::None),
            "cached" => Some(Self::Cached),
            "strict" => Some(Self::Strict),
            _ => None,
        }
    }

    pub const fn as_str(self) -> &'static str {
        match self {
            Self::None => "none",
            Self::Cached => "cached",
            Self::Strict => "strict",
        }
    }
}

impl fmt::Display for RevocationMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The resolved configuration: every key of SPEC §2 with its value in force. Its `Debug`
/// redacts the database and Redis URLs, which may carry passwords, and shows of each webhook
/// only its URL and events, never its secret.
#[derive(Clone, PartialEq)]
pub struct Config {
    pub listen: SocketAddr,
    pub database: String,
    /// PostgreSQL connections per node.
    pub database_pool_size: u32,
    pub redis: Option<String>,
    /// Every Redis key and channel starts with it, so several deployments share one server.
    pub redis_prefix: String,
    pub issuer: String,
    pub audience: String,
    pub signing_alg: Algorithm,
    pub access_token_ttl: Duration,
    pub refresh_token_ttl: Duration,
    pub refresh_grace: Duration,
    pub session_idle_timeout: Duration,
    pub session_absolute_timeout: Duration,
    pub revocation_mode: RevocationMode,
    pub max_staleness: Duration,
    /// The verified-access-token cache (SPEC §2 `token_cache_size`, `token_cache_ttl`).
    pub token_cache: TokenCacheLimits,
    pub cookie_name: String,
    pub cookie_secure: bool,
    /// SPEC §2 `cookie_domain`: the session cookie's `Domain`, so the applications on its
    /// subdomains receive it (forward-auth); `None`: a host-only `__Host-` cookie. Lower case,
    /// without a leading dot.
    pub cookie_domain: Option<String>,
    pub allowed_origins: Vec<String>,
    pub master_key_file: PathBuf,
    /// `[[webhooks]]` (SPEC §3), file only; empty unless configured.
    pub webhooks: Vec<Webhook>,
    pub guessing: GuessingLimits,
    /// Peers whose `X-Forwarded-For` is believed; empty: the socket peer is the client.
    pub trusted_proxies: Vec<ipnet::IpNet>,
    pub http: HttpLimits,
    /// Where `/metrics` is served, and only there (never on `listen`).
    pub metrics_listen: SocketAddr,
    pub mail: MailSettings,
}

/// Mail and the links it carries (SPEC §2).
#[derive(Clone, PartialEq, Eq)]
pub struct MailSettings {
    /// The base of mailed links and of the pages, without a trailing slash.
    pub public_url: String,
    /// `None`: no mail is sent; the flows still work, and the log says that no mail is
    /// configured. Checked by [`SmtpUrl::parse`] when read; it may hold a password.
    pub smtp_url: Option<String>,
    pub mail_from: String,
    /// Refuse login and the password grant (403 `email_not_verified`) until verified.
    pub require_verified_email: bool,
}

/// Never the SMTP URL's password.
impl fmt::Debug for MailSettings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MailSettings")
            .field("public_url", &self.public_url)
            .field("smtp_url", &self.smtp_url.as_deref().map(redact_url))
            .field("mail_from", &self.mail_from)
            .field("require_verified_email", &self.require_verified_email)
            .finish()
    }
}

/// How many password guesses are allowed (SPEC §2, §7), each counted in `window`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GuessingLimits {
    /// Failed logins per account (normalised email, known or not) before clients without that
    /// account's device cookie get 429.
    pub login_max_failures: u32,
    /// Failed logins per device cookie: its holder's own budget.
    pub device_max_failures: u32,
    /// Failed logins per client address, over all accounts.
    pub login_ip_max_failures: u32,
    pub window: Duration,
    /// Sign-ups per client address per hour; also recovery requests per address per hour.
    pub signup_ip_max: u32,
    /// Recovery mails per account per hour.
    pub recovery_max: u32,
}

/// What a client may hold of a node's connections (SPEC §7: slow or idle clients cannot
/// exhaust the server).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HttpLimits {
    /// A connection that has not sent a request's headers by then is closed.
    pub header_timeout: Duration,
    /// An idle keep-alive connection is closed after it.
    pub idle_timeout: Duration,
    /// Open connections beyond which new ones wait in the listen backlog.
    pub max_connections: u32,
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;

    fn file(text: &str) -> ConfigLayer {
        ConfigLayer::from_toml(text, Path::new("tessera.toml")).unwrap()
    }

    #[test]
    fn defaults_follow_the_spec() {
        let config = ConfigLayer::default().resolve().unwrap();
        assert_eq!(config.listen.to_string(), "127.0.0.1:8080");
        assert_eq!(config.database, "sqlite://tessera.db");
        assert_eq!(config.issuer, "http://127.0.0.1:8080");
        assert_eq!(config.audience, "tessera");
        assert_eq!(config.signing_alg, Algorithm::EdDSA);
        assert_eq!(config.access_token_ttl, Duration::from_secs(900));
        assert_eq!(config.refresh_token_ttl, Duration::from_secs(30 * 86_400));
        assert_eq!(config.refresh_grace, Duration::from_secs(10));
        assert_eq!(config.session_idle_timeout, Duration::from_secs(86_400));
        assert_eq!(
            config.session_absolute_timeout,
            Duration::from_secs(7 * 86_400)
        );
        assert_eq!(config.revocation_mode, RevocationMode::Cached);
        assert_eq!(config.max_staleness, Duration::from_secs(5));
        assert_eq!(config.token_cache.size, 65_536);
        assert_eq!(config.token_cache.ttl, Duration::from_secs(60));
        assert_eq!(config.cookie_name, "__Host-tessera_session");
        assert!(config.cookie_secure);
        assert_eq!(
            config.allowed_origins,
            vec!["http://127.0.0.1:8080".to_owned()]
        );
        assert_eq!(config.master_key_file, PathBuf::from("tessera.key"));
        assert!(config.redis.is_none());
        assert_eq!(config.database_pool_size, 10);
        assert_eq!(
            config.guessing,
            GuessingLimits {
                login_max_failures: 5,
                device_max_failures: 10,
                login_ip_max_failures: 100,
                window: Duration::from_secs(15 * 60),
                signup_ip_max: 20,
                recovery_max: 5,
            }
        );
        assert_eq!(config.mail.public_url, "http://127.0.0.1:8080");
        assert_eq!(config.mail.smtp_url, None);
        assert_eq!(config.mail.mail_from, "Tessera <no-reply@localhost>");
        assert!(!config.mail.require_verified_email);
        assert!(config.trusted_proxies.is_empty());
        assert_eq!(
            config.http,
            HttpLimits {
                header_timeout: Duration::from_secs(10),
                idle_timeout: Duration::from_secs(60),
                max_connections: 4096,
            }
        );
        assert_eq!(config.metrics_listen.to_string(), "127.0.0.1:9464");
        assert_eq!(config.redis_prefix, "tessera:");
    }

    #[test]
    fn mail_keys_are_read_and_checked() {
        let config = file(
            "public_url = \"https://id.example.com/\"\nsmtp_url = \"smtps://me%40x:p%3Aw@mail.example.com\"\n\
             mail_from = \"Example <id@example.com>\"\nrequire_verified_email = true\nrecovery_max = 3",
        )
        .resolve()
        .unwrap();
        assert_eq!(config.mail.public_url, "https://id.example.com");
        assert_eq!(config.mail.mail_from, "Example <id@example.com>");
        assert!(config.mail.require_verified_email);
        assert_eq!(config.guessing.recovery_max, 3);
        let smtp = SmtpUrl::parse(config.mail.smtp_url.as_deref().unwrap()).unwrap();
        assert_eq!(
            (smtp.host.as_str(), smtp.port, smtp.security),
            ("mail.example.com", 465, SmtpSecurity::Tls)
        );
        assert_eq!(smtp.user.as_deref(), Some("me@x"));
        assert_eq!(smtp.password.as_deref(), Some("p:w"));
        let shown = format!("{config:?} {smtp:?}");
        assert!(
            !shown.contains("p%3Aw") && !shown.contains("p:w"),
            "{shown}"
        );

        let starttls = SmtpUrl::parse("smtp://mail.example.com").unwrap();
        assert_eq!(
            (starttls.port, starttls.security),
            (587, SmtpSecurity::StartTls)
        );
        let plain = SmtpUrl::parse("smtp://127.0.0.1:2525?tls=none").unwrap();
        assert_eq!((plain.port, plain.security), (2525, SmtpSecurity::None));
        for bad in [
            "smtp_url = \"http://mail.example.com\"",
            "smtp_url = \"smtps://mail.example.com?tls=none\"",
            "smtp_url = \"smtp://mail.example.com:0\"",
            "mail_from = \"nobody\"",
            "public_url = \"id.example.com\"",
            "require_verified_email = \"maybe\"",
            "recovery_max = 0",
        ] {
            let err = file(bad).resolve().unwrap_err().to_string();
            let key = bad.split(' ').next().unwrap();
            assert!(err.contains(key), "{bad}: {err}");
        }
    }

    #[test]
    fn pool_size_and_redis_prefix_are_checked() {
        let config = file("database_pool_size = 3\nredis_prefix = \"app1:\"")
            .resolve()
            .unwrap();
        assert_eq!(config.database_pool_size, 3);
        assert_eq!(config.redis_prefix, "app1:");
        for bad in ["database_pool_size = 0", "redis_prefix = \"a b\""] {
            let err = file(bad).resolve().unwrap_err().to_string();
            let key = bad.split(' ').next().unwrap();
            assert!(err.contains(key), "{bad}: {err}");
        }
    }

    #[test]
    fn guessing_limits_proxies_and_connection_limits_are_checked() {
        let config = file(
            "login_max_failures = 3\ntrusted_proxies = [\"10.0.0.0/8\", \"192.168.1.7\", \"fd00::1/64\"]\nmax_connections = 100\nmetrics_listen = \"127.0.0.1:0\"\nhttp_header_timeout = \"500ms\"",
        )
        .resolve()
        .unwrap();
        assert_eq!(config.guessing.login_max_failures, 3);
        let proxies: Vec<String> = config
            .trusted_proxies
            .iter()
            .map(ToString::to_string)
            .collect();
        assert_eq!(proxies, ["10.0.0.0/8", "192.168.1.7/32", "fd00::/64"]);
        assert_eq!(config.http.max_connections, 100);
        assert_eq!(config.http.header_timeout, Duration::from_millis(500));
        assert_eq!(config.metrics_listen.port(), 0);
        let flags = |key: &'static str, value: &str| {
            ConfigLayer::from_flags([(key, value.to_owned())])
                .unwrap()
                .resolve()
                .unwrap_err()
                .to_string()
        };
        assert!(flags("login_max_failures", "0").contains("`login_max_failures`"));
        assert!(flags("trusted_proxies", "10.0.0.0/33").contains("`trusted_proxies`"));
        assert!(flags("login_failure_window", "1500ms").contains("`login_failure_window`"));
        assert!(flags("metrics_listen", "localhost").contains("`metrics_listen`"));
    }

    #[test]
    fn flags_beat_environment_beat_file() {
        let file = file("listen = \"127.0.0.1:1000\"\naccess_token_ttl = \"1m\"\naudience = \"from-file\"\nrefresh_grace = \"3s\"\n");
        let env = ConfigLayer::from_env(|name| match name {
            "TESSERA_LISTEN" => Some("127.0.0.1:2000".into()),
            "TESSERA_ACCESS_TOKEN_TTL" => Some("2m".into()),
            _ => None,
        });
        let flags = ConfigLayer::from_flags([("listen", "127.0.0.1:3000".to_owned())]).unwrap();
        let config = flags.over(env.over(file)).resolve().unwrap();
        assert_eq!(
            config.listen.to_string(),
            "127.0.0.1:3000",
            "flag wins over env and file"
        );
        assert_eq!(
            config.access_token_ttl,
            Duration::from_secs(120),
            "env wins over file"
        );
        assert_eq!(config.audience, "from-file", "file wins over default");
        assert_eq!(config.refresh_grace, Duration::from_secs(3));
        assert_eq!(
            config.issuer, "http://127.0.0.1:3000",
            "issuer default follows the winning listen"
        );
    }

    #[test]
    fn unknown_file_key_is_refused_by_name() {
        let err = ConfigLayer::from_toml("listn = \"x\"", Path::new("tessera.toml")).unwrap_err();
        assert_eq!(err.to_string(), "unknown key `listn` in tessera.toml");
    }

    #[test]
    fn bad_values_name_key_and_source() {
        let err = file("access_token_ttl = \"soon\"")
            .resolve()
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("`access_token_ttl`") && err.contains("tessera.toml"),
            "{err}"
        );
        let env = ConfigLayer::from_env(|n| (n == "TESSERA_SIGNING_ALG").then(|| "none".into()));
        let err = env.resolve().unwrap_err().to_string();
        assert!(
            err.contains("`signing_alg`") && err.contains("TESSERA_SIGNING_ALG"),
            "{err}"
        );
        let flags = ConfigLayer::from_flags([("revocation_mode", "sometimes".to_owned())]).unwrap();
        let err = flags.resolve().unwrap_err().to_string();
        assert!(
            err.contains("`revocation_mode`") && err.contains("--revocation-mode"),
            "{err}"
        );
        assert!(!err.contains('\n'));
    }

    #[test]
    fn a_bad_value_names_the_source_that_won_the_layering() {
        let layered = |file_text: &str, env: Option<&str>, flag: Option<&str>| {
            let env = ConfigLayer::from_env(|n| {
                (n == "TESSERA_ACCESS_TOKEN_TTL")
                    .then(|| env.map(str::to_owned))
                    .flatten()
            });
            let flags =
                ConfigLayer::from_flags(flag.map(|v| ("access_token_ttl", v.to_owned()))).unwrap();
            flags.over(env.over(file(file_text))).resolve()
        };
        let expected = "expected a duration of whole seconds such as 15m, 30d or 10s";
        let err = layered("access_token_ttl = \"soon\"", Some("1m"), Some("1500ms")).unwrap_err();
        assert_eq!(
            err.to_string(),
            format!("invalid value for `access_token_ttl` (from --access-token-ttl): {expected}"),
            "flag wins, so a bad flag is what is named"
        );
        let err = layered("access_token_ttl = \"1m\"", Some("soon"), None).unwrap_err();
        assert_eq!(
            err.to_string(),
            format!(
                "invalid value for `access_token_ttl` (from TESSERA_ACCESS_TOKEN_TTL): {expected}"
            )
        );
        let err = layered("audience = \"a\"\naccess_token_ttl = 60", None, None).unwrap_err();
        assert_eq!(
            err.to_string(),
            format!("invalid value for `access_token_ttl` (in tessera.toml): {expected}"),
            "an integer in the file is read as text, and a bare 60 is no duration"
        );
        let config = layered("access_token_ttl = \"soon\"", Some("2m"), None).unwrap();
        assert_eq!(
            config.access_token_ttl,
            Duration::from_secs(120),
            "a bad value that loses the layering is never read"
        );
        let err = file("listen = 1.5").resolve().unwrap_err().to_string();
        assert_eq!(
            err,
            "invalid value for `listen` (in tessera.toml): expected a string"
        );
    }

    #[test]
    fn a_token_cache_of_zero_entries_is_off_and_a_negative_size_is_refused() {
        let config = file("token_cache_size = 0\ntoken_cache_ttl = \"5s\"")
            .resolve()
            .unwrap();
        assert_eq!(config.token_cache.size, 0);
        assert_eq!(config.token_cache.ttl, Duration::from_secs(5));
        let err = file("token_cache_size = -1")
            .resolve()
            .unwrap_err()
            .to_string();
        assert!(err.contains("token_cache_size"), "{err}");
    }

    #[test]
    fn durations_are_whole_milliseconds_and_zero_only_turns_the_grace_window_off() {
        let config = file("refresh_grace = \"0\"\nmax_staleness = \"1500ms\"")
            .resolve()
            .unwrap();
        assert_eq!(config.refresh_grace, Duration::ZERO);
        assert_eq!(config.max_staleness, Duration::from_millis(1500));
        for bad in [
            "session_idle_timeout = \"0\"",
            "max_staleness = \"10us\"",
            "access_token_ttl = \"500ms\"",
            "access_token_ttl = \"1500ms\"",
        ] {
            let err = file(bad).resolve().unwrap_err().to_string();
            let key = bad.split(' ').next().unwrap();
            assert!(err.contains(&format!("`{key}`")), "{bad}: {err}");
        }
    }

    #[test]
    fn a_cookie_domain_shares_the_session_cookie_under_the_secure_prefix() {
        let config = file("cookie_domain = \".Example.com\"").resolve().unwrap();
        assert_eq!(config.cookie_domain.as_deref(), Some("example.com"));
        assert_eq!(config.cookie_name, "__Secure-tessera_session");
        assert_eq!(
            ConfigLayer::default().resolve().unwrap().cookie_domain,
            None
        );
        // From the environment and flags too, flags winning.
        let env = ConfigLayer::from_env(|name| {
            (name == "TESSERA_COOKIE_DOMAIN").then(|| "env.example".to_owned())
        });
        assert_eq!(
            env.clone().resolve().unwrap().cookie_domain.as_deref(),
            Some("env.example")
        );
        let flags =
            ConfigLayer::from_flags([("cookie_domain", "flag.example".to_owned())]).unwrap();
        assert_eq!(
            flags.over(env).resolve().unwrap().cookie_domain.as_deref(),
            Some("flag.example")
        );
        // A name of one's own is kept, unless it is a __Host- name, which browsers would drop.
        let named = file("cookie_domain = \"example.com\"\ncookie_name = \"__Secure-sso\"")
            .resolve()
            .unwrap();
        assert_eq!(named.cookie_name, "__Secure-sso");
        let error = file("cookie_domain = \"example.com\"\ncookie_name = \"__Host-sso\"")
            .resolve()
            .unwrap_err()
            .to_string();
        assert!(
            error.contains("cookie_name")
                && error.contains("cookie_domain")
                && error.contains("__Secure-"),
            "{error}"
        );
        assert_eq!(error.lines().count(), 1, "{error}");
        // Plain-HTTP development drops the prefix, which browsers refuse without Secure.
        let insecure = file("cookie_domain = \"example.com\"\ncookie_secure = false")
            .resolve()
            .unwrap();
        assert_eq!(insecure.cookie_name, "tessera_session");
        for bad in [
            "com",
            "https://example.com",
            "example.com:443",
            "example.com/x",
            "10.0.0.1",
            "exa mple.com",
            "-a.example",
            "",
        ] {
            let error = file(&format!("cookie_domain = \"{bad}\""))
                .resolve()
                .unwrap_err()
                .to_string();
            assert!(error.contains("`cookie_domain`"), "{bad}: {error}");
        }
    }

    #[test]
    fn insecure_cookies_drop_the_host_prefix() {
        let config = file("cookie_secure = false").resolve().unwrap();
        assert_eq!(config.cookie_name, "tessera_session");
        assert!(!config.cookie_secure);
    }

    #[test]
    fn origins_accept_list_or_comma_text_and_refuse_paths() {
        let config = file("allowed_origins = [\"https://a.example\", \"http://b.example:8080\"]")
            .resolve()
            .unwrap();
        assert_eq!(
            config.allowed_origins,
            vec!["https://a.example", "http://b.example:8080"]
        );
        let env = ConfigLayer::from_env(|n| {
            (n == "TESSERA_ALLOWED_ORIGINS").then(|| "https://a.example, https://c.example".into())
        });
        assert_eq!(
            env.resolve().unwrap().allowed_origins,
            vec!["https://a.example", "https://c.example"]
        );
        assert!(file("allowed_origins = [\"https://a.example/path\"]")
            .resolve()
            .is_err());
    }

    #[test]
    fn webhooks_are_tables_of_the_file_only() {
        let config = file(
            "audience = \"a\"\n\
             [[webhooks]]\n\
             url = \"https://hooks.example.com/tessera\"\n\
             secret = \"whsec_one\"\n\
             events = [\"session.created\", \"session.revoked\", \"session.created\"]\n\
             [[webhooks]]\n\
             url = \"http://127.0.0.1:9000/\"\n\
             secret = \"whsec_two\"\n\
             events = [\"user.roles_changed\", \"refresh.reuse_detected\", \"user.signed_out_everywhere\"]\n",
        )
        .resolve()
        .unwrap();
        assert_eq!(config.audience, "a");
        assert_eq!(config.webhooks.len(), 2);
        let first = &config.webhooks[0];
        assert_eq!(first.url, "https://hooks.example.com/tessera");
        assert_eq!(first.secret.expose_secret(), "whsec_one");
        assert_eq!(
            first.events,
            vec![EventType::SessionCreated, EventType::SessionRevoked],
            "duplicates dropped"
        );
        assert_eq!(config.webhooks[1].events.len(), 3);
        let shown = format!("{config:?}");
        assert!(
            shown.contains("https://hooks.example.com/tessera") && shown.contains("SessionRevoked"),
            "{shown}"
        );
        assert!(!shown.contains("whsec_"), "{shown}");

        assert!(ConfigLayer::default()
            .resolve()
            .unwrap()
            .webhooks
            .is_empty());
        assert!(ConfigLayer::from_flags([("webhooks", "x".to_owned())]).is_err());
        let env = ConfigLayer::from_env(|n| (n == "TESSERA_WEBHOOKS").then(|| "x".into()));
        assert!(env.resolve().unwrap().webhooks.is_empty());
    }

    #[test]
    fn bad_webhooks_name_the_table_and_field() {
        let table = |body: &str| {
            format!("[[webhooks]]\nurl = \"https://a.example/h\"\nsecret = \"s\"\nevents = [\"session.created\"]\n[[webhooks]]\n{body}")
        };
        let error = |body: &str| {
            let err = ConfigLayer::from_toml(&table(body), Path::new("tessera.toml"))
                .and_then(|layer| layer.resolve())
                .unwrap_err()
                .to_string();
            assert!(!err.contains('\n'), "{err}");
            assert!(!err.contains("hunter2"), "{err}");
            err
        };
        let good =
            "url = \"https://b.example/h\"\nsecret = \"hunter2\"\nevents = [\"session.revoked\"]\n";
        assert!(ConfigLayer::from_toml(&table(good), Path::new("t.toml"))
            .unwrap()
            .resolve()
            .is_ok());

        let err = error(&format!("{good}secert = \"x\"\n"));
        assert_eq!(err, "unknown key `webhooks[1].secert` in tessera.toml");
        for url in ["ftp://b.example/h", "b.example/h", "https://"] {
            let err = error(&good.replace("https://b.example/h", url));
            assert!(
                err.starts_with("invalid value for `webhooks[1].url`"),
                "{err}"
            );
        }
        let err = error(&good.replace("https://b.example/h", "https://a.example/h"));
        assert!(err.contains("`webhooks[1].url`"), "{err}");
        for secret in ["\"\"", "\"  \"", "42"] {
            let err = error(&good.replace("\"hunter2\"", secret));
            assert!(
                err.starts_with("invalid value for `webhooks[1].secret`"),
                "{err}"
            );
        }
        let err = error(&good.replace("session.revoked", "session.expired"));
        assert!(
            err.starts_with("invalid value for `webhooks[1].events`")
                && err.contains("session.expired"),
            "{err}"
        );
        let err = error(&good.replace("[\"session.revoked\"]", "[]"));
        assert!(
            err.starts_with("invalid value for `webhooks[1].events`"),
            "{err}"
        );
        let err = error("url = \"https://b.example/h\"\nevents = [\"session.revoked\"]\n");
        assert_eq!(err, "missing key `webhooks[1].secret` in tessera.toml");
        let err = ConfigLayer::from_toml("webhooks = \"https://a.example\"", Path::new("t.toml"))
            .unwrap()
            .resolve()
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("invalid value for `webhooks`"), "{err}");
    }

    #[test]
    fn a_wildcard_listen_address_needs_an_explicit_issuer() {
        for listen in ["0.0.0.0:8080", "[::]:8080"] {
            let err = file(&format!("listen = \"{listen}\""))
                .resolve()
                .unwrap_err()
                .to_string();
            assert!(
                err.starts_with("`issuer` must be set when `listen` is a wildcard address"),
                "{err}"
            );
            assert!(!err.contains('\n'), "{err}");
            let config = file(&format!(
                "listen = \"{listen}\"\nissuer = \"https://auth.example.com\""
            ))
            .resolve()
            .unwrap();
            assert_eq!(config.issuer, "https://auth.example.com");
            assert_eq!(config.allowed_origins, ["https://auth.example.com"]);
        }
    }

    #[test]
    fn master_key_sits_beside_the_sqlite_file() {
        let config = file("database = \"sqlite:///var/lib/tessera/auth.db\"")
            .resolve()
            .unwrap();
        assert_eq!(
            config.master_key_file,
            PathBuf::from("/var/lib/tessera/tessera.key")
        );
    }
}
