//! The in-memory store: every record in process memory, lost when the process exits.
//!
//! A product feature, not a test double: it passes the same conformance suite as the durable
//! backends, so an application's tests and a single-process demo see exactly the semantics
//! of production. All state sits behind one [`RwLock`], so operations touching several maps
//! (a refresh rotation, a session with its hash index) are atomic; no lock is ever held
//! across an `.await` (the trait methods do not await at all).

use std::collections::{HashMap, HashSet};
use std::sync::{PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::time::Duration;

use async_trait::async_trait;
use tessera_core::model::{
    AdminKey, AdminKeyId, Email, OutboxId, RefreshRecord, RevocationEvent, Rotation, SealedKey,
    Session, SessionId, Timestamp, User, UserId,
};
use tessera_core::rotation::{self, Decision, PresentedToken};
use tessera_core::secret::SecretHash;
use tessera_core::store::{
    AdminKeyStore, DenylistStore, KeyStore, OutboxStore, RefreshStore, RevocationLog, SessionStore,
    UserStore,
};
use tessera_core::webhooks::{OutboxMessage, QueuedMessage, WebhookPlan};
use tessera_core::{Store, StoreError};

/// Everything in process memory; see the module documentation.
#[derive(Debug, Default)]
pub struct MemoryStore {
    state: RwLock<State>,
}

/// A record and the order it was inserted in, to break ties between equal timestamps the
/// way the SQL backends do (by insertion order).
#[derive(Debug)]
struct Sequenced<T> {
    seq: u64,
    value: T,
}

#[derive(Debug)]
struct RefreshEntry {
    record: RefreshRecord,
    /// The hash of the token this one was exchanged for, set together with `rotated_at`.
    successor: Option<SecretHash>,
}

#[derive(Debug, Default)]
struct State {
    next_seq: u64,
    users: HashMap<UserId, Sequenced<User>>,
    users_by_email: HashMap<Email, UserId>,
    sessions: HashMap<SessionId, Sequenced<Session>>,
    sessions_by_hash: HashMap<SecretHash, SessionId>,
    sessions_by_user: HashMap<UserId, Vec<SessionId>>,
    refresh: HashMap<SecretHash, RefreshEntry>,
    /// Denied access-token `jti`s and when each stops mattering.
    denied_jtis: HashMap<String, Timestamp>,
    /// The revocation log, oldest first, and the last sequence number handed out.
    events: std::collections::VecDeque<(u64, Timestamp, RevocationEvent)>,
    last_event: u64,
    /// The webhook outbox; `Sequenced` keeps queueing order for ties in `next_attempt_at`.
    outbox: HashMap<OutboxId, Sequenced<OutboxEntry>>,
    signing_keys: HashMap<String, Sequenced<SealedKey>>,
    admin_keys: HashMap<AdminKeyId, AdminKey>,
    admin_keys_by_hash: HashMap<SecretHash, AdminKeyId>,
}

#[derive(Debug)]
struct OutboxEntry {
    queued: QueuedMessage,
    /// When it was delivered or given up; it is never due again.
    finished_at: Option<Timestamp>,
}

impl State {
    fn next_seq(&mut self) -> u64 {
        self.next_seq += 1;
        self.next_seq
    }

    /// As the SQL primary key would: refuses the whole change before anything is written.
    fn check_outbox(&self, messages: &[OutboxMessage]) -> Result<(), StoreError> {
        if messages.iter().any(|m| self.outbox.contains_key(&m.id)) {
            return Err(StoreError::Conflict("outbox"));
        }
        Ok(())
    }

    /// Queues messages; callers hold the write lock of the change they report.
    fn enqueue(&mut self, messages: impl IntoIterator<Item = OutboxMessage>) {
        for message in messages {
            let seq = self.next_seq();
            let entry = OutboxEntry {
                queued: QueuedMessage {
                    next_attempt_at: message.created_at,
                    message,
                    attempts: 0,
                    last_error: None,
                },
                finished_at: None,
            };
            self.outbox
                .insert(entry.queued.message.id, Sequenced { seq, value: entry });
        }
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
}

/// A poisoned lock means a panic interrupted an update, so the maps may disagree with each
/// other: fail closed (SPEC §7) rather than answer from possibly inconsistent state.
fn poisoned<T>(_: PoisonError<T>) -> StoreError {
    StoreError::Unavailable("memory store lock poisoned by an earlier panic".to_owned())
}

impl MemoryStore {
    pub fn new() -> Self {
        Self::default()
    }

    fn read(&self) -> Result<RwLockReadGuard<'_, State>, StoreError> {
        self.state.read().map_err(poisoned)
    }

    fn write(&self) -> Result<RwLockWriteGuard<'_, State>, StoreError> {
        self.state.write().map_err(poisoned)
    }
}

