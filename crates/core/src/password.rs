//! Password hashing: argon2id with the OWASP parameters (m = 19 456 KiB, t = 2, p = 1), run on
//! a small pool of threads of its own, each reusing one argon2 memory area, so a burst of logins
//! can neither take every core from verification nor leave ~19 MiB behind per thread it touched.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::sync_channel;
use std::sync::Arc;
use std::time::{Duration, Instant};

use argon2::password_hash::{Output, ParamsString, PasswordHash, Salt, SaltString};
use argon2::{Algorithm, Argon2, Block, Params, Version};
use tokio::sync::oneshot;

use zeroize::Zeroizing;

use crate::common_passwords;
use crate::error::AuthError;
use crate::model::Email;
use crate::secret::Password;

/// NIST SP 800-63B §5.1.1.2: at least 8 characters, allow at least 64 (we allow 1024, enough
/// for passphrases, short enough that hashing cost stays bounded), no composition rules.
pub const MIN_PASSWORD_CHARS: usize = 8;
pub const MAX_PASSWORD_CHARS: usize = 1024;

/// A local part this short (`ada@…`) is too likely to occur by chance in a good password.
const MIN_LOCAL_PART_CHARS: usize = 4;

/// The rule a refused password breaks; its text is the message the user reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Weakness {
    #[error("password must be 8 to 1024 characters (counted after Unicode NFKC normalisation)")]
    Length,
    #[error(
        "password is among the 100 000 most common or breached passwords (letter case aside); \
         choose another"
    )]
    Common,
    #[error("password must not contain the part of the email address before the @")]
    ContainsEmail,
}

/// NIST SP 800-63B §5.1.1.2 for a password about to be set for `email`: the length rule, the
/// list of common and breached passwords, and the account's own name; checked on the NFKC
/// form that is hashed, case-insensitively.
pub fn check_policy(password: &Password, email: &Email) -> Result<(), AuthError> {
    let normalised = password.nfkc();
    let chars = normalised.expose_secret().chars().count();
    if !(MIN_PASSWORD_CHARS..=MAX_PASSWORD_CHARS).contains(&chars) {
        return Err(AuthError::WeakPassword(Weakness::Length));
    }
    let folded = Zeroizing::new(normalised.expose_secret().to_lowercase());
    let list = common_passwords::list().map_err(|e| AuthError::Key(e.to_owned()))?;
    if list.contains(&folded) {
        return Err(AuthError::WeakPassword(Weakness::Common));
    }
    let local = email.local_part();
    if local.chars().count() >= MIN_LOCAL_PART_CHARS && folded.contains(local) {
        return Err(AuthError::WeakPassword(Weakness::ContainsEmail));
    }
    Ok(())
}

/// The parameters every new hash is made with (OWASP's argon2id recommendation).
const M_COST_KIB: u32 = 19_456;
const T_COST: u32 = 2;
const P_COST: u32 = 1;

/// Argon2 works in 1 KiB blocks: the memory a hashing thread keeps for today's parameters.
const KEPT_BLOCKS: usize = M_COST_KIB as usize;

/// Logins that may wait per hashing thread before new ones are refused outright: at tens of
/// milliseconds a hash, a full queue drains in about a second or two.
const QUEUE_PER_THREAD: usize = 32;

/// A job still waiting for a thread after this long is refused when its turn comes rather than
/// hashed: its client has likely given up, and hashing it would only delay the jobs behind it.
const MAX_QUEUE_WAIT: Duration = Duration::from_secs(2);

fn params() -> Result<Params, AuthError> {
    Params::new(M_COST_KIB, T_COST, P_COST, None).map_err(|e| AuthError::Key(e.to_string()))
}

/// The most an imported hash may ask of a login: a hashing thread allocates the hash's whole
/// memory cost, so a hash from elsewhere must not be able to take a gigabyte or a second per
/// check. Generous beside today's parameters (19 MiB, 2 passes).
const IMPORT_MAX_M_COST_KIB: u32 = 262_144;
const IMPORT_MAX_T_COST: u32 = 16;
const IMPORT_MAX_P_COST: u32 = 8;

