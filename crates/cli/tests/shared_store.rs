//! Several `tollgate serve` processes on one PostgreSQL database. They
//! share one license's seats exactly, judged by the guest's own times and
//! by replaying the shared ledger against the batches its fencing tokens
//! name, not by the hosts' counters; a host killed with `kill -9` leaves
//! its seats to the others within the batch TTL; a store stopped or hung
//! under load costs no seat and no acknowledged row; a revocation made once
//! reaches every host.

use std::collections::HashMap;
use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use test_postgres::TestPostgres;

mod common;

use common::*;

/// The batch TTL the hosts run with (they stop using a batch a fifth of
/// it sooner).
const TTL: Duration = Duration::from_secs(3);

/// The seats of license `demo`.
const SEATS: usize = 5;
/// Trusts a new issuer in the store at `url` and installs its license
/// `demo` of `seats` there, from `root`.
fn install_shared(root: &Path, url: &str, seats: &str) {
    let p = |n: &str| root.join(n).to_string_lossy().into_owned();
    let ok = |args: &[&str]| {
        let out = tg(root, args);
        assert!(
            out.status.success(),
            "{args:?}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    ok(&["issuer", "keygen", "--out", &p("keys")]);
    let trusted = ok(&["trust", "add", "--store", url, &p("keys/issuer.pub")]);
    assert!(trusted.contains("the shared store now trusts"), "{trusted}");
    // The issuer's scope, set on the store.
    let listed = ok(&["trust", "list", "--store", url, "--json"]);
    let issuers: serde_json::Value = serde_json::from_str(&listed).expect("json");
    let name = issuers[0]["name"]
        .as_str()
        .expect("issuer name")
        .to_string();
    let scoped = ok(&[
        "trust", "scope", "--store", url, &name, "--ids", "demo", "demo-*",
    ]);
    assert!(
        scoped.contains("[demo, demo-*]") && scoped.contains("shared store"),
        "{scoped}"
    );
    sign_demo(root, seats);
    let installed = ok(&["license", "install", "--store", url, &p("demo.license")]);
    assert!(installed.contains("installed license demo"), "{installed}");
    let listed = ok(&["license", "list", "--store", url]);
    assert!(
        listed
            .lines()
            .nth(1)
            .is_some_and(|l| l.starts_with("demo ")),
        "{listed}"
    );
    // Commands that read a state directory only say so.
    let status = tg(root, &["audit", "checkpoint", "--store", url]);
    assert_eq!(status.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&status.stderr).contains("works on a state directory only"),
        "{}",
        String::from_utf8_lossy(&status.stderr)
    );
}

/// A `tollgate serve` process on the shared store, with its host id.
struct Host {
    server: Server,
    id: String,
}

/// Starts `tollgate serve` for host `name` under `root/name`, on the shared
/// store at `url`, with plugin `early` requiring `demo`.
fn shared_host(root: &Path, url: &str, name: &str) -> Host {
    shared_host_with(root, url, name, "")
        .unwrap_or_else(|e| panic!("host {name} did not start: {e}"))
}

/// [`shared_host`] with `extra` config lines after the plugin (such as a
/// `[license.demo]` table): the host, or why it did not start.
fn shared_host_with(root: &Path, url: &str, name: &str, extra: &str) -> Result<Host, String> {
    shared_host_on(
        root,
        url,
        name,
        extra,
        "listen = \"127.0.0.1:0\"",
        Command::new(BIN),
    )
}

/// [`shared_host_with`], with `top` as its first config lines (where it
/// listens) and started through `command` (the binary, or a wrapper that
/// execs it).
fn shared_host_on(
    root: &Path,
    url: &str,
    name: &str,
    extra: &str,
    top: &str,
    command: Command,
) -> Result<Host, String> {
    let dir = root.join(name);
    std::fs::create_dir_all(&dir).expect("host dir");
    std::fs::write(dir.join("admin.token"), TOKEN).expect("token");
    let config = format!(
        "{top}\nstate = \"state\"\nstore = {url:?}\nseat_batch_ttl = \"{}s\"\n\
         admin_token_file = \"admin.token\"\n\
         [[plugin]]\nname = \"early\"\ncomponent = {:?}\nrequires = [\"demo\"]\n\
         wait_for_seat = \"10s\"\ntime_limit = \"20s\"\n{extra}",
        TTL.as_secs(),
        guest("early-release")
    );
    std::fs::write(dir.join("tollgate.toml"), config).expect("config");
    let server = Server::spawn(&dir, command, &["--log-format", "json"])?;
    let id = tollgate_store::state::HostKey::open(&dir.join("state"))
        .expect("host key readable")
        .expect("a host on a shared store has a host key")
        .key_id();
    let host = Host { server, id };
    // Ready once its first round with the store is done, as a load
    // balancer would wait for.
    assert!(
        wait_until(Duration::from_secs(20), || ready(&host)),
        "host {name} never became ready: {}",
        std::fs::read_to_string(dir.join("serve.log")).unwrap_or_default()
    );
    Ok(host)
}

/// A call as its client saw it.
#[derive(Debug)]
struct Outcome {
    /// Index of the host called.
    host: usize,
    /// HTTP status; 0 when no response came (the host died).
    status: u16,
    /// The error code of a refusal.
    code: String,
    /// The guest's `(start, end)` in wall-clock nanoseconds, when delivered.
    span: Option<(u128, u128)>,
    /// The invocation id the host acknowledged the call under.
    invocation: Option<u64>,
    /// When the client sent it.
    sent: Instant,
}

/// Calls `early` on `host` for `work_ms` of work.
fn call(host: &Host, index: usize, work_ms: u64) -> Outcome {
    let sent = Instant::now();
    let mut outcome = Outcome {
        host: index,
        status: 0,
        code: String::new(),
        span: None,
        invocation: None,
        sent,
    };
    let url = format!("{}/v1/plugins/early/invoke", host.server.base);
    let mut response = match host
        .server
        .agent
        .post(url)
        .send(work_ms.to_string().as_bytes())
    {
        Ok(response) => response,
        Err(e) => {
            outcome.code = e.to_string();
            return outcome;
        }
    };
    outcome.status = response.status().as_u16();
    outcome.invocation = response
        .headers()
        .get(tollgate_server::INVOCATION_HEADER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok());
    let Ok(body) = response.body_mut().read_to_string() else {
        outcome.status = 0;
        return outcome;
    };
    if outcome.status == 200 {
        let (a, b) = body.split_once(' ').expect("START END");
        outcome.span = Some((a.parse().expect("start"), b.parse().expect("end")));
    } else {
        outcome.code = code(&body);
    }
    outcome
}

/// Runs `clients` clients on each of `hosts`, each calling back to back,
/// while `during` runs (it sees how many calls were delivered so far);
/// what `during` returned and every call's outcome.
fn under_load<T>(
    hosts: &[(usize, &Host)],
    clients: usize,
    work_ms: u64,
    during: impl FnOnce(&AtomicUsize) -> T,
) -> (T, Vec<Outcome>) {
    let stop = AtomicBool::new(false);
    let delivered = AtomicUsize::new(0);
    std::thread::scope(|scope| {
        let workers: Vec<_> = hosts
            .iter()
            .flat_map(|&(i, h)| std::iter::repeat_n((i, h), clients))
            .map(|(i, h)| {
                let (stop, delivered) = (&stop, &delivered);
                scope.spawn(move || {
                    let mut seen = Vec::new();
                    while !stop.load(Ordering::Relaxed) {
                        let outcome = call(h, i, work_ms);
                        if outcome.status == 200 {
                            delivered.fetch_add(1, Ordering::Relaxed);
                        } else if outcome.status == 503 {
                            // A client that heeds `Retry-After`, briefly.
                            std::thread::sleep(Duration::from_millis(20));
                        }
                        seen.push(outcome);
                    }
                    seen
                })
            })
            .collect();
        // The clients stop even when `during` fails, so that a failed
        // check fails the test instead of leaving it waiting for them.
        let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| during(&delivered)));
        stop.store(true, Ordering::Relaxed);
        let result = result.unwrap_or_else(|failed| std::panic::resume_unwind(failed));
        let outcomes = workers
            .into_iter()
            .flat_map(|w| w.join().expect("client"))
            .collect();
        (result, outcomes)
    })
}

