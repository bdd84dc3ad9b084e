//! Case I: the shared PostgreSQL store next to the SQLite state directory,
//! measured in one run against a throwaway PostgreSQL server
//! (`test-postgres`) with `pg_stat_statements` loaded.
//!
//! Shared hosts run in this process as `tollgate serve` wires them
//! (`tollgate-server`'s `shared.rs`): a state directory whose durable
//! ledger is the host's spool, the store's grants kept in step every
//! second, a `Batcher` leasing seat batches, a `Shipper` shipping the
//! spool every 200 ms. Each of the three connects as its own database role,
//! so that `pg_stat_statements` tells their work apart.
//!
//! Parts (`TOLLGATE_BENCH_I_PARTS=cost,dead,over,scale`, default all):
//! - cost: licensed calls on the SQLite state directory vs on the shared
//!   store (batch mode, spool + shipper), per call and throughput at 1 and
//!   2 threads, interleaved; the database's statements per call by role;
//! - dead: a host holding all 5 seats of a grant dies without handing them
//!   back; how long until another host holds all 5, at TTL 15 s and 3 s;
//! - over: 3 hosts run an early-releasing guest on one 5-seat grant; the
//!   shipped ledger of every host, replayed, gives the most seats held at
//!   once;
//! - scale: 1, 2 and 3 hosts calling at once: the database's statements,
//!   transactions and rows per second for seats, ledger and grants.

use super::{LICENSE, Plan, guest, median, per_call, ratio_with_spread, row, side_by_side_rounds};
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};
use test_postgres::TestPostgres;
use tokio::sync::watch;
use tollgate::license::issuer::{IssuerKey, LicenseTerms};
use tollgate::license::ledger::MemoryLedger;
use tollgate::license::{
    CallLimits, CallSeats, Clock, Entitlement, Holder, LicenseManager, ReclaimReason, SystemClock,
};
use tollgate::store::postgres::PgStore;
use tollgate::store::postgres::batches::{BatchSettings, Batcher};
use tollgate::store::postgres::ledger::Shipper;
use tollgate::{Host, Limits, PluginSpec, Seats};

/// The role the batcher connects as (seat leases, renewals, returns).
const ROLE_SEATS: &str = "bench_seats";
/// The role the shipper connects as (ledger rows).
const ROLE_LEDGER: &str = "bench_ledger";
/// The role that keeps the grants in step.
const ROLE_GRANTS: &str = "bench_grants";
/// Every role whose work is counted, in table order.
const ROLES: [(&str, &str); 3] = [
    (ROLE_SEATS, "seats"),
    (ROLE_LEDGER, "ledger"),
    (ROLE_GRANTS, "grants"),
];

/// How often a shared host reads the grants again (as `tollgate serve`).
const GRANTS_EVERY: Duration = Duration::from_secs(1);
/// How often the shipper looks for rows when it has none (as `tollgate serve`).
const SHIP_EVERY: Duration = Duration::from_millis(200);
/// The default seat batch TTL of `tollgate serve`.
const DEFAULT_TTL: Duration = Duration::from_secs(15);
/// Seats of the grant in the cost and scale parts: more than the callers,
/// so calls measure the batch path, not waiting.
const MANY_SEATS: u32 = 64;
/// Seats of the grant in the dead-host and over-commit parts.
const FEW_SEATS: u32 = 5;

const INPUT: &[u8] = b"work:16 the quick brown fox jumps over the lazy dog";

/// Runs the parts named in `TOLLGATE_BENCH_I_PARTS` (default all).
pub(crate) fn case_i(plan: &Plan) {
    let parts = std::env::var("TOLLGATE_BENCH_I_PARTS")
        .unwrap_or_else(|_| "cost,dead,over,scale".to_string());
    let wanted = |p: &str| parts.split(',').any(|w| w.trim() == p);
    let pg = Pg::start();
    if wanted("cost") {
        part_cost(plan, &pg);
    }
    if wanted("dead") {
        part_dead(&pg);
    }
    if wanted("over") {
        part_over(plan, &pg);
    }
    if wanted("scale") {
        part_scale(plan, &pg);
    }
}

/// A throwaway PostgreSQL server with `pg_stat_statements` and the roles,
/// and the runtime the shared hosts' background work runs on.
struct Pg {
    server: TestPostgres,
    rt: tokio::runtime::Runtime,
}