/// Whether `phc` can be stored as an imported account's password hash: argon2id, version
/// 0x13, a salt and an output, and parameters no costlier than the bounds above.
pub fn check_imported_hash(phc: &str) -> Result<(), AuthError> {
    let parsed = PasswordHash::new(phc).map_err(|_| AuthError::InvalidPasswordHash)?;
    let argon2id = Algorithm::try_from(parsed.algorithm) == Ok(Algorithm::Argon2id);
    let version =
        parsed.version.map_or(Ok(Version::V0x13), Version::try_from) == Ok(Version::V0x13);
    let output = parsed.hash.is_some_and(|h| h.len() >= 16);
    let bounded = Params::try_from(&parsed).is_ok_and(|p| {
        p.m_cost() <= IMPORT_MAX_M_COST_KIB
            && p.t_cost() <= IMPORT_MAX_T_COST
            && p.p_cost() <= IMPORT_MAX_P_COST
    });
    if argon2id && version && parsed.salt.is_some() && output && bounded {
        Ok(())
    } else {
        Err(AuthError::InvalidPasswordHash)
    }
}

/// How many threads hash on a machine with `cores` cores: one fewer, at least one. However
/// many logins arrive, a core is left for verification and the rest of the API (on a single
/// core the operating system has to share it).
pub fn pool_size(cores: usize) -> usize {
    cores.saturating_sub(1).max(1)
}

/// How much a [`PasswordHasher`] takes on at once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PoolLimits {
    /// Threads that hash, each keeping one argon2 memory area (~19 MiB).
    pub threads: usize,
    /// Jobs that may wait for a thread; past it a job is refused at once.
    pub queue: usize,
    /// A job that waited longer than this is refused when its turn comes.
    pub max_wait: Duration,
    /// A thread with no job for this long gives its argon2 memory back.
    pub idle_release: Duration,
}

impl PoolLimits {
    pub fn for_threads(threads: usize) -> Self {
        let threads = threads.max(1);
        Self {
            threads,
            queue: threads * QUEUE_PER_THREAD,
            max_wait: MAX_QUEUE_WAIT,
            idle_release: IDLE_RELEASE,
        }
    }

    /// What a refused client is told to wait: by then the queue it met has drained.
    fn retry_after(&self) -> Duration {
        self.max_wait.max(Duration::from_secs(1))
    }
}

/// How long a hashing thread keeps its argon2 memory with no job: a burst of logins reuses
/// one area, and a node that has stopped hashing gives its ~19 MiB back.
const IDLE_RELEASE: Duration = Duration::from_secs(10);

/// How long a thread that gave its memory back waits for a job before it leaves the pool (one
/// is started again for the next job). The allocator hands freed memory back to the system
/// only after a delay (mimalloc: 1 s) and only when a thread of the process gives it the
/// chance, which a thread asleep on an empty queue never does; a thread's exit does.
const EXIT_AFTER_RELEASE: Duration = Duration::from_secs(2);

/// A hashing thread's argon2 memory, kept from one job to the next (freed after every hash,
/// ~19 MiB per thread stayed with the allocator anyway) until the thread is idle for
/// [`IDLE_RELEASE`].
#[derive(Default)]
struct Memory {
    blocks: Vec<Block>,
    /// Counts the areas held, for [`PasswordHasher::memory_areas`].
    gauge: Arc<Gauge>,
}

impl Memory {
    fn with_blocks<R>(&mut self, needed: usize, f: impl FnOnce(&mut [Block]) -> R) -> R {
        if needed > KEPT_BLOCKS {
            // A hash stored under costlier settings than today's: its memory is not kept.
            return f(&mut vec![Block::default(); needed]);
        }
        if self.blocks.len() < needed {
            // Argon2 overwrites every block it uses, so the area is reused without clearing.
            if self.blocks.is_empty() {
                self.gauge.areas.fetch_add(1, Ordering::SeqCst);
            }
            self.blocks = vec![Block::default(); KEPT_BLOCKS];
        }
        f(&mut self.blocks)
    }

    fn release(&mut self) {
        if !self.blocks.is_empty() {
            self.gauge.areas.fetch_sub(1, Ordering::SeqCst);
        }
        self.blocks = Vec::new();
    }
}

/// Work for a hashing thread: given the thread's memory, or `None` when it waited too long
/// (it then answers that the hasher is busy).
type Work = Box<dyn FnOnce(Option<&mut Memory>) + Send>;

struct Job {
    queued_at: Instant,
    work: Work,
}

#[derive(Default)]
struct Gauge {
    /// Hashing threads alive: at most [`PoolLimits::threads`].
    threads: AtomicUsize,
    running: AtomicUsize,
    peak: AtomicUsize,
    /// Threads holding an argon2 memory area now.
    areas: AtomicUsize,
}

impl Gauge {
    /// Takes a place for one more hashing thread, if fewer than `limit` are alive.
    fn enlist(&self, limit: usize) -> bool {
        self.threads
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| {
                (n < limit).then_some(n + 1)
            })
            .is_ok()
    }
}

