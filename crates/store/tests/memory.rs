#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
//! The conformance suite against the in-memory store. Every case shares one store, as they
//! would share one database, which also checks that the cases do not step on each other.

use std::sync::{Arc, OnceLock};

use tessera_store::MemoryStore;

#[allow(clippy::unused_async)] // the suite awaits its store builder
async fn shared_store() -> Option<Arc<MemoryStore>> {
    static STORE: OnceLock<Arc<MemoryStore>> = OnceLock::new();
    Some(Arc::clone(STORE.get_or_init(Arc::default)))
}

tessera_store::conformance_suite!(shared_store());