/// Each of `hosts` runs `clients` clients of `calls` calls each.
fn fixed_load(
    hosts: &[(usize, &Host)],
    clients: usize,
    calls: usize,
    work_ms: u64,
) -> Vec<Outcome> {
    std::thread::scope(|scope| {
        let workers: Vec<_> = hosts
            .iter()
            .flat_map(|&(i, h)| std::iter::repeat_n((i, h), clients))
            .map(|(i, h)| {
                scope.spawn(move || (0..calls).map(|_| call(h, i, work_ms)).collect::<Vec<_>>())
            })
            .collect();
        workers
            .into_iter()
            .flat_map(|w| w.join().expect("client"))
            .collect()
    })
}

/// The most spans running at any one moment.
fn most_at_once<T: Ord + Copy>(spans: &[(T, T)]) -> usize {
    let mut edges: Vec<(T, i32)> = spans.iter().flat_map(|&(a, b)| [(a, 1), (b, -1)]).collect();
    // An end before a start at the same instant: touching is not overlapping.
    edges.sort_unstable();
    let (mut now, mut most) = (0i32, 0i32);
    for (_, step) in edges {
        now += step;
        most = most.max(now);
    }
    usize::try_from(most).unwrap_or(0)
}

/// The delivered calls' spans.
fn spans(outcomes: &[Outcome]) -> Vec<(u128, u128)> {
    outcomes.iter().filter_map(|o| o.span).collect()
}

