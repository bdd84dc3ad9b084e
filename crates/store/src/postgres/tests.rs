//! Against a real PostgreSQL server, started for each test.

use super::seats::Batch;
use super::*;
use std::collections::BTreeMap;
use test_postgres::TestPostgres;
use tollgate_license::issuer::{IssuerKey, LicenseTerms};
use tollgate_license::{Clock, Seats, SystemClock};

const LONG: Duration = Duration::from_secs(3600);

async fn store(pg: &TestPostgres) -> PgStore {
    PgStore::connect(&pg.url(), 16).await.expect("connects")
}

/// Trusts a new issuer and installs its signed license `id` of `seats`;
/// returns the grant id.
async fn install(store: &PgStore, id: &str, seats: Seats) -> String {
    let now = SystemClock.now_secs();
    let key = IssuerKey::generate().expect("issuer key");
    store
        .trust(&key.public(), None, None, now)
        .await
        .expect("trust");
    let license = key.sign(LicenseTerms::new(id, seats), now).expect("sign");
    store
        .install_text(&license.to_file_text(), now)
        .await
        .expect("install")
        .grant
        .grant_id
}

/// One call of `plugin` on `host`, entitled to `demo`, that waits for a
/// seat as `wait` says.
fn demo_call(
    host: &std::sync::Arc<tollgate_license::LicenseManager>,
    plugin: &str,
    invocation: u64,
    wait: Option<Duration>,
) -> tollgate_license::CallSeats {
    host.call(
        tollgate_license::Holder {
            plugin: plugin.into(),
            component_digest: "d".into(),
            invocation,
        },
        std::sync::Arc::new(tollgate_license::Entitlement::to(["demo"])),
        tollgate_license::CallLimits {
            wait,
            max_leases: 4,
            max_acquires: 100,
        },
    )
}

