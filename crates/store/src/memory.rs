//! The in-memory store: every record in process memory, lost when the process exits.
//!
//! A product feature, not a test double: it passes the same conformance suite as the durable
//! backends, so an application's tests and a single-process demo see exactly the semantics
//! of production, transactions included.
//!
//! **How a transaction works.** The committed state is a set of persistent maps ([`imbl`]),
//! which share structure when cloned, so a clone of the whole state costs O(1) and each write
//! to the clone copies only the path it changes. Readers take the committed state's
//! [`RwLock`] for the length of one lookup, never across an `.await`. A transaction
//! ([`Store::begin`]) first takes the writer lock, a [`tokio::sync::Mutex`] held for its whole
//! life (one writer at a time, as SQLite's write lock), then works on its own clone of the
//! committed state: its reads see its own writes and nothing another writer could change, and
//! no reader sees any of them. [`StoreTx::commit`] swaps the clone in as the new committed
//! state in one assignment, so readers see all of it at once; dropping the transaction drops
//! the clone, and nothing happened. Housekeeping writes (touching a session, pruning, webhook
//! delivery state) take the writer lock too, so a transaction's commit never overwrites them.

use std::ops::Bound;
use std::sync::{Arc, PoisonError, RwLock, RwLockReadGuard};

use async_trait::async_trait;
use imbl::{HashMap, HashSet, OrdMap};
use tessera_core::guessing::Tally;
use tessera_core::model::{
    AdminKey, AdminKeyId, Email, EmailToken, EmailTokenId, OutboxId, RefreshRecord,
    RevocationEvent, SealedKey, Session, SessionId, Timestamp, User, UserId,
};
use tessera_core::rotation::PresentedToken;
use tessera_core::secret::SecretHash;
use tessera_core::store::{
    AdminKeyStore, DenylistStore, GuessingCounters, KeyStore, OutboxStore, RevocationLog,
    SessionStore, StoreTx, UserStore,
};
use tessera_core::webhooks::{OutboxMessage, QueuedMessage};
use tessera_core::{Store, StoreError};
use tokio::sync::{Mutex, OwnedMutexGuard};

/// Everything in process memory; see the module documentation.
#[derive(Debug, Default)]
pub struct MemoryStore {
    /// What readers see: the state as of the last commit.
    committed: Arc<RwLock<State>>,
    /// Held by the one writer (a transaction, or a housekeeping write) at a time.
    writer: Arc<Mutex<()>>,
    /// The guessing tallies: outside the transactional state, as they report nothing and
    /// change on every failed login.
    tallies: Arc<std::sync::Mutex<Tallies>>,
}

/// Guessing tallies by key. An attacker rotating addresses adds a key per address; expired
/// ones are swept whenever the map has doubled since the last sweep, so it holds at most
/// about twice the tallies alive in one window.
#[derive(Debug, Default)]
struct Tallies {
    live: std::collections::HashMap<String, Tally>,
    /// Size after the last sweep.
    swept_to: usize,
}

impl Tallies {
    fn sweep(&mut self, now: Timestamp) -> u64 {
        let before = self.live.len();
        self.live.retain(|_, tally| tally.expires_at > now);
        self.swept_to = self.live.len();
        (before - self.live.len()) as u64
    }
}

/// A record and the order it was inserted in, to break ties between equal timestamps the
/// way the SQL backends do (by insertion order).
#[derive(Debug, Clone)]
struct Sequenced<T> {
    seq: u64,
    value: T,
}

#[derive(Debug, Clone)]
struct RefreshEntry {
    record: RefreshRecord,
    /// The hash of the token this one was exchanged for, set together with `rotated_at`.
    successor: Option<SecretHash>,
}

#[derive(Debug, Clone)]
struct OutboxEntry {
    queued: QueuedMessage,
    /// When it was delivered or given up; it is never due again.
    finished_at: Option<Timestamp>,
}

