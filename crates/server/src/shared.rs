//! A host on a shared store: its grants from PostgreSQL, kept in step; its
//! seat batches leased, renewed and handed back; its ledger spool shipped.

use crate::{Config, ServeError, Server};
use std::sync::Arc;
use std::time::Duration;
use tollgate::Host;
use tollgate_license::Clock;
use tollgate_store::postgres::PgStore;
use tollgate_store::postgres::batches::{BatchSettings, Batcher};
use tollgate_store::postgres::clock::StoreClock;
use tollgate_store::postgres::ledger::Shipper;
use tollgate_store::state::HostKey;

/// How often a shared host reads the grants again without being told.
const GRANTS_EVERY: Duration = Duration::from_secs(1);

/// How often a shared host reads the database's clock again.
const CLOCK_EVERY: Duration = Duration::from_secs(10);

/// How often the shipper looks for rows to ship when it has none.
const SHIP_EVERY: Duration = Duration::from_millis(200);

/// Connects `host` to the shared store at `url` and starts its work on
/// the server's tasks, which end at shutdown: the store's grants and
/// license rules are in force before this returns. A host whose config's
/// license rules differ from the shared ones is refused.
pub(crate) async fn start(
    url: &str,
    config: &Config,
    clock: &Arc<StoreClock>,
    host: &Arc<Host>,
    server: &Server,
) -> Result<(), ServeError> {
    let ttl = config.seat_batch_ttl;
    let store = PgStore::connect(url, 8).await?;
    let state = host.state().ok_or(ServeError::SharedNeedsState)?;
    let host_id = HostKey::open_or_create(state.dir())
        .map_err(|e| ServeError::Host(tollgate_store::StateError::from(e).into()))?
        .key_id();
    store.sync_clock(clock).await?;
    store
        .agree_rules(&config.licenses, &host_id, clock.now_secs())
        .await?;
    let licenses = host.licenses().clone();
    store.apply_to(&licenses).await?;
    let _ = server.shared_store.set(store.clone());
    let until_shutdown = || server.shutdown.clone().cancelled_owned();
    {
        let (store, licenses) = (store.clone(), licenses.clone());
        let stop = until_shutdown();
        server
            .tasks
            .spawn(async move { store.keep_grants(licenses, GRANTS_EVERY, stop).await });
    }
    {
        let (store, clock) = (store.clone(), clock.clone());
        let mut stop = Box::pin(until_shutdown());
        server.tasks.spawn(async move {
            loop {
                tokio::select! {
                    () = &mut stop => break,
                    () = tokio::time::sleep(CLOCK_EVERY) => {
                        if let Err(e) = store.sync_clock(&clock).await {
                            tracing::warn!("the database's clock not read: {e}");
                        }
                    }
                }
            }
        });
    }
    let settings = BatchSettings {
        ttl,
        margin: ttl / 5,
        ..BatchSettings::default()
    };
    let batcher = Batcher::new(store.clone(), licenses, host_id.clone(), settings);
    let _ = server.store_health.set(batcher.health());
    server.tasks.spawn(batcher.run(until_shutdown()));
    let shipper = Shipper::new(store, state.db_path(), &host_id).await?;
    server.metrics.shipping(shipper.shipped_handle());
    server
        .tasks
        .spawn(shipper.run(SHIP_EVERY, until_shutdown()));
    tracing::info!(host = %host_id, "sharing seats through the store");
    Ok(())
}
