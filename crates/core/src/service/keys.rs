//! Keys: the signing keys (creation, rotation, withdrawal) and the admin API keys. The rules
//! — which key may be withdrawn, when a node rotates — live here, and every change to the keys
//! is one transaction, so nodes starting at once on a fresh database agree on one key.

use std::sync::Arc;

use arc_swap::{ArcSwap, Guard};

use tracing::{info, warn};

use super::{key_error, Tessera};
use crate::config::Config;
use crate::error::AuthError;
use crate::keys::{KeyRing, MasterKey, SigningKey};
use crate::model::{AdminKey, AdminKeyId, AdminScope, RevocationEvent, SealedKey, Timestamp};
use crate::secret::AdminSecret;
use crate::store::Store;

/// What a process may do to the signing keys when it starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyPolicy {
    /// The server: creates the first key, and rotates when `signing_alg` names another
    /// algorithm than the active key's.
    Serve,
    /// Administration commands: create the first key on a fresh install, never rotate (a
    /// command run with another configuration must not churn production keys).
    Administer,
}

impl Tessera {
    /// Makes a new signing key in the configured algorithm and retires the active one, whose
    /// public key stays published until every token it signed has expired.
    pub async fn rotate_signing_key(&self) -> Result<SigningKey, AuthError> {
        let key = generate(&self.config).await?;
        let now = Timestamp::now();
        let sealed = key.seal(&self.keys.master, now).map_err(key_error)?;
        let mut tx = self.store.begin().await?;
        install(tx.as_mut(), &sealed, now).await?;
        tx.commit().await?;
        info!(kid = key.kid(), alg = %self.config.signing_alg, "signing key created");
        self.reload_keys().await?;
        Ok(key)
    }

    /// Every signing key, retired or not, oldest first (for `tessera keys list`).
    pub async fn signing_keys(&self) -> Result<Vec<SealedKey>, AuthError> {
        Ok(self.store.signing_keys().await?)
    }

    /// Withdraws a retired signing key at once (for a compromised key): its tokens stop
    /// verifying on every node within the revocation feed's lag, in every revocation mode,
    /// rather than at each node's next periodic key reload. The deletion and the withdrawal's
    /// log entry, on which every node rebuilds its key ring, commit together. The active key
    /// cannot be withdrawn (nothing could sign; rotate first); an unknown `kid` is `NotFound`.
    pub async fn withdraw_signing_key(&self, kid: &str) -> Result<(), AuthError> {
        let mut change = self.change(Timestamp::now()).await?;
        let sealed = change.tx.signing_keys_for_update().await?;
        let key = sealed
            .iter()
            .find(|k| k.kid == kid)
            .ok_or(AuthError::NotFound)?;
        if key.retired_at.is_none() {
            return Err(AuthError::ActiveKey);
        }
        if !change.tx.delete_signing_key(kid).await? {
            return Err(AuthError::NotFound);
        }
        change
            .revoke(RevocationEvent::KeyWithdrawn {
                kid: kid.to_owned(),
            })
            .await?;
        self.commit(change).await?;
        self.reload_keys().await?;
        warn!(
            kid,
            "signing key withdrawn; tokens it signed no longer verify"
        );
        Ok(())
    }

    /// Creates an API key limited to `scope` (`Admin` has every scope); the secret is returned
    /// once and only its hash is kept.
    pub async fn create_admin_key(
        &self,
        name: &str,
        scope: AdminScope,
    ) -> Result<(AdminKey, AdminSecret), AuthError> {
        let secret = AdminSecret::generate();
        let key = AdminKey {
            id: AdminKeyId::new(),
            name: name.to_owned(),
            hash: secret.to_hash(),
            created_at: Timestamp::now(),
            revoked_at: None,
            scope,
        };
        let mut tx = self.store.begin().await?;
        tx.insert_admin_key(&key).await?;
        tx.commit().await?;
        info!(admin_key = %key.id, name = %key.name, scope = %key.scope, "admin key created");
        Ok((key, secret))
    }

    /// Revokes an admin API key: it stops authenticating at once on every node, which read
    /// admin keys from the store on each request. `NotFound` if no live key has this id.
    pub async fn revoke_admin_key(&self, id: AdminKeyId) -> Result<(), AuthError> {
        let mut tx = self.store.begin().await?;
        if !tx.revoke_admin_key(id, Timestamp::now()).await? {
            return Err(AuthError::NotFound);
        }
        tx.commit().await?;
        info!(admin_key = %id, "admin key revoked");
        Ok(())
    }

    /// The live API key behind `secret`, if its scope covers `needed`. An unknown or revoked
    /// key is `Unauthenticated`; a live key without the scope is `InsufficientScope`, so the
    /// caller learns to use another key rather than that its key is dead.
    pub async fn authenticate_admin(
        &self,
        secret: &AdminSecret,
        needed: AdminScope,
    ) -> Result<AdminKey, AuthError> {
        let key = self
            .store
            .find_live_admin_key(&secret.to_hash())
            .await?
            .ok_or(AuthError::Unauthenticated)?;
        if key.allows(needed) {
            Ok(key)
        } else {
            Err(AuthError::InsufficientScope(needed))
        }
    }
}