/// The shared ledger replayed against the seat batches.
#[derive(Debug)]
struct Replay {
    /// `(host id, invocation id)` of every checkout.
    checkouts: std::collections::HashSet<(String, u64)>,
    /// The most seats held at once over all hosts, a seat held from its
    /// checkout to its return (or, on a host that never returned it, to
    /// the end of that host's last batch of the grant).
    peak: usize,
    /// Checkouts whose fencing token names no batch of that host and
    /// grant in force at the time.
    unfenced: Vec<String>,
}

/// Reads every host's shipped rows and the batch log from the store at
/// `url` and replays the seats.
fn replay(url: &str) -> Replay {
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    rt.block_on(async {
        let (client, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls)
            .await
            .expect("connect to the store");
        tokio::spawn(connection);
        let batches: HashMap<i64, (String, String, i64, i64)> = client
            .query(
                "SELECT token, host_id, grant_id,
                        (extract(epoch FROM granted_at) * 1000)::bigint,
                        (extract(epoch FROM expires_at) * 1000)::bigint
                 FROM seat_batch_log",
                &[],
            )
            .await
            .expect("batch log")
            .iter()
            .map(|r| (r.get(0), (r.get(1), r.get(2), r.get(3), r.get(4))))
            .collect();
        let rows = client
            .query(
                "SELECT host_id, seq, at_ms, kind, seat_id, grant_id, token, invocation_id
                 FROM ledger WHERE kind IN ('checkout', 'return') AND grant_id IS NOT NULL
                 ORDER BY host_id, seq",
                &[],
            )
            .await
            .expect("ledger");
        let mut checkouts = std::collections::HashSet::new();
        let mut unfenced = Vec::new();
        let mut open: HashMap<(String, i64), (i64, String)> = HashMap::new();
        let mut held: Vec<(i64, i64)> = Vec::new();
        for r in &rows {
            let (host, seq, at): (String, i64, i64) = (r.get(0), r.get(1), r.get(2));
            let (kind, seat, grant): (String, Option<i64>, String) = (r.get(3), r.get(4), r.get(5));
            let seat = seat.expect("a seat row names its seat");
            if kind == "checkout" {
                checkouts.insert((host.clone(), u64::try_from(r.get::<_, i64>(7)).expect("id")));
                let token: Option<i64> = r.get(6);
                let fenced = token
                    .and_then(|t| batches.get(&t))
                    .is_some_and(|(h, g, from, to)| {
                        *h == host && *g == grant && *from <= at + 1 && at < *to
                    });
                if !fenced {
                    unfenced.push(format!("host {host} row {seq} at {at} token {token:?}"));
                }
                open.insert((host, seat), (at, grant));
            } else if let Some((from, _)) = open.remove(&(host, seat)) {
                held.push((from, at));
            }
        }
        // A seat its host never returned (the host died): held until that
        // host's last batch of the grant ended in the store.
        for ((host, _), (from, grant)) in open {
            let until = batches
                .values()
                .filter(|(h, g, _, _)| *h == host && *g == grant)
                .map(|b| b.3)
                .max()
                .expect("a checkout under some batch");
            held.push((from, until));
        }
        Replay {
            checkouts,
            peak: most_at_once(&held),
            unfenced,
        }
    })
}

/// Waits until every host shipped its ledger, then checks the replay:
/// no more than the seats held at once, every checkout fenced by a batch
/// of its host, and every call a host acknowledged in the shared ledger.
fn check_ledger(url: &str, hosts: &[&Host], outcomes: &[Outcome]) -> Replay {
    for h in hosts {
        let shipped = wait_until(Duration::from_secs(15), || {
            h.server
                .metrics()
                .value("tollgate_ledger_unshipped_rows", &[])
                == Some(0.0)
        });
        assert!(shipped, "host {} did not ship its ledger within 15 s", h.id);
    }
    let replay = replay(url);
    assert!(
        replay.unfenced.is_empty(),
        "checkouts outside their batch: {:?}",
        replay.unfenced
    );
    assert!(
        replay.peak <= SEATS,
        "the shared ledger holds {} seats at once of {SEATS}",
        replay.peak
    );
    for o in outcomes.iter().filter(|o| o.status == 200) {
        let id = o.invocation.expect("a delivered call names its invocation");
        assert!(
            replay.checkouts.contains(&(hosts[o.host].id.clone(), id)),
            "call {id} acknowledged by host {} is not in the shared ledger",
            hosts[o.host].id
        );
    }
    replay
}

/// Whether `host` says it is ready.
fn ready(host: &Host) -> bool {
    host.server.admin("GET", "/readyz", None, None).0 == 200
}

