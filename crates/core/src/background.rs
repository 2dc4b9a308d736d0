//! One owner for the work a node does besides answering requests: following the revocation
//! feed, rebuilding the key ring when a key is withdrawn, writing `last_seen_at` back, and
//! what the server adds (periodic key reload, housekeeping, webhook delivery).
//!
//! Every task is started through [`Background::spawn`] and handed a [`Stopping`] signal. It
//! checks the signal only where it would wait (between ticks, between passes), never in the
//! middle of a step, so [`Background::shutdown`] lets each one finish what it is doing, write
//! what it holds (the last-seen flusher writes its pending batch once more) and return. The
//! wait is bounded: a task still running at the bound is aborted and named in the log, and
//! every task is written so that being cut off loses nothing durable (a webhook claim expires
//! and the message is due again; a feed read is simply not applied).

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio::sync::{watch, Notify};
use tokio::task::{Id, JoinSet};
use tokio::time::{Instant, Interval, MissedTickBehavior};

use crate::error::AuthError;
use crate::model::{SessionId, Timestamp};
use crate::revocation::RevocationCache;
use crate::service::Tessera;
use crate::store::Store;

/// How often cached sessions' `last_seen_at` is written back.
pub const TOUCH_FLUSH_INTERVAL: Duration = Duration::from_secs(2);

/// How often expired denylist entries and long-dead sessions are deleted.
pub const HOUSEKEEPING_INTERVAL: Duration = Duration::from_secs(600);

/// Prunes of the revocation cache happen every this many flushes (once a minute): pruning
/// walks the whole cache under its write lock, about a millisecond at 200 000 entries.
const FLUSHES_PER_PRUNE: u32 = 12;

/// The signal a background task watches. Cloning it is cheap; every clone sees the same stop.
#[derive(Debug, Clone)]
pub struct Stopping(watch::Receiver<bool>);

impl Stopping {
    /// Resolves once shutdown has been requested (at once if it already was). An owner that
    /// is gone counts as a request: nobody is left to stop the task otherwise.
    pub async fn requested(&mut self) {
        let _ = self.0.wait_for(|stop| *stop).await;
    }

    pub fn is_requested(&self) -> bool {
        *self.0.borrow()
    }

    /// Waits for the next tick of `tick`; `false` when shutdown was requested first (or
    /// meanwhile), so the loop ends instead of starting another step.
    pub async fn tick(&mut self, tick: &mut Interval) -> bool {
        tokio::select! {
            biased;
            () = self.requested() => false,
            _ = tick.tick() => true,
        }
    }

    /// Sleeps for `period`; `false` when shutdown was requested first.
    pub async fn sleep(&mut self, period: Duration) -> bool {
        tokio::select! {
            biased;
            () = self.requested() => false,
            () = tokio::time::sleep(period) => true,
        }
    }
}

/// What [`Background::shutdown`] found.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Stopped {
    /// Tasks that returned (or had already) within the bound.
    pub finished: usize,
    /// Tasks still running at the bound, which were aborted.
    pub aborted: Vec<&'static str>,
}

/// Owns every background task of a node: starts them, signals them to stop, and waits for
/// them with a bound. Dropping it aborts whatever still runs (a process that never called
/// [`shutdown`](Self::shutdown), such as an administration command, has nothing to flush).
pub struct Background {
    stop: watch::Sender<bool>,
    tasks: Mutex<Tasks>,
}

#[derive(Default)]
struct Tasks {
    set: JoinSet<()>,
    names: HashMap<Id, &'static str>,
}

impl Default for Background {
    fn default() -> Self {
        Self::new()
    }
}

impl std::fmt::Debug for Background {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Background")
            .field("stopping", &*self.stop.borrow())
            .field("tasks", &self.lock().set.len())
            .finish()
    }
}

