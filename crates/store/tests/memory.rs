#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
//! The conformance suite against the in-memory store. Every case shares one store, as they
//! would share one database, which also checks that the cases do not step on each other.

use std::net::{IpAddr, Ipv4Addr};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use tessera_core::guessing::{self, Limit, Subject};
use tessera_core::model::Timestamp;
use tessera_core::store::GuessingCounters as _;
use tessera_store::MemoryStore;

#[allow(clippy::unused_async)] // the suite awaits its store builder
async fn shared_store() -> Option<Arc<MemoryStore>> {
    static STORE: OnceLock<Arc<MemoryStore>> = OnceLock::new();
    Some(Arc::clone(STORE.get_or_init(Arc::default)))
}

tessera_store::conformance_suite!(shared_store());

/// An attacker rotating through addresses adds a tally per address; the expired ones are swept
/// as the map grows, so it holds about the tallies of one window, not every address ever seen.
#[tokio::test]
async fn guessing_tallies_stay_bounded_while_addresses_rotate() {
    let store = MemoryStore::new();
    let limit = Limit {
        max: 100,
        window: Duration::from_secs(1),
    };
    let start = Timestamp::now();
    let mut most = 0;
    // 50 000 addresses, one attempt each, 2 ms apart: 500 of them alive at any time.
    for i in 0..50_000u32 {
        let now = Timestamp::from_unix_millis(start.as_unix_millis() + 2 * i64::from(i));
        let key = Subject::Address(IpAddr::V4(Ipv4Addr::from(i))).key();
        store
            .update_tally(&key, now, &|t| Some(guessing::admit(t, now, limit).1))
            .await
            .unwrap();
        most = most.max(store.tallies_held());
    }
    assert!(most <= 2_048, "held {most} tallies at once");
    let end = Timestamp::from_unix_millis(start.as_unix_millis() + 200_000);
    store.prune_tallies(end).await.unwrap();
    assert_eq!(store.tallies_held(), 0);
}