/// A store and a scratch dir with license `demo` of [`SEATS`] seats in it.
fn shared_setup(tag: &str) -> (TestPostgres, tempfile::TempDir) {
    let pg = TestPostgres::start();
    let scratch = tempfile::Builder::new()
        .prefix(tag)
        .tempdir()
        .expect("scratch");
    install_shared(scratch.path(), &pg.url(), &SEATS.to_string());
    (pg, scratch)
}

#[test]
fn three_hosts_share_five_seats_exactly_and_a_revocation_on_one_reaches_all() {
    let (pg, scratch) = shared_setup("tollgate-shared-");
    let (url, root) = (pg.url(), scratch.path());
    let hosts = [
        shared_host(root, &url, "a"),
        shared_host(root, &url, "b"),
        shared_host(root, &url, "c"),
    ];
    let each: Vec<(usize, &Host)> = hosts.iter().enumerate().collect();

    // 12 clients, 4 on each host, with a guest that sends its license back
    // early: the delivered calls never overlap more than the 5 seats.
    let outcomes = fixed_load(&each, 4, 6, 4);
    let spans = spans(&outcomes);
    assert!(
        spans.len() >= 40,
        "only {} calls delivered: {outcomes:?}",
        spans.len()
    );
    let most = most_at_once(&spans);
    eprintln!("{} calls delivered, at most {most} at once", spans.len());
    assert!(
        most <= SEATS,
        "{most} delivered calls ran at once on {SEATS} seats"
    );
    assert!(most >= 2, "the hosts never ran calls together");
    let by_host: Vec<usize> = (0..3)
        .map(|i| {
            outcomes
                .iter()
                .filter(|o| o.host == i && o.status == 200)
                .count()
        })
        .collect();
    assert!(
        by_host.iter().all(|&n| n > 0),
        "a host delivered nothing: {by_host:?}: {:?}",
        outcomes
            .iter()
            .filter(|o| o.status != 200)
            .collect::<Vec<_>>()
    );

    // The shared ledger, replayed, agrees; each host's chain is whole.
    let hosts_ref: Vec<&Host> = hosts.iter().collect();
    let replay = check_ledger(&url, &hosts_ref, &outcomes);
    eprintln!(
        "the shared ledger holds at most {} seats at once",
        replay.peak
    );
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let store = rt
        .block_on(tollgate_store::postgres::PgStore::connect(&url, 1))
        .expect("store");
    let ledger = rt.block_on(store.ledger_hosts()).expect("ledger");
    assert_eq!(ledger.len(), 3, "{ledger:?}");
    for (host, rows) in &ledger {
        let verified = rt.block_on(store.verify_host_chain(host)).expect("verify");
        assert_eq!(verified, Ok(*rows), "host {host}");
    }
    // Status on the store: the hosts' batches of the one grant, within
    // its seats, and nothing in use once the calls are over.
    let status = tg(root, &["status", "--store", &url, "--json"]);
    assert!(
        status.status.success(),
        "{}",
        String::from_utf8_lossy(&status.stderr)
    );
    let grants: serde_json::Value = serde_json::from_slice(&status.stdout).expect("json");
    let demo = &grants[0];
    assert_eq!(
        (demo["license_id"].as_str(), demo["seats"].as_u64()),
        (Some("demo"), Some(5))
    );
    let shares = demo["hosts"].as_array().expect("hosts");
    let batched: u64 = shares.iter().filter_map(|h| h["batch"].as_u64()).sum();
    let in_use: u64 = shares.iter().filter_map(|h| h["in_use"].as_u64()).sum();
    assert!(batched <= 5, "{grants}");
    assert_eq!(in_use, 0, "{grants}");
    // Usage over every host: a checkout per delivered call.
    let usage = tg(root, &["usage", "--store", &url, "--format", "json"]);
    assert!(
        usage.status.success(),
        "{}",
        String::from_utf8_lossy(&usage.stderr)
    );
    let rows: serde_json::Value = serde_json::from_slice(&usage.stdout).expect("json");
    let checkouts: u64 = rows
        .as_array()
        .expect("rows")
        .iter()
        .filter_map(|r| r["checkouts"].as_u64())
        .sum();
    assert_eq!(checkouts, replay.checkouts.len() as u64, "{rows}");
    assert!(checkouts >= spans.len() as u64, "{rows}");
    let audit = tg(root, &["audit", "verify", "--store", &url]);
    let shown = String::from_utf8_lossy(&audit.stdout);
    assert!(audit.status.success(), "{shown}");
    assert_eq!(shown.matches("chain verified").count(), 3, "{shown}");

    // A revocation made once, through one host's admin API, reaches every
    // host within 2 s.
    let (st, body) = hosts[0].server.admin(
        "POST",
        "/v1/admin/licenses/demo/revoke",
        Some(""),
        Some(TOKEN),
    );
    assert_eq!(st, 200, "{body}");
    let revoked_at = Instant::now();
    for h in &hosts {
        let reached = wait_until(
            Duration::from_secs(2).saturating_sub(revoked_at.elapsed()),
            || code(&h.server.invoke("early", b"1").1) == "revoked",
        );
        assert!(
            reached,
            "the revocation did not reach host {} within 2 s",
            h.id
        );
    }
    let status = tg(root, &["status", "--store", &url, "--json"]);
    let grants: serde_json::Value = serde_json::from_slice(&status.stdout).expect("json");
    assert_eq!(grants[0]["revoked"], true, "{grants}");
    let a_id = hosts[0].id.clone();
    for h in hosts {
        assert!(h.server.terminate().success());
    }

    // A checkpoint host a signed of its own ledger vouches for its chain in
    // the store; once the store's chain is cut short, it says so.
    let state_a = root.join("a/state").to_string_lossy().into_owned();
    let file = root.join("a.checkpoint").to_string_lossy().into_owned();
    let made = tg(
        root,
        &["audit", "checkpoint", "--state", &state_a, "--out", &file],
    );
    assert!(
        made.status.success(),
        "{}",
        String::from_utf8_lossy(&made.stderr)
    );
    let verify = || {
        tg(
            root,
            &["audit", "verify", "--store", &url, "--checkpoint", &file],
        )
    };
    let verified = verify();
    let shown = String::from_utf8_lossy(&verified.stdout).into_owned();
    assert!(verified.status.success(), "{shown}");
    assert!(shown.contains("checkpoint verified"), "{shown}");
    let seq = tollgate_store::state::Checkpoint::read(Path::new(&file))
        .expect("checkpoint")
        .seq;
    rt.block_on(async {
        let (client, connection) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
            .await
            .expect("connect");
        tokio::spawn(connection);
        client
            .execute(
                "DELETE FROM ledger WHERE host_id = $1 AND seq >= $2",
                &[&a_id, &i64::try_from(seq).expect("seq")],
            )
            .await
            .expect("cut the chain short");
    });
    let cut = verify();
    let shown = String::from_utf8_lossy(&cut.stdout).into_owned();
    assert_eq!(cut.status.code(), Some(5), "{shown}");
    assert!(
        shown.contains("checkpoint FAILED") && shown.contains("behind the checkpoint's row"),
        "{shown}"
    );
}