/// The whole store. Every field is a persistent map, so `clone` is O(1) (see the module
/// documentation).
#[derive(Debug, Clone, Default)]
struct State {
    next_seq: u64,
    users: HashMap<UserId, Sequenced<User>>,
    users_by_email: HashMap<Email, UserId>,
    /// Tombstones of deleted users: their last epoch and when they were deleted.
    deleted_users: HashMap<UserId, (Timestamp, Timestamp)>,
    sessions: HashMap<SessionId, Sequenced<Session>>,
    sessions_by_hash: HashMap<SecretHash, SessionId>,
    sessions_by_user: HashMap<UserId, HashSet<SessionId>>,
    refresh: HashMap<SecretHash, RefreshEntry>,
    /// Denied access-token `jti`s and when each stops mattering.
    denied_jtis: HashMap<String, Timestamp>,
    /// The revocation log by position, and the last position handed out (never reused, also
    /// after pruning).
    events: OrdMap<u64, (Timestamp, RevocationEvent)>,
    last_event: u64,
    /// The webhook outbox; `Sequenced` keeps queueing order for ties in `next_attempt_at`.
    outbox: HashMap<OutboxId, Sequenced<OutboxEntry>>,
    signing_keys: HashMap<String, Sequenced<SealedKey>>,
    admin_keys: HashMap<AdminKeyId, AdminKey>,
    admin_keys_by_hash: HashMap<SecretHash, AdminKeyId>,
    /// Mailed links' tokens, by id and by hash.
    email_tokens: HashMap<EmailTokenId, EmailToken>,
    email_tokens_by_hash: HashMap<SecretHash, EmailTokenId>,
}

impl State {
    fn next_seq(&mut self) -> u64 {
        self.next_seq += 1;
        self.next_seq
    }

    /// The entry if it is still waiting (neither delivered nor given up).
    fn waiting(&mut self, id: OutboxId) -> Option<&mut OutboxEntry> {
        self.outbox
            .get_mut(&id)
            .map(|entry| &mut entry.value)
            .filter(|entry| entry.finished_at.is_none())
    }

    fn live_session(&self, id: SessionId, now: Timestamp) -> Option<&Session> {
        self.sessions
            .get(&id)
            .map(|s| &s.value)
            .filter(|s| s.is_live(now))
    }

    /// Deletes the sessions that ended strictly before `before`, with their refresh tokens.
    fn purge_dead_sessions(&mut self, before: Timestamp) -> u64 {
        let dead: Vec<(SessionId, UserId, Option<SecretHash>)> = self
            .sessions
            .values()
            .map(|s| &s.value)
            .filter(|s| s.revoked_at.is_some_and(|at| at < before) || s.idle_expires_at() < before)
            .map(|s| (s.id, s.user_id, s.secret_hash))
            .collect();
        self.deleted_users
            .retain(|_, (_, deleted_at)| *deleted_at >= before);
        if dead.is_empty() {
            return 0;
        }
        for (id, user, hash) in &dead {
            self.sessions.remove(id);
            if let Some(hash) = hash {
                self.sessions_by_hash.remove(hash);
            }
            if let Some(ids) = self.sessions_by_user.get_mut(user) {
                ids.remove(id);
                if ids.is_empty() {
                    self.sessions_by_user.remove(user);
                }
            }
        }
        // As the SQL foreign key's cascade: a family goes with its session.
        let ids: HashSet<SessionId> = dead.iter().map(|(id, _, _)| *id).collect();
        self.refresh
            .retain(|_, entry| !ids.contains(&entry.record.session_id));
        u64::try_from(dead.len()).unwrap_or(u64::MAX)
    }
}

/// A poisoned lock means a panic interrupted a swap of the committed state: fail closed
/// (SPEC §7) rather than answer from a state that may not be the last one committed.
fn poisoned<T>(_: PoisonError<T>) -> StoreError {
    StoreError::Unavailable("memory store lock poisoned by an earlier panic".to_owned())
}

fn count(n: usize) -> u64 {
    u64::try_from(n).unwrap_or(u64::MAX)
}

impl MemoryStore {
    pub fn new() -> Self {
        Self::default()
    }

    /// Guessing tallies held, expired ones not yet swept included: what they cost in memory.
    pub fn tallies_held(&self) -> usize {
        self.tallies
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .live
            .len()
    }

    /// The committed state, for one lookup: never hold the guard across an `.await`.
    fn read(&self) -> Result<RwLockReadGuard<'_, State>, StoreError> {
        self.committed.read().map_err(poisoned)
    }

    /// A housekeeping write: under the writer lock, so that no transaction's commit replaces
    /// it, `change` runs on a clone of the committed state, which is then swapped in. Readers
    /// are never blocked while it runs.
    async fn housekeeping<T>(&self, change: impl FnOnce(&mut State) -> T) -> Result<T, StoreError> {
        let _writer = self.writer.lock().await;
        let mut state = self.read()?.clone();
        let result = change(&mut state);
        *self.committed.write().map_err(poisoned)? = state;
        Ok(result)
    }
}