/// Replays lease log rows (host, seats, granted at, expires at; in the
/// order the leases took the grant's lock): each host's batch is its latest
/// lease, and at each lease's moment the live ones must fit in `seats`
/// (between leases batches only expire). Returns the most live at once.
fn replay_peak(log: &[tokio_postgres::Row], seats: i64) -> i64 {
    let mut live: BTreeMap<String, (i64, f64)> = BTreeMap::new();
    let mut peak = 0;
    for row in log {
        let (host, n, at, until): (String, i32, f64, f64) =
            (row.get(0), row.get(1), row.get(2), row.get(3));
        live.insert(host, (i64::from(n), until));
        let in_force: i64 = live
            .values()
            .filter(|(_, until)| *until > at)
            .map(|(n, _)| n)
            .sum();
        assert!(
            in_force <= seats,
            "over-committed at {at}: {in_force} seats live in {live:?}"
        );
        peak = peak.max(in_force);
    }
    peak
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn migrations_run_once_and_a_newer_schema_is_refused() {
    let pg = TestPostgres::start();
    let first = store(&pg).await;
    // A second host connecting finds the schema in place.
    let second = store(&pg).await;
    assert_eq!(
        first.schema_version().await.expect("version"),
        SCHEMA_VERSION
    );
    assert_eq!(
        second.schema_version().await.expect("version"),
        SCHEMA_VERSION
    );
    let client = first.client().await.expect("client");
    let rows = client
        .query("SELECT version FROM tollgate_schema ORDER BY version", &[])
        .await
        .expect("versions");
    let versions: Vec<i32> = rows.iter().map(|r| r.get(0)).collect();
    assert_eq!(versions, (1..=SCHEMA_VERSION).collect::<Vec<_>>());

    client
        .execute(
            "INSERT INTO tollgate_schema (version) VALUES ($1)",
            &[&(SCHEMA_VERSION + 1)],
        )
        .await
        .expect("newer");
    let refused = PgStore::connect(&pg.url(), 4).await.expect_err("too new");
    assert!(
        matches!(refused, PgError::SchemaTooNew { found, known } if found == SCHEMA_VERSION + 1 && known == SCHEMA_VERSION),
        "{refused}"
    );
    assert!(
        refused.to_string().contains("upgrade tollgate"),
        "{refused}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_host_gone_silent_inside_a_lease_loses_its_lock_and_the_others_lease_again() {
    let pg = TestPostgres::start();
    let silent_host = store(&pg).await;
    let grant = install(&silent_host, "demo", Seats::Counted(5)).await;
    // A host locks the grant's row, as a lease does, and then neither
    // commits nor closes: its link to the database was cut.
    let silent = silent_host.client().await.expect("connection");
    silent.batch_execute("BEGIN").await.expect("begin");
    silent
        .execute(
            "SELECT seats FROM grants WHERE grant_id = $1 FOR UPDATE",
            &[&grant],
        )
        .await
        .expect("lock the grant");
    let other = store(&pg).await;
    let started = std::time::Instant::now();
    let batch = tokio::time::timeout(
        Duration::from_secs(30),
        other.lease_batch(&grant, "h2", 5, LONG),
    )
    .await
    .expect("the silent session's lock is not held for ever")
    .expect("the other host leases once the silent session is ended");
    let waited = started.elapsed();
    assert_eq!(batch.seats, 5);
    assert!(
        waited >= SESSION_IDLE_IN_TRANSACTION - Duration::from_millis(500)
            && waited < SESSION_IDLE_IN_TRANSACTION + Duration::from_secs(3),
        "the lock was held {waited:?}, not about {SESSION_IDLE_IN_TRANSACTION:?}"
    );
    // The server ended the silent session: its transaction is gone.
    silent
        .batch_execute("COMMIT")
        .await
        .expect_err("the session was ended");
    assert!(silent.is_closed());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_url_or_unknown_grant_is_named() {
    let bad = PgStore::connect("postgres://host:notaport/db", 1)
        .await
        .expect_err("bad url");
    assert!(matches!(bad, PgError::Url { .. }), "{bad}");
    let pg = TestPostgres::start();
    let s = store(&pg).await;
    let unknown = s
        .lease_batch("no-such-grant", "h1", 1, LONG)
        .await
        .expect_err("unknown grant");
    assert!(matches!(unknown, PgError::UnknownGrant(ref g) if g == "no-such-grant"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_first_host_sets_the_shared_rules_and_a_host_that_differs_is_refused() {
    use tollgate_license::{LicenseManager, Rules};
    let pg = TestPostgres::start();
    let s = store(&pg).await;
    let now = SystemClock.now_secs();
    let rules = |exclude: &[&str], max: Option<u32>, exact: bool| {
        BTreeMap::from([(
            "demo".to_string(),
            Rules {
                include: vec!["b".into(), "a".into()],
                exclude: exclude.iter().map(|p| p.to_string()).collect(),
                max_per_plugin: max,
                exact,
                ..Rules::default()
            },
        )])
    };
    assert_eq!(s.shared_rules().await.expect("read"), None);
    s.agree_rules(&rules(&[], Some(2), false), "h1", now)
        .await
        .expect("the first host sets them");
    // The same rules, lists in another order: agreed.
    let mut reordered = rules(&[], Some(2), false);
    reordered.get_mut("demo").expect("demo").include.reverse();
    s.agree_rules(&reordered, "h2", now)
        .await
        .expect("the same rules");
    // Others: refused, each difference named.
    let refused = s
        .agree_rules(&rules(&[], Some(3), true), "h3", now)
        .await
        .expect_err("other rules");
    let PgError::RulesDiffer(found) = &refused else {
        panic!("{refused}");
    };
    assert_eq!(
        found,
        &[
            "[license.\"demo\"] max_per_plugin: here 3, shared 2".to_string(),
            "[license.\"demo\"] pool: here \"exact\", shared \"batch\"".to_string(),
        ]
    );
    assert!(
        refused
            .to_string()
            .contains("tollgate license rules --store URL --config FILE")
    );
    let missing = s
        .agree_rules(&BTreeMap::new(), "h4", now)
        .await
        .expect_err("no rules");
    assert!(
        missing
            .to_string()
            .contains("here [], shared [\"a\", \"b\"]"),
        "{missing}"
    );

    // Set anew: a shared host puts them in force with the grants.
    install(&s, "demo", Seats::Counted(5)).await;
    let host = std::sync::Arc::new(LicenseManager::shared(
        std::sync::Arc::new(tollgate_license::ledger::MemoryLedger::default()),
        std::sync::Arc::new(SystemClock),
    ));
    s.apply_to(&host).await.expect("apply");
    let changed = s
        .set_rules(&rules(&["a"], Some(2), false), "operator", now)
        .await
        .expect("set");
    assert_eq!(
        changed,
        ["[license.\"demo\"] exclude: here [\"a\"], shared []"]
    );
    s.apply_to(&host).await.expect("apply");
    assert_eq!(
        demo_call(&host, "a", 1, None).acquire("demo"),
        Err(tollgate_license::Denial::NotEntitled)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shared_host_judges_grant_windows_by_the_databases_clock() {
    use super::clock::StoreClock;
    use tollgate_license::{Grant, LicenseManager, Terms};
    let pg = TestPostgres::start();
    let s = store(&pg).await;
    let clock = std::sync::Arc::new(StoreClock::default());
    // On this machine the database's clock is this host's.
    clock.set_offset_ms(123_456);
    s.sync_clock(&clock).await.expect("sync");
    assert!(
        clock.offset_ms().abs() < 1000,
        "offset {} ms",
        clock.offset_ms()
    );
    // A database a day ahead: a grant that ends in an hour on this host's
    // clock has ended by the database's, and the host refuses it.
    let host = std::sync::Arc::new(LicenseManager::shared(
        std::sync::Arc::new(tollgate_license::ledger::MemoryLedger::default()),
        clock.clone(),
    ));
    let mut terms = Terms::new(Seats::Unlimited);
    terms.expires_at = Some(SystemClock.now_secs() + 3600);
    host.set_grants("demo", vec![Grant::new("g", terms)])
        .expect("grant");
    let take = || demo_call(&host, "p", 1, None).acquire("demo").map(drop);
    assert_eq!(take(), Ok(()));
    clock.set_offset_ms(24 * 3600 * 1000);
    assert_eq!(take(), Err(tollgate_license::Denial::Expired));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_issuer_scope_set_on_the_store_leaves_grants_outside_it_without_seats() {
    let pg = TestPostgres::start();
    let s = store(&pg).await;
    let now = SystemClock.now_secs();
    let key = IssuerKey::generate().expect("issuer key");
    s.trust(&key.public(), Some("acme"), None, now)
        .await
        .expect("trust");
    let license = key
        .sign(LicenseTerms::new("demo", Seats::Counted(2)), now)
        .expect("sign");
    s.install_text(&license.to_file_text(), now)
        .await
        .expect("install");
    assert!(s.seat_grants().await.expect("grants").contains_key("demo"));
    let old = s
        .set_scope("acme", &["other-*".to_string()])
        .await
        .expect("scope");
    assert_eq!(old, ["*"]);
    let trusted = s.trusted().await.expect("trusted");
    assert_eq!(trusted[0].scope, ["other-*"]);
    let grants = s.seat_grants().await.expect("grants");
    assert!(
        grants
            .get("demo")
            .is_none_or(|g| g.iter().all(|g| g.revoked)),
        "a grant outside its issuer's scope still gives seats: {grants:?}"
    );
    let unknown = s
        .set_scope("nobody", &["*".to_string()])
        .await
        .expect_err("unknown issuer");
    assert!(unknown.to_string().contains("nobody"), "{unknown}");
    let bad = s.set_scope("acme", &[]).await.expect_err("no pattern");
    assert!(bad.to_string().contains("at least one pattern"), "{bad}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batches_of_a_grant_never_sum_above_its_seats() {
    let pg = TestPostgres::start();
    let s = store(&pg).await;
    let g5 = install(&s, "demo", Seats::Counted(5)).await;
    let lease = |host: &'static str, want: u32, ttl: Duration| {
        let (s, g5) = (s.clone(), g5.clone());
        async move { s.lease_batch(&g5, host, want, ttl).await.expect("lease") }
    };
    let a = lease("a", 3, LONG).await;
    assert_eq!(a.seats, 3);
    assert!(!a.unlimited);
    // b gets what a leaves.
    assert_eq!(lease("b", 4, LONG).await.seats, 2);
    // a shrinks; then b can grow.
    assert_eq!(lease("a", 1, LONG).await.seats, 1);
    assert_eq!(lease("b", 4, LONG).await.seats, 4);
    assert_eq!(lease("c", 5, LONG).await.seats, 0);
    // A batch leased with no time to live is expired at once: its seats
    // are free again for the others.
    assert_eq!(lease("a", 1, Duration::ZERO).await.seats, 1);
    assert_eq!(lease("c", 5, LONG).await.seats, 1);
    // Returning a batch frees its seats.
    s.return_batch(&g5, "b").await.expect("return");
    assert_eq!(lease("c", 5, LONG).await.seats, 5);
    // Every lease has its own token.
    let t1 = lease("d", 0, LONG).await.token;
    let t2 = lease("d", 0, LONG).await.token;
    assert!(t2 > t1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unlimited_grant_gives_what_is_asked() {
    let pg = TestPostgres::start();
    let s = store(&pg).await;
    let u = install(&s, "demo", Seats::Unlimited).await;
    for host in ["a", "b", "c"] {
        let b: Batch = s.lease_batch(&u, host, 1000, LONG).await.expect("lease");
        assert_eq!((b.seats, b.unlimited), (1000, true));
    }
}

/// Many hosts lease, renew, shrink and let batches lapse at once; the log
/// of every lease, replayed in the order the leases took the grant's lock,
/// never shows the live batches above the seats.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_leases_never_overcommit_when_replayed() {
    const SEATS: i64 = 5;
    let pg = TestPostgres::start();
    let s = store(&pg).await;
    let g = install(&s, "demo", Seats::Counted(5)).await;
    let mut tasks = Vec::new();
    for h in 0..8u32 {
        let (s, g) = (s.clone(), g.clone());
        tasks.push(tokio::spawn(async move {
            let host = format!("host-{h}");
            let mut granted = 0u32;
            for i in 0..60u32 {
                // A fixed mix per host: growing, shrinking, short and
                // long lives, lapsing.
                let want = (h + i * 7) % 6;
                let ttl = match (h + i) % 3 {
                    0 => Duration::ZERO,
                    1 => Duration::from_millis(20),
                    _ => Duration::from_secs(30),
                };
                granted += s
                    .lease_batch(&g, &host, want, ttl)
                    .await
                    .expect("lease")
                    .seats;
            }
            granted
        }));
    }
    let mut granted = 0;
    for t in tasks {
        granted += t.await.expect("task");
    }
    assert!(granted > 0, "no lease got a seat");

    let client = s.client().await.expect("client");
    let log = client
        .query(
            "SELECT host_id, seats, extract(epoch FROM granted_at)::float8,
                    extract(epoch FROM expires_at)::float8
             FROM seat_batch_log WHERE grant_id = $1 ORDER BY granted_at, token",
            &[&g],
        )
        .await
        .expect("log");
    assert_eq!(log.len(), 8 * 60);
    assert_eq!(
        replay_peak(&log, SEATS),
        SEATS,
        "the grant was never fully used"
    );
}

mod shared_hosts {
    //! Two hosts, each a shared license manager with its own batcher, on
    //! one database: the seats they hand out together never pass the
    //! grant's.

    use super::*;
    use crate::postgres::batches::{BatchSettings, Batcher};
    use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
    use std::sync::{Arc, Barrier};
    use std::time::Instant;
    use tokio_util_free::Shutdown;
    use tollgate_license::ledger::MemoryLedger;
    use tollgate_license::{Clock, Grant, LicenseManager, ReclaimReason, Seats, SystemClock};

    /// A shutdown signal without another dependency: a watch channel.
    mod tokio_util_free {
        /// Completes its futures once `fire` is called.
        #[derive(Clone)]
        pub struct Shutdown(tokio::sync::watch::Sender<bool>);

        impl Shutdown {
            pub fn new() -> Self {
                Self(tokio::sync::watch::channel(false).0)
            }
            pub fn fire(&self) {
                self.0.send_replace(true);
            }
            pub fn fired(&self) -> impl std::future::Future<Output = ()> + Send + 'static {
                let mut rx = self.0.subscribe();
                async move {
                    let _ = rx.wait_for(|fired| *fired).await;
                }
            }
        }
    }

    const SEATS: u32 = 5;

    /// A shared host with the grants the store gives it.
    fn host(grants: &BTreeMap<String, Vec<Grant>>) -> Arc<LicenseManager> {
        let m = Arc::new(LicenseManager::shared(
            Arc::new(MemoryLedger::default()),
            Arc::new(SystemClock),
        ));
        for (id, grants) in grants {
            m.set_grants(id, grants.clone()).expect("grant");
        }
        m
    }

    fn settings() -> BatchSettings {
        BatchSettings {
            ttl: Duration::from_secs(3),
            margin: Duration::from_millis(500),
            spare: 1,
            max_idle: 1,
        }
    }

    /// A database with a signed 5-seat license `demo`, and two shared hosts
    /// on it that took their grants from it, each with its batcher
    /// (`host-0`, `host-1`) running.
    struct Cluster {
        pg: TestPostgres,
        rt: tokio::runtime::Runtime,
        store: PgStore,
        hosts: [Arc<LicenseManager>; 2],
        shutdown: Shutdown,
        batchers: std::sync::Mutex<Vec<tokio::task::JoinHandle<()>>>,
    }

    impl Cluster {
        fn start() -> Self {
            Self::start_with(settings())
        }

        fn start_with(settings: BatchSettings) -> Self {
            let pg = TestPostgres::start();
            let rt = tokio::runtime::Runtime::new().expect("runtime");
            let store = rt.block_on(store(&pg));
            rt.block_on(install(&store, "demo", Seats::Counted(SEATS)));
            let grants = rt.block_on(store.seat_grants()).expect("grants");
            let hosts = [host(&grants), host(&grants)];
            let shutdown = Shutdown::new();
            let batchers: Vec<_> = hosts
                .iter()
                .enumerate()
                .map(|(i, h)| {
                    let b = Batcher::new(store.clone(), h.clone(), format!("host-{i}"), settings);
                    rt.spawn(b.run(shutdown.fired()))
                })
                .collect();
            Self {
                pg,
                rt,
                store,
                hosts,
                shutdown,
                batchers: std::sync::Mutex::new(batchers),
            }
        }

        /// Stops the batchers (those still running hand their batches back).
        fn stop(&self) {
            self.shutdown.fire();
            let batchers = std::mem::take(&mut *self.batchers.lock().expect("batchers"));
            for b in batchers {
                // An aborted batcher (a dead host) ends with its abort.
                let _ = self.rt.block_on(b);
            }
        }
    }

    /// One call on `host` that waits up to 10 s for a seat.
    fn call(host: &Arc<LicenseManager>, invocation: u64) -> tollgate_license::CallSeats {
        call_waiting(host, invocation, Some(Duration::from_secs(10)))
    }

    /// One call of plugin `p` on `host`, entitled to `demo`, that waits for
    /// a seat as `wait` says.
    fn call_waiting(
        host: &Arc<LicenseManager>,
        invocation: u64,
        wait: Option<Duration>,
    ) -> tollgate_license::CallSeats {
        demo_call(host, "p", invocation, wait)
    }

    #[test]
    fn two_hosts_never_hold_more_than_the_grants_seats_together() {
        let cluster = Cluster::start();
        let Cluster {
            rt, store, hosts, ..
        } = &cluster;

        // 12 callers, 6 per host, each taking a seat 40 times and holding
        // it a moment; a shared counter sees every seat held at once.
        let held = Arc::new(AtomicU32::new(0));
        let peak = Arc::new(AtomicU32::new(0));
        let served = [Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0))];
        std::thread::scope(|scope| {
            for caller in 0..12u64 {
                let h = caller as usize % 2;
                let (host, held, peak, served) = (
                    hosts[h].clone(),
                    held.clone(),
                    peak.clone(),
                    served[h].clone(),
                );
                scope.spawn(move || {
                    for i in 0..40 {
                        let mut c = call(&host, caller * 1000 + i);
                        if c.acquire("demo").is_err() {
                            continue;
                        }
                        let now = held.fetch_add(1, Ordering::SeqCst) + 1;
                        peak.fetch_max(now, Ordering::SeqCst);
                        // The call's work: a moment while holding the seat.
                        std::thread::sleep(Duration::from_millis(2));
                        held.fetch_sub(1, Ordering::SeqCst);
                        let ended = c.end(ReclaimReason::InvocationEnded);
                        assert!(ended.held_to_end.contains("demo"));
                        served.fetch_add(1, Ordering::SeqCst);
                    }
                });
            }
        });
        let peak = peak.load(Ordering::SeqCst);
        assert!(peak <= SEATS, "{peak} seats held at once of {SEATS}");
        assert!(
            peak >= 2,
            "the hosts never held seats together (peak {peak})"
        );
        let served: Vec<u64> = served.iter().map(|s| s.load(Ordering::SeqCst)).collect();
        assert!(
            served.iter().all(|n| *n > 0),
            "each host served calls: {served:?}"
        );

        // Host 0 goes idle; host 1 alone comes to hold every seat, as host
        // 0 gives its idle ones back.
        let all_held = Arc::new(Barrier::new(SEATS as usize));
        let deadline = Instant::now() + Duration::from_secs(20);
        std::thread::scope(|scope| {
            for caller in 0..SEATS as u64 {
                let (host, all_held) = (hosts[1].clone(), all_held.clone());
                scope.spawn(move || {
                    let mut c = call(&host, 90_000 + caller);
                    while c.acquire("demo").is_err() {
                        assert!(Instant::now() < deadline, "host 1 never got every seat");
                    }
                    all_held.wait();
                    c.end(ReclaimReason::InvocationEnded);
                });
            }
        });

        cluster.stop();
        // Handed back at shutdown: nothing left in the store.
        let client = rt.block_on(store.client()).expect("client");
        let left: i64 = rt
            .block_on(client.query_one(
                "SELECT coalesce(sum(seats), 0)::bigint FROM seat_batches",
                &[],
            ))
            .expect("batches")
            .get(0);
        assert_eq!(left, 0);
    }

    #[test]
    fn a_host_that_waits_gets_its_part_from_a_host_kept_busy() {
        let cluster = Cluster::start();
        let Cluster {
            rt, store, hosts, ..
        } = &cluster;
        let stop = std::sync::atomic::AtomicBool::new(false);
        /// Stops the callers however the test ends, so a failure does not
        /// leave them running.
        struct StopOnDrop<'a>(&'a std::sync::atomic::AtomicBool);
        impl Drop for StopOnDrop<'_> {
            fn drop(&mut self) {
                self.0.store(true, Ordering::SeqCst);
            }
        }
        std::thread::scope(|scope| {
            let _stop = StopOnDrop(&stop);
            // Host 0 is never idle: 8 callers, more than the seats, back to
            // back, so it always has calls waiting.
            for caller in 0..8u64 {
                let (host, stop) = (hosts[0].clone(), &stop);
                scope.spawn(move || {
                    let mut i = 0;
                    while !stop.load(Ordering::SeqCst) {
                        i += 1;
                        let mut c = call(&host, caller * 100_000 + i);
                        if c.acquire("demo").is_ok() {
                            std::thread::sleep(Duration::from_millis(20));
                        }
                        c.end(ReclaimReason::InvocationEnded);
                    }
                });
            }
            wait_for("host 0 holds every seat", Duration::from_secs(10), || {
                db_batch(rt, store, "host-0") == i64::from(SEATS)
            });
            // A call on host 1 gets a seat within a few rounds: host 0 is
            // told others wait, and its calls drain to its part.
            let asked = Instant::now();
            let mut c = call(&hosts[1], 1);
            let got = c.acquire("demo");
            let took = asked.elapsed();
            stop.store(true, Ordering::SeqCst);
            assert!(
                got.is_ok(),
                "host 1 got no seat from a busy host 0: {got:?}"
            );
            assert!(took < Duration::from_secs(5), "host 1 waited {took:?}");
            assert!(
                c.end(ReclaimReason::InvocationEnded)
                    .held_to_end
                    .contains("demo")
            );
        });
        cluster.stop();
    }

    /// Polls `done` every 10 ms until it holds; fails after `within`.
    fn wait_for(what: &str, within: Duration, mut done: impl FnMut() -> bool) {
        let deadline = Instant::now() + within;
        while !done() {
            assert!(Instant::now() < deadline, "{what}: not within {within:?}");
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Takes a seat on `host` without waiting, if one is free: the call and
    /// its lease.
    fn try_seat(
        host: &Arc<LicenseManager>,
        invocation: u64,
    ) -> Option<(tollgate_license::CallSeats, u64)> {
        let mut c = call_waiting(host, invocation, None);
        c.acquire("demo").ok().map(|lease| (c, lease))
    }

    /// Seats of host `host` in its live batch, as the database has them.
    fn db_batch(rt: &tokio::runtime::Runtime, store: &PgStore, host: &str) -> i64 {
        let client = rt.block_on(store.client()).expect("client");
        rt.block_on(client.query_one(
            "SELECT coalesce(sum(seats), 0)::bigint FROM seat_batches
             WHERE host_id = $1 AND expires_at > clock_timestamp()",
            &[&host],
        ))
        .expect("batch")
        .get(0)
    }

    #[test]
    fn a_dead_hosts_seats_reach_the_others_only_after_its_batch_expires() {
        let cluster = Cluster::start();
        let Cluster {
            rt, store, hosts, ..
        } = &cluster;
        let (a, b) = (&hosts[0], &hosts[1]);
        // Host a takes every seat.
        let mut held = Vec::new();
        wait_for("host a holds every seat", Duration::from_secs(20), || {
            if let Some(c) = try_seat(a, held.len() as u64) {
                held.push(c);
            }
            held.len() == SEATS as usize
        });
        assert_eq!(try_seat(b, 100).map(|_| ()), None, "b has none meanwhile");
        // Host a dies: no hand-back, no renewal (kill -9).
        cluster.batchers.lock().expect("batchers")[0].abort();
        std::mem::forget(held);
        let died = Instant::now();
        let mut taken = Vec::new();
        wait_for(
            "host b holds every seat after a's batch expired",
            settings().ttl + Duration::from_secs(10),
            || {
                if let Some(c) = try_seat(b, 200 + taken.len() as u64) {
                    taken.push(c);
                }
                taken.len() == SEATS as usize
            },
        );
        let back_after = died.elapsed();
        // Never before a's batch had expired in the store: replay the log.
        let client = rt.block_on(store.client()).expect("client");
        let rows = rt
            .block_on(client.query(
                "SELECT host_id, seats, extract(epoch FROM granted_at)::float8,
                        extract(epoch FROM expires_at)::float8
                 FROM seat_batch_log ORDER BY granted_at, token",
                &[],
            ))
            .expect("log");
        replay_peak(&rows, i64::from(SEATS));
        assert!(
            back_after
                >= settings()
                    .ttl
                    .saturating_sub(settings().ttl / 3 + Duration::from_millis(100)),
            "seats came back after {back_after:?}, before a's batch could have expired"
        );
        drop(taken);
        cluster.stop();
    }

    /// Runs the outage `cut` and its end `mend` on a database serving two
    /// hosts: they keep serving from their batches, hold at most the
    /// grant's seats together, refuse once their batches lapse, and serve
    /// again when the database is back.
    fn outage(cut: impl FnOnce(&TestPostgres), mend: impl FnOnce(&TestPostgres)) {
        let cluster = Cluster::start();
        let Cluster {
            pg,
            rt,
            store,
            hosts,
            ..
        } = &cluster;
        // Both hosts hold a seat before the outage, with a spare one in
        // their batch.
        let mut held = Vec::new();
        for (i, h) in hosts.iter().enumerate() {
            wait_for("a host gets a seat", Duration::from_secs(20), || {
                try_seat(h, i as u64).map(|c| held.push(c)).is_some()
            });
            wait_for("a host keeps a spare seat", Duration::from_secs(20), || {
                h.demand()
                    .iter()
                    .all(|d| d.share.is_some_and(|s| s.seats > d.in_use))
            });
        }
        cut(pg);
        let cut_at = Instant::now();
        // Batches keep serving at first: a free seat of a host's batch
        // needs no database.
        for (i, h) in hosts.iter().enumerate() {
            let c = try_seat(h, 10 + i as u64).expect("served from the batch during the outage");
            held.push(c);
        }
        // Then every batch lapses: the held seats end (their calls will be
        // withheld) and no host gives a seat.
        wait_for(
            "the batches lapse while the database is away",
            settings().ttl + Duration::from_secs(5),
            || held.iter().all(|(c, lease)| !c.lease_is_valid(*lease)),
        );
        assert!(
            cut_at.elapsed()
                >= settings().ttl.saturating_sub(
                    settings().margin + settings().ttl / 3 + Duration::from_millis(100)
                ),
            "batches lapsed after only {:?}",
            cut_at.elapsed()
        );
        assert!(hosts.iter().all(|h| try_seat(h, 50).is_none()));
        for (mut c, _) in held {
            let ended = c.end(ReclaimReason::InvocationEnded);
            assert!(
                !ended.held_to_end.contains("demo"),
                "a lapsed seat's call is withheld"
            );
        }
        mend(pg);
        // The hosts reconnect by themselves and serve again.
        let mut again = Vec::new();
        for (i, h) in hosts.iter().enumerate() {
            wait_for("a host serves again", Duration::from_secs(30), || {
                try_seat(h, 100 + i as u64).map(|c| again.push(c)).is_some()
            });
        }
        let in_db: i64 = (0..2)
            .map(|i| db_batch(rt, store, &format!("host-{i}")))
            .sum();
        assert!(in_db <= i64::from(SEATS), "{in_db} seats in live batches");
        drop(again);
        cluster.stop();
    }

    #[test]
    fn a_stopped_database_lets_batches_serve_then_lapse_then_recover() {
        outage(TestPostgres::stop, TestPostgres::restart);
    }

    #[test]
    fn a_hung_database_lets_batches_serve_then_lapse_then_recover() {
        outage(TestPostgres::pause, TestPostgres::resume);
    }

    #[test]
    fn idle_seats_move_to_a_waiting_host_when_asked_not_at_renewal() {
        // Batches live a minute and are renewed every 20 s; host 0 may keep
        // all 5 seats idle. Only the notification moves them in time.
        let cluster = Cluster::start_with(BatchSettings {
            ttl: Duration::from_secs(60),
            margin: Duration::from_secs(5),
            spare: 1,
            max_idle: SEATS,
        });
        let hosts = &cluster.hosts;
        let mut held = Vec::new();
        wait_for("host 0 holds every seat", Duration::from_secs(20), || {
            if let Some(c) = try_seat(&hosts[0], held.len() as u64) {
                held.push(c);
            }
            held.len() == SEATS as usize
        });
        for (mut c, _) in held {
            c.end(ReclaimReason::InvocationEnded);
        }
        assert_eq!(
            hosts[0].demand()[0].share.map(|s| s.seats),
            Some(SEATS),
            "host 0 keeps its idle batch"
        );
        let asked = Instant::now();
        let all_held = Arc::new(Barrier::new(SEATS as usize));
        std::thread::scope(|scope| {
            for caller in 0..u64::from(SEATS) {
                let (host, all_held) = (hosts[1].clone(), all_held.clone());
                scope.spawn(move || {
                    let mut c = call(&host, 500 + caller);
                    c.acquire("demo").expect("a seat within the wait");
                    all_held.wait();
                    c.end(ReclaimReason::InvocationEnded);
                });
            }
        });
        let took = asked.elapsed();
        assert!(
            took < Duration::from_secs(10),
            "host 1 got every seat only after {took:?}"
        );
        cluster.stop();
    }

    #[test]
    fn installs_and_revocations_reach_every_host_within_two_seconds() {
        let cluster = Cluster::start();
        let Cluster {
            rt,
            store,
            hosts,
            shutdown,
            ..
        } = &cluster;
        // Hosts read the grants every minute; only the announcement can
        // bring a change to them in time.
        for h in hosts {
            let (store, h, fired) = (store.clone(), h.clone(), shutdown.fired());
            rt.spawn(async move { store.keep_grants(h, Duration::from_secs(60), fired).await });
        }
        let (mut held, lease) = {
            let mut taken = None;
            wait_for("a seat on host 0", Duration::from_secs(20), || {
                taken = try_seat(&hosts[0], 1);
                taken.is_some()
            });
            taken.expect("seat")
        };
        rt.block_on(install(store, "extra", Seats::Counted(2)));
        wait_for(
            "a new license on every host",
            Duration::from_secs(2),
            || hosts.iter().all(|h| h.pool("extra").is_some()),
        );
        rt.block_on(store.revoke("demo", SystemClock.now_secs()))
            .expect("revoke");
        wait_for("a revocation on every host", Duration::from_secs(2), || {
            hosts
                .iter()
                .all(|h| h.describe("demo").is_some_and(|s| s.revoked))
        });
        assert!(!held.lease_is_valid(lease), "the held seat ended");
        let ended = held.end(ReclaimReason::InvocationEnded);
        assert_eq!(
            ended.denied.get("demo"),
            Some(&tollgate_license::Denial::Revoked)
        );
        cluster.stop();
    }
}

mod shipping {
    //! A host's spool shipped to the shared ledger: in order, once, and
    //! resumed after a restart or an outage.

    use super::*;
    use crate::SqliteLedger;
    use crate::postgres::ledger::Shipper;
    use crate::state::State;
    use tollgate_license::ledger::{EventKind, Ledger, UsageEvent};

    /// A spool (a state directory's database) with `n` rows recorded from
    /// invocation `first`, every other one with a batch token.
    pub(super) fn record(ledger: &SqliteLedger, first: u64, n: u64) {
        for i in first..first + n {
            ledger.record(UsageEvent {
                lease_id: Some(i),
                seat_id: Some(i),
                grant_id: Some("g".into()),
                token: (i % 2 == 0).then_some(i as i64 * 10),
                ..UsageEvent::new(
                    EventKind::Checkout,
                    1_800_000_000_000 + i,
                    "demo".into(),
                    "hello".into(),
                    "d".into(),
                    i,
                )
            });
        }
        ledger.sync().expect("spooled");
    }

    async fn rows(store: &PgStore, host: &str) -> i64 {
        let client = store.client().await.expect("client");
        client
            .query_one("SELECT count(*) FROM ledger WHERE host_id = $1", &[&host])
            .await
            .expect("count")
            .get(0)
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_spool_ships_once_in_order_and_resumes_after_a_restart() {
        let pg = TestPostgres::start();
        let store = store(&pg).await;
        let dir = tempfile::tempdir().expect("scratch");
        let state = State::open(dir.path()).expect("state");
        let spool = state.db_path().to_path_buf();
        let ledger = SqliteLedger::open(&spool).expect("ledger");
        record(&ledger, 1, 2_500);

        let shipper = Shipper::new(store.clone(), &spool, "host-a")
            .await
            .expect("shipper");
        assert_eq!(shipper.shipped(), 0);
        let mut shipped = 0;
        loop {
            let n = shipper.ship_once().await.expect("ships");
            if n == 0 {
                break;
            }
            assert!(
                n <= crate::postgres::ledger::BATCH,
                "one batch per transaction"
            );
            shipped += n;
        }
        assert_eq!(shipped, 2_500);
        assert_eq!(rows(&store, "host-a").await, 2_500);
        assert_eq!(
            store.verify_host_chain("host-a").await.expect("verify"),
            Ok(2_500)
        );

        // A restarted host resumes after what the store holds, and ships
        // only what is new.
        record(&ledger, 2_501, 10);
        let restarted = Shipper::new(store.clone(), &spool, "host-a")
            .await
            .expect("shipper");
        assert_eq!(restarted.shipped(), 2_500);
        assert_eq!(restarted.ship_once().await.expect("ships"), 10);
        assert_eq!(rows(&store, "host-a").await, 2_510);
        assert_eq!(
            store.verify_host_chain("host-a").await.expect("verify"),
            Ok(2_510)
        );

        // A crash after the store committed but before the shipper knew:
        // shipping the same rows again adds nothing.
        let again = Shipper::new(store.clone(), &spool, "host-a")
            .await
            .expect("shipper");
        again
            .shipped_handle()
            .store(2_490, std::sync::atomic::Ordering::Release);
        assert_eq!(again.ship_once().await.expect("idempotent"), 20);
        assert_eq!(rows(&store, "host-a").await, 2_510);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_altered_chain_and_a_shared_host_id_are_named() {
        let pg = TestPostgres::start();
        let store = store(&pg).await;
        let (a, b) = (
            tempfile::tempdir().expect("a"),
            tempfile::tempdir().expect("b"),
        );
        let spools: Vec<_> = [a.path(), b.path()]
            .iter()
            .map(|dir| State::open(dir).expect("state").db_path().to_path_buf())
            .collect();
        for (i, spool) in spools.iter().enumerate() {
            let ledger = SqliteLedger::open(spool).expect("ledger");
            // Different rows in each spool.
            record(&ledger, 1 + i as u64 * 100, 5);
        }
        let first = Shipper::new(store.clone(), &spools[0], "same")
            .await
            .expect("shipper");
        assert_eq!(first.ship_once().await.expect("ships"), 5);
        // Another host with the same id: its rows differ from the store's.
        let second = Shipper::new(store.clone(), &spools[1], "same")
            .await
            .expect("shipper");
        second
            .shipped_handle()
            .store(0, std::sync::atomic::Ordering::Release);
        let err = second.ship_once().await.expect_err("diverged");
        assert!(matches!(err, PgError::Diverged { seq: 1, .. }), "{err}");
        assert!(err.to_string().contains("share the host id"), "{err}");

        // An edited row breaks the chain where it was edited.
        let client = store.client().await.expect("client");
        client
            .execute("UPDATE ledger SET plugin = 'other' WHERE seq = 3", &[])
            .await
            .expect("edit");
        assert_eq!(
            store.verify_host_chain("same").await.expect("verify"),
            Err(3)
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn rows_spooled_while_the_store_is_down_ship_when_it_is_back() {
        let pg = TestPostgres::start();
        let store = store(&pg).await;
        let dir = tempfile::tempdir().expect("scratch");
        let spool = State::open(dir.path())
            .expect("state")
            .db_path()
            .to_path_buf();
        let ledger = SqliteLedger::open(&spool).expect("ledger");
        let shipper = Shipper::new(store.clone(), &spool, "host-a")
            .await
            .expect("shipper");
        record(&ledger, 1, 3);
        assert_eq!(shipper.ship_once().await.expect("ships"), 3);
        pg.stop();
        // The host goes on acknowledging: its spool commits.
        record(&ledger, 4, 7);
        assert!(shipper.ship_once().await.is_err(), "the store is down");
        assert_eq!(shipper.shipped(), 3);
        pg.restart();
        let mut shipped = 0;
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        while shipper.shipped() < 10 {
            assert!(
                std::time::Instant::now() < deadline,
                "never shipped after the restart"
            );
            shipped += shipper.ship_once().await.unwrap_or(0);
        }
        assert_eq!(shipped, 7);
        assert_eq!(
            store.verify_host_chain("host-a").await.expect("verify"),
            Ok(10)
        );
    }
}

mod grants {
    //! Trust, installs, scopes and revocations in the shared store: the
    //! same refusals as a state directory, and tampering found on read.

    use super::*;
    use crate::StateError;
    use crate::state::ScopeError;
    use tollgate_license::issuer::IssuerError;

    fn now() -> u64 {
        SystemClock.now_secs()
    }

    fn signed(key: &IssuerKey, id: &str, seats: Seats) -> String {
        key.sign(LicenseTerms::new(id, seats), now())
            .expect("sign")
            .to_file_text()
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn only_signed_licenses_of_trusted_issuers_install() {
        let pg = TestPostgres::start();
        let s = store(&pg).await;
        let key = IssuerKey::generate().expect("key");
        let text = signed(&key, "demo", Seats::Counted(3));
        let untrusted = s.install_text(&text, now()).await.expect_err("untrusted");
        assert!(
            matches!(
                untrusted,
                PgError::Refused(StateError::Issuer(IssuerError::Untrusted(_)))
            ),
            "{untrusted}"
        );
        assert!(
            s.trust(&key.public(), Some("acme"), None, now())
                .await
                .expect("trust")
        );
        assert!(
            !s.trust(&key.public(), None, None, now())
                .await
                .expect("again")
        );
        let trusted = s.trusted().await.expect("trusted");
        assert_eq!(trusted.len(), 1);
        assert_eq!(
            (trusted[0].name.as_deref(), trusted[0].scope.clone()),
            (Some("acme"), vec!["*".to_string()])
        );

        let forged = text.replace("seats: 3", "seats: 300");
        assert_ne!(forged, text, "the license text names its seats");
        let refused = s.install_text(&forged, now()).await.expect_err("forged");
        assert!(
            matches!(
                refused,
                PgError::Refused(StateError::Issuer(IssuerError::BadSignature))
            ),
            "{refused}"
        );

        let installed = s.install_text(&text, now()).await.expect("install");
        assert!(installed.new && !installed.revoked);
        assert!(!s.install_text(&text, now()).await.expect("twice").new);
        let grants = s.seat_grants().await.expect("grants");
        let demo = &grants["demo"];
        assert_eq!(demo.len(), 1);
        assert_eq!(demo[0].terms.seats, Seats::Counted(3));
        assert!(!demo[0].revoked);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn scopes_hold_across_issuers_and_concurrent_installs() {
        let pg = TestPostgres::start();
        let s = store(&pg).await;
        let (acme, other) = (
            IssuerKey::generate().expect("key"),
            IssuerKey::generate().expect("key"),
        );
        s.trust(
            &acme.public(),
            Some("acme"),
            Some(&["acme-*".to_string()]),
            now(),
        )
        .await
        .expect("trust");
        s.trust(&other.public(), Some("other"), None, now())
            .await
            .expect("trust");
        let out = s
            .install_text(&signed(&acme, "render", Seats::Counted(1)), now())
            .await
            .expect_err("outside acme's scope");
        assert!(
            matches!(&out, PgError::Refused(StateError::Scope(e)) if matches!(**e, ScopeError::OutOfScope { .. })),
            "{out}"
        );
        // The default scope covers only ids no other issuer names.
        let claimed = s
            .install_text(&signed(&other, "acme-pro", Seats::Counted(1)), now())
            .await
            .expect_err("acme names it");
        assert!(
            matches!(claimed, PgError::Refused(StateError::Scope(_))),
            "{claimed}"
        );

        // Hosts install the same id from eight issuers at once: one wins.
        let mut installs = Vec::new();
        for i in 0..8 {
            let key = IssuerKey::generate().expect("key");
            s.trust(&key.public(), Some(&format!("issuer-{i}")), None, now())
                .await
                .expect("trust");
            let (s, text) = (s.clone(), signed(&key, "shared-id", Seats::Counted(1)));
            installs.push(tokio::spawn(
                async move { s.install_text(&text, now()).await },
            ));
        }
        let mut won = 0;
        for install in installs {
            match install.await.expect("task") {
                Ok(_) => won += 1,
                Err(PgError::Refused(StateError::Scope(_))) => {}
                Err(e) => panic!("{e}"),
            }
        }
        assert_eq!(won, 1, "exactly one issuer may grant shared-id");
        let b = signed(&acme, "acme-x", Seats::Counted(1));
        s.install_text(&b, now()).await.expect("in acme's scope");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn revocations_and_a_tampered_grant() {
        let pg = TestPostgres::start();
        let s = store(&pg).await;
        let g1 = install(&s, "demo", Seats::Counted(2)).await;
        let unknown = s.revoke("nope", now()).await.expect_err("unknown id");
        assert!(
            matches!(unknown, PgError::Refused(StateError::UnknownLicense(_))),
            "{unknown}"
        );
        s.revoke("demo", now()).await.expect("revoke");
        assert!(s.revocations().await.expect("read").contains_key("demo"));
        assert!(s.unrevoke("demo").await.expect("unrevoke"));
        assert!(!s.unrevoke("demo").await.expect("again"));
        assert_eq!(s.revoke_grant(&g1, now()).await.expect("grant"), "demo");
        assert!(s.seat_grants().await.expect("grants")["demo"][0].revoked);

        // Someone raises the seats in the database: the grant is refused
        // on read, naming what differs.
        let client = s.client().await.expect("client");
        client
            .execute("UPDATE grants SET seats = 50", &[])
            .await
            .expect("tamper");
        let refused = s.seat_grants().await.expect_err("tampered");
        assert!(
            matches!(&refused, PgError::GrantRefused { grant, .. } if *grant == g1),
            "{refused}"
        );
        assert!(
            refused.to_string().contains("column `seats` says 50"),
            "{refused}"
        );
    }
}

mod migrate {
    //! A single host's state directory moved into the shared store: whole,
    //! once, verified; refused with nothing written when it cannot be.

    use super::*;
    use crate::SqliteLedger;
    use crate::postgres::migrate::{MigrateError, Moved, SourceDir};
    use crate::state::{HostKey, State, UsageFilter};
    use std::path::Path;

    fn now() -> u64 {
        SystemClock.now_secs()
    }

    /// A state directory with issuer "acme" (scope `acme-*`), three grants
    /// (two of acme-a, one of acme-b), the second revoked alone, license
    /// acme-b revoked, and `rows` ledger rows.
    fn state_dir(rows: u64) -> (tempfile::TempDir, IssuerKey) {
        let dir = tempfile::tempdir().expect("scratch");
        let state = State::open(dir.path()).expect("state");
        let key = IssuerKey::generate().expect("issuer key");
        let ids = ["acme-*".to_string()];
        assert!(
            state
                .trust_scoped(&key.public(), Some("acme"), Some(&ids), now() - 50)
                .expect("trust")
        );
        let grant = |id: &str, seats: Seats, at: u64| {
            let text = key
                .sign(LicenseTerms::new(id, seats), at)
                .expect("sign")
                .to_file_text();
            state
                .install_text(&text, at)
                .expect("install")
                .grant
                .grant_id
        };
        grant("acme-a", Seats::Counted(2), now() - 40);
        let second = grant("acme-a", Seats::Counted(1), now() - 30);
        grant("acme-b", Seats::Unlimited, now() - 20);
        state
            .revoke_grant(&second, now() - 10)
            .expect("revoke grant");
        state.revoke("acme-b", now() - 5).expect("revoke");
        let ledger = SqliteLedger::open(state.db_path()).expect("ledger");
        super::shipping::record(&ledger, 1, rows);
        (dir, key)
    }

    /// Everything the store shows of what moved, as the state directory
    /// shows it.
    async fn same_as_the_state_dir(store: &PgStore, dir: &Path) {
        let state = State::open_read_only(dir).expect("state");
        assert_eq!(
            store.trusted().await.expect("trusted"),
            state.trusted().expect("trusted")
        );
        assert_eq!(
            store.grants().await.expect("grants"),
            state.grants().expect("grants")
        );
        assert_eq!(
            store.revocations().await.expect("revocations"),
            state.revocations().expect("revocations")
        );
        assert_eq!(
            store.grant_revocations().await.expect("grant revocations"),
            state.grant_revocations().expect("grant revocations")
        );
        let all = UsageFilter::default();
        assert_eq!(
            store.usage(&all).await.expect("usage"),
            state.usage(&all).expect("usage")
        );
        assert_eq!(
            store.seat_grants().await.expect("seat grants"),
            state.seat_grants().expect("seat grants")
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_state_dir_moves_whole_once_and_a_rerun_moves_nothing() {
        let pg = TestPostgres::start();
        let store = store(&pg).await;
        let (dir, _) = state_dir(1_500);
        assert!(HostKey::open(dir.path()).expect("key").is_none());
        let audit_before = State::open_read_only(dir.path())
            .expect("state")
            .audit()
            .expect("audit");

        let source = SourceDir::open(dir.path()).expect("source");
        let moved = store.migrate_from(&source).await.expect("migrate");
        drop(source);
        let host = HostKey::open(dir.path())
            .expect("key")
            .expect("made")
            .key_id();
        assert_eq!(moved.host_id, host);
        assert!(moved.host_key_made);
        let new = |n| Moved {
            moved: n,
            already: 0,
        };
        assert_eq!(
            (
                moved.issuers,
                moved.grants,
                moved.revocations,
                moved.grant_revocations,
                moved.rows
            ),
            (new(1), new(3), new(1), new(1), new(1_500))
        );
        assert_eq!(
            store.verify_host_chain(&host).await.expect("verify"),
            Ok(1_500)
        );
        same_as_the_state_dir(&store, dir.path()).await;
        let state = State::open_read_only(dir.path()).expect("state");
        assert_eq!(
            moved.head_hash,
            hex::encode(state.chain_hash_at(1_500).expect("head"))
        );
        assert_eq!(
            state.audit().expect("audit"),
            audit_before,
            "the source is unchanged"
        );

        // Again: nothing moves twice, and what was there is counted.
        let source = SourceDir::open(dir.path()).expect("source");
        let again = store.migrate_from(&source).await.expect("again");
        let there = |n| Moved {
            moved: 0,
            already: n,
        };
        assert!(!again.host_key_made);
        assert_eq!(
            (
                again.issuers,
                again.grants,
                again.revocations,
                again.grant_revocations,
                again.rows
            ),
            (there(1), there(3), there(1), there(1), there(1_500))
        );
        assert_eq!(again.head_hash, moved.head_hash);
        assert_eq!(
            store.ledger_hosts().await.expect("hosts"),
            vec![(host, 1_500)]
        );
        same_as_the_state_dir(&store, dir.path()).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_conflict_is_named_and_leaves_the_store_unchanged() {
        let pg = TestPostgres::start();
        let store = store(&pg).await;
        let (dir, key) = state_dir(5);
        // The store trusts the same key under another name.
        store
            .trust(&key.public(), Some("someone"), None, now())
            .await
            .expect("trust");
        let before = store.trusted().await.expect("trusted");
        let source = SourceDir::open(dir.path()).expect("source");
        let err = store.migrate_from(&source).await.expect_err("conflict");
        let shown = err.to_string();
        assert!(matches!(err, MigrateError::Conflict { .. }), "{shown}");
        assert!(
            shown.contains(&format!("issuer key {}", key.public().key_id())),
            "{shown}"
        );
        assert!(
            shown.contains("\"someone\"") && shown.contains("\"acme\""),
            "{shown}"
        );
        assert_eq!(store.trusted().await.expect("trusted"), before);
        assert!(store.grants().await.expect("grants").is_empty());
        assert!(store.ledger_hosts().await.expect("hosts").is_empty());

        // Another state directory with this one's host key but other rows:
        // the ledger conflicts, and nothing of it is written.
        let moved = tempfile::tempdir().expect("scratch");
        let copy = tempfile::tempdir().expect("scratch");
        for (d, first) in [(&moved, 1), (&copy, 100)] {
            let state = State::open(d.path()).expect("state");
            let ledger = SqliteLedger::open(state.db_path()).expect("ledger");
            super::shipping::record(&ledger, first, 3);
        }
        let source = SourceDir::open(moved.path()).expect("source");
        let first = store.migrate_from(&source).await.expect("migrate");
        std::fs::copy(
            moved.path().join(crate::state::HOST_KEY_FILE),
            copy.path().join(crate::state::HOST_KEY_FILE),
        )
        .expect("copy the host key");
        let source = SourceDir::open(copy.path()).expect("source");
        let err = store.migrate_from(&source).await.expect_err("conflict");
        let shown = err.to_string();
        assert!(
            shown.contains(&format!("ledger row 3 of host {}", first.host_id)),
            "{shown}"
        );
        assert_eq!(
            store
                .verify_host_chain(&first.host_id)
                .await
                .expect("verify"),
            Ok(3)
        );
        assert_eq!(store.ledger_hosts().await.expect("hosts").len(), 1);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_tampered_ledger_or_a_running_host_is_refused_before_anything_moves() {
        let pg = TestPostgres::start();
        let store = store(&pg).await;
        let (dir, _) = state_dir(10);

        let host = State::open(dir.path()).expect("state");
        let lock = host.lock_host().expect("a host runs");
        let err = SourceDir::open(dir.path()).expect_err("running");
        assert!(matches!(err, MigrateError::HostRunning(_)), "{err}");
        drop(lock);

        rusqlite::Connection::open(dir.path().join(crate::state::DB_FILE))
            .expect("db")
            .execute("UPDATE ledger SET plugin = 'other' WHERE seq = 4", [])
            .expect("tamper");
        let err = SourceDir::open(dir.path()).expect_err("tampered");
        let shown = err.to_string();
        assert!(matches!(err, MigrateError::ChainBroken { .. }), "{shown}");
        assert!(shown.contains("row 4 does not match its hash"), "{shown}");
        assert!(store.ledger_hosts().await.expect("hosts").is_empty());
        assert!(store.trusted().await.expect("trusted").is_empty());
    }
}

/// TLS to the store, against a server with TLS on and plain TCP refused.
mod tls_to_the_store {
    use super::*;

    /// Whether `store`'s connections use TLS, as the server sees them.
    async fn over_tls(store: &PgStore) -> bool {
        let client = store.client().await.expect("connection");
        client
            .query_one(
                "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
                &[],
            )
            .await
            .expect("pg_stat_ssl")
            .get(0)
    }

    /// A certificate authority named `name`.
    fn authority(name: &str) -> (rcgen::Certificate, rcgen::Issuer<'static, rcgen::KeyPair>) {
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("params");
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, name);
        let key = rcgen::KeyPair::generate().expect("key");
        let cert = params.self_signed(&key).expect("ca");
        (cert, rcgen::Issuer::new(params, key))
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn each_sslmode_connects_checks_or_refuses_as_postgres_clients_do() {
        let pg = TestPostgres::start();
        let (ca, issuer) = authority("tollgate test root");
        let (stranger, _) = authority("someone else's root");
        // The server's certificate names "localhost" only, not 127.0.0.1.
        let server_key = rcgen::KeyPair::generate().expect("key");
        let server = rcgen::CertificateParams::new(vec!["localhost".to_string()])
            .expect("params")
            .signed_by(&server_key, &issuer)
            .expect("server certificate");
        pg.enable_tls(&server.pem(), &server_key.serialize_pem(), true);
        let dir = tempfile::tempdir().expect("dir");
        let (root, other) = (dir.path().join("root.pem"), dir.path().join("other.pem"));
        std::fs::write(&root, ca.pem()).expect("write");
        std::fs::write(&other, stranger.pem()).expect("write");
        let at = |host: &str, query: String| {
            format!("postgres://postgres@{host}:{}/postgres?{query}", pg.port())
        };

        let rooted = |mode: &str, root: &std::path::Path| {
            format!("sslmode={mode}&sslrootcert={}", root.display())
        };
        // Host, TLS parameters, and what must happen: `None` connects over
        // TLS, `Some(text)` is refused with `text` in the error.
        let cases = [
            ("localhost", rooted("verify-full", &root), None),
            (
                "127.0.0.1",
                rooted("verify-full", &root),
                Some("not valid for name"),
            ),
            ("127.0.0.1", rooted("verify-ca", &root), None),
            (
                "localhost",
                rooted("verify-ca", &other),
                Some("UnknownIssuer"),
            ),
            // require checks the chain when a root is given, as libpq does
            (
                "localhost",
                rooted("require", &other),
                Some("UnknownIssuer"),
            ),
            ("127.0.0.1", "sslmode=require".to_string(), None),
            // prefer, the default, takes TLS when the server offers it
            ("127.0.0.1", String::new(), None),
            // the server refuses plain TCP
            (
                "127.0.0.1",
                "sslmode=disable".to_string(),
                Some("rejects connection"),
            ),
        ];
        for (host, query, refused) in cases {
            let url = at(host, query);
            match (PgStore::connect(&url, 2).await, refused) {
                (Ok(store), None) => assert!(over_tls(&store).await, "{url}: not over TLS"),
                (Err(e), Some(text)) => assert!(e.to_string().contains(text), "{url}: {e}"),
                (Ok(_), Some(text)) => {
                    panic!("{url} connected; expected a refusal naming {text:?}")
                }
                (Err(e), None) => panic!("{url}: {e}"),
            }
        }

        // Notifications come over a connection of their own, with TLS too.
        let full = at("localhost", rooted("verify-full", &root));
        let store = PgStore::connect(&full, 2).await.expect("verify-full");
        let mut heard = store.listen(&["tls_check"]).await.expect("listen over TLS");
        store
            .client()
            .await
            .expect("connection")
            .batch_execute("NOTIFY tls_check, 'over tls'")
            .await
            .expect("notify");
        let got = tokio::time::timeout(Duration::from_secs(5), heard.recv())
            .await
            .expect("heard in time");
        assert_eq!(got, Some(("tls_check".to_string(), "over tls".to_string())));
    }
}