/// The key ring a node signs and verifies with, and what it takes to rebuild it from the
/// store; shared between the service and the task that rebuilds it on a withdrawn key.
pub(super) struct LiveKeys {
    /// Read by every bearer verification, replaced only when the keys change: `ArcSwap`
    /// lends it without touching its reference count, which every worker would otherwise
    /// pass from core to core on every request (as a lock word would).
    ring: ArcSwap<KeyRing>,
    pub(super) master: MasterKey,
    store: Arc<dyn Store>,
    config: Arc<Config>,
}

impl LiveKeys {
    /// Loads the key ring, first creating the key a fresh install needs or rotating to the
    /// configured algorithm as `policy` allows.
    pub(super) async fn start(
        store: Arc<dyn Store>,
        master: MasterKey,
        config: Arc<Config>,
        policy: KeyPolicy,
    ) -> Result<Self, AuthError> {
        ensure_signing_key(store.as_ref(), &master, &config, policy).await?;
        let ring = ring_from_store(store.as_ref(), &master, &config).await?;
        Ok(Self {
            ring: ArcSwap::from_pointee(ring),
            master,
            store,
            config,
        })
    }

    pub(super) fn current(&self) -> Arc<KeyRing> {
        self.ring.load_full()
    }

    /// The ring in force, lent for the span of one verification (not across an `.await`).
    pub(super) fn lend(&self) -> Guard<Arc<KeyRing>> {
        self.ring.load()
    }

    pub(super) async fn reload(&self) -> Result<(), AuthError> {
        let ring = ring_from_store(self.store.as_ref(), &self.master, &self.config).await?;
        if !self.ring.load().same_keys(&ring) {
            self.ring.store(Arc::new(ring));
        }
        Ok(())
    }
}

/// The key ring of every key in the store whose tokens may still be alive.
async fn ring_from_store(
    store: &dyn Store,
    master: &MasterKey,
    config: &Config,
) -> Result<KeyRing, AuthError> {
    KeyRing::from_sealed(
        &store.signing_keys().await?,
        master,
        Timestamp::now(),
        config.access_token_ttl,
        &config.issuer,
        &config.audience,
    )
    .map_err(key_error)
}

/// Whether a node starting under `policy` must make a new signing key: none is active, or
/// (for the server) the active one is of another algorithm than `signing_alg`.
fn needs_new_key(sealed: &[SealedKey], config: &Config, policy: KeyPolicy) -> bool {
    let active = sealed
        .iter()
        .filter(|k| k.retired_at.is_none())
        .max_by_key(|k| k.created_at);
    match active {
        None => true,
        Some(key) => key.alg != config.signing_alg.as_str() && policy == KeyPolicy::Serve,
    }
}

/// Creates the first key, or rotates when `signing_alg` changed. The key is generated outside
/// the transaction (an RSA key takes a second), then the need is checked again under it: of
/// several nodes starting at once on one fresh database, the first to commit installs its key
/// and the others find it and drop theirs, so exactly one key is active.
async fn ensure_signing_key(
    store: &dyn Store,
    master: &MasterKey,
    config: &Config,
    policy: KeyPolicy,
) -> Result<(), AuthError> {
    if !needs_new_key(&store.signing_keys().await?, config, policy) {
        return Ok(());
    }
    let key = generate(config).await?;
    let now = Timestamp::now();
    let sealed = key.seal(master, now).map_err(key_error)?;
    let mut tx = store.begin().await?;
    let current = tx.signing_keys_for_update().await?;
    if !needs_new_key(&current, config, policy) {
        return Ok(());
    }
    if let Some(active) = current.iter().find(|k| k.retired_at.is_none()) {
        warn!(from = %active.alg, to = %config.signing_alg, "signing_alg changed: rotating to a new signing key");
    }
    install(tx.as_mut(), &sealed, now).await?;
    tx.commit().await?;
    info!(kid = key.kid(), alg = %config.signing_alg, "signing key created");
    Ok(())
}

async fn generate(config: &Config) -> Result<SigningKey, AuthError> {
    let alg = config.signing_alg;
    tokio::task::spawn_blocking(move || SigningKey::generate(alg))
        .await
        .map_err(|e| AuthError::Key(e.to_string()))?
        .map_err(key_error)
}

/// Installs `sealed` as the active key and retires every other active key, in `tx`.
async fn install(
    tx: &mut dyn crate::store::StoreTx,
    sealed: &SealedKey,
    now: Timestamp,
) -> Result<(), AuthError> {
    let previous: Vec<String> = tx
        .signing_keys_for_update()
        .await?
        .into_iter()
        .filter(|k| k.retired_at.is_none())
        .map(|k| k.kid)
        .collect();
    tx.insert_signing_key(sealed).await?;
    for kid in previous {
        tx.retire_signing_key(&kid, now).await?;
    }
    Ok(())
}
