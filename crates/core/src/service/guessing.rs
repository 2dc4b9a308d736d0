//! The guessing limits on sign-in and sign-up (SPEC §2, §7): which tallies an attempt is
//! counted in, the device credential that exempts a known device, the lock's webhook and the
//! log line of every failed login. The counting rules are in [`crate::guessing`].

use std::net::IpAddr;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use tracing::{info, warn};

use super::{DeviceInfo, Tessera};
use crate::error::AuthError;
use crate::guessing::{self, Admission, Device, Limit, Subject, Tally};
use crate::metrics::Counters;
use crate::model::{Email, Timestamp, User, UserId};
use crate::secret::DeviceCredential;
use crate::store::{GuessingCounters, Store, StoreError};
use crate::webhooks;

/// Guessing counters in Redis, with the store standing in while Redis cannot answer: an
/// outage of the optional Redis must not stop every sign-in (PostgreSQL is shared by the
/// nodes too, so the limits still hold across them), and must not let attempts through
/// uncounted either. Counts made on one side during the switch are not seen on the other,
/// so an outage can at most double a budget once.
pub struct Fallback {
    primary: Arc<dyn GuessingCounters>,
    store: Arc<dyn Store>,
    /// Unix seconds of the last warning, so an outage logs once every [`WARN_EVERY`].
    warned_at: AtomicI64,
}

const WARN_EVERY: i64 = 10;

impl Fallback {
    pub fn new(primary: Arc<dyn GuessingCounters>, store: Arc<dyn Store>) -> Self {
        Self {
            primary,
            store,
            warned_at: AtomicI64::new(0),
        }
    }

    fn falling_back(&self, error: &StoreError) {
        let now = Timestamp::now().as_unix();
        let last = self.warned_at.load(Ordering::Relaxed);
        if now - last >= WARN_EVERY
            && self
                .warned_at
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            warn!(%error, "guessing counters unavailable; counting in the store meanwhile");
        }
    }
}

#[async_trait]
impl GuessingCounters for Fallback {
    async fn update_tally(
        &self,
        key: &str,
        now: Timestamp,
        change: &(dyn Fn(Option<Tally>) -> Option<Tally> + Send + Sync),
    ) -> Result<Option<Tally>, StoreError> {
        match self.primary.update_tally(key, now, change).await {
            Err(e @ StoreError::Unavailable(_)) => {
                self.falling_back(&e);
                self.store.guessing().update_tally(key, now, change).await
            }
            answer => answer,
        }
    }

    async fn tally(&self, key: &str, now: Timestamp) -> Result<Option<Tally>, StoreError> {
        match self.primary.tally(key, now).await {
            Err(e @ StoreError::Unavailable(_)) => {
                self.falling_back(&e);
                self.store.guessing().tally(key, now).await
            }
            answer => answer,
        }
    }

    /// Clears both sides: a lock counted in the store during an outage is cleared too.
    async fn clear_tally(&self, key: &str) -> Result<(), StoreError> {
        let primary = self.primary.clear_tally(key).await;
        self.store.guessing().clear_tally(key).await?;
        primary
    }

    async fn prune_tallies(&self, now: Timestamp) -> Result<u64, StoreError> {
        // Redis expires its own keys; only the store's need pruning.
        let primary = self.primary.prune_tallies(now).await.unwrap_or(0);
        Ok(primary + self.store.guessing().prune_tallies(now).await?)
    }
}

/// Sign-ups are counted per address over an hour (SPEC §2 `signup_ip_max`).
const SIGN_UP_WINDOW: Duration = Duration::from_secs(3600);

/// The slots an attempt holds while its password is checked.
#[derive(Default)]
pub(super) struct Held {
    slots: Vec<(String, Limit)>,
    /// The account's tally with this attempt and its limit, when the account was counted (no
    /// device credential): a failure that fills it starts the lock.
    account: Option<(Tally, Limit)>,
}

/// Why a login failed, for the log.
#[derive(Debug, Clone, Copy)]
enum Failure {
    UnknownAccount,
    WrongPassword,
    Throttled,
}

impl Failure {
    const fn as_str(self) -> &'static str {
        match self {
            Self::UnknownAccount => "unknown account",
            Self::WrongPassword => "wrong password",
            Self::Throttled => "too many attempts",
        }
    }
}