#[test]
fn a_host_killed_holding_every_seat_leaves_them_to_the_others_within_the_ttl() {
    let (pg, scratch) = shared_setup("tollgate-shared-kill-");
    let (url, root) = (pg.url(), scratch.path());
    let hosts = [
        shared_host(root, &url, "a"),
        shared_host(root, &url, "b"),
        shared_host(root, &url, "c"),
    ];
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let store = rt
        .block_on(tollgate_store::postgres::PgStore::connect(&url, 1))
        .expect("store");
    let batch_of = |host: &str| -> u32 {
        let grants = rt.block_on(store.shared_status()).expect("status");
        grants[0]
            .hosts
            .iter()
            .filter(|h| h.host == host)
            .map(|h| h.batch)
            .sum()
    };
    // Host a's clients take every seat for long calls; then it is killed
    // with them in flight.
    let victim = hosts[0].id.clone();
    let (killed_at, outcomes) = {
        let a = [(0, &hosts[0])];
        // Two more clients than seats: two of them wait.
        under_load(&a, SEATS + 2, 2000, |_| {
            let all = wait_until(Duration::from_secs(20), || {
                batch_of(&victim) == SEATS as u32
            });
            assert!(all, "host a never held every seat");
            // `status --store`: its holders (from its shipped rows) and its
            // queue (from its last lease).
            let mut last = None;
            let shown = wait_until(Duration::from_secs(10), || {
                let grants = rt.block_on(store.shared_status()).expect("status");
                let share = grants[0].hosts.iter().find(|h| h.host == victim).cloned();
                let seen = share.as_ref().is_some_and(|h| {
                    h.holders.get("early") == Some(&(SEATS as u32)) && h.waiting == 2
                });
                last = share;
                seen
            });
            assert!(
                shown,
                "status does not show host a's holders and queue: {last:?}"
            );
            let killed_at = (Instant::now(), SystemTime::now());
            // SIGKILL: nothing is handed back.
            let pid = hosts[0].server.child.id().to_string();
            let killed = Command::new("kill").args(["-KILL", &pid]).status();
            assert!(killed.is_ok_and(|s| s.success()), "kill -9 {pid}");
            killed_at
        })
    };
    assert!(
        outcomes.iter().any(|o| o.status == 0),
        "no call was in flight on the killed host: {outcomes:?}"
    );
    assert!(
        !outcomes
            .iter()
            .any(|o| o.status == 200 && o.sent + Duration::from_millis(1900) > killed_at.0),
        "a call in flight on the killed host was acknowledged"
    );
    // Host b's 5 clients, each a call of 1.5 s: they run all at once, on
    // seats the dead host held, within the TTL and a margin of the kill.
    let b = &hosts[1];
    let theirs = fixed_load(&[(0, b)], SEATS, 1, 1500);
    let spans = spans(&theirs);
    assert_eq!(spans.len(), SEATS, "{theirs:?}");
    assert_eq!(
        most_at_once(&spans),
        SEATS,
        "host b never held every seat: {spans:?}"
    );
    let all_held_at = spans.iter().map(|s| s.0).max().expect("spans");
    let killed_ns = killed_at
        .1
        .duration_since(UNIX_EPOCH)
        .expect("clock")
        .as_nanos();
    let took = Duration::from_nanos(
        u64::try_from(all_held_at.saturating_sub(killed_ns)).unwrap_or(u64::MAX),
    );
    eprintln!("every seat back at host b {took:?} after the kill (TTL {TTL:?})");
    assert!(
        took <= TTL + Duration::from_secs(2),
        "the dead host's seats took {took:?} to come back"
    );
    // The replay counts the dead host's seats held until its batch lapsed;
    // every call host b acknowledged is in the shared ledger.
    let ledger = check_ledger(&url, &[b], &theirs);
    eprintln!(
        "the shared ledger holds at most {} seats at once",
        ledger.peak
    );
    let [_, b, c] = hosts;
    assert!(b.server.terminate().success());
    assert!(c.server.terminate().success());
}