impl Pg {
    fn start() -> Self {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("bench-shared")
            .enable_all()
            .build()
            .expect("runtime");
        let server = TestPostgres::start();
        let pg = Self { server, rt };
        {
            let admin = pg.connect("postgres", "postgres");
            pg.rt
                .block_on(admin.batch_execute(
                    "ALTER SYSTEM SET shared_preload_libraries = 'pg_stat_statements'",
                ))
                .expect("load pg_stat_statements");
        }
        // The library loads at start.
        pg.server.stop();
        pg.server.restart();
        let admin = pg.connect("postgres", "postgres");
        for (role, _) in ROLES {
            pg.rt
                .block_on(admin.batch_execute(&format!("CREATE ROLE {role} LOGIN SUPERUSER")))
                .expect("create role");
        }
        pg
    }

    fn url(&self, role: &str, db: &str) -> String {
        format!("postgres://{role}@127.0.0.1:{}/{db}", self.server.port())
    }

    /// A plain connection as `role` to `db`.
    fn connect(&self, role: &str, db: &str) -> tokio_postgres::Client {
        let (client, connection) = self
            .rt
            .block_on(tokio_postgres::connect(
                &self.url(role, db),
                tokio_postgres::NoTls,
            ))
            .expect("connect to the bench database");
        self.rt.spawn(async move {
            let _ = connection.await;
        });
        client
    }

    /// A fresh database `name`, its schema migrated, with license `id` of
    /// `seats` signed by a new trusted issuer.
    fn database(&self, name: &str, id: &str, seats: Seats) -> Db<'_> {
        let server_admin = self.connect("postgres", "postgres");
        self.rt
            .block_on(server_admin.batch_execute(&format!("CREATE DATABASE {name}")))
            .expect("create database");
        let admin = self.connect("postgres", name);
        self.rt
            .block_on(admin.batch_execute("CREATE EXTENSION pg_stat_statements"))
            .expect("pg_stat_statements");
        let db = Db {
            pg: self,
            name: name.to_string(),
            admin,
            store: self.store(name, "postgres", 4),
        };
        let now = SystemClock.now_secs();
        let key = IssuerKey::generate().expect("issuer key");
        let license = key.sign(LicenseTerms::new(id, seats), now).expect("sign");
        self.rt.block_on(async {
            db.store
                .trust(&key.public(), None, None, now)
                .await
                .expect("trust");
            db.store
                .install_text(&license.to_file_text(), now)
                .await
                .expect("install");
        });
        db
    }

    fn store(&self, db: &str, role: &str, connections: usize) -> PgStore {
        self.rt
            .block_on(PgStore::connect(&self.url(role, db), connections))
            .expect("shared store")
    }
}

/// One database of the server, for one part.
struct Db<'a> {
    pg: &'a Pg,
    name: String,
    /// The bench's own connection (role `postgres`, not counted).
    admin: tokio_postgres::Client,
    /// The store as role `postgres`.
    store: PgStore,
}

/// What one role made the database do, from `pg_stat_statements`.
#[derive(Clone, Copy, Debug, Default)]
struct Work {
    /// Statements run (each a request from the client; `BEGIN` and
    /// `COMMIT` count as statements).
    statements: f64,
    /// Explicit transactions committed (`COMMIT` statements); statements
    /// outside them are transactions of their own and counted only above.
    commits: f64,
    /// Seat leases (each a transaction: a new batch or a renewal).
    leases: f64,
    /// Batches handed back.
    returns: f64,
    /// Ledger rows inserted.
    rows_shipped: f64,
    /// Time the server spent executing them (ms).
    exec_ms: f64,
    /// WAL they wrote (bytes).
    wal_bytes: f64,
}

impl std::ops::Sub for Work {
    type Output = Work;
    fn sub(self, o: Work) -> Work {
        Work {
            statements: self.statements - o.statements,
            commits: self.commits - o.commits,
            leases: self.leases - o.leases,
            returns: self.returns - o.returns,
            rows_shipped: self.rows_shipped - o.rows_shipped,
            exec_ms: self.exec_ms - o.exec_ms,
            wal_bytes: self.wal_bytes - o.wal_bytes,
        }
    }
}