/// Threads of its own, not tokio's blocking pool: that pool grows to hundreds of threads, each
/// of which would keep an argon2 memory area, and would let logins take every core.
struct Pool {
    jobs: flume::Sender<Job>,
    /// Kept to start threads on demand, since idle ones leave (see [`EXIT_AFTER_RELEASE`]).
    queue: flume::Receiver<Job>,
    limits: PoolLimits,
    gauge: Arc<Gauge>,
}

impl Pool {
    fn start(limits: PoolLimits) -> Result<Self, AuthError> {
        let (jobs, queue) = flume::bounded(limits.queue);
        let pool = Self {
            jobs,
            queue,
            limits,
            gauge: Arc::new(Gauge::default()),
        };
        for _ in 0..limits.threads {
            if pool.gauge.enlist(limits.threads) {
                pool.spawn_thread()?;
            }
        }
        Ok(pool)
    }

    /// Starts a hashing thread for a place already taken with [`Gauge::enlist`].
    fn spawn_thread(&self) -> Result<(), AuthError> {
        let (queue, gauge, limits) = (self.queue.clone(), Arc::clone(&self.gauge), self.limits);
        std::thread::Builder::new()
            .name("password-hash".into())
            .spawn(move || work(&queue, &gauge, limits))
            .map(drop)
            .map_err(|e| {
                self.gauge.threads.fetch_sub(1, Ordering::SeqCst);
                AuthError::Key(format!("cannot start a hashing thread: {e}"))
            })
    }

    fn busy(&self) -> AuthError {
        AuthError::Busy {
            retry_after: self.limits.retry_after(),
        }
    }

    fn submit(&self, work: Work) -> Result<(), AuthError> {
        let job = Job {
            queued_at: Instant::now(),
            work,
        };
        match self.jobs.try_send(job) {
            Ok(()) => {}
            Err(flume::TrySendError::Full(_)) => return Err(self.busy()),
            Err(flume::TrySendError::Disconnected(_)) => {
                return Err(AuthError::Key("the hashing threads stopped".into()))
            }
        }
        // Queued first, then counted: a thread leaving at this moment either is seen gone
        // here, or sees this job in the queue and stays (see `work`).
        if self.gauge.enlist(self.limits.threads) {
            if let Err(e) = self.spawn_thread() {
                if self.gauge.threads.load(Ordering::SeqCst) == 0 {
                    // No thread would ever take the queued jobs (this one, and any queued
                    // meanwhile by a submitter that saw this one's place taken): answer them
                    // (busy) here.
                    while let Ok(job) = self.queue.try_recv() {
                        (job.work)(None);
                    }
                }
                tracing::warn!(error = %e, "a hashing thread could not be started");
            }
        }
        Ok(())
    }

    async fn run<T, F>(&self, f: F) -> Result<T, AuthError>
    where
        T: Send + 'static,
        F: FnOnce(&mut Memory) -> Result<T, AuthError> + Send + 'static,
    {
        let (reply, answer) = oneshot::channel();
        let busy = self.busy();
        self.submit(Box::new(move |memory| {
            // A caller that went away (its client hung up) needs no hash: skip the work.
            if reply.is_closed() {
                return;
            }
            let _ = reply.send(memory.map_or(Err(busy), f));
        }))?;
        answer
            .await
            .map_err(|_| AuthError::Key("a hashing job failed".into()))?
    }

    /// As [`run`](Self::run), for callers outside the async executor.
    fn run_blocking<T, F>(&self, f: F) -> Result<T, AuthError>
    where
        T: Send + 'static,
        F: FnOnce(&mut Memory) -> Result<T, AuthError> + Send + 'static,
    {
        let (reply, answer) = sync_channel(1);
        let busy = self.busy();
        self.submit(Box::new(move |memory| {
            let _ = reply.send(memory.map_or(Err(busy), f));
        }))?;
        answer
            .recv()
            .map_err(|_| AuthError::Key("a hashing job failed".into()))?
    }
}

