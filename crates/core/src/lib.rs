//! Tessera's domain: who a user is, how a device stays signed in (cookie session, or an access
//! token backed by a rotating refresh family), which keys sign tokens and what has been revoked.
//!
//! Nothing here knows HTTP or a particular database: the server is a thin layer over
//! [`service::Tessera`], and every backend implements the traits in [`store`] and passes the
//! one conformance suite in `tessera-store`.

pub mod background;
pub mod bell;
pub mod common_passwords;
pub mod config;
pub mod error;
pub mod guessing;
pub mod keys;
pub mod mac;
pub mod mail;
pub mod metrics;
pub mod model;
pub mod password;
pub mod revocation;
pub mod rotation;
pub mod secret;
pub mod service;
pub mod store;
pub mod text;
pub mod token_cache;
pub mod url;
pub mod webhooks;

pub use error::AuthError;
pub use store::{Store, StoreError};
pub use tessera_verify as verify;