impl Tessera {
    /// Checks a password under the guessing limits. Before any argon2 work, the attempt takes
    /// a slot in the account's and the client address's tallies, or, from a device holding
    /// this account's credential, in that device's own tally; a success gives the slots back.
    /// Returns the user and the device credential to hand back (the one presented, or a new
    /// one).
    pub(super) async fn check_credentials(
        &self,
        email: &str,
        password: crate::secret::Password,
        device: &DeviceInfo,
    ) -> Result<(User, DeviceCredential), AuthError> {
        let now = Timestamp::now();
        let account = Email::normalise(email);
        let user = match Email::parse(email) {
            Some(email) => self.store.find_user_by_email(&email).await?,
            None => None,
        };
        let known = device
            .credential
            .as_ref()
            .and_then(|c| Device::open(c.expose_secret(), &self.device_key, now))
            .filter(|d| user.as_ref().is_some_and(|u| u.id == d.user));
        let held = match self
            .admit_login(&account, known.as_ref(), device.address, now)
            .await
        {
            Ok(held) => held,
            Err(e) => {
                if matches!(e, AuthError::TooManyAttempts { .. }) {
                    Counters::bump(&self.counters.throttled);
                    log_failure(user.as_ref(), device.address, Failure::Throttled);
                }
                return Err(e);
            }
        };
        let outcome = self.check_password(user.clone(), password).await;
        match &outcome {
            Ok(_) => Counters::bump(&self.counters.logins_ok),
            Err(AuthError::InvalidCredentials) => {
                Counters::bump(&self.counters.logins_failed);
                let reason = if user.is_some() {
                    Failure::WrongPassword
                } else {
                    Failure::UnknownAccount
                };
                log_failure(user.as_ref(), device.address, reason);
            }
            Err(_) => {}
        }
        let failed = matches!(outcome, Err(AuthError::InvalidCredentials));
        self.settle(held, failed, user.as_ref(), now).await;
        let user = outcome?;
        let device = known.unwrap_or_else(|| Device::new(user.id, now));
        let credential = DeviceCredential::from_sealed(device.seal(&self.device_key));
        Ok((user, credential))
    }

    /// Checks the password of a signed-in user before a change that needs it (a new
    /// password, deleting the account), under the same guessing limits as a login: a stolen
    /// session must not become a way around them. A wrong password counts as a failed login
    /// of the account and answers `InvalidCredentials`; past the limits, `TooManyAttempts`
    /// before any hashing.
    pub(super) async fn confirm_password(
        &self,
        user: &User,
        password: crate::secret::Password,
        device: &DeviceInfo,
    ) -> Result<(), AuthError> {
        let now = Timestamp::now();
        let known = device
            .credential
            .as_ref()
            .and_then(|c| Device::open(c.expose_secret(), &self.device_key, now))
            .filter(|d| d.user == user.id);
        let held = match self
            .admit_login(user.email.as_str(), known.as_ref(), device.address, now)
            .await
        {
            Ok(held) => held,
            Err(e) => {
                if matches!(e, AuthError::TooManyAttempts { .. }) {
                    Counters::bump(&self.counters.throttled);
                    log_failure(Some(user), device.address, Failure::Throttled);
                }
                return Err(e);
            }
        };
        let outcome = self.check_password(Some(user.clone()), password).await;
        let failed = matches!(outcome, Err(AuthError::InvalidCredentials));
        if failed {
            log_failure(Some(user), device.address, Failure::WrongPassword);
        }
        self.settle(held, failed, Some(user), now).await;
        outcome.map(|_| ())
    }

    async fn admit_login(
        &self,
        account: &str,
        known: Option<&Device>,
        address: Option<IpAddr>,
        now: Timestamp,
    ) -> Result<Held, AuthError> {
        let limits = self.config.guessing;
        let limit = |max| Limit {
            max,
            window: limits.window,
        };
        let mut wanted = Vec::with_capacity(2);
        if let Some(device) = known {
            // The device's own budget replaces the account's and the address's: someone
            // else's guessing, at this account or from this address, never locks it out.
            wanted.push((
                Subject::Device(&device.id).key(),
                limit(limits.device_max_failures),
            ));
        } else {
            wanted.push((
                Subject::Account(account).key(),
                limit(limits.login_max_failures),
            ));
            if let Some(address) = address {
                wanted.push((
                    Subject::Address(address).key(),
                    limit(limits.login_ip_max_failures),
                ));
            }
        }
        let mut held = Held::default();
        for (key, limit) in wanted {
            match self.attempt(&key, limit, now).await {
                Ok((Admission::Admitted { .. }, tally)) => {
                    if known.is_none() && held.slots.is_empty() {
                        held.account = Some((tally, limit));
                    }
                    held.slots.push((key, limit));
                }
                Ok((Admission::Refused { retry_after }, _)) => {
                    self.give_back(&held, now).await;
                    return Err(AuthError::TooManyAttempts { retry_after });
                }
                Err(e) => {
                    self.give_back(&held, now).await;
                    return Err(e);
                }
            }
        }
        Ok(held)
    }

    /// Takes a slot in the tally under `key`, or learns that it is locked; with the tally as
    /// it now stands.
    async fn attempt(
        &self,
        key: &str,
        limit: Limit,
        now: Timestamp,
    ) -> Result<(Admission, Tally), AuthError> {
        let before = self
            .guessing()
            .update_tally(key, now, &|tally| {
                Some(guessing::admit(tally, now, limit).1)
            })
            .await?;
        // `admit` is a pure function of what the store read: this is the answer it gave.
        Ok(guessing::admit(before, now, limit))
    }