impl Db<'_> {
    /// Work so far of each counted role in this database.
    fn work(&self) -> BTreeMap<String, Work> {
        let rows = self
            .pg
            .rt
            .block_on(self.admin.query(
                "SELECT r.rolname::text, s.query, s.calls, s.rows, s.total_exec_time,
                        s.wal_bytes::float8
                 FROM pg_stat_statements s JOIN pg_roles r ON r.oid = s.userid
                 WHERE s.dbid = (SELECT oid FROM pg_database WHERE datname = current_database())",
                &[],
            ))
            .expect("read pg_stat_statements");
        let mut all: BTreeMap<String, Work> = ROLES
            .iter()
            .map(|(role, _)| (role.to_string(), Work::default()))
            .collect();
        for r in rows {
            let role: String = r.get(0);
            let Some(w) = all.get_mut(&role) else {
                continue;
            };
            let query: String = r.get(1);
            let (calls, rows) = (r.get::<_, i64>(2) as f64, r.get::<_, i64>(3) as f64);
            let head = query.trim_start().to_ascii_uppercase();
            w.statements += calls;
            if head.starts_with("COMMIT") {
                w.commits += calls;
            }
            if query.contains("INSERT INTO seat_batch_log") {
                w.leases += calls;
            }
            if head.starts_with("DELETE FROM SEAT_BATCHES") {
                w.returns += calls;
            }
            if head.starts_with("INSERT INTO LEDGER") {
                w.rows_shipped += rows;
            }
            w.exec_ms += r.get::<_, f64>(4);
            w.wal_bytes += r.get::<_, Option<f64>>(5).unwrap_or(0.0);
        }
        all
    }

    fn query(
        &self,
        sql: &str,
        params: &[&(dyn tokio_postgres::types::ToSql + Sync)],
    ) -> Vec<tokio_postgres::Row> {
        self.pg
            .rt
            .block_on(self.admin.query(sql, params))
            .expect("bench query")
    }
}

/// `after - before`, role by role.
fn delta(
    after: &BTreeMap<String, Work>,
    before: &BTreeMap<String, Work>,
) -> BTreeMap<String, Work> {
    after
        .iter()
        .map(|(role, w)| {
            (
                role.clone(),
                *w - before.get(role).copied().unwrap_or_default(),
            )
        })
        .collect()
}

/// A future that completes once `stop` says so.
fn fired(stop: &watch::Sender<bool>) -> impl Future<Output = ()> + Send + 'static {
    let mut rx = stop.subscribe();
    async move {
        let _ = rx.wait_for(|fired| *fired).await;
    }
}

/// The batch settings of `tollgate serve` for `ttl` (margin a fifth of it).
fn settings(ttl: Duration) -> BatchSettings {
    BatchSettings {
        ttl,
        margin: ttl / 5,
        ..BatchSettings::default()
    }
}

/// A shared host in this process, as `tollgate serve` runs one.
struct SharedHost {
    id: String,
    host: Arc<Host>,
    stop: watch::Sender<bool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    shipped: Arc<AtomicU64>,
    _dir: tempfile::TempDir,
}

impl SharedHost {
    /// Host `id` on `db`, with its batches of `ttl` and the plugin `spec`.
    fn start(db: &Db, id: &str, ttl: Duration, spec: PluginSpec) -> Self {
        let rt = &db.pg.rt;
        let dir = tempfile::Builder::new()
            .prefix("tollgate-bench-i-")
            .tempdir()
            .expect("scratch dir");
        let host = Arc::new(
            Host::builder()
                .state(dir.path())
                .shared_seats()
                .build()
                .expect("shared host"),
        );
        let grants = db.pg.store(&db.name, ROLE_GRANTS, 2);
        rt.block_on(grants.apply_to(host.licenses()))
            .expect("the store's grants");
        host.load_plugin(spec).expect("plugin");
        let (stop, _) = watch::channel(false);
        let mut tasks = Vec::new();
        {
            let (licenses, stopped) = (host.licenses().clone(), fired(&stop));
            tasks.push(rt.spawn(async move {
                grants.keep_grants(licenses, GRANTS_EVERY, stopped).await;
            }));
        }
        let batcher = Batcher::new(
            db.pg.store(&db.name, ROLE_SEATS, 2),
            host.licenses().clone(),
            id,
            settings(ttl),
        );
        tasks.push(rt.spawn(batcher.run(fired(&stop))));
        let spool = host
            .state()
            .expect("state directory")
            .db_path()
            .to_path_buf();
        let shipper = rt
            .block_on(Shipper::new(
                db.pg.store(&db.name, ROLE_LEDGER, 2),
                &spool,
                id,
            ))
            .expect("shipper");
        let shipped = shipper.shipped_handle();
        tasks.push(rt.spawn(shipper.run(SHIP_EVERY, fired(&stop))));
        Self {
            id: id.to_string(),
            host,
            stop,
            tasks,
            shipped,
            _dir: dir,
        }
    }

    /// Calls this host has run.
    fn calls(&self) -> u64 {
        calls(&self.host)
    }