#[async_trait]
impl UserStore for MemoryStore {
    async fn insert_user(&self, user: &User) -> Result<(), StoreError> {
        let mut state = self.write()?;
        if state.users_by_email.contains_key(&user.email) {
            return Err(StoreError::Conflict("email"));
        }
        if state.users.contains_key(&user.id) {
            return Err(StoreError::Conflict("user"));
        }
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
    }

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

    async fn set_roles(
        &self,
        id: UserId,
        roles: &[String],
        outbox: &[OutboxMessage],
    ) -> Result<bool, StoreError> {
        let mut state = self.write()?;
        state.check_outbox(outbox)?;
        let Some(user) = state.users.get_mut(&id) else {
            return Ok(false);
        };
        if user.value.roles != roles {
            user.value.roles = roles.to_vec();
            state.enqueue(outbox.iter().cloned());
        }
        Ok(true)
    }

    async fn bump_epoch(
        &self,
        id: UserId,
        at: Timestamp,
        outbox: &[OutboxMessage],
    ) -> Result<bool, StoreError> {
        let mut state = self.write()?;
        state.check_outbox(outbox)?;
        let Some(user) = state.users.get_mut(&id) else {
            return Ok(false);
        };
        user.value.tokens_valid_after = user.value.tokens_valid_after.max(at);
        state.enqueue(outbox.iter().cloned());
        Ok(true)
    }

    async fn epochs_since(&self, since: Timestamp) -> Result<Vec<(UserId, Timestamp)>, StoreError> {
        Ok(self
            .read()?
            .users
            .values()
            .map(|u| (u.value.id, u.value.tokens_valid_after))
            .filter(|(_, epoch)| *epoch >= since)
            .collect())
    }
}