/// A write transaction of the memory store; see the module documentation.
struct MemoryTx {
    /// The writer lock, released when the transaction ends (committed or dropped).
    _writer: OwnedMutexGuard<()>,
    committed: Arc<RwLock<State>>,
    /// The transaction's own copy of the state: what `commit` publishes.
    state: State,
    /// Set by the first call that fails: `commit` then refuses, as the trait requires.
    failed: bool,
}

impl MemoryTx {
    /// Marks the transaction failed if `result` is an error. Every write checks its rules
    /// before it changes anything, but the state is thrown away on failure regardless.
    fn track<T>(&mut self, result: Result<T, StoreError>) -> Result<T, StoreError> {
        if result.is_err() {
            self.failed = true;
        }
        result
    }
}

#[async_trait]
impl StoreTx for MemoryTx {
    async fn user_for_update(&mut self, id: UserId) -> Result<Option<User>, StoreError> {
        Ok(self.state.users.get(&id).map(|u| u.value.clone()))
    }

    async fn session_for_update(&mut self, id: SessionId) -> Result<Option<Session>, StoreError> {
        Ok(self.state.sessions.get(&id).map(|s| s.value.clone()))
    }

    async fn refresh_token_for_update(
        &mut self,
        presented: &SecretHash,
        now: Timestamp,
    ) -> Result<Option<PresentedToken>, StoreError> {
        let state = &self.state;
        Ok(state.refresh.get(presented).map(|entry| PresentedToken {
            live_session: state.live_session(entry.record.session_id, now).cloned(),
            rotated_at: entry.record.rotated_at,
            successor_unspent: entry
                .successor
                .and_then(|next| state.refresh.get(&next))
                .is_some_and(|next| next.record.rotated_at.is_none()),
        }))
    }

    async fn refresh_family_for_update(
        &mut self,
        presented: &SecretHash,
    ) -> Result<Option<Session>, StoreError> {
        let state = &self.state;
        Ok(state
            .refresh
            .get(presented)
            .and_then(|entry| state.sessions.get(&entry.record.session_id))
            .map(|s| s.value.clone()))
    }

    async fn signing_keys_for_update(&mut self) -> Result<Vec<SealedKey>, StoreError> {
        Ok(signing_keys(&self.state))
    }

    async fn insert_user(&mut self, user: &User) -> Result<(), StoreError> {
        let state = &mut self.state;
        let result = if state.users_by_email.contains_key(&user.email) {
            Err(StoreError::Conflict("email"))
        } else if state.users.contains_key(&user.id) {
            Err(StoreError::Conflict("user"))
        } else {
            let seq = state.next_seq();
            state.users_by_email.insert(user.email.clone(), user.id);
            state.users.insert(
                user.id,
                Sequenced {
                    seq,
                    value: user.clone(),
                },
            );
            Ok(())
        };
        self.track(result)
    }

    async fn set_roles(&mut self, id: UserId, roles: &[String]) -> Result<bool, StoreError> {
        let Some(user) = self.state.users.get_mut(&id) else {
            return Ok(false);
        };
        user.value.roles = roles.to_vec();
        Ok(true)
    }

    async fn set_password_hash(
        &mut self,
        id: UserId,
        password_hash: &str,
    ) -> Result<bool, StoreError> {
        let Some(user) = self.state.users.get_mut(&id) else {
            return Ok(false);
        };
        password_hash.clone_into(&mut user.value.password_hash);
        Ok(true)
    }

    async fn set_email_verified(&mut self, id: UserId, at: Timestamp) -> Result<bool, StoreError> {
        let Some(user) = self.state.users.get_mut(&id) else {
            return Ok(false);
        };
        user.value.email_verified_at.get_or_insert(at);
        Ok(true)
    }

    async fn insert_email_token(&mut self, token: &EmailToken) -> Result<bool, StoreError> {
        let state = &mut self.state;
        if state.email_tokens.contains_key(&token.id) {
            return Ok(false);
        }
        if state.email_tokens_by_hash.contains_key(&token.hash) {
            return self.track(Err(StoreError::Conflict("email_token")));
        }
        if !state.users.contains_key(&token.user_id) {
            return self.track(Err(StoreError::Conflict("user")));
        }
        let superseded: Vec<EmailTokenId> = state
            .email_tokens
            .values()
            .filter(|other| {
                other.user_id == token.user_id
                    && other.purpose == token.purpose
                    && other.spent_at.is_none()
            })
            .map(|other| other.id)
            .collect();
        for id in superseded {
            if let Some(other) = state.email_tokens.get_mut(&id) {
                other.spent_at = Some(token.created_at);
            }
        }
        state.email_tokens_by_hash.insert(token.hash, token.id);
        state.email_tokens.insert(token.id, token.clone());
        Ok(true)
    }

