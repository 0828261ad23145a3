//! What both stores record of their groups of changes, under the same
//! names, so that one dashboard and one alert serve either
//! (`passport_store_group_size`, `passport_store_group_seconds`), each
//! labelled with the store that recorded it.

use std::time::Instant;

/// Which store recorded a figure (the `store` label).
#[derive(Clone, Copy)]
pub(crate) enum StoreKind {
    Sqlite,
    Postgres,
}

impl StoreKind {
    fn label(self) -> &'static str {
        match self {
            StoreKind::Sqlite => "sqlite",
            StoreKind::Postgres => "postgres",
        }
    }
}

/// Records how many changes one transaction committed together.
pub(crate) fn record_group_size(store: StoreKind, changes: usize) {
    metrics::histogram!("passport_store_group_size", "store" => store.label())
        .record(changes as f64);
}

/// Records how long a group's `phase` took since `since`, and whether it
/// failed: a phase that fails is the one an operator looks for.
pub(crate) fn record_group_phase(store: StoreKind, phase: &'static str, since: Instant, ok: bool) {
    let outcome = if ok { "ok" } else { "failed" };
    metrics::histogram!(
        "passport_store_group_seconds",
        "store" => store.label(),
        "phase" => phase,
        "outcome" => outcome
    )
    .record(since.elapsed().as_secs_f64());
}

/// Runs `work` as a group's `phase`, recording it ([`record_group_phase`]).
pub(crate) fn timed_phase<T, E>(
    store: StoreKind,
    phase: &'static str,
    work: impl FnOnce() -> Result<T, E>,
) -> Result<T, E> {
    let since = Instant::now();
    let done = work();
    record_group_phase(store, phase, since, done.is_ok());
    done
}