    /// Gives the slots back: the attempt was not a failure (it succeeded, or was stopped by
    /// another limit before any password was checked). A slot that cannot be given back
    /// stays counted, which errs on the safe side.
    async fn give_back(&self, held: &Held, now: Timestamp) {
        for (key, limit) in &held.slots {
            let limit = *limit;
            if let Err(e) = self
                .guessing()
                .update_tally(key, now, &|tally| guessing::release(tally, now, limit))
                .await
            {
                warn!(error = %e, "could not give back a guessing slot");
            }
        }
    }

    /// After the password check: a success gives the slots back; a failure keeps them, and
    /// the failure that fills the account's tally locks it, which is reported.
    async fn settle(&self, held: Held, failed: bool, user: Option<&User>, now: Timestamp) {
        if !failed {
            self.give_back(&held, now).await;
            return;
        }
        let Some((tally, limit)) = held.account else {
            return;
        };
        let (Some(user), Some(until)) = (user, tally.locked_until(limit)) else {
            return;
        };
        if tally.count != limit.max {
            return;
        }
        warn!(user = %user.id, until = %until.to_rfc3339(), "account locked: too many failed logins");
        if let Err(e) = self.report_lock(user.id, until, now).await {
            warn!(user = %user.id, error = %e, "could not queue user.locked");
        }
    }

    async fn report_lock(
        &self,
        user: UserId,
        until: Timestamp,
        now: Timestamp,
    ) -> Result<(), AuthError> {
        let messages = webhooks::user_locked(
            &self.config.webhooks,
            user,
            self.config.guessing.login_max_failures,
            until,
            now,
        );
        if messages.is_empty() {
            return Ok(());
        }
        let mut change = self.change(now).await?;
        change.enqueue(&messages).await?;
        self.commit(change).await
    }

    /// Counts a sign-up from `address` (SPEC §2 `signup_ip_max` per hour), or refuses it.
    /// Every attempt that reaches the store counts, including one that finds the address
    /// taken: that bounds how fast sign-up can be used to probe for accounts.
    pub(super) async fn admit_sign_up(&self, address: Option<IpAddr>) -> Result<(), AuthError> {
        let Some(address) = address else {
            return Ok(());
        };
        let limit = Limit {
            max: self.config.guessing.signup_ip_max,
            window: SIGN_UP_WINDOW,
        };
        let now = Timestamp::now();
        match self
            .attempt(&Subject::SignUp(address).key(), limit, now)
            .await?
            .0
        {
            Admission::Admitted { .. } => Ok(()),
            Admission::Refused { retry_after } => {
                Counters::bump(&self.counters.throttled);
                info!(client = %address, "sign-up refused: too many from this address");
                Err(AuthError::TooManyAttempts { retry_after })
            }
        }
    }

    /// Counts a recovery request from `address` (SPEC §2: `signup_ip_max` per hour), or
    /// refuses it with `TooManyAttempts`. Counted whether or not the account exists, so the
    /// answer says nothing about it.
    pub(super) async fn admit_recovery_request(
        &self,
        address: Option<IpAddr>,
    ) -> Result<(), AuthError> {
        let Some(address) = address else {
            return Ok(());
        };
        let limit = Limit {
            max: self.config.guessing.signup_ip_max,
            window: SIGN_UP_WINDOW,
        };
        let now = Timestamp::now();
        match self
            .attempt(&Subject::Recovery(address).key(), limit, now)
            .await?
            .0
        {
            Admission::Admitted { .. } => Ok(()),
            Admission::Refused { retry_after } => {
                Counters::bump(&self.counters.throttled);
                info!(client = %address, "recovery refused: too many from this address");
                Err(AuthError::TooManyAttempts { retry_after })
            }
        }
    }

    /// Counts a mail to the account `email` (SPEC §2: `recovery_max` per hour); `false` past
    /// the limit, when the mail is not sent.
    pub(super) async fn admit_mail_to(&self, email: &str) -> Result<bool, AuthError> {
        let limit = Limit {
            max: self.config.guessing.recovery_max,
            window: SIGN_UP_WINDOW,
        };
        let now = Timestamp::now();
        let (admission, _) = self
            .attempt(&Subject::Mailed(email).key(), limit, now)
            .await?;
        Ok(matches!(admission, Admission::Admitted { .. }))
    }

    /// Clears an account's guessing tally and so its lock (`tessera user unlock`,
    /// `DELETE /v1/admin/users/{id}/lockout`); `NotFound` for an unknown user.
    pub async fn unlock(&self, id: UserId) -> Result<(), AuthError> {
        let user = self.store.find_user(id).await?.ok_or(AuthError::NotFound)?;
        self.guessing()
            .clear_tally(&Subject::Account(user.email.as_str()).key())
            .await?;
        info!(user = %id, "account unlocked");
        Ok(())
    }
}

/// SPEC §3: every failed login is logged with the account (id, or "unknown"), the client
/// address and the reason — never the password, never the email typed (it may be a
/// password typed into the wrong field).
fn log_failure(user: Option<&User>, address: Option<IpAddr>, reason: Failure) {
    let account = user.map_or_else(|| "unknown".to_owned(), |u| u.id.to_string());
    let client = address.map_or_else(|| "unknown".to_owned(), |a| a.to_string());
    warn!(user = %account, client = %client, reason = reason.as_str(), "login failed");
}