    async fn email_token_for_update(
        &mut self,
        hash: &SecretHash,
    ) -> Result<Option<EmailToken>, StoreError> {
        let state = &self.state;
        Ok(state
            .email_tokens_by_hash
            .get(hash)
            .and_then(|id| state.email_tokens.get(id))
            .cloned())
    }

    async fn email_token_by_id_for_update(
        &mut self,
        id: EmailTokenId,
    ) -> Result<Option<EmailToken>, StoreError> {
        Ok(self.state.email_tokens.get(&id).cloned())
    }

    async fn spend_email_token(
        &mut self,
        id: EmailTokenId,
        at: Timestamp,
    ) -> Result<bool, StoreError> {
        match self.state.email_tokens.get_mut(&id) {
            Some(token) if token.spent_at.is_none() => {
                token.spent_at = Some(at);
                Ok(true)
            }
            _ => Ok(false),
        }
    }

    async fn delete_user(&mut self, id: UserId, at: Timestamp) -> Result<bool, StoreError> {
        let state = &mut self.state;
        let Some(user) = state.users.remove(&id) else {
            return Ok(false);
        };
        state.users_by_email.remove(&user.value.email);
        state
            .deleted_users
            .insert(id, (user.value.tokens_valid_after, at));
        // As the SQL foreign keys' cascade: the sessions go with the user, the refresh
        // tokens with their sessions.
        let sessions = state.sessions_by_user.remove(&id).unwrap_or_default();
        for session in &sessions {
            if let Some(removed) = state.sessions.remove(session) {
                if let Some(hash) = removed.value.secret_hash {
                    state.sessions_by_hash.remove(&hash);
                }
            }
        }
        state
            .refresh
            .retain(|_, entry| !sessions.contains(&entry.record.session_id));
        state.email_tokens.retain(|_, token| token.user_id != id);
        let kept = state.email_tokens.clone();
        state
            .email_tokens_by_hash
            .retain(|_, token| kept.contains_key(token));
        Ok(true)
    }

    async fn bump_epoch(
        &mut self,
        id: UserId,
        at: Timestamp,
    ) -> Result<Option<Timestamp>, StoreError> {
        let Some(user) = self.state.users.get_mut(&id) else {
            return Ok(None);
        };
        let next = Timestamp::from_unix_millis(
            user.value
                .tokens_valid_after
                .as_unix_millis()
                .saturating_add(1),
        );
        user.value.tokens_valid_after = next.max(at);
        Ok(Some(user.value.tokens_valid_after))
    }

    async fn insert_session(&mut self, session: &Session) -> Result<(), StoreError> {
        let state = &mut self.state;
        let hash_taken = session
            .secret_hash
            .is_some_and(|hash| state.sessions_by_hash.contains_key(&hash));
        let result = if hash_taken || state.sessions.contains_key(&session.id) {
            Err(StoreError::Conflict("session"))
        } else if !state.users.contains_key(&session.user_id) {
            // Mirrors the SQL foreign key: a session belongs to an existing user.
            Err(StoreError::Unavailable(
                "session refers to an unknown user".to_owned(),
            ))
        } else {
            let seq = state.next_seq();
            if let Some(hash) = session.secret_hash {
                state.sessions_by_hash.insert(hash, session.id);
            }
            state
                .sessions_by_user
                .entry(session.user_id)
                .or_default()
                .insert(session.id);
            state.sessions.insert(
                session.id,
                Sequenced {
                    seq,
                    value: session.clone(),
                },
            );
            Ok(())
        };
        self.track(result)
    }

    async fn revoke_session(&mut self, id: SessionId, at: Timestamp) -> Result<bool, StoreError> {
        match self.state.sessions.get_mut(&id) {
            Some(session) if session.value.revoked_at.is_none() => {
                session.value.revoked_at = Some(at);
                Ok(true)
            }
            _ => Ok(false),
        }
    }

    async fn revoke_user_sessions(
        &mut self,
        user: UserId,
        keep: Option<SessionId>,
        at: Timestamp,
    ) -> Result<Vec<SessionId>, StoreError> {
        let State {
            sessions,
            sessions_by_user,
            ..
        } = &mut self.state;
        let mut revoked = Vec::new();
        for id in sessions_by_user.get(&user).into_iter().flatten() {
            if Some(*id) == keep {
                continue;
            }
            if let Some(session) = sessions.get_mut(id) {
                if session.value.revoked_at.is_none() {
                    session.value.revoked_at = Some(at);
                    revoked.push(*id);
                }
            }
        }
        Ok(revoked)
    }