/// A store made unreachable (`away`) for 10 s under load on two hosts,
/// then brought back (`back`).
fn store_away_under_load(
    tag: &str,
    away: impl FnOnce(&TestPostgres),
    back: impl FnOnce(&TestPostgres),
) {
    let (pg, scratch) = shared_setup(tag);
    let (url, root) = (pg.url(), scratch.path());
    let hosts = [shared_host(root, &url, "a"), shared_host(root, &url, "b")];
    let both: Vec<(usize, &Host)> = hosts.iter().enumerate().collect();
    let ((went, refused, came), outcomes) = under_load(&both, 3, 20, |delivered| {
        assert!(
            wait_until(Duration::from_secs(20), || delivered
                .load(Ordering::Relaxed)
                >= 20),
            "no load before the store went away"
        );
        let went = Instant::now();
        away(&pg);
        // The hosts serve from their batches, then refuse once those lapse.
        let lapsed = wait_until(Duration::from_secs(15), || !hosts.iter().any(ready));
        assert!(lapsed, "a host stayed ready with its store away");
        let refused = Instant::now();
        std::thread::sleep(Duration::from_secs(10).saturating_sub(went.elapsed()));
        back(&pg);
        let came = Instant::now();
        let since = delivered.load(Ordering::Relaxed);
        let recovered = wait_until(Duration::from_secs(30), || {
            hosts.iter().all(ready) && delivered.load(Ordering::Relaxed) >= since + 20
        });
        assert!(
            recovered,
            "the hosts did not recover after the store came back"
        );
        (went, refused, came)
    });
    let after = |t: Instant| outcomes.iter().filter(move |o| o.sent > t);
    let from_batches = after(went)
        .filter(|o| o.status == 200 && o.sent < refused)
        .count();
    assert!(
        from_batches > 0,
        "nothing was served from the batches while the store was away"
    );
    // A call is delivered, refused for want of the store, or withheld
    // because its batch lapsed while it ran: nothing else.
    for o in &outcomes {
        assert!(
            o.status == 200
                || (o.status == 503
                    && ["store-unavailable", "lease-lapsed"].contains(&o.code.as_str())),
            "a call was refused otherwise than for the store: {o:?}"
        );
    }
    let refusals = after(refused)
        .filter(|o| o.code == "store-unavailable")
        .count();
    assert!(refusals > 0, "no call was refused while the store was away");
    assert!(
        after(came).any(|o| o.status == 200),
        "nothing delivered after the store came back"
    );
    let most = most_at_once(&spans(&outcomes));
    assert!(
        most <= SEATS,
        "{most} delivered calls ran at once on {SEATS} seats"
    );
    let hosts_ref: Vec<&Host> = hosts.iter().collect();
    let replay = check_ledger(&url, &hosts_ref, &outcomes);
    eprintln!(
        "{} calls delivered, {from_batches} from the batches with the store away, {refusals} refused; at most {most} at once, {} in the ledger",
        spans(&outcomes).len(),
        replay.peak
    );
    for h in hosts {
        assert!(h.server.terminate().success());
    }
}

#[test]
fn a_store_stopped_for_ten_seconds_under_load_costs_no_seat_and_no_acknowledged_row() {
    store_away_under_load(
        "tollgate-shared-stop-",
        TestPostgres::stop,
        TestPostgres::restart,
    );
}

#[test]
fn a_store_hung_for_ten_seconds_under_load_costs_no_seat_and_no_acknowledged_row() {
    store_away_under_load(
        "tollgate-shared-hang-",
        TestPostgres::pause,
        TestPostgres::resume,
    );
}