/// A hashing thread: takes jobs until every [`PasswordHasher`] sharing the pool is gone, or
/// until it has been idle for [`PoolLimits::idle_release`] and then [`EXIT_AFTER_RELEASE`].
fn work(queue: &flume::Receiver<Job>, gauge: &Arc<Gauge>, limits: PoolLimits) {
    let mut memory = Memory {
        blocks: Vec::new(),
        gauge: Arc::clone(gauge),
    };
    loop {
        let job = match queue.recv_timeout(limits.idle_release) {
            Ok(job) => job,
            Err(flume::RecvTimeoutError::Timeout) => {
                memory.release();
                match queue.recv_timeout(EXIT_AFTER_RELEASE) {
                    Ok(job) => job,
                    Err(flume::RecvTimeoutError::Timeout) => {
                        gauge.threads.fetch_sub(1, Ordering::SeqCst);
                        // A job queued as this thread left, by a submitter that still
                        // counted it: stay for it, unless another thread took the place.
                        if !queue.is_empty() && gauge.enlist(limits.threads) {
                            continue;
                        }
                        return;
                    }
                    Err(flume::RecvTimeoutError::Disconnected) => return,
                }
            }
            Err(flume::RecvTimeoutError::Disconnected) => return,
        };
        if job.queued_at.elapsed() > limits.max_wait {
            (job.work)(None);
            continue;
        }
        let running = gauge.running.fetch_add(1, Ordering::SeqCst) + 1;
        gauge.peak.fetch_max(running, Ordering::SeqCst);
        // A job that panics drops its reply (its caller sees an error); the thread lives on.
        let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            (job.work)(Some(&mut memory));
        }));
        gauge.running.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Hashes and verifies on a pool of [`PoolLimits::threads`] threads; a login that finds the
/// queue full, or waits too long in it, is refused with [`AuthError::Busy`].
#[derive(Clone)]
pub struct PasswordHasher {
    pool: Arc<Pool>,
    /// A real hash of a random password: unknown emails are verified against it so that they
    /// take as long as a wrong password (no account enumeration by timing).
    dummy_hash: Arc<str>,
}

impl PasswordHasher {
    /// `threads` hashing threads (see [`pool_size`]) with the default queue limits; blocks
    /// while the dummy hash is made.
    pub fn new(threads: usize) -> Result<Self, AuthError> {
        Self::with_limits(PoolLimits::for_threads(threads))
    }

    pub fn with_limits(limits: PoolLimits) -> Result<Self, AuthError> {
        let pool = Arc::new(Pool::start(limits)?);
        let dummy = crate::secret::SessionSecret::generate();
        let dummy = Password::new(dummy.expose_secret().to_owned());
        let dummy_hash = pool.run_blocking(move |memory| hash_with(memory, &dummy))?;
        Ok(Self {
            pool,
            dummy_hash: dummy_hash.into(),
        })
    }

    pub fn limits(&self) -> PoolLimits {
        self.pool.limits
    }

    /// Hashes running right now.
    pub fn running(&self) -> usize {
        self.pool.gauge.running.load(Ordering::SeqCst)
    }

    /// The most hashes that ever ran at once: never more than [`PoolLimits::threads`].
    pub fn peak_running(&self) -> usize {
        self.pool.gauge.peak.load(Ordering::SeqCst)
    }

    /// Hashing threads holding an argon2 memory area (~19 MiB each) right now.
    pub fn memory_areas(&self) -> usize {
        self.pool.gauge.areas.load(Ordering::SeqCst)
    }

    /// Hashes the NFKC form, the one every later check compares first.
    pub async fn hash(&self, password: Password) -> Result<String, AuthError> {
        self.pool
            .run(move |memory| hash_with(memory, &password.nfkc()))
            .await
    }

    /// Whether `password` matches; see [`check`](Self::check).
    pub async fn verify(
        &self,
        password: Password,
        stored: Option<String>,
    ) -> Result<bool, AuthError> {
        Ok(self.check(password, stored).await?.matched())
    }

    /// Checks `password` against `stored`, which is `None` for an unknown user: the dummy hash
    /// is checked instead, through the same queue, and the answer is always a mismatch.
    pub async fn check(
        &self,
        password: Password,
        stored: Option<String>,
    ) -> Result<Verification, AuthError> {
        let known = stored.is_some();
        let phc = stored.unwrap_or_else(|| self.dummy_hash.to_string());
        let outcome = self
            .pool
            .run(move |memory| check_with(memory, &password, &phc))
            .await?;
        Ok(if known {
            outcome
        } else {
            Verification::Mismatch
        })
    }
}

/// What checking a password against a stored hash found.
#[derive(Debug, PartialEq, Eq)]
pub enum Verification {
    Mismatch,
    Match,
    /// Only the password as typed matched: the hash was made before passwords were put in
    /// NFKC form. `rehashed` is the hash of the NFKC form, to store in its place so that every
    /// form of the password matches from now on.
    MatchedAsTyped {
        rehashed: String,
    },
}

impl Verification {
    pub fn matched(&self) -> bool {
        !matches!(self, Self::Mismatch)
    }
}

fn check_with(
    memory: &mut Memory,
    password: &Password,
    phc: &str,
) -> Result<Verification, AuthError> {
    let normalised = password.nfkc();
    if verify_with(memory, &normalised, phc) {
        return Ok(Verification::Match);
    }
    // The form as typed is tried whenever it differs, for known and unknown users alike, so
    // the second verification's cost says nothing about whether the account exists.
    if normalised.expose_secret() != password.expose_secret() && verify_with(memory, password, phc)
    {
        return Ok(Verification::MatchedAsTyped {
            rehashed: hash_with(memory, &normalised)?,
        });
    }
    Ok(Verification::Mismatch)
}