    async fn insert_refresh(&mut self, record: &RefreshRecord) -> Result<(), StoreError> {
        let state = &mut self.state;
        let result = if state.refresh.contains_key(&record.hash) {
            Err(StoreError::Conflict("refresh"))
        } else if !state.sessions.contains_key(&record.session_id) {
            Err(StoreError::Unavailable(
                "refresh token refers to an unknown session".to_owned(),
            ))
        } else {
            state.refresh.insert(
                record.hash,
                RefreshEntry {
                    record: record.clone(),
                    successor: None,
                },
            );
            Ok(())
        };
        self.track(result)
    }

    async fn spend_refresh(
        &mut self,
        presented: &SecretHash,
        successor: &SecretHash,
        at: Timestamp,
    ) -> Result<(), StoreError> {
        let state = &mut self.state;
        let spendable = state
            .refresh
            .get(presented)
            .filter(|entry| entry.record.rotated_at.is_none())
            .map(|entry| entry.record.session_id);
        let result = match spendable {
            None => Err(StoreError::Unavailable(
                "refresh token to spend is unknown or already spent".to_owned(),
            )),
            Some(_) if state.refresh.contains_key(successor) => {
                Err(StoreError::Conflict("refresh"))
            }
            Some(session_id) => {
                if let Some(entry) = state.refresh.get_mut(presented) {
                    entry.record.rotated_at = Some(at);
                    entry.successor = Some(*successor);
                }
                state.refresh.insert(
                    *successor,
                    RefreshEntry {
                        record: RefreshRecord {
                            hash: *successor,
                            session_id,
                            issued_at: at,
                            rotated_at: None,
                        },
                        successor: None,
                    },
                );
                if let Some(session) = state.sessions.get_mut(&session_id) {
                    session.value.last_seen_at = session.value.last_seen_at.max(at);
                }
                Ok(())
            }
        };
        self.track(result)
    }

    async fn deny_jti(&mut self, jti: &str, expires_at: Timestamp) -> Result<(), StoreError> {
        let kept = self.state.denied_jtis.get(jti).copied();
        self.state.denied_jtis.insert(
            jti.to_owned(),
            kept.map_or(expires_at, |kept| kept.max(expires_at)),
        );
        Ok(())
    }

    async fn insert_signing_key(&mut self, key: &SealedKey) -> Result<(), StoreError> {
        let state = &mut self.state;
        let result = if state.signing_keys.contains_key(&key.kid) {
            Err(StoreError::Conflict("kid"))
        } else {
            let seq = state.next_seq();
            state.signing_keys.insert(
                key.kid.clone(),
                Sequenced {
                    seq,
                    value: key.clone(),
                },
            );
            Ok(())
        };
        self.track(result)
    }

    async fn retire_signing_key(&mut self, kid: &str, at: Timestamp) -> Result<bool, StoreError> {
        match self.state.signing_keys.get_mut(kid) {
            Some(key) if key.value.retired_at.is_none() => {
                key.value.retired_at = Some(at);
                Ok(true)
            }
            _ => Ok(false),
        }
    }

    async fn delete_signing_key(&mut self, kid: &str) -> Result<bool, StoreError> {
        Ok(self.state.signing_keys.remove(kid).is_some())
    }

    async fn insert_admin_key(&mut self, key: &AdminKey) -> Result<(), StoreError> {
        let state = &mut self.state;
        let result = if state.admin_keys.contains_key(&key.id)
            || state.admin_keys_by_hash.contains_key(&key.hash)
        {
            Err(StoreError::Conflict("admin_key"))
        } else {
            state.admin_keys_by_hash.insert(key.hash, key.id);
            state.admin_keys.insert(key.id, key.clone());
            Ok(())
        };
        self.track(result)
    }

    async fn revoke_admin_key(
        &mut self,
        id: AdminKeyId,
        at: Timestamp,
    ) -> Result<bool, StoreError> {
        match self.state.admin_keys.get_mut(&id) {
            Some(key) if key.revoked_at.is_none() => {
                key.revoked_at = Some(at);
                Ok(true)
            }
            _ => Ok(false),
        }
    }

    async fn append_revocation(
        &mut self,
        event: &RevocationEvent,
        at: Timestamp,
    ) -> Result<u64, StoreError> {
        // The writer lock is held until commit, so positions become visible in order.
        let state = &mut self.state;
        state.last_event += 1;
        let position = state.last_event;
        state.events.insert(position, (at, event.clone()));
        Ok(position)
    }