#[async_trait]
impl SessionStore for MemoryStore {
    async fn insert_session(
        &self,
        session: &Session,
        outbox: &[OutboxMessage],
    ) -> Result<(), StoreError> {
        let mut state = self.write()?;
        state.check_outbox(outbox)?;
        let hash_taken = session
            .secret_hash
            .is_some_and(|hash| state.sessions_by_hash.contains_key(&hash));
        if hash_taken || state.sessions.contains_key(&session.id) {
            return Err(StoreError::Conflict("session"));
        }
        // Mirrors the SQL foreign key: a session belongs to an existing user.
        if !state.users.contains_key(&session.user_id) {
            return Err(StoreError::Unavailable(
                "session refers to an unknown user".to_owned(),
            ));
        }
        let seq = state.next_seq();
        if let Some(hash) = session.secret_hash {
            state.sessions_by_hash.insert(hash, session.id);
        }
        state
            .sessions_by_user
            .entry(session.user_id)
            .or_default()
            .push(session.id);
        state.sessions.insert(
            session.id,
            Sequenced {
                seq,
                value: session.clone(),
            },
        );
        state.enqueue(outbox.iter().cloned());
        Ok(())
    }

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
        let mut state = self.write()?;
        if let Some(session) = state.sessions.get_mut(&id) {
            // Only a live session is extended: touching must never revive an expired one.
            if session.value.is_live(at) && at > session.value.last_seen_at {
                session.value.last_seen_at = at;
            }
        }
        Ok(())
    }

    async fn revoke_session(
        &self,
        id: SessionId,
        at: Timestamp,
        plan: &WebhookPlan,
    ) -> Result<bool, StoreError> {
        let mut state = self.write()?;
        match state.sessions.get_mut(&id) {
            Some(session) if session.value.is_live(at) => {
                session.value.revoked_at = Some(at);
                let user = session.value.user_id;
                state.enqueue(plan.messages(id, user, at));
                Ok(true)
            }
            _ => Ok(false),
        }
    }

    async fn revoke_user_sessions(
        &self,
        user: UserId,
        keep: Option<SessionId>,
        at: Timestamp,
        plan: &WebhookPlan,
    ) -> Result<Vec<SessionId>, StoreError> {
        let mut state = self.write()?;
        let State {
            sessions,
            sessions_by_user,
            ..
        } = &mut *state;
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
        for id in &revoked {
            state.enqueue(plan.messages(*id, user, at));
        }
        Ok(revoked)
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
        let mut state = self.write()?;
        let dead: HashSet<SessionId> = state
            .sessions
            .values()
            .map(|s| &s.value)
            .filter(|s| s.revoked_at.is_some_and(|at| at < before) || s.idle_expires_at() < before)
            .map(|s| s.id)
            .collect();
        if dead.is_empty() {
            return Ok(0);
        }
        let State {
            sessions,
            sessions_by_hash,
            sessions_by_user,
            refresh,
            ..
        } = &mut *state;
        for id in &dead {
            let Some(session) = sessions.remove(id) else {
                continue;
            };
            if let Some(hash) = session.value.secret_hash {
                sessions_by_hash.remove(&hash);
            }
            if let Some(ids) = sessions_by_user.get_mut(&session.value.user_id) {
                ids.retain(|id| !dead.contains(id));
                if ids.is_empty() {
                    sessions_by_user.remove(&session.value.user_id);
                }
            }
        }
        // As the SQL foreign key's cascade: a family goes with its session.
        refresh.retain(|_, entry| !dead.contains(&entry.record.session_id));
        Ok(u64::try_from(dead.len()).unwrap_or(u64::MAX))
    }
}

#[async_trait]
impl RefreshStore for MemoryStore {
    async fn insert_refresh(&self, record: &RefreshRecord) -> Result<(), StoreError> {
        let mut state = self.write()?;
        if state.refresh.contains_key(&record.hash) {
            return Err(StoreError::Conflict("refresh"));
        }
        if !state.sessions.contains_key(&record.session_id) {
            return Err(StoreError::Unavailable(
                "refresh token refers to an unknown session".to_owned(),
            ));
        }
        state.refresh.insert(
            record.hash,
            RefreshEntry {
                record: record.clone(),
                successor: None,
            },
        );
        Ok(())
    }

    async fn rotate_refresh(
        &self,
        presented: &SecretHash,
        successor: &SecretHash,
        now: Timestamp,
        grace: Duration,
        on_reuse: &WebhookPlan,
    ) -> Result<Rotation, StoreError> {
        // One write lock for the whole decision: two rotations of one token cannot interleave.
        let mut state = self.write()?;
        let presented_token = state.refresh.get(presented).map(|entry| PresentedToken {
            live_session: state.live_session(entry.record.session_id, now).cloned(),
            rotated_at: entry.record.rotated_at,
            successor_unspent: entry
                .successor
                .and_then(|hash| state.refresh.get(&hash))
                .is_some_and(|next| next.record.rotated_at.is_none()),
        });
        match rotation::decide(presented_token, now, grace) {
            Decision::Invalid => Ok(Rotation::Invalid),
            Decision::Replay(session) => Ok(Rotation::Replayed(session)),
            Decision::Reuse(session) => {
                if let Some(stored) = state.sessions.get_mut(&session.id) {
                    stored.value.revoked_at = Some(now);
                }
                state.enqueue(on_reuse.messages(session.id, session.user_id, now));
                Ok(Rotation::ReuseDetected(session.id))
            }
            Decision::Rotate(mut session) => {
                if state.refresh.contains_key(successor) {
                    return Err(StoreError::Conflict("refresh"));
                }
                if let Some(entry) = state.refresh.get_mut(presented) {
                    entry.record.rotated_at = Some(now);
                    entry.successor = Some(*successor);
                }
                state.refresh.insert(
                    *successor,
                    RefreshEntry {
                        record: RefreshRecord {
                            hash: *successor,
                            session_id: session.id,
                            issued_at: now,
                            rotated_at: None,
                        },
                        successor: None,
                    },
                );
                if let Some(stored) = state.sessions.get_mut(&session.id) {
                    stored.value.last_seen_at = stored.value.last_seen_at.max(now);
                    session = stored.value.clone();
                }
                Ok(Rotation::Rotated(session))
            }
        }
    }