#[test]
fn a_host_whose_rules_differ_is_refused_and_rules_set_once_reach_every_host() {
    let (pg, scratch) = shared_setup("tollgate-shared-rules-");
    let (url, root) = (pg.url(), scratch.path());
    // The first host sets the shared rules: none for `demo`.
    let a = shared_host(root, &url, "a");
    let rules = "\n[license.demo]\nmax_per_plugin = 1\n";
    let refused = shared_host_with(root, &url, "b", rules)
        .err()
        .expect("other rules refused");
    assert!(
        refused.contains("license rules differ")
            && refused.contains(r#"[license."demo"] max_per_plugin: here 1, shared none"#),
        "{refused}"
    );
    // Set from b's config, once: host a runs with them within 2 s (one
    // plugin holds one seat at most), and b now starts.
    let config = root.join("b/tollgate.toml").to_string_lossy().into_owned();
    let set = tg(
        root,
        &["license", "rules", "--store", &url, "--config", &config],
    );
    let said = String::from_utf8_lossy(&set.stdout);
    assert!(
        set.status.success(),
        "{said}{}",
        String::from_utf8_lossy(&set.stderr)
    );
    assert!(
        said.contains("max_per_plugin: here 1, shared none"),
        "{said}"
    );
    let shown = tg(root, &["license", "rules", "--store", &url]);
    let shown: serde_json::Value = serde_json::from_slice(&shown.stdout).expect("rules as JSON");
    assert_eq!(shown["demo"]["max_per_plugin"], 1, "{shown}");
    let set_at = Instant::now();
    let one_at_once = wait_until(
        Duration::from_secs(2).saturating_sub(set_at.elapsed()),
        || most_at_once(&spans(&fixed_load(&[(0, &a)], 3, 1, 150))) == 1,
    );
    assert!(
        one_at_once,
        "host a still lets one plugin hold more than one seat"
    );
    let b = shared_host_with(root, &url, "b", rules).expect("b's rules are the shared ones now");
    assert_eq!(most_at_once(&spans(&fixed_load(&[(0, &b)], 3, 1, 150))), 1);
    for h in [a, b] {
        assert!(h.server.terminate().success());
    }
}

#[test]
fn a_password_comes_from_the_password_file_never_the_url() {
    let (pg, scratch) = shared_setup("tollgate-shared-pass-");
    let root = scratch.path();
    pg.add_password_user("tg", "s3cr:et");
    let url = format!("postgres://tg@127.0.0.1:{}/postgres", pg.port());
    let list = |passfile: &Path| {
        Command::new(BIN)
            .args(["license", "list", "--store", &url])
            .env("PGPASSFILE", passfile)
            .output()
            .expect("tollgate runs")
    };
    // Without a password: refused by the server (once it has reloaded its
    // authentication rules).
    let none = root.join("no.pgpass");
    let refused = wait_until(Duration::from_secs(10), || !list(&none).status.success());
    assert!(refused, "the server let the role in without a password");
    let said = String::from_utf8_lossy(&list(&none).stderr).into_owned();
    assert!(said.contains("password"), "{said}");
    // A file others may read is ignored, as PostgreSQL's own tools do.
    let file = root.join("pgpass");
    let port = pg.port();
    std::fs::write(
        &file,
        format!("# the store\n127.0.0.1:{port}:postgres:tg:s3cr\\:et\n"),
    )
    .expect("pgpass");
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644)).expect("chmod");
    assert!(
        !list(&file).status.success(),
        "a world-readable password file was used"
    );
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600)).expect("chmod");
    let listed = list(&file);
    let shown = String::from_utf8_lossy(&listed.stdout);
    assert!(
        listed.status.success() && shown.contains("demo"),
        "{shown}{}",
        String::from_utf8_lossy(&listed.stderr)
    );
}

/// A network namespace joined to this one by two veth pairs: one that
/// clients reach it through, one for its link to the database, which
/// [`Netns::cut`] takes down. Removed when dropped.
struct Netns {
    name: String,
    /// This side of the database link.
    db_link: String,
    /// This side of the clients' link.
    client_link: String,
}