    async fn enqueue(&mut self, messages: &[OutboxMessage]) -> Result<(), StoreError> {
        let state = &mut self.state;
        // As the SQL primary key would: refuses the whole batch before anything is written.
        let taken = messages.iter().enumerate().any(|(i, m)| {
            state.outbox.contains_key(&m.id) || messages[..i].iter().any(|o| o.id == m.id)
        });
        if taken {
            return self.track(Err(StoreError::Conflict("outbox")));
        }
        for message in messages {
            let seq = state.next_seq();
            let entry = OutboxEntry {
                queued: QueuedMessage {
                    next_attempt_at: message.created_at,
                    message: message.clone(),
                    attempts: 0,
                    last_error: None,
                },
                finished_at: None,
            };
            state
                .outbox
                .insert(message.id, Sequenced { seq, value: entry });
        }
        Ok(())
    }

    async fn commit(self: Box<Self>) -> Result<(), StoreError> {
        if self.failed {
            return Err(StoreError::Unavailable(
                "transaction rolled back instead of committed: a call in it had failed".to_owned(),
            ));
        }
        let MemoryTx {
            _writer,
            committed,
            state,
            ..
        } = *self;
        *committed.write().map_err(poisoned)? = state;
        // `_writer` is released only now, after the new state is in place.
        drop(_writer);
        Ok(())
    }
}

fn signing_keys(state: &State) -> Vec<SealedKey> {
    let mut keys: Vec<&Sequenced<SealedKey>> = state.signing_keys.values().collect();
    keys.sort_by_key(|k| (k.value.created_at, k.seq));
    keys.into_iter().map(|k| k.value.clone()).collect()
}

#[async_trait]
impl UserStore for MemoryStore {
    async fn find_user(&self, id: UserId) -> Result<Option<User>, StoreError> {
        Ok(self.read()?.users.get(&id).map(|u| u.value.clone()))
    }

    async fn find_user_by_email(&self, email: &Email) -> Result<Option<User>, StoreError> {
        let state = self.read()?;
        Ok(state
            .users_by_email
            .get(email)
            .and_then(|id| state.users.get(id))
            .map(|u| u.value.clone()))
    }

    async fn list_users(&self) -> Result<Vec<User>, StoreError> {
        let state = self.read()?;
        let mut users: Vec<&Sequenced<User>> = state.users.values().collect();
        users.sort_by_key(|u| (u.value.created_at, u.seq));
        Ok(users.into_iter().map(|u| u.value.clone()).collect())
    }

    async fn epochs_since(&self, since: Timestamp) -> Result<Vec<(UserId, Timestamp)>, StoreError> {
        let state = self.read()?;
        let live = state
            .users
            .values()
            .map(|u| (u.value.id, u.value.tokens_valid_after));
        let deleted = state
            .deleted_users
            .iter()
            .map(|(id, (epoch, _))| (*id, *epoch));
        Ok(live
            .chain(deleted)
            .filter(|(_, epoch)| *epoch >= since)
            .collect())
    }

    async fn find_email_token(&self, hash: &SecretHash) -> Result<Option<EmailToken>, StoreError> {
        let state = self.read()?;
        Ok(state
            .email_tokens_by_hash
            .get(hash)
            .and_then(|id| state.email_tokens.get(id))
            .cloned())
    }

    async fn prune_email_tokens(&self, before: Timestamp) -> Result<u64, StoreError> {
        self.housekeeping(|state| {
            let len = state.email_tokens.len();
            state.email_tokens.retain(|_, t| t.expires_at >= before);
            let kept = state.email_tokens.clone();
            state
                .email_tokens_by_hash
                .retain(|_, id| kept.contains_key(id));
            count(len - state.email_tokens.len())
        })
        .await
    }
}

#[async_trait]
impl SessionStore for MemoryStore {
    async fn find_live_session(
        &self,
        id: SessionId,
        now: Timestamp,
    ) -> Result<Option<Session>, StoreError> {
        Ok(self.read()?.live_session(id, now).cloned())
    }

    async fn find_live_session_by_hash(
        &self,
        hash: &SecretHash,
        now: Timestamp,
    ) -> Result<Option<Session>, StoreError> {
        let state = self.read()?;
        Ok(state
            .sessions_by_hash
            .get(hash)
            .and_then(|id| state.live_session(*id, now))
            .cloned())
    }

    async fn touch_session(&self, id: SessionId, at: Timestamp) -> Result<(), StoreError> {
        // Most touches of a live session change nothing worth a writer's turn: check first.
        let stale = self
            .read()?
            .live_session(id, at)
            .is_some_and(|s| at > s.last_seen_at);
        if !stale {
            return Ok(());
        }
        self.housekeeping(|state| {
            if let Some(session) = state.sessions.get_mut(&id) {
                // Only a live session is extended: touching must never revive an expired one.
                if session.value.is_live(at) && at > session.value.last_seen_at {
                    session.value.last_seen_at = at;
                }
            }
        })
        .await
    }