    async fn revoke_family_of(
        &self,
        presented: &SecretHash,
        at: Timestamp,
        plan: &WebhookPlan,
    ) -> Result<Option<SessionId>, StoreError> {
        let mut state = self.write()?;
        let Some(session_id) = state.refresh.get(presented).map(|e| e.record.session_id) else {
            return Ok(None);
        };
        let mut revoked_now = None;
        if let Some(stored) = state.sessions.get_mut(&session_id) {
            if stored.value.revoked_at.is_none() {
                stored.value.revoked_at = Some(at);
                revoked_now = Some(stored.value.user_id);
            }
        }
        if let Some(user) = revoked_now {
            state.enqueue(plan.messages(session_id, user, at));
        }
        Ok(Some(session_id))
    }
}

#[async_trait]
impl DenylistStore for MemoryStore {
    async fn deny_jti(&self, jti: &str, expires_at: Timestamp) -> Result<(), StoreError> {
        let mut state = self.write()?;
        state
            .denied_jtis
            .entry(jti.to_owned())
            .and_modify(|kept| *kept = (*kept).max(expires_at))
            .or_insert(expires_at);
        Ok(())
    }

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
        let mut state = self.write()?;
        let before = state.denied_jtis.len();
        state.denied_jtis.retain(|_, expires_at| now < *expires_at);
        let pruned = before.saturating_sub(state.denied_jtis.len());
        Ok(u64::try_from(pruned).unwrap_or(u64::MAX))
    }
}

#[async_trait]
impl RevocationLog for MemoryStore {
    async fn append_event(
        &self,
        event: &RevocationEvent,
        at: Timestamp,
    ) -> Result<u64, StoreError> {
        let mut state = self.write()?;
        state.last_event += 1;
        let seq = state.last_event;
        state.events.push_back((seq, at, event.clone()));
        Ok(seq)
    }

    async fn events_after(
        &self,
        after: u64,
        limit: u32,
    ) -> Result<Vec<(u64, Timestamp, RevocationEvent)>, StoreError> {
        let state = self.read()?;
        let start = state.events.partition_point(|(seq, _, _)| *seq <= after);
        Ok(state
            .events
            .iter()
            .skip(start)
            .take(usize::try_from(limit).unwrap_or(usize::MAX))
            .cloned()
            .collect())
    }

    async fn latest_event(&self) -> Result<u64, StoreError> {
        Ok(self.read()?.last_event)
    }

    async fn prune_events(&self, before: Timestamp) -> Result<u64, StoreError> {
        let mut state = self.write()?;
        let len = state.events.len();
        state.events.retain(|(_, at, _)| *at >= before);
        Ok(u64::try_from(len - state.events.len()).unwrap_or(u64::MAX))
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
        let mut state = self.write()?;
        match state.waiting(id) {
            Some(entry) if entry.queued.next_attempt_at <= now => {
                entry.queued.next_attempt_at = until;
                Ok(true)
            }
            _ => Ok(false),
        }
    }

    async fn mark_delivered(&self, id: OutboxId, at: Timestamp) -> Result<bool, StoreError> {
        let mut state = self.write()?;
        let Some(entry) = state.waiting(id) else {
            return Ok(false);
        };
        entry.finished_at = Some(at);
        Ok(true)
    }