/// Runs `ip` with `args`, failing the test if it fails.
fn ip(args: &[&str]) {
    let out = Command::new("ip")
        .args(args)
        .output()
        .expect("ip runs (iproute2)");
    assert!(
        out.status.success(),
        "ip {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
}

impl Netns {
    /// Clients reach the namespace at 10.201.0.2; from it, the database
    /// side is 10.202.0.1.
    fn new() -> Self {
        let id = std::process::id() % 100_000;
        let ns = Netns {
            name: format!("tg{id}"),
            db_link: format!("tgd{id}"),
            client_link: format!("tgc{id}"),
        };
        let inside = |link: &str| format!("{link}x");
        ip(&["netns", "add", &ns.name]);
        for (link, net) in [(&ns.client_link, "10.201.0"), (&ns.db_link, "10.202.0")] {
            let peer = inside(link);
            ip(&["link", "add", link, "type", "veth", "peer", "name", &peer]);
            ip(&["link", "set", &peer, "netns", &ns.name]);
            ip(&["addr", "add", &format!("{net}.1/24"), "dev", link]);
            ip(&["link", "set", link, "up"]);
            ip(&[
                "netns",
                "exec",
                &ns.name,
                "ip",
                "addr",
                "add",
                &format!("{net}.2/24"),
                "dev",
                &peer,
            ]);
            ip(&["netns", "exec", &ns.name, "ip", "link", "set", &peer, "up"]);
        }
        ip(&["netns", "exec", &ns.name, "ip", "link", "set", "lo", "up"]);
        ns
    }

    /// Takes the database link down: its packets go nowhere.
    fn cut(&self) {
        ip(&["link", "set", &self.db_link, "down"]);
    }

    /// Brings the database link back.
    fn restore(&self) {
        ip(&["link", "set", &self.db_link, "up"]);
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        for link in [&self.db_link, &self.client_link] {
            let _ = Command::new("ip").args(["link", "del", link]).output();
        }
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .output();
    }
}

#[test]
fn a_host_cut_off_from_the_store_in_its_own_network_namespace_keeps_the_seats_exact() {
    let ns = Netns::new();
    let pg = TestPostgres::start_also_on("10.202.0.1");
    let scratch = tempfile::Builder::new()
        .prefix("tollgate-shared-netns-")
        .tempdir()
        .expect("scratch");
    let root = scratch.path();
    install_shared(root, &pg.url(), &SEATS.to_string());
    let a = shared_host(root, &pg.url(), "a");
    // Host n runs in the namespace: clients reach it on 10.201.0.2, it
    // reaches the store on 10.202.0.1.
    let n = {
        let url = format!("postgres://postgres@10.202.0.1:{}/postgres", pg.port());
        let mut inside = Command::new("ip");
        inside.args(["netns", "exec", &ns.name, BIN]);
        let top = "listen = \"10.201.0.2:0\"\nallowed_hosts = [\"10.201.0.2\"]";
        shared_host_on(root, &url, "n", "", top, inside)
            .unwrap_or_else(|e| panic!("host n did not start: {e}"))
    };
    let hosts = [a, n];
    let both: Vec<(usize, &Host)> = hosts.iter().enumerate().collect();
    let ((cut, lapsed, back), outcomes) = under_load(&both, 3, 20, |delivered| {
        // (`back` marks when the link came back.)
        assert!(
            wait_until(Duration::from_secs(20), || delivered
                .load(Ordering::Relaxed)
                >= 20),
            "no load before the cut"
        );
        let cut = Instant::now();
        ns.cut();
        // Host n serves from its batch, then refuses once it lapses; host
        // a, which still reaches the store, goes on.
        let refused = wait_until(Duration::from_secs(15), || !ready(&hosts[1]));
        assert!(refused, "host n stayed ready cut off from its store");
        let lapsed = Instant::now();
        assert!(ready(&hosts[0]), "host a lost its store too");
        std::thread::sleep(Duration::from_secs(10).saturating_sub(cut.elapsed()));
        ns.restore();
        let back = Instant::now();
        // Host n itself delivers again.
        let recovered = wait_until(Duration::from_secs(60), || {
            ready(&hosts[1]) && call(&hosts[1], 1, 1).status == 200
        });
        assert!(recovered, "host n did not recover once its link came back");
        (cut, lapsed, back)
    });
    for o in &outcomes {
        assert!(
            o.status == 200
                || (o.status == 503
                    && ["store-unavailable", "lease-lapsed"].contains(&o.code.as_str())),
            "a call was refused otherwise than for the store: {o:?}"
        );
    }
    let on = |host: usize, from: Instant, to: Instant| {
        outcomes
            .iter()
            .filter(|o| o.host == host && o.status == 200 && o.sent > from && o.sent < to)
            .count()
    };
    assert!(
        on(1, cut, lapsed) > 0,
        "host n served nothing from its batch"
    );
    assert!(
        on(0, lapsed, back) > 0,
        "host a served nothing while host n was cut off"
    );
    let most = most_at_once(&spans(&outcomes));
    assert!(
        most <= SEATS,
        "{most} delivered calls ran at once on {SEATS} seats"
    );
    let hosts_ref: Vec<&Host> = hosts.iter().collect();
    let replay = check_ledger(&pg.url(), &hosts_ref, &outcomes);
    eprintln!(
        "{} calls delivered; at most {most} at once, {} in the ledger",
        spans(&outcomes).len(),
        replay.peak
    );
    for h in hosts {
        assert!(h.server.terminate().success());
    }
}