    async fn list_live_sessions(
        &self,
        user: UserId,
        now: Timestamp,
    ) -> Result<Vec<Session>, StoreError> {
        let state = self.read()?;
        let mut live: Vec<&Sequenced<Session>> = state
            .sessions_by_user
            .get(&user)
            .into_iter()
            .flatten()
            .filter_map(|id| state.sessions.get(id))
            .filter(|s| s.value.is_live(now))
            .collect();
        live.sort_by_key(|s| std::cmp::Reverse((s.value.created_at, s.seq)));
        Ok(live.into_iter().map(|s| s.value.clone()).collect())
    }

    async fn revoked_sessions_since(
        &self,
        since: Timestamp,
    ) -> Result<Vec<(SessionId, UserId, Timestamp)>, StoreError> {
        Ok(self
            .read()?
            .sessions
            .values()
            .filter_map(|s| {
                let revoked_at = s.value.revoked_at.filter(|at| *at >= since)?;
                Some((s.value.id, s.value.user_id, revoked_at))
            })
            .collect())
    }

    async fn purge_dead_sessions(&self, before: Timestamp) -> Result<u64, StoreError> {
        self.housekeeping(|state| state.purge_dead_sessions(before))
            .await
    }
}

#[async_trait]
impl DenylistStore for MemoryStore {
    async fn is_jti_denied(&self, jti: &str, now: Timestamp) -> Result<bool, StoreError> {
        Ok(self
            .read()?
            .denied_jtis
            .get(jti)
            .is_some_and(|expires_at| now < *expires_at))
    }

    async fn denied_jtis(&self, now: Timestamp) -> Result<Vec<(String, Timestamp)>, StoreError> {
        Ok(self
            .read()?
            .denied_jtis
            .iter()
            .filter(|(_, expires_at)| now < **expires_at)
            .map(|(jti, expires_at)| (jti.clone(), *expires_at))
            .collect())
    }

    async fn prune_denylist(&self, now: Timestamp) -> Result<u64, StoreError> {
        self.housekeeping(|state| {
            let before = state.denied_jtis.len();
            state.denied_jtis.retain(|_, expires_at| now < *expires_at);
            count(before - state.denied_jtis.len())
        })
        .await
    }
}

#[async_trait]
impl RevocationLog for MemoryStore {
    async fn events_after(
        &self,
        after: u64,
        limit: u32,
    ) -> Result<Vec<(u64, Timestamp, RevocationEvent)>, StoreError> {
        let state = self.read()?;
        Ok(state
            .events
            .range((Bound::Excluded(after), Bound::Unbounded))
            .take(usize::try_from(limit).unwrap_or(usize::MAX))
            .map(|(position, (at, event))| (*position, *at, event.clone()))
            .collect())
    }

    async fn latest_event(&self) -> Result<u64, StoreError> {
        Ok(self.read()?.last_event)
    }

    async fn prune_events(&self, before: Timestamp) -> Result<u64, StoreError> {
        self.housekeeping(|state| {
            let old: Vec<u64> = state
                .events
                .iter()
                .filter(|(_, (at, _))| *at < before)
                .map(|(position, _)| *position)
                .collect();
            for position in &old {
                state.events.remove(position);
            }
            count(old.len())
        })
        .await
    }
}

#[async_trait]
impl OutboxStore for MemoryStore {
    async fn due_messages(
        &self,
        now: Timestamp,
        limit: u32,
    ) -> Result<Vec<QueuedMessage>, StoreError> {
        let state = self.read()?;
        let mut due: Vec<&Sequenced<OutboxEntry>> = state
            .outbox
            .values()
            .filter(|e| e.value.finished_at.is_none() && e.value.queued.next_attempt_at <= now)
            .collect();
        due.sort_by_key(|e| (e.value.queued.next_attempt_at, e.seq));
        Ok(due
            .into_iter()
            .take(usize::try_from(limit).unwrap_or(usize::MAX))
            .map(|e| e.value.queued.clone())
            .collect())
    }

    async fn claim_message(
        &self,
        id: OutboxId,
        now: Timestamp,
        until: Timestamp,
    ) -> Result<bool, StoreError> {
        self.housekeeping(|state| match state.waiting(id) {
            Some(entry) if entry.queued.next_attempt_at <= now => {
                entry.queued.next_attempt_at = until;
                true
            }
            _ => false,
        })
        .await
    }