/// Argon2's raw output over `memory`, for `salt` in its PHC (B64) form.
fn derive(
    memory: &mut Memory,
    argon2: &Argon2<'_>,
    password: &Password,
    salt: Salt<'_>,
    len: usize,
) -> Result<Output, argon2::password_hash::Error> {
    let mut buffer = [0u8; Salt::MAX_LENGTH];
    let salt = salt.decode_b64(&mut buffer)?;
    memory.with_blocks(argon2.params().block_count(), |blocks| {
        Output::init_with(len, |out| {
            argon2
                .hash_password_into_with_memory(
                    password.expose_secret().as_bytes(),
                    salt,
                    out,
                    blocks,
                )
                .map_err(Into::into)
        })
    })
}

fn hash_with(memory: &mut Memory, password: &Password) -> Result<String, AuthError> {
    let invalid = |e: argon2::password_hash::Error| AuthError::Key(e.to_string());
    let params = params()?;
    let argon2 = Argon2::new(Algorithm::Argon2id, Version::V0x13, params.clone());
    let salt = SaltString::generate(&mut rand::rngs::OsRng);
    let output = derive(
        memory,
        &argon2,
        password,
        salt.as_salt(),
        Params::DEFAULT_OUTPUT_LEN,
    )
    .map_err(invalid)?;
    let hash = PasswordHash {
        algorithm: Algorithm::Argon2id.ident(),
        version: Some(Version::V0x13.into()),
        params: ParamsString::try_from(&params).map_err(invalid)?,
        salt: Some(salt.as_salt()),
        hash: Some(output),
    };
    Ok(hash.to_string())
}

fn verify_with(memory: &mut Memory, password: &Password, phc: &str) -> bool {
    PasswordHash::new(phc).is_ok_and(|parsed| matches_hash(memory, password, &parsed) == Ok(true))
}