impl Background {
    pub fn new() -> Self {
        Self {
            stop: watch::Sender::new(false),
            tasks: Mutex::new(Tasks::default()),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Tasks> {
        // The set stays consistent whatever a panicking holder did: spawning and taking it
        // are single calls.
        self.tasks.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Starts `task` on the runtime with its own [`Stopping`]; `name` is what the log calls
    /// it. Once shutdown has begun nothing new starts.
    pub fn spawn<F, Fut>(&self, name: &'static str, task: F)
    where
        F: FnOnce(Stopping) -> Fut,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let stopping = Stopping(self.stop.subscribe());
        let mut tasks = self.lock();
        if stopping.is_requested() {
            tracing::debug!(task = name, "shutting down; background task not started");
            return;
        }
        let id = tasks.set.spawn(task(stopping)).id();
        tasks.names.insert(id, name);
    }

    /// Tasks started and not yet reaped (finished tasks count until shutdown reaps them).
    pub fn len(&self) -> usize {
        self.lock().set.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Signals every task to stop, then waits up to `bound` for all of them to finish their
    /// current step, flush and return; those still running then are aborted and logged.
    /// Calling it again returns at once (everything was reaped the first time).
    pub async fn shutdown(&self, bound: Duration) -> Stopped {
        self.stop.send_replace(true);
        let Tasks { mut set, mut names } = std::mem::take(&mut *self.lock());
        let deadline = Instant::now() + bound;
        let mut stopped = Stopped::default();
        loop {
            match tokio::time::timeout_at(deadline, set.join_next_with_id()).await {
                Ok(None) => break,
                Ok(Some(Ok((id, ())))) => {
                    stopped.finished += 1;
                    names.remove(&id);
                }
                Ok(Some(Err(e))) => {
                    stopped.finished += 1;
                    let task = names.remove(&e.id()).unwrap_or("unnamed");
                    tracing::error!(task, error = %e, "background task failed");
                }
                Err(_) => {
                    stopped.aborted = names.into_values().collect();
                    stopped.aborted.sort_unstable();
                    tracing::warn!(tasks = ?stopped.aborted, ?bound,
                        "background tasks still running at the shutdown bound are aborted");
                    set.shutdown().await;
                    break;
                }
            }
        }
        stopped
    }
}

impl Tessera {
    /// The owner of this node's background work: the server starts its own tasks here too,
    /// and stops them all with [`Background::shutdown`].
    pub fn background(&self) -> &Background {
        &self.background
    }
}

/// Runs `work` until it returns or shutdown is requested, whichever is first. Only for work
/// that may be cut at any await without losing anything, such as following the revocation
/// feed (a read whose result is simply not applied).
pub async fn until_stopped(work: impl Future<Output = ()>, mut stop: Stopping) {
    tokio::select! {
        () = work => {}
        () = stop.requested() => {}
    }
}

/// Writes the `last_seen_at` of cached cookie sessions back to the store in batches, off the
/// request path, and once more when shutdown is requested so no touch is lost to a restart.
pub(crate) async fn flush_touches(
    store: Arc<dyn Store>,
    pending: Arc<Mutex<HashMap<SessionId, Timestamp>>>,
    cache: Arc<RevocationCache>,
    mut stop: Stopping,
) {
    let mut tick = tokio::time::interval(TOUCH_FLUSH_INTERVAL);
    let mut ticks: u32 = 0;
    while stop.tick(&mut tick).await {
        ticks = ticks.wrapping_add(1);
        write_touches(store.as_ref(), &pending).await;
        if ticks % FLUSHES_PER_PRUNE == 0 {
            cache.prune(Timestamp::now());
        }
    }
    let written = write_touches(store.as_ref(), &pending).await;
    tracing::debug!(sessions = written, "last_seen_at flushed at shutdown");
}

/// Drains `pending` into the store; returns how many sessions were written.
async fn write_touches(store: &dyn Store, pending: &Mutex<HashMap<SessionId, Timestamp>>) -> usize {
    let batch: Vec<(SessionId, Timestamp)> = pending
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .drain()
        .collect();
    let mut written = 0;
    for (session, at) in batch {
        match store.touch_session(session, at).await {
            Ok(()) => written += 1,
            Err(e) => tracing::warn!(error = %e, "could not record last_seen_at"),
        }
    }
    written
}

/// Rebuilds the key ring whenever the feed follower reports a withdrawn key; a failed reload
/// is retried after `retry`, so a store blip cannot leave a withdrawn key verifying.
pub(crate) async fn rebuild_keys_when_changed<F, Fut>(
    reload: F,
    changed: Arc<Notify>,
    retry: Duration,
    mut stop: Stopping,
) where
    F: Fn() -> Fut,
    Fut: Future<Output = Result<(), AuthError>>,
{
    loop {
        tokio::select! {
            biased;
            () = stop.requested() => return,
            () = changed.notified() => {}
        }
        if let Err(e) = reload().await {
            tracing::warn!(error = %e, "could not reload signing keys; retrying");
            if !stop.sleep(retry).await {
                return;
            }
            changed.notify_one();
        }
    }
}

/// Re-reads the signing keys every `period`, so a key rotated on another node (or by
/// `tessera keys rotate`) is published and accepted here.
pub async fn reload_keys_periodically(tessera: Arc<Tessera>, period: Duration, mut stop: Stopping) {
    let mut tick = tokio::time::interval(period);
    tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    tick.tick().await; // the first tick is immediate; the ring was just loaded
    while stop.tick(&mut tick).await {
        if let Err(e) = tessera.reload_keys().await {
            tracing::warn!(error = %e, "could not reload signing keys");
        }
    }
}

/// Deletes expired revocation state every [`HOUSEKEEPING_INTERVAL`] (SPEC §5: the store holds
/// only what can still decide a verdict).
pub async fn housekeeping(tessera: Arc<Tessera>, mut stop: Stopping) {
    let mut tick = tokio::time::interval(HOUSEKEEPING_INTERVAL);
    tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    while stop.tick(&mut tick).await {
        match tessera.housekeeping().await {
            Ok((pruned, purged)) if pruned + purged > 0 => {
                tracing::info!(pruned, purged, "expired revocation state removed");
            }
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "housekeeping failed"),
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    #[tokio::test]
    async fn shutdown_lets_a_step_in_progress_finish_then_the_task_flush() {
        let background = Background::new();
        let (started_tx, started_rx) = tokio::sync::oneshot::channel();
        let steps = Arc::new(AtomicUsize::new(0));
        let flushed = Arc::new(AtomicUsize::new(0));
        let (s, f) = (Arc::clone(&steps), Arc::clone(&flushed));
        background.spawn("stepper", move |mut stop| async move {
            let mut started = Some(started_tx);
            let mut tick = tokio::time::interval(Duration::from_millis(10));
            while stop.tick(&mut tick).await {
                if let Some(tx) = started.take() {
                    let _ = tx.send(());
                }
                // A step that outlasts the request to stop.
                tokio::time::sleep(Duration::from_millis(300)).await;
                s.fetch_add(1, Ordering::SeqCst);
            }
            f.fetch_add(1, Ordering::SeqCst);
        });
        started_rx.await.unwrap();
        let stopped = background.shutdown(Duration::from_secs(30)).await;
        assert_eq!(
            stopped,
            Stopped {
                finished: 1,
                aborted: vec![]
            }
        );
        assert_eq!(
            steps.load(Ordering::SeqCst),
            1,
            "the step in progress finished"
        );
        assert_eq!(
            flushed.load(Ordering::SeqCst),
            1,
            "the task flushed after it"
        );
    }

    #[tokio::test]
    async fn a_task_still_running_at_the_bound_is_aborted_and_named() {
        let background = Background::new();
        background.spawn("stubborn", |_stop| std::future::pending());
        background.spawn("prompt", |mut stop| async move { stop.requested().await });
        let stopped = background.shutdown(Duration::from_millis(200)).await;
        assert_eq!(
            stopped,
            Stopped {
                finished: 1,
                aborted: vec!["stubborn"]
            }
        );
        assert!(background.is_empty());
    }

    #[tokio::test]
    async fn nothing_starts_once_shutdown_has_begun() {
        let background = Background::new();
        background.shutdown(Duration::from_secs(1)).await;
        let ran = Arc::new(AtomicUsize::new(0));
        let r = Arc::clone(&ran);
        background.spawn("late", move |_| async move {
            r.fetch_add(1, Ordering::SeqCst);
        });
        tokio::task::yield_now().await;
        assert!(background.is_empty());
        assert_eq!(ran.load(Ordering::SeqCst), 0);
    }
}