    async fn mark_delivered(&self, id: OutboxId, at: Timestamp) -> Result<bool, StoreError> {
        self.housekeeping(|state| {
            let Some(entry) = state.waiting(id) else {
                return false;
            };
            entry.finished_at = Some(at);
            true
        })
        .await
    }

    async fn reschedule(
        &self,
        id: OutboxId,
        attempts: u32,
        next_attempt_at: Timestamp,
        error: &str,
    ) -> Result<bool, StoreError> {
        self.housekeeping(|state| {
            let Some(entry) = state.waiting(id) else {
                return false;
            };
            entry.queued.attempts = attempts;
            entry.queued.next_attempt_at = next_attempt_at;
            entry.queued.last_error = Some(error.to_owned());
            true
        })
        .await
    }

    async fn give_up(&self, id: OutboxId, at: Timestamp, error: &str) -> Result<bool, StoreError> {
        self.housekeeping(|state| {
            let Some(entry) = state.waiting(id) else {
                return false;
            };
            entry.finished_at = Some(at);
            entry.queued.last_error = Some(error.to_owned());
            true
        })
        .await
    }

    async fn prune_outbox(&self, before: Timestamp) -> Result<u64, StoreError> {
        self.housekeeping(|state| {
            let len = state.outbox.len();
            state
                .outbox
                .retain(|_, e| e.value.finished_at.is_none_or(|at| at >= before));
            count(len - state.outbox.len())
        })
        .await
    }
}

#[async_trait]
impl KeyStore for MemoryStore {
    async fn signing_keys(&self) -> Result<Vec<SealedKey>, StoreError> {
        Ok(signing_keys(&*self.read()?))
    }
}

#[async_trait]
impl AdminKeyStore for MemoryStore {
    async fn find_live_admin_key(&self, hash: &SecretHash) -> Result<Option<AdminKey>, StoreError> {
        let state = self.read()?;
        Ok(state
            .admin_keys_by_hash
            .get(hash)
            .and_then(|id| state.admin_keys.get(id))
            .filter(|key| key.revoked_at.is_none())
            .cloned())
    }
}

#[async_trait]
impl GuessingCounters for MemoryStore {
    async fn update_tally(
        &self,
        key: &str,
        now: Timestamp,
        change: &(dyn Fn(Option<Tally>) -> Option<Tally> + Send + Sync),
    ) -> Result<Option<Tally>, StoreError> {
        let mut tallies = self.tallies.lock().unwrap_or_else(PoisonError::into_inner);
        let before = tallies
            .live
            .get(key)
            .copied()
            .filter(|t| t.expires_at > now);
        match change(before) {
            Some(after) if after.expires_at > now => {
                tallies.live.insert(key.to_owned(), after);
            }
            _ => {
                tallies.live.remove(key);
            }
        }
        if tallies.live.len() > 1024 && tallies.live.len() > tallies.swept_to.saturating_mul(2) {
            tallies.sweep(now);
        }
        Ok(before)
    }

    async fn tally(&self, key: &str, now: Timestamp) -> Result<Option<Tally>, StoreError> {
        let tallies = self.tallies.lock().unwrap_or_else(PoisonError::into_inner);
        Ok(tallies
            .live
            .get(key)
            .copied()
            .filter(|t| t.expires_at > now))
    }

    async fn clear_tally(&self, key: &str) -> Result<(), StoreError> {
        let mut tallies = self.tallies.lock().unwrap_or_else(PoisonError::into_inner);
        tallies.live.remove(key);
        Ok(())
    }

    async fn prune_tallies(&self, now: Timestamp) -> Result<u64, StoreError> {
        let mut tallies = self.tallies.lock().unwrap_or_else(PoisonError::into_inner);
        Ok(tallies.sweep(now))
    }
}

#[async_trait]
impl Store for MemoryStore {
    fn guessing(&self) -> &dyn GuessingCounters {
        self
    }

    async fn begin(&self) -> Result<Box<dyn StoreTx>, StoreError> {
        let writer = Arc::clone(&self.writer).lock_owned().await;
        let state = self.read()?.clone();
        Ok(Box::new(MemoryTx {
            _writer: writer,
            committed: Arc::clone(&self.committed),
            state,
            failed: false,
        }))
    }

    async fn ping(&self) -> Result<(), StoreError> {
        // Answers only while the state is consistent, like any other operation.
        self.read().map(drop)
    }

    fn backend(&self) -> &'static str {
        "memory"
    }
}