/// Parameters, algorithm and version come from the PHC string, so hashes made under older
/// settings still verify; the outputs are compared in constant time (`Output`'s `==`).
fn matches_hash(
    memory: &mut Memory,
    password: &Password,
    parsed: &PasswordHash<'_>,
) -> Result<bool, argon2::password_hash::Error> {
    let (Some(salt), Some(expected)) = (parsed.salt, &parsed.hash) else {
        return Ok(false);
    };
    let algorithm = Algorithm::try_from(parsed.algorithm)?;
    let version = parsed
        .version
        .map(Version::try_from)
        .transpose()?
        .unwrap_or_default();
    let params = Params::try_from(parsed)?;
    let argon2 = Argon2::new(algorithm, version, params);
    let computed = derive(memory, &argon2, password, salt, expected.len())?;
    Ok(computed == *expected)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;

    use argon2::password_hash::{PasswordHasher as _, PasswordVerifier as _};

    fn verify_blocking(password: &Password, phc: &str) -> bool {
        verify_with(&mut Memory::default(), password, phc)
    }

    fn crate_hash(password: &Password, params: Params) -> String {
        let salt = SaltString::generate(&mut rand::rngs::OsRng);
        Argon2::new(Algorithm::Argon2id, Version::V0x13, params)
            .hash_password(password.expose_secret().as_bytes(), &salt)
            .unwrap()
            .to_string()
    }

    #[test]
    fn hashes_agree_with_the_crates_phc_api_and_honour_stored_parameters() {
        let password = Password::new("correct horse".into());
        let wrong = Password::new("correct horse!".into());
        let mut memory = Memory::default();
        let ours = hash_with(&mut memory, &password).unwrap();
        let parsed = PasswordHash::new(&ours).unwrap();
        assert!(Argon2::default()
            .verify_password(b"correct horse", &parsed)
            .is_ok());
        assert!(Argon2::default()
            .verify_password(b"correct horse!", &parsed)
            .is_err());
        // Hashes made by the crate, under today's and under other settings (cheaper, costlier
        // than the memory kept, argon2i), verify over the reused memory with their own.
        let others = [
            params().unwrap(),
            Params::new(8_192, 3, 1, None).unwrap(),
            Params::new(24_576, 1, 2, Some(16)).unwrap(),
        ];
        for params in others {
            let phc = crate_hash(&password, params);
            assert!(verify_with(&mut memory, &password, &phc), "{phc}");
            assert!(!verify_with(&mut memory, &wrong, &phc), "{phc}");
        }
        let salt = SaltString::generate(&mut rand::rngs::OsRng);
        let argon2i = Argon2::new(Algorithm::Argon2i, Version::V0x13, params().unwrap())
            .hash_password(b"correct horse", &salt)
            .unwrap()
            .to_string();
        assert!(verify_with(&mut memory, &password, &argon2i));
        assert!(!verify_with(&mut memory, &wrong, &argon2i));
        // The memory kept is today's size, whatever the larger hash needed.
        assert_eq!(memory.blocks.len(), KEPT_BLOCKS);
        for garbage in ["", "$argon2id$", "not a hash", &ours[..ours.len() - 4]] {
            assert!(!verify_with(&mut memory, &password, garbage), "{garbage}");
        }
    }

    #[test]
    fn the_pool_leaves_a_core_free() {
        assert_eq!(pool_size(1), 1);
        assert_eq!(pool_size(2), 1);
        assert_eq!(pool_size(8), 7);
        assert_eq!(pool_size(0), 1);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn no_more_hashes_run_at_once_than_the_pool_has_threads() {
        let hasher = PasswordHasher::new(2).unwrap();
        assert_eq!(hasher.limits().threads, 2);
        let jobs: Vec<_> = (0..8)
            .map(|i| {
                let hasher = hasher.clone();
                tokio::spawn(async move {
                    let password = Password::new(format!("correct horse {i}"));
                    let hash = hasher.hash(password.clone()).await.unwrap();
                    assert!(hasher.verify(password, Some(hash)).await.unwrap());
                })
            })
            .collect();
        for job in jobs {
            job.await.unwrap();
        }
        let peak = hasher.peak_running();
        assert!((1..=2).contains(&peak), "{peak} hashes ran at once");
        // On the pool's own threads, not the executor's nor tokio's blocking pool.
        let thread = hasher
            .pool
            .run(|_| Ok(std::thread::current().name().map(str::to_owned)))
            .await
            .unwrap();
        assert_eq!(thread.as_deref(), Some("password-hash"));
    }

    #[tokio::test]
    async fn an_idle_hashing_thread_gives_its_memory_back_and_takes_it_again() {
        let limits = PoolLimits {
            idle_release: Duration::from_millis(200),
            ..PoolLimits::for_threads(1)
        };
        let hasher = PasswordHasher::with_limits(limits).unwrap();
        let password = Password::new("correct horse".into());
        let hash = hasher.hash(password.clone()).await.unwrap();
        assert_eq!(hasher.memory_areas(), 1, "kept after a hash");
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while hasher.memory_areas() != 0 {
            assert!(std::time::Instant::now() < deadline, "never released");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert!(hasher.verify(password, Some(hash)).await.unwrap());
        assert_eq!(
            hasher.memory_areas(),
            1,
            "allocated again for the next hash"
        );
    }

    #[tokio::test]
    async fn an_idle_hashing_thread_leaves_and_the_next_login_starts_one() {
        let limits = PoolLimits {
            idle_release: Duration::from_millis(100),
            ..PoolLimits::for_threads(1)
        };
        let hasher = PasswordHasher::with_limits(limits).unwrap();
        let threads = || hasher.pool.gauge.threads.load(Ordering::SeqCst);
        assert_eq!(threads(), 1);
        let deadline = std::time::Instant::now() + EXIT_AFTER_RELEASE + Duration::from_secs(5);
        while threads() != 0 {
            assert!(
                std::time::Instant::now() < deadline,
                "the idle thread never left"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let password = Password::new("correct horse".into());
        let hash = hasher.hash(password.clone()).await.unwrap();
        assert_eq!(threads(), 1, "a thread was started for the job");
        assert!(hasher.verify(password, Some(hash)).await.unwrap());
        assert_eq!(threads(), 1);
    }

    /// Occupies the pool's only thread until the returned sender is dropped or sent to.
    fn hold_the_thread(hasher: &PasswordHasher) -> std::sync::mpsc::Sender<()> {
        let (release, held) = std::sync::mpsc::channel::<()>();
        let (started, running) = std::sync::mpsc::channel();
        hasher
            .pool
            .submit(Box::new(move |_| {
                started.send(()).unwrap();
                let _ = held.recv();
            }))
            .unwrap();
        running.recv().unwrap();
        release
    }

    #[tokio::test]
    async fn a_login_finding_the_queue_full_is_refused_at_once() {
        let limits = PoolLimits {
            threads: 1,
            queue: 1,
            max_wait: Duration::from_secs(60),
            idle_release: IDLE_RELEASE,
        };
        let hasher = PasswordHasher::with_limits(limits).unwrap();
        let hash = hasher
            .hash(Password::new("correct horse".into()))
            .await
            .unwrap();
        let release = hold_the_thread(&hasher);
        let (filler_ran, filler_done) = std::sync::mpsc::channel();
        hasher
            .pool
            .submit(Box::new(move |_| filler_ran.send(()).unwrap()))
            .unwrap();
        let refused = hasher
            .check(Password::new("correct horse".into()), Some(hash.clone()))
            .await;
        assert!(
            matches!(refused, Err(AuthError::Busy { retry_after }) if retry_after >= Duration::from_secs(1)),
            "{refused:?}"
        );
        let refused = hasher.check(Password::new("anything".into()), None).await;
        assert!(
            matches!(refused, Err(AuthError::Busy { .. })),
            "{refused:?}"
        );
        let refused = hasher.hash(Password::new("anything".into())).await;
        assert!(
            matches!(refused, Err(AuthError::Busy { .. })),
            "{refused:?}"
        );
        // Once the queue has drained, logins are served again.
        release.send(()).unwrap();
        filler_done.recv().unwrap();
        assert!(hasher
            .verify(Password::new("correct horse".into()), Some(hash))
            .await
            .unwrap());
        assert_eq!(hasher.peak_running(), 1);
    }

    #[tokio::test]
    async fn a_login_that_waited_too_long_is_refused_unhashed() {
        let limits = PoolLimits {
            threads: 1,
            queue: 8,
            max_wait: Duration::from_millis(50),
            idle_release: IDLE_RELEASE,
        };
        let hasher = PasswordHasher::with_limits(limits).unwrap();
        let release = hold_the_thread(&hasher);
        let waiting = tokio::spawn({
            let hasher = hasher.clone();
            async move { hasher.check(Password::new("anything".into()), None).await }
        });
        // Long past `max_wait`; the spawned login is queued as soon as this test yields.
        tokio::time::sleep(Duration::from_millis(300)).await;
        release.send(()).unwrap();
        let refused = waiting.await.unwrap();
        assert!(
            matches!(refused, Err(AuthError::Busy { .. })),
            "{refused:?}"
        );
        // A login that does not wait is served.
        assert!(!hasher
            .verify(Password::new("anything".into()), None)
            .await
            .unwrap());
    }

    #[tokio::test]
    async fn hash_is_argon2id_with_owasp_parameters_and_verifies() {
        let hasher = PasswordHasher::new(2).unwrap();
        let hash = hasher
            .hash(Password::new("correct horse".into()))
            .await
            .unwrap();
        assert!(
            hash.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"),
            "{hash}"
        );
        assert!(hasher
            .verify(Password::new("correct horse".into()), Some(hash.clone()))
            .await
            .unwrap());
        assert!(!hasher
            .verify(Password::new("wrong horse".into()), Some(hash))
            .await
            .unwrap());
    }

    #[tokio::test]
    async fn the_dummy_hash_costs_what_a_real_one_does() {
        let hasher = PasswordHasher::new(1).unwrap();
        let real = hasher
            .hash(Password::new("correct horse".into()))
            .await
            .unwrap();
        let params = |phc: &str| phc.rsplitn(3, '$').nth(2).unwrap().to_owned();
        assert_eq!(params(&hasher.dummy_hash), params(&real));
        assert_eq!(params(&real), "$argon2id$v=19$m=19456,t=2,p=1");
    }

    #[tokio::test]
    async fn unknown_user_never_verifies() {
        let hasher = PasswordHasher::new(1).unwrap();
        assert!(!hasher
            .verify(Password::new("anything".into()), None)
            .await
            .unwrap());
    }

    fn email(address: &str) -> Email {
        Email::parse(address).unwrap()
    }

    fn weakness(password: &str, address: &str) -> Option<Weakness> {
        match check_policy(&Password::new(password.into()), &email(address)) {
            Ok(()) => None,
            Err(AuthError::WeakPassword(weakness)) => Some(weakness),
            Err(other) => panic!("{other:?}"),
        }
    }

    #[test]
    fn policy_counts_characters_after_nfkc_not_bytes() {
        let at = "someone@example.com";
        assert_eq!(weakness("1234567", at), Some(Weakness::Length));
        assert_eq!(weakness("ééééééé", at), Some(Weakness::Length)); // 7 chars, 14 bytes
                                                                     // Eight characters as typed, seven once the decomposed accent is composed.
        assert_eq!(weakness("zq8vwxk\u{e9}", at), None);
        assert_eq!(weakness("zq8vwxke\u{301}", at), None);
        assert_eq!(weakness("zq8vwxe\u{301}", at), Some(Weakness::Length));
        assert_eq!(weakness("zq8vwx7k", at), None);
        assert_eq!(weakness(&"x".repeat(1024), at), None);
        assert_eq!(weakness(&"x".repeat(1025), at), Some(Weakness::Length));
        // U+FB03 (the "ffi" ligature) is three characters in NFKC.
        assert_eq!(
            weakness(&"\u{fb03}".repeat(342), at),
            Some(Weakness::Length)
        );
    }

    #[test]
    fn policy_refuses_common_passwords_whatever_their_case_or_width() {
        let at = "someone@example.com";
        for common in [
            "password",
            "PassWord",
            "iloveyou1",
            "QWERTYUIOP",
            "ｐａｓｓｗｏｒｄ",
        ] {
            assert_eq!(weakness(common, at), Some(Weakness::Common), "{common}");
        }
        assert_eq!(weakness("correct horse battery", at), None);
    }

    #[test]
    fn policy_refuses_the_local_part_of_four_characters_or_more() {
        assert_eq!(
            weakness("my name is Margaret!", "margaret@example.com"),
            Some(Weakness::ContainsEmail)
        );
        assert_eq!(
            weakness("xx-JOHN-xx-1999", "John@example.com"),
            Some(Weakness::ContainsEmail)
        );
        // Three characters could occur in a good password by chance.
        assert_eq!(weakness("adamant zebra 77", "ada@example.com"), None);
        assert_eq!(weakness("correct horse battery", "john@example.com"), None);
        // The domain is not the local part.
        assert_eq!(weakness("example.com rocks", "john@example.com"), None);
    }

    #[test]
    fn the_readme_examples_pass_the_policy() {
        let readme = include_str!("../../../README.md");
        for (address, password) in [
            ("ada@example.com", "correct horse battery"),
            ("ops@example.com", "a long passphrase"),
        ] {
            assert!(
                readme.contains(password),
                "{password} is no longer in the README"
            );
            assert_eq!(weakness(password, address), None, "{password}");
        }
    }

    #[test]
    fn each_rule_has_its_own_message() {
        let messages = [Weakness::Length, Weakness::Common, Weakness::ContainsEmail]
            .map(|w| AuthError::WeakPassword(w).to_string());
        assert!(messages[0].contains("8 to 1024"), "{}", messages[0]);
        assert!(messages[1].contains("common"), "{}", messages[1]);
        assert!(messages[2].contains("email"), "{}", messages[2]);
    }

    #[tokio::test]
    async fn composed_and_decomposed_forms_are_one_password() {
        let hasher = PasswordHasher::new(2).unwrap();
        let composed = Password::new("cr\u{e8}me br\u{fb}l\u{e9}e".into());
        let decomposed = Password::new("cre\u{300}me bru\u{302}le\u{301}e".into());
        assert_ne!(composed.expose_secret(), decomposed.expose_secret());
        let hash = hasher.hash(decomposed.clone()).await.unwrap();
        assert_eq!(
            hasher
                .check(composed.clone(), Some(hash.clone()))
                .await
                .unwrap(),
            Verification::Match
        );
        assert_eq!(
            hasher.check(decomposed, Some(hash)).await.unwrap(),
            Verification::Match
        );
        let hash = hasher.hash(composed.clone()).await.unwrap();
        assert_eq!(
            hasher.check(composed, Some(hash)).await.unwrap(),
            Verification::Match
        );
    }

    #[tokio::test]
    async fn a_hash_of_the_form_as_typed_matches_and_is_rehashed_in_nfkc() {
        let hasher = PasswordHasher::new(2).unwrap();
        let typed = Password::new("cre\u{300}me bru\u{302}le\u{301}e".into());
        let composed = Password::new("cr\u{e8}me br\u{fb}l\u{e9}e".into());
        // As hashes were made before normalisation: from the bytes typed, by the crate's own
        // PHC API.
        let legacy = crate_hash(&typed, params().unwrap());
        assert!(!verify_blocking(&composed, &legacy));
        let Verification::MatchedAsTyped { rehashed } = hasher
            .check(typed.clone(), Some(legacy.clone()))
            .await
            .unwrap()
        else {
            panic!("the form as typed should match");
        };
        assert!(verify_blocking(&composed, &rehashed));
        assert!(rehashed.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"));
        // A wrong password, or an unknown user, never matches in either form.
        let wrong = Password::new("cre\u{300}me bru\u{302}le\u{301}e!".into());
        assert_eq!(
            hasher.check(wrong, Some(legacy)).await.unwrap(),
            Verification::Mismatch
        );
        assert_eq!(
            hasher.check(typed, None).await.unwrap(),
            Verification::Mismatch
        );
    }
}