    async fn reschedule(
        &self,
        id: OutboxId,
        attempts: u32,
        next_attempt_at: Timestamp,
        error: &str,
    ) -> Result<bool, StoreError> {
        let mut state = self.write()?;
        let Some(entry) = state.waiting(id) else {
            return Ok(false);
        };
        entry.queued.attempts = attempts;
        entry.queued.next_attempt_at = next_attempt_at;
        entry.queued.last_error = Some(error.to_owned());
        Ok(true)
    }

    async fn give_up(&self, id: OutboxId, at: Timestamp, error: &str) -> Result<bool, StoreError> {
        let mut state = self.write()?;
        let Some(entry) = state.waiting(id) else {
            return Ok(false);
        };
        entry.finished_at = Some(at);
        entry.queued.last_error = Some(error.to_owned());
        Ok(true)
    }

    async fn prune_outbox(&self, before: Timestamp) -> Result<u64, StoreError> {
        let mut state = self.write()?;
        let len = state.outbox.len();
        state
            .outbox
            .retain(|_, e| e.value.finished_at.is_none_or(|at| at >= before));
        Ok(u64::try_from(len - state.outbox.len()).unwrap_or(u64::MAX))
    }
}

#[async_trait]
impl KeyStore for MemoryStore {
    async fn insert_signing_key(&self, key: &SealedKey) -> Result<(), StoreError> {
        let mut state = self.write()?;
        if state.signing_keys.contains_key(&key.kid) {
            return Err(StoreError::Conflict("kid"));
        }
        let seq = state.next_seq();
        state.signing_keys.insert(
            key.kid.clone(),
            Sequenced {
                seq,
                value: key.clone(),
            },
        );
        Ok(())
    }

    async fn signing_keys(&self) -> Result<Vec<SealedKey>, StoreError> {
        let state = self.read()?;
        let mut keys: Vec<&Sequenced<SealedKey>> = state.signing_keys.values().collect();
        keys.sort_by_key(|k| (k.value.created_at, k.seq));
        Ok(keys.into_iter().map(|k| k.value.clone()).collect())
    }

    async fn retire_signing_key(&self, kid: &str, at: Timestamp) -> Result<bool, StoreError> {
        let mut state = self.write()?;
        match state.signing_keys.get_mut(kid) {
            Some(key) if key.value.retired_at.is_none() => {
                key.value.retired_at = Some(at);
                Ok(true)
            }
            _ => Ok(false),
        }
    }

    async fn delete_signing_key(&self, kid: &str) -> Result<bool, StoreError> {
        Ok(self.write()?.signing_keys.remove(kid).is_some())
    }
}

#[async_trait]
impl AdminKeyStore for MemoryStore {
    async fn insert_admin_key(&self, key: &AdminKey) -> Result<(), StoreError> {
        let mut state = self.write()?;
        if state.admin_keys.contains_key(&key.id)
            || state.admin_keys_by_hash.contains_key(&key.hash)
        {
            return Err(StoreError::Conflict("admin_key"));
        }
        state.admin_keys_by_hash.insert(key.hash, key.id);
        state.admin_keys.insert(key.id, key.clone());
        Ok(())
    }

    async fn find_live_admin_key(&self, hash: &SecretHash) -> Result<Option<AdminKey>, StoreError> {
        let state = self.read()?;
        Ok(state
            .admin_keys_by_hash
            .get(hash)
            .and_then(|id| state.admin_keys.get(id))
            .filter(|key| key.revoked_at.is_none())
            .cloned())
    }

    async fn revoke_admin_key(&self, id: AdminKeyId, at: Timestamp) -> Result<bool, StoreError> {
        let mut state = self.write()?;
        match state.admin_keys.get_mut(&id) {
            Some(key) if key.revoked_at.is_none() => {
                key.revoked_at = Some(at);
                Ok(true)
            }
            _ => Ok(false),
        }
    }
}

#[async_trait]
impl Store for MemoryStore {
    async fn ping(&self) -> Result<(), StoreError> {
        // Answers only while the state is consistent, like any other operation.
        self.read().map(drop)
    }
}