    /// Waits until the store holds every row of this host's spool.
    fn drain(&self) {
        let deadline = Instant::now() + Duration::from_secs(60);
        let last = self.host.ledger_stats().map_or(0, |s| s.last_seq);
        while self.shipped.load(Ordering::Acquire) < last {
            assert!(Instant::now() < deadline, "{}: spool not shipped", self.id);
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// Stops it as a server shuts down: the shipper ships what is left,
    /// the batcher hands its batches back.
    fn stop(self, rt: &tokio::runtime::Runtime) {
        self.stop.send_replace(true);
        for t in self.tasks {
            let _ = rt.block_on(t);
        }
    }
}

/// Invocations `host` has run.
fn calls(host: &Host) -> u64 {
    host.status().plugins.iter().map(|p| p.invocations).sum()
}

/// The licensed bench plugin, waiting up to 10 s for a seat (a shared
/// host's batch may have to grow first).
fn licensed_spec() -> PluginSpec {
    PluginSpec::file("licensed", guest("bench-licensed"))
        .requires(LICENSE)
        .limits(Limits {
            wait_for_seat: Some(Duration::from_secs(10)),
            ..Limits::default()
        })
}

/// Per call and throughput on the SQLite state directory and on the shared
/// store, interleaved; then the database's statements per shared call.
fn part_cost(plan: &Plan, pg: &Pg) {
    let db = pg.database("i_cost", LICENSE, Seats::Counted(MANY_SEATS));
    let scratch = tempfile::Builder::new()
        .prefix("tollgate-bench-i-sqlite-")
        .tempdir()
        .expect("scratch dir");
    let sqlite = super::durable_host_with(scratch.path(), Seats::Counted(MANY_SEATS));
    sqlite.load_plugin(licensed_spec()).expect("plugin");
    let shared = SharedHost::start(&db, "host-0", DEFAULT_TTL, licensed_spec());
    per_call(&shared.host, "licensed", INPUT, 50);
    per_call(&sqlite, "licensed", INPUT, 50);
    shared.drain();
    let (before, calls_before, started) = (db.work(), shared.calls(), Instant::now());
    let commits = |h: &Host| h.ledger_stats().map_or(0, |s| s.commits);
    let (spool_before, sqlite_before) = (commits(&shared.host), commits(&sqlite));
    let sqlite_calls_before = calls(&sqlite);

    let (s, q) = side_by_side_rounds(
        plan.rounds,
        || per_call(&shared.host, "licensed", INPUT, plan.calls),
        || per_call(&sqlite, "licensed", INPUT, plan.calls),
    );
    row(
        "I",
        "per call, shared PostgreSQL store (batch mode, spool + shipper) vs SQLite state dir, durable ledger (µs/call)",
        format!("{:.1}", median(s.clone())),
        format!("{:.1}", median(q.clone())),
        ratio_with_spread(&s, &q),
        "≤ 1.11 (= 1/0.9)",
    );
    for t in [1, 2] {
        let (s, q) = side_by_side_rounds(
            plan.rounds,
            || super::throughput(&shared.host, "licensed", INPUT, t, plan.window),
            || super::throughput(&sqlite, "licensed", INPUT, t, plan.window),
        );
        row(
            "I",
            &format!(
                "throughput, shared store (batch) vs SQLite state dir, {t} thread(s) (calls/s)"
            ),
            format!("{:.0}", median(s.clone())),
            format!("{:.0}", median(q.clone())),
            ratio_with_spread(&s, &q),
            "≥ 0.90",
        );
    }
    shared.drain();
    let work = delta(&db.work(), &before);
    let (n, secs) = (
        (shared.calls() - calls_before) as f64,
        started.elapsed().as_secs_f64(),
    );
    let sqlite_n = (calls(&sqlite) - sqlite_calls_before) as f64;
    row(
        "I",
        "local SQLite commits (fsyncs) per call over the runs above: shared host's spool vs state dir",
        format!("{:.2}", (commits(&shared.host) - spool_before) as f64 / n),
        format!(
            "{:.2}",
            (commits(&sqlite) - sqlite_before) as f64 / sqlite_n
        ),
        format!("{n:.0} / {sqlite_n:.0} calls"),
        "report",
    );
    for (role, label) in ROLES {
        let w = work[role];
        let detail = match label {
            "seats" => format!(
                "{:.0} leases + {:.0} returns in {secs:.0} s",
                w.leases, w.returns
            ),
            "ledger" => format!(
                "{:.2} rows/call, {:.0} rows/commit",
                w.rows_shipped / n,
                w.rows_shipped / w.commits.max(1.0)
            ),
            _ => format!("{:.1} statements/s", w.statements / secs),
        };
        row(
            "I",
            &format!(
                "shared store, database work per call, {label} (pg_stat_statements: statements / commits per call; {n:.0} calls)"
            ),
            format!("{:.4} / {:.5}", w.statements / n, w.commits / n),
            "0 (SQLite)".into(),
            detail,
            "report",
        );
    }
    shared.stop(&pg.rt);
}

/// A call of plugin `p` on `m` entitled to `id`.
fn call(m: &Arc<LicenseManager>, id: &str, invocation: u64, wait: Option<Duration>) -> CallSeats {
    m.call(
        Holder {
            plugin: "p".into(),
            component_digest: "d".into(),
            invocation,
        },
        Arc::new(Entitlement::to([id])),
        CallLimits {
            wait,
            max_leases: 4,
            max_acquires: 100,
        },
    )
}

/// A seat of `id` on `m`, waiting as `wait` says: the call holding it.
fn seat(
    m: &Arc<LicenseManager>,
    id: &str,
    invocation: u64,
    wait: Option<Duration>,
) -> Option<CallSeats> {
    let mut c = call(m, id, invocation, wait);
    c.acquire(id).ok().map(|_| c)
}

/// How host b asks for the dead host's seats.
#[derive(Clone, Copy)]
enum Asking {
    /// Refused calls try again every 10 ms (each refusal wakes b's batcher).
    Retrying,
    /// Five calls wait for a seat (b's batcher asks again at its renewals).
    Waiting,
}

/// A dead host's seats coming back, at the default TTL and a short one.
fn part_dead(pg: &Pg) {
    for ttl in [DEFAULT_TTL, Duration::from_secs(3)] {
        for asking in [Asking::Retrying, Asking::Waiting] {
            dead_host(pg, ttl, asking);
        }
    }
}

/// Host a holds all 5 seats and dies just after renewing its batch (the
/// worst case: its batch has a whole TTL left); times how long until host
/// b holds all 5.
fn dead_host(pg: &Pg, ttl: Duration, asking: Asking) {
    const ID: &str = "dead";
    let name = format!(
        "i_dead_{}_{}",
        ttl.as_secs(),
        match asking {
            Asking::Retrying => "retrying",
            Asking::Waiting => "waiting",
        }
    );
    let db = pg.database(&name, ID, Seats::Counted(FEW_SEATS));
    let manager = || {
        let m = Arc::new(LicenseManager::shared(
            Arc::new(MemoryLedger::default()),
            Arc::new(SystemClock),
        ));
        pg.rt.block_on(db.store.apply_to(&m)).expect("grants");
        m
    };
    let (a, b) = (manager(), manager());
    let (stop, _) = watch::channel(false);
    let batcher = |m: &Arc<LicenseManager>, id: &str| {
        pg.rt
            .spawn(Batcher::new(db.store.clone(), m.clone(), id, settings(ttl)).run(fired(&stop)))
    };
    let (dies, lives) = (batcher(&a, "host-a"), batcher(&b, "host-b"));
    let mut held = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    while held.len() < FEW_SEATS as usize {
        assert!(Instant::now() < deadline, "host a never held every seat");
        match seat(&a, ID, held.len() as u64, None) {
            Some(c) => held.push(c),
            None => std::thread::sleep(Duration::from_millis(5)),
        }
    }
    // Seconds host a's batch has left on the database's clock.
    let left = || -> f64 {
        db.query(
            "SELECT coalesce(max(extract(epoch FROM expires_at - clock_timestamp())), 0)::float8
             FROM seat_batches WHERE host_id = 'host-a'",
            &[],
        )[0]
        .get(0)
    };
    let mut last = left();
    loop {
        std::thread::sleep(Duration::from_millis(10));
        let now = left();
        if now > last + 0.05 {
            break;
        }
        last = now;
    }
    // Dies: no hand-back, no renewal; its calls never end.
    dies.abort();
    let died = Instant::now();
    let died_db: f64 =
        db.query("SELECT extract(epoch FROM clock_timestamp())::float8", &[])[0].get(0);
    let left_at_death = left();
    std::mem::forget(held);
    // Gives up after three TTLs and ten seconds: the row then says so.
    let patience = ttl * 3 + Duration::from_secs(10);
    let back = match asking {
        Asking::Retrying => {
            let mut taken = Vec::new();
            while taken.len() < FEW_SEATS as usize && died.elapsed() < patience {
                match seat(&b, ID, 100 + taken.len() as u64, None) {
                    Some(c) => taken.push(c),
                    None => std::thread::sleep(Duration::from_millis(10)),
                }
            }
            let back = (taken.len() == FEW_SEATS as usize).then(|| died.elapsed());
            for mut c in taken {
                c.end(ReclaimReason::InvocationEnded);
            }
            back
        }
        Asking::Waiting => {
            let all_held = Barrier::new(FEW_SEATS as usize);
            let latest = std::sync::Mutex::new(Some(Duration::ZERO));
            std::thread::scope(|s| {
                for i in 0..u64::from(FEW_SEATS) {
                    let (b, all_held, latest) = (&b, &all_held, &latest);
                    s.spawn(move || {
                        let got = seat(b, ID, 200 + i, Some(patience));
                        let at = died.elapsed();
                        {
                            let mut l = latest.lock().expect("latest");
                            *l = match (*l, &got) {
                                (Some(l), Some(_)) => Some(l.max(at)),
                                _ => None,
                            };
                        }
                        if let Some(mut c) = got {
                            all_held.wait();
                            c.end(ReclaimReason::InvocationEnded);
                        }
                    });
                }
            });
            latest.into_inner().expect("latest")
        }
    };
    stop.send_replace(true);
    let _ = pg.rt.block_on(lives);
    // Host b's leases after a died: how many, and the longest time without one.
    let leases: Vec<f64> = db
        .query(
            "SELECT extract(epoch FROM granted_at)::float8 FROM seat_batch_log
             WHERE host_id = 'host-b' AND granted_at >= to_timestamp($1) ORDER BY token",
            &[&died_db],
        )
        .iter()
        .map(|r| r.get(0))
        .collect();
    let longest_gap = leases
        .iter()
        .scan(died_db, |prev, &at| {
            let gap = at - *prev;
            *prev = at;
            Some(gap)
        })
        .fold(0.0, f64::max);
    let peak = batch_log_peak(&db, ID);
    let (how, expect) = match asking {
        Asking::Retrying => ("refused calls retried every 10 ms", "≈ batch's life left"),
        Asking::Waiting => (
            "5 calls waiting for a seat",
            "life left + ≤ TTL/3 (b's next renewal)",
        ),
    };
    row(
        "I",
        &format!(
            "dead host (held all {FEW_SEATS} seats, died right after renewing): until another host holds all {FEW_SEATS}, TTL {} s, margin {} s, {how} (s)",
            ttl.as_secs_f64(),
            settings(ttl).margin.as_secs_f64()
        ),
        back.map_or_else(
            || format!("not within {:.0}", patience.as_secs_f64()),
            |b| format!("{:.2}", b.as_secs_f64()),
        ),
        format!("{left_at_death:.2} left"),
        format!(
            "{}; b leased {}×, longest gap {longest_gap:.2} s; live batches ≤ {peak}",
            back.map_or_else(
                || "-".to_string(),
                |b| format!("{:+.2} s", b.as_secs_f64() - left_at_death)
            ),
            leases.len()
        ),
        expect,
    );
}

/// The most seats of license `id`'s grant in live batches at once, from
/// replaying the lease log in lease order (each host's batch is its latest
/// lease; between leases batches only expire).
fn batch_log_peak(db: &Db, id: &str) -> i64 {
    let log = db.query(
        "SELECT l.host_id, l.seats, extract(epoch FROM l.granted_at)::float8,
                extract(epoch FROM l.expires_at)::float8
         FROM seat_batch_log l JOIN grants g ON g.grant_id = l.grant_id
         WHERE g.license_id = $1 ORDER BY l.granted_at, l.token",
        &[&id],
    );
    let mut live: BTreeMap<String, (i64, f64)> = BTreeMap::new();
    let mut peak = 0;
    for r in &log {
        let (host, n, at, until): (String, i32, f64, f64) =
            (r.get(0), r.get(1), r.get(2), r.get(3));
        live.insert(host, (i64::from(n), until));
        let in_force: i64 = live
            .values()
            .filter(|(_, until)| *until > at)
            .map(|(n, _)| n)
            .sum();
        peak = peak.max(in_force);
    }
    peak
}

/// Three hosts, two callers each, on one 5-seat grant; the shipped ledger
/// replayed for the most seats held at once.
fn part_over(plan: &Plan, pg: &Pg) {
    const ID: &str = "early";
    const HOSTS: usize = 3;
    const CALLERS: usize = 2;
    let ttl = Duration::from_secs(3);
    let db = pg.database("i_over", ID, Seats::Counted(FEW_SEATS));
    let spec = || {
        PluginSpec::file("early", guest("early-release"))
            .requires(ID)
            .limits(Limits {
                wait_for_seat: Some(Duration::from_secs(5)),
                ..Limits::default()
            })
    };
    let hosts: Vec<SharedHost> = (0..HOSTS)
        .map(|i| SharedHost::start(&db, &format!("host-{i}"), ttl, spec()))
        .collect();
    let window = plan.window * 6;
    let stop = AtomicBool::new(false);
    let (served, refused) = (AtomicU64::new(0), AtomicU64::new(0));
    std::thread::scope(|s| {
        for h in &hosts {
            for _ in 0..CALLERS {
                let (host, stop, served, refused) = (&h.host, &stop, &served, &refused);
                s.spawn(move || {
                    while !stop.load(Ordering::Relaxed) {
                        // The guest takes its seat, sends it back at once
                        // and works 2 ms; the seat lingers to the end.
                        match host.invoke("early", b"2") {
                            Ok(_) => served.fetch_add(1, Ordering::Relaxed),
                            Err(_) => refused.fetch_add(1, Ordering::Relaxed),
                        };
                    }
                });
            }
        }
        std::thread::sleep(window);
        stop.store(true, Ordering::Relaxed);
    });
    let ids: Vec<String> = hosts.iter().map(|h| h.id.clone()).collect();
    let spooled: Vec<u64> = hosts
        .iter()
        .map(|h| h.host.ledger_stats().map_or(0, |s| s.last_seq))
        .collect();
    for h in hosts {
        h.stop(&pg.rt);
    }
    let mut chains_ok = 0;
    for (id, spooled) in ids.iter().zip(&spooled) {
        if let Ok(Ok(n)) = pg.rt.block_on(db.store.verify_host_chain(id))
            && n == *spooled
        {
            chains_ok += 1;
        }
    }
    let replay = replay_ledger(&db, ID);
    let batches_peak = batch_log_peak(&db, ID);
    let over = replay.peak.saturating_sub(i64::from(FEW_SEATS)).max(0);
    row(
        "I",
        &format!(
            "over-commit: {HOSTS} hosts × {CALLERS} callers on {FEW_SEATS} seats, early-release guest, TTL {} s, {:.1} s: most seats held at once, shipped ledger replayed",
            ttl.as_secs(),
            window.as_secs_f64()
        ),
        format!("{}", replay.peak),
        format!("{FEW_SEATS} seats"),
        format!("over-commit {over}; live batches ≤ {batches_peak}"),
        "0",
    );
    row(
        "I",
        "over-commit run: calls served / refused; rows replayed; chains verified (= spool); checkouts outside their batch (token, host, window); seats left held",
        format!(
            "{} / {}",
            served.load(Ordering::Relaxed),
            refused.load(Ordering::Relaxed)
        ),
        format!("{} rows", replay.rows),
        format!(
            "{chains_ok}/{HOSTS} chains; {} outside; {} left held",
            replay.outside, replay.left_held
        ),
        "all / 0 / 0",
    );
}

/// What replaying the shipped ledger found.
struct Replay {
    /// Rows replayed (checkouts and returns).
    rows: usize,
    /// The most seats held at once across hosts (an upper bound: each
    /// host's most within a millisecond, summed).
    peak: i64,
    /// Checkouts whose fencing token is not a batch of their host with
    /// seats, or whose time is outside that batch's window.
    outside: usize,
    /// Seats still held after the last row.
    left_held: i64,
}

/// Replays every host's shipped checkouts and returns of license `id`, in
/// each host's chain order: within a host the order is exact; across hosts
/// rows carry millisecond times, so each host counts with the most it held
/// during each millisecond.
fn replay_ledger(db: &Db, id: &str) -> Replay {
    let batches: BTreeMap<i64, (String, i32, f64, f64)> = db
        .query(
            "SELECT token, host_id, seats, extract(epoch FROM granted_at)::float8 * 1000,
                    extract(epoch FROM expires_at)::float8 * 1000
             FROM seat_batch_log",
            &[],
        )
        .iter()
        .map(|r| (r.get(0), (r.get(1), r.get(2), r.get(3), r.get(4))))
        .collect();
    let rows = db.query(
        "SELECT host_id, at_ms, kind, token, count FROM ledger
         WHERE license_id = $1 AND kind IN ('checkout', 'return')
         ORDER BY host_id, seq",
        &[&id],
    );
    // Per host: for each millisecond it moved seats in, the most it held
    // then and what it held at its end.
    let mut per_host: BTreeMap<String, BTreeMap<i64, (i64, i64)>> = BTreeMap::new();
    let mut held: BTreeMap<String, i64> = BTreeMap::new();
    let mut outside = 0;
    for r in &rows {
        let (host, at, kind, token, count): (String, i64, String, Option<i64>, i64) =
            (r.get(0), r.get(1), r.get(2), r.get(3), r.get(4));
        let now = held.entry(host.clone()).or_default();
        let before = *now;
        if kind == "checkout" {
            *now += count;
            let fenced =
                token
                    .and_then(|t| batches.get(&t))
                    .is_some_and(|(h, seats, from, until)| {
                        *h == host
                            && *seats > 0
                            && (at as f64) >= from.floor() - 1.0
                            && (at as f64) <= *until
                    });
            if !fenced {
                outside += 1;
            }
        } else {
            *now -= count;
        }
        let after = *now;
        let ms = per_host.entry(host).or_default();
        let slot = ms.entry(at).or_insert((before, after));
        slot.0 = slot.0.max(before).max(after);
        slot.1 = after;
    }
    let times: std::collections::BTreeSet<i64> =
        per_host.values().flat_map(|m| m.keys().copied()).collect();
    let mut current: BTreeMap<&str, i64> = BTreeMap::new();
    let mut peak = 0;
    for t in times {
        let mut sum = 0;
        for (host, ms) in &per_host {
            let end = current.entry(host.as_str()).or_default();
            match ms.get(&t) {
                Some((most, after)) => {
                    sum += most;
                    *end = *after;
                }
                None => sum += *end,
            }
        }
        peak = peak.max(sum);
    }
    Replay {
        rows: rows.len(),
        peak,
        outside,
        left_held: held.values().sum(),
    }
}

/// 1, 2 and 3 hosts calling at once: the database's work per second, per
/// host and per call, for seats, ledger and grants.
fn part_scale(plan: &Plan, pg: &Pg) {
    // One TTL (15 s) in a full run: each host renews about three times.
    let window = plan.window * 10;
    for n in 1..=3usize {
        let db = pg.database(&format!("i_scale_{n}"), LICENSE, Seats::Counted(MANY_SEATS));
        let hosts: Vec<SharedHost> = (0..n)
            .map(|i| SharedHost::start(&db, &format!("host-{i}"), DEFAULT_TTL, licensed_spec()))
            .collect();
        for h in &hosts {
            per_call(&h.host, "licensed", INPUT, 50);
            h.drain();
        }
        let before = db.work();
        let calls_before: u64 = hosts.iter().map(SharedHost::calls).sum();
        let started = Instant::now();
        let stop = AtomicBool::new(false);
        std::thread::scope(|s| {
            for h in &hosts {
                let (host, stop) = (&h.host, &stop);
                s.spawn(move || {
                    while !stop.load(Ordering::Relaxed) {
                        host.invoke("licensed", INPUT).expect("bench call succeeds");
                    }
                });
            }
            std::thread::sleep(window);
            stop.store(true, Ordering::Relaxed);
        });
        let secs = started.elapsed().as_secs_f64();
        let work = delta(&db.work(), &before);
        let calls = (hosts.iter().map(SharedHost::calls).sum::<u64>() - calls_before) as f64;
        let (per_s, hosts_f) = (calls / secs, n as f64);
        row(
            "I",
            &format!(
                "scale, {n} host(s) × 1 caller, TTL 15 s, {secs:.1} s: calls/s per host / in all"
            ),
            format!("{:.0}", per_s / hosts_f),
            format!("{per_s:.0}"),
            "-".into(),
            "report",
        );
        for (role, label) in ROLES {
            let w = work[role];
            let rate = |x: f64| x / secs;
            let (what, mine, all, per_call) = match label {
                "seats" => (
                    "seats: leases / statements / commits per s",
                    format!(
                        "{:.2} / {:.2} / {:.2}",
                        rate(w.leases) / hosts_f,
                        rate(w.statements) / hosts_f,
                        rate(w.commits) / hosts_f
                    ),
                    format!(
                        "{:.2} / {:.2} / {:.2}",
                        rate(w.leases),
                        rate(w.statements),
                        rate(w.commits)
                    ),
                    format!(
                        "{:.5} leases, {:.5} statements per call; {:.2} ms exec per lease",
                        w.leases / calls,
                        w.statements / calls,
                        w.exec_ms / w.leases.max(1.0)
                    ),
                ),
                "ledger" => (
                    "ledger: rows / statements / commits per s",
                    format!(
                        "{:.0} / {:.0} / {:.1}",
                        rate(w.rows_shipped) / hosts_f,
                        rate(w.statements) / hosts_f,
                        rate(w.commits) / hosts_f
                    ),
                    format!(
                        "{:.0} / {:.0} / {:.1}",
                        rate(w.rows_shipped),
                        rate(w.statements),
                        rate(w.commits)
                    ),
                    format!(
                        "{:.2} rows, {:.2} statements per call; {:.0} rows/commit; {:.3} ms exec, {:.0} B WAL per row",
                        w.rows_shipped / calls,
                        w.statements / calls,
                        w.rows_shipped / w.commits.max(1.0),
                        w.exec_ms / w.rows_shipped.max(1.0),
                        w.wal_bytes / w.rows_shipped.max(1.0)
                    ),
                ),
                _ => (
                    "grants kept in step: statements per s",
                    format!("{:.1}", rate(w.statements) / hosts_f),
                    format!("{:.1}", rate(w.statements)),
                    format!(
                        "{:.4} statements per call; {:.2} ms exec per s",
                        w.statements / calls,
                        rate(w.exec_ms)
                    ),
                ),
            };
            row(
                "I",
                &format!("scale, {n} host(s), {what} (per host / in all)"),
                mine,
                all,
                per_call,
                "report",
            );
        }
        for h in hosts {
            h.stop(&pg.rt);
        }
    }
}
