//! Side-by-side benchmarks of what licensing costs: every figure is a
//! licensed case next to its bare baseline (or in-memory next to durable),
//! measured in the same run with the rounds interleaved.
//!
//! Run: `cargo bench -p tollgate-bench --bench licensing` (add `-- --quick` for a
//! short smoke run). Prints a Markdown table, headed by the commit it ran
//! on, and writes the same lines to
//! `bench-results/<date>-<commit>/licensing[-<cases>].txt` (a `--quick` run
//! writes nothing there; `TOLLGATE_BENCH_RESULTS=DIR` writes under `DIR`).

use std::io::Write as _;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Barrier, Mutex};
use std::time::{Duration, Instant};
use tollgate::license::issuer::{IssuerKey, LicenseTerms};
use tollgate::license::{Clock, SystemClock};
use tollgate::runtime::Allocator;
use tollgate::store::state::State;
use tollgate::{Host, Limits, PluginSpec, Seats, Terms};

#[path = "licensing/http.rs"]
mod http;
#[path = "licensing/many.rs"]
mod many;
#[path = "licensing/plain.rs"]
mod plain;
#[path = "licensing/reference.rs"]
mod reference;
#[path = "licensing/shared.rs"]
mod shared;

const LICENSE: &str = "bench";

/// The results file this run writes besides stdout, once opened.
static RESULTS: Mutex<Option<std::fs::File>> = Mutex::new(None);
/// The directory of the results file, where cases put their raw CSV.
static RESULTS_DIR: Mutex<Option<PathBuf>> = Mutex::new(None);

/// The directory this run writes its results to, if it writes any.
fn results_dir() -> Option<PathBuf> {
    RESULTS_DIR
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .clone()
}

/// The number in environment variable `name`, else `default`.
fn env_number<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// This machine in a few words: cores and CPU model.
fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .map(|l| l.split(':').nth(1).unwrap_or("").trim().to_string())
        })
        .unwrap_or_default();
    format!(
        "{} cores, {cpu}",
        std::thread::available_parallelism().map_or(0, |n| n.get())
    )
}

/// Prints `line` and writes it to the results file, if there is one.
fn say(line: &str) {
    println!("{line}");
    let mut results = RESULTS
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    if let Some(file) = results.as_mut()
        && let Err(e) = writeln!(file, "{line}")
    {
        eprintln!("results file not written ({e}); stdout has the run");
        *results = None;
    }
}

/// The short commit hash the bench was built from, `+dirty` when tracked
/// files differ from it, or `unknown` outside a git checkout.
fn commit() -> String {
    let root = concat!(env!("CARGO_MANIFEST_DIR"), "/../..");
    let git = |args: &[&str]| {
        std::process::Command::new("git")
            .arg("-C")
            .arg(root)
            .args(args)
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
    };
    match git(&["rev-parse", "--short", "HEAD"]) {
        Some(hash) => match git(&["status", "--porcelain", "--untracked-files=no"]) {
            Some(changes) if changes.is_empty() => hash,
            _ => format!("{hash}+dirty"),
        },
        None => "unknown".into(),
    }
}

/// Today's date (UTC) as `YYYY-MM-DD`.
fn today() -> String {
    let days = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() / 86_400) as i64;
    // Days since 1970-01-01 to a civil date (proleptic Gregorian).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!("{year:04}-{month:02}-{day:02}")
}

/// Opens `bench-results/<date>-<commit>/licensing[-<cases>].txt` (under
/// `TOLLGATE_BENCH_RESULTS` if set) for [`say`]; returns its path.
fn open_results(date: &str, commit: &str, cases: &[String]) -> Option<PathBuf> {
    let root = std::env::var_os("TOLLGATE_BENCH_RESULTS").map_or_else(
        || PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../../bench-results")),
        PathBuf::from,
    );
    let dir = root.join(format!("{date}-{commit}"));
    let name = if cases.is_empty() {
        "licensing.txt".to_string()
    } else {
        format!("licensing-{}.txt", cases.join("-"))
    };
    let path = dir.join(name);
    let opened = std::fs::create_dir_all(&dir).and_then(|()| std::fs::File::create(&path));
    match opened {
        Ok(file) => {
            *RESULTS
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(file);
            *RESULTS_DIR
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(dir);
            Some(path)
        }
        Err(e) => {
            eprintln!("cannot write {} ({e}); stdout has the run", path.display());
            None
        }
    }
}

fn guest(name: &str) -> PathBuf {
    PathBuf::from(test_guests::path(name))
}

/// Knobs that `--quick` shrinks.
struct Plan {
    rounds: usize,
    calls: u32,
    window: Duration,
    pairs: u32,
    /// Ledger rows of case S (`TOLLGATE_BENCH_S_ROWS` overrides).
    ledger_rows: u64,
}

impl Plan {
    /// Rounds for a ratio whose sides differ by about this machine's
    /// round-to-round noise, which nine rounds do not settle: three times
    /// the usual, at least 15 (a quick run keeps its own).
    fn close_rounds(&self) -> usize {
        if self.rounds > 3 {
            self.rounds.max(5) * 3
        } else {
            self.rounds
        }
    }
}

fn host(allocator: Allocator) -> Host {
    let host = Host::builder()
        .license(LICENSE, Terms::new(Seats::Unlimited))
        .allocator(allocator)
        .build()
        .expect("host");
    load_pair(&host);
    host
}

/// Loads `leased` (the bare guest's source plus acquire and release of a
/// known id), `licensed` (which also asks for its license ids, and has the
/// other benchmark modes) and `bare`.
fn load_pair(host: &Host) {
    host.load_plugin(PluginSpec::file("leased", guest("bench-leased")).requires(LICENSE))
        .expect("leased guest");
    host.load_plugin(PluginSpec::file("licensed", guest("bench-licensed")).requires(LICENSE))
        .expect("licensed guest");
    host.load_plugin(PluginSpec::file("bare", guest("bench-bare")))
        .expect("bare guest");
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn percentile(v: &mut [f64], p: f64) -> f64 {
    v.sort_by(f64::total_cmp);
    let i = ((v.len() as f64 - 1.0) * p).round() as usize;
    v[i.min(v.len() - 1)]
}

/// Mean microseconds per call over `n` sequential calls.
fn per_call(host: &Host, plugin: &str, input: &[u8], n: u32) -> f64 {
    let start = Instant::now();
    for _ in 0..n {
        host.invoke(plugin, input).expect("bench call succeeds");
    }
    start.elapsed().as_secs_f64() * 1e6 / f64::from(n)
}

/// Calls per second with `threads` callers for `window`.
fn throughput(host: &Host, plugin: &str, input: &[u8], threads: usize, window: Duration) -> f64 {
    let done = AtomicU64::new(0);
    let stop = AtomicBool::new(false);
    let barrier = Barrier::new(threads + 1);
    std::thread::scope(|s| {
        for _ in 0..threads {
            s.spawn(|| {
                barrier.wait();
                while !stop.load(Ordering::Relaxed) {
                    host.invoke(plugin, input).expect("bench call succeeds");
                    done.fetch_add(1, Ordering::Relaxed);
                }
            });
        }
        barrier.wait();
        std::thread::sleep(window);
        stop.store(true, Ordering::Relaxed);
    });
    done.load(Ordering::Relaxed) as f64 / window.as_secs_f64()
}

/// Runs `a` and `b` alternately `rounds` times; returns their medians.
fn side_by_side(rounds: usize, a: impl FnMut() -> f64, b: impl FnMut() -> f64) -> (f64, f64) {
    let (xs, ys) = side_by_side_rounds(rounds, a, b);
    (median(xs), median(ys))
}

/// Runs `a` and `b` alternately (A B B A …) `rounds` times; returns every
/// round's figures, in round order.
fn side_by_side_rounds(
    rounds: usize,
    mut a: impl FnMut() -> f64,
    mut b: impl FnMut() -> f64,
) -> (Vec<f64>, Vec<f64>) {
    let (mut xs, mut ys) = (Vec::new(), Vec::new());
    for r in 0..rounds {
        if r % 2 == 0 {
            xs.push(a());
            ys.push(b());
        } else {
            ys.push(b());
            xs.push(a());
        }
    }
    (xs, ys)
}

/// The ratio of the medians of `xs` and `ys`, with the lowest and highest
/// ratio of one round's pair: `0.931 (0.88–0.97)`.
fn ratio_with_spread(xs: &[f64], ys: &[f64]) -> String {
    let ratios: Vec<f64> = xs.iter().zip(ys).map(|(x, y)| x / y).collect();
    let lo = ratios.iter().copied().fold(f64::INFINITY, f64::min);
    let hi = ratios.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    format!(
        "{:.3} ({lo:.2}–{hi:.2})",
        median(xs.to_vec()) / median(ys.to_vec())
    )
}

/// A target on a ratio: at most, or at least, this much.
#[derive(Clone, Copy)]
enum Bound {
    AtMost(f64),
    AtLeast(f64),
}

/// Rounds run side by side, as `(a, b)` pairs in round order.
fn paired((xs, ys): (Vec<f64>, Vec<f64>)) -> Vec<(f64, f64)> {
    xs.into_iter().zip(ys).collect()
}

/// A table row for rounds run side by side: the medians of both sides
/// (with `decimals`), their ratio with its bootstrap 95% interval, and the
/// verdict, which is "met" only when the whole interval clears `bound`
/// (`Err(note)`: no target, the note stands in the target column).
fn ratio_row(
    case: &str,
    what: &str,
    pairs: &[(f64, f64)],
    decimals: usize,
    bound: Result<Bound, &str>,
) {
    let ratio = http::ratio_of_medians(pairs);
    let (lo, hi) = http::bootstrap(pairs, http::ratio_of_medians);
    let target = match bound {
        Ok(Bound::AtMost(b)) => format!("≤ {b:.2}: {}", http::verdict(hi <= b)),
        Ok(Bound::AtLeast(b)) => format!("≥ {b:.2}: {}", http::verdict(lo >= b)),
        Err(note) => note.to_string(),
    };
    let side =
        |f: fn(&(f64, f64)) -> f64| format!("{:.decimals$}", median(pairs.iter().map(f).collect()));
    row(
        case,
        what,
        side(|p| p.0),
        side(|p| p.1),
        format!("{ratio:.3} (95% CI {lo:.3}–{hi:.3})"),
        &target,
    );
}

fn row(case: &str, what: &str, licensed: String, baseline: String, ratio: String, target: &str) {
    say(&format!(
        "| {case} | {what} | {licensed} | {baseline} | {ratio} | {target} |"
    ));
}

/// Both instance allocators, each with its label, or the one named by
/// `TOLLGATE_BENCH_ALLOCATOR` (`on-demand` or `pooling`).
fn allocators() -> Vec<(&'static str, Allocator)> {
    let only = std::env::var("TOLLGATE_BENCH_ALLOCATOR").ok();
    let mut all = vec![
        ("on-demand", Allocator::OnDemand),
        ("pooling", Allocator::pooling(64, [&Limits::default()])),
    ];
    all.retain(|(label, _)| only.as_deref().is_none_or(|o| o == *label));
    all
}

fn case_b(plan: &Plan) {
    let input = b"work:16 the quick brown fox jumps over the lazy dog";
    for (label, allocator) in allocators() {
        let host = host(allocator);
        for plugin in ["leased", "licensed", "bare"] {
            per_call(&host, plugin, input, 50);
        }
        let rounds = plan.close_rounds();
        ratio_row(
            "B",
            &format!(
                "per call, fresh instance, {label}, the bare guest's source plus acquire + release of a known id (µs/call)"
            ),
            &paired(side_by_side_rounds(
                rounds,
                || per_call(&host, "leased", input, plan.calls),
                || per_call(&host, "bare", input, plan.calls),
            )),
            1,
            Ok(Bound::AtMost(1.10)),
        );
        ratio_row(
            "B",
            &format!(
                "per call, fresh instance, {label}, license-ids + acquire + release, larger guest (µs/call)"
            ),
            &paired(side_by_side_rounds(
                rounds,
                || per_call(&host, "licensed", input, plan.calls),
                || per_call(&host, "bare", input, plan.calls),
            )),
            1,
            Err("report"),
        );
    }
}

/// Cold start: load + first call compiling from `.wasm`, against load +
/// first call from the precompiled compile cache.
fn case_a(plan: &Plan) {
    let scratch = tempfile::Builder::new()
        .prefix("tollgate-bench-cache-")
        .tempdir()
        .expect("scratch dir");
    // Removed before each cold start.
    let dir = scratch.path().join("cache");
    let mut guests = vec!["hello-licensed"];
    let python = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../target/other-languages/hello_python.wasm");
    let first_call = |cache: &std::path::Path, path: &std::path::Path| {
        let host = Host::builder()
            .license(LICENSE, Terms::new(Seats::Unlimited))
            .compile_cache(cache)
            .build()
            .expect("host");
        let start = Instant::now();
        let plugin = host
            .load_plugin(PluginSpec::file("p", path).requires(LICENSE))
            .expect("load");
        host.invoke("p", b"x").expect("first call");
        (start.elapsed().as_secs_f64() * 1e3, plugin.from_cache())
    };
    if python.exists() {
        guests.push("python");
    }
    for g in guests {
        let path = if g == "python" {
            python.clone()
        } else {
            guest(g)
        };
        let rounds = if g == "python" {
            plan.rounds.min(3)
        } else {
            plan.rounds
        };
        let (cold, warm) = side_by_side(
            rounds,
            || {
                let _ = std::fs::remove_dir_all(&dir);
                let (ms, cached) = first_call(&dir, &path);
                assert!(!cached, "cold start compiled");
                ms
            },
            || {
                if !dir.exists() {
                    first_call(&dir, &path);
                }
                let (ms, cached) = first_call(&dir, &path);
                assert!(cached, "warm start loaded the cache");
                ms
            },
        );
        row(
            "A",
            &format!("load + first call of {g}: compile vs compile cache (ms)"),
            format!("{cold:.1}"),
            format!("{warm:.2}"),
            format!("{:.1}× faster", cold / warm),
            "cached ≥ 10× faster",
        );
    }
}

/// Where B's difference comes from: the licensed component doing the same
/// work without calling the host, against the bare component.
/// Case L: a licensed call on a host with 10,000 license ids installed
/// against the same call on a host with the one it uses.
/// `acquire` + `release` pairs in one instance (as in case C, so that no
/// instantiation hides them) on a host with 10,000 license ids against a
/// host with one.
fn case_l(plan: &Plan) {
    const IDS: usize = 10_000;
    let limits = Limits {
        max_acquires: plan.pairs as usize + 1,
        ..Limits::default()
    };
    let start = |builder: tollgate::HostBuilder| {
        let host = builder.build().expect("host");
        host.load_plugin(
            PluginSpec::file("licensed", guest("bench-licensed"))
                .requires(LICENSE)
                .limits(limits.clone()),
        )
        .expect("licensed guest");
        host
    };
    let one = start(Host::builder().license(LICENSE, Terms::new(Seats::Unlimited)));
    let mut builder = Host::builder().license(LICENSE, Terms::new(Seats::Unlimited));
    for i in 1..IDS {
        builder = builder.license(format!("other-{i:05}"), Terms::new(Seats::Counted(4)));
    }
    let many = start(builder);
    assert_eq!(many.licenses().ids().len(), IDS);
    let pairs_input = format!("pairs:{}", plan.pairs).into_bytes();
    let n = f64::from(plan.pairs);
    let pair_ns = |host: &Host| per_call(host, "licensed", &pairs_input, 1) * 1e3 / n;
    pair_ns(&many);
    pair_ns(&one);
    ratio_row(
        "L",
        &format!("acquire + release pair, {IDS} license ids installed vs one (ns/pair)"),
        &paired(side_by_side_rounds(
            plan.close_rounds(),
            || pair_ns(&many),
            || pair_ns(&one),
        )),
        0,
        Ok(Bound::AtMost(1.10)),
    );
}

fn case_b0(plan: &Plan) {
    let input = b"work:16 the quick brown fox jumps over the lazy dog";
    let idle_input = [&b"unlicensed "[..], &input[..]].concat();
    for (label, allocator) in allocators() {
        let host = host(allocator);
        host.load_plugin(PluginSpec::file("licensed-idle", guest("bench-licensed")))
            .expect("licensed guest");
        let (l, b) = side_by_side(
            plan.rounds,
            || per_call(&host, "licensed-idle", &idle_input, plan.calls),
            || per_call(&host, "bare", input, plan.calls),
        );
        row(
            "B0",
            &format!("larger licensed component, no host call, vs bare, {label} (µs/call)"),
            format!("{l:.1}"),
            format!("{b:.1}"),
            format!("{:.3}", l / b),
            "explains B",
        );
    }
}

fn case_c(plan: &Plan) {
    // One call makes every pair, so lift the per-call acquire cap that
    // protects the ledger from a looping plugin.
    let host = Host::builder()
        .license(LICENSE, Terms::new(Seats::Unlimited))
        .build()
        .expect("host");
    let limits = Limits {
        max_acquires: plan.pairs as usize + 1,
        ..Limits::default()
    };
    host.load_plugin(
        PluginSpec::file("licensed", guest("bench-licensed"))
            .requires(LICENSE)
            .limits(limits),
    )
    .expect("licensed guest");
    let pairs = format!("pairs:{}", plan.pairs).into_bytes();
    let empty = format!("empty:{}", plan.pairs).into_bytes();
    host.invoke("licensed", &pairs).expect("warm");
    let (p, e) = side_by_side(
        plan.rounds,
        || per_call(&host, "licensed", &pairs, 1),
        || per_call(&host, "licensed", &empty, 1),
    );
    let n = f64::from(plan.pairs);
    let (pair_ns, empty_ns) = (p * 1e3 / n, e * 1e3 / n);
    row(
        "C",
        "acquire+release pair vs one empty host call, same instance (ns)",
        format!("{pair_ns:.0}"),
        format!("{empty_ns:.0}"),
        format!("+{:.0} ns/pair", pair_ns - empty_ns),
        "≤ 1 µs added",
    );
}

fn case_d(plan: &Plan) {
    let input = b"work:16 the quick brown fox jumps over the lazy dog";
    let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
    let mut threads = vec![1, 2];
    if cores > 2 {
        threads.push(cores);
    }
    for (label, allocator) in allocators() {
        let host = host(allocator);
        // For profiling one side alone: `TOLLGATE_BENCH_D_ONLY=licensed`
        // (or `bare`) runs only that plugin and prints its rate.
        if let Ok(only) = std::env::var("TOLLGATE_BENCH_D_ONLY") {
            for &t in &threads {
                let rate = median(
                    (0..plan.rounds)
                        .map(|_| throughput(&host, &only, input, t, plan.window))
                        .collect(),
                );
                println!("D {only} alone, {label}, {t} thread(s): {rate:.0} calls/s");
            }
            continue;
        }
        for &t in &threads {
            ratio_row(
                "D",
                &format!("throughput, {label}, {t} thread(s) (calls/s)"),
                &paired(side_by_side_rounds(
                    plan.close_rounds(),
                    || throughput(&host, "leased", input, t, plan.window),
                    || throughput(&host, "bare", input, t, plan.window),
                )),
                0,
                Ok(Bound::AtLeast(0.90)),
            );
        }
    }
}

fn case_e(plan: &Plan) {
    const CALLERS: usize = 64;
    const SEATS: u32 = 4;
    let hold_ms: u64 = 20;
    let host = Host::builder()
        .license(LICENSE, Terms::new(Seats::Counted(SEATS)))
        .build()
        .expect("host");
    let limits = Limits {
        wait_for_seat: Some(Duration::from_secs(60)),
        ..Limits::default()
    };
    host.load_plugin(
        PluginSpec::file("slow", guest("slow"))
            .requires(LICENSE)
            .limits(limits),
    )
    .expect("slow guest");
    let input = hold_ms.to_string().into_bytes();
    let window = plan.window * 2;
    let stop = AtomicBool::new(false);
    let max_seen = AtomicU64::new(0);
    let barrier = Barrier::new(CALLERS + 2);
    let latencies = std::sync::Mutex::new(Vec::new());
    let started = Instant::now();
    let completed = AtomicU64::new(0);
    std::thread::scope(|s| {
        // A watcher samples seats in use while the callers run.
        s.spawn(|| {
            barrier.wait();
            while !stop.load(Ordering::Relaxed) {
                let in_use = host
                    .licenses()
                    .describe(LICENSE)
                    .map_or(0, |d| d.counters.in_use);
                max_seen.fetch_max(u64::from(in_use), Ordering::Relaxed);
                std::thread::sleep(Duration::from_micros(200));
            }
        });
        for _ in 0..CALLERS {
            s.spawn(|| {
                barrier.wait();
                let mut mine = Vec::new();
                while !stop.load(Ordering::Relaxed) {
                    let t = Instant::now();
                    host.invoke("slow", &input)
                        .expect("served before the wait ends");
                    if started.elapsed() < window {
                        completed.fetch_add(1, Ordering::Relaxed);
                        mine.push(t.elapsed().as_secs_f64() * 1e3 - hold_ms as f64);
                    }
                }
                latencies.lock().expect("lock").extend(mine);
            });
        }
        barrier.wait();
        std::thread::sleep(window);
        stop.store(true, Ordering::Relaxed);
    });
    let rate = completed.load(Ordering::Relaxed) as f64 / window.as_secs_f64();
    let ideal = f64::from(SEATS) * 1000.0 / hold_ms as f64;
    let mut waits = latencies.into_inner().expect("lock");
    let (p50, p99) = (percentile(&mut waits, 0.50), percentile(&mut waits, 0.99));
    let status = host.licenses().describe(LICENSE).expect("installed");
    assert!(
        status.counters.peak <= SEATS && max_seen.load(Ordering::Relaxed) <= u64::from(SEATS),
        "oversold"
    );
    row(
        "E",
        &format!("{CALLERS} callers, {SEATS} seats, {hold_ms} ms hold, FIFO wait (calls/s)"),
        format!("{rate:.1}"),
        format!("{ideal:.1} ideal"),
        format!("{:.3}", rate / ideal),
        "≥ 0.9",
    );
    row(
        "E",
        "wait for a seat p50 / p99 (ms); peak in use (counter / sampled)",
        format!("{p50:.1} / {p99:.1}"),
        "-".into(),
        format!(
            "peak {} / {}",
            status.counters.peak,
            max_seen.load(Ordering::Relaxed)
        ),
        "never > 4",
    );
}

fn durable_host(dir: &std::path::Path) -> Host {
    let host = durable_host_with(dir, Seats::Unlimited);
    load_pair(&host);
    host
}

/// A host on a fresh state directory `dir` (durable SQLite ledger) with a
/// signed license [`LICENSE`] of `seats` installed there; no plugin loaded.
fn durable_host_with(dir: &std::path::Path, seats: Seats) -> Host {
    let state = State::open(dir).expect("state");
    let key = IssuerKey::generate().expect("key");
    let now = SystemClock.now_secs();
    state.trust(&key.public(), None, now).expect("trust");
    let license = key
        .sign(LicenseTerms::new(LICENSE, seats), now)
        .expect("sign");
    state
        .install_text(&license.to_file_text(), now)
        .expect("install");
    drop(state);
    Host::builder().state(dir).build().expect("durable host")
}

fn case_f(plan: &Plan) {
    let dir = tempfile::Builder::new()
        .prefix("tollgate-bench-")
        .tempdir()
        .expect("scratch dir");
    let durable = durable_host(dir.path());
    let memory = host(Allocator::OnDemand);
    let input = b"work:16 the quick brown fox jumps over the lazy dog";
    let calls_of = |h: &Host| {
        h.status()
            .plugins
            .iter()
            .map(|p| p.invocations)
            .sum::<u64>()
    };
    for t in [1, 2, 8] {
        let before = durable.ledger_stats().expect("durable ledger");
        let calls_before = calls_of(&durable);
        // The writer thread's CPU per call, round by round.
        let mut writer_us = Vec::new();
        let (d, m) = side_by_side(
            plan.rounds,
            || {
                let (stats, calls) = (durable.ledger_stats().expect("ledger"), calls_of(&durable));
                let rate = throughput(&durable, "licensed", input, t, plan.window);
                let (after, done) = (durable.ledger_stats().expect("ledger"), calls_of(&durable));
                if let (Some(a), Some(b)) = (after.writer_cpu, stats.writer_cpu) {
                    writer_us.push((a - b).as_secs_f64() * 1e6 / (done - calls).max(1) as f64);
                }
                rate
            },
            || throughput(&memory, "licensed", input, t, plan.window),
        );
        let after = durable.ledger_stats().expect("durable ledger");
        let calls = calls_of(&durable) - calls_before;
        let commits_per_call = (after.commits - before.commits) as f64 / calls as f64;
        row(
            "F",
            &format!("durable SQLite ledger vs in-memory, {t} thread(s) (calls/s)"),
            format!("{d:.0}"),
            format!("{m:.0}"),
            format!("{:.3}; {commits_per_call:.2} commits (fsyncs)/call", d / m),
            "< 1 fsync/call",
        );
        let rows_per_call = (after.rows - before.rows) as f64 / calls as f64;
        if writer_us.is_empty() {
            row(
                "F",
                &format!("ledger writer CPU per licensed call, {t} thread(s)"),
                "not reported by this system".into(),
                "-".into(),
                "-".into(),
                "≤ 5 µs",
            );
        } else {
            let lo = writer_us.iter().copied().fold(f64::INFINITY, f64::min);
            let hi = writer_us.iter().copied().fold(f64::NEG_INFINITY, f64::max);
            let mid = median(writer_us);
            row(
                "F",
                &format!(
                    "ledger writer thread's CPU per licensed call, durable SQLite ledger, {t} thread(s) (µs/call; median of rounds, lowest–highest)"
                ),
                format!("{mid:.1} ({lo:.1}–{hi:.1})"),
                format!("{rows_per_call:.2} rows, {commits_per_call:.3} commits/call"),
                if hi <= 5.0 {
                    "met".into()
                } else {
                    "missed".into()
                },
                "≤ 5 µs",
            );
        }
    }
}

fn rss_bytes() -> u64 {
    tollgate::runtime::resident_memory_bytes()
        .expect("case H reads resident memory, which this system does not report")
}

/// Case S: what a large ledger costs the operations that must stay quick.
/// A state directory is filled with `TOLLGATE_BENCH_S_ROWS` ledger rows
/// (default 10,000,000, 30,000 with `--quick`: checkout, release and return of one seat per
/// call), written by the ledger writer every host uses; then start-up
/// (`Host::builder().state(..).build()`), `status`, and `audit verify`
/// in full and `--since-checkpoint` over the last 1,000 rows are timed.
fn case_s(plan: &Plan) {
    let rows = env_number("TOLLGATE_BENCH_S_ROWS", plan.ledger_rows);
    let dir = tempfile::Builder::new()
        .prefix("tollgate-bench-s-")
        .tempdir()
        .expect("scratch dir");
    let state_dir = dir.path().join("state");
    drop(durable_host_with(&state_dir, Seats::Unlimited));
    let filling = Instant::now();
    {
        use tollgate::license::ledger::Ledger;
        let ledger =
            tollgate::store::SqliteLedger::open(&state_dir.join("tollgate.db")).expect("ledger");
        let rows_of = CallRows::new();
        for call in 1..=rows / 3 {
            rows_of.record(&ledger, call);
            if call % 30_000 == 0 {
                ledger.sync().expect("rows committed");
            }
        }
        ledger.sync().expect("rows committed");
        // A crash: the writer never stops, so the usage sums are where its
        // last periodic store left them, and the next start folds the rest.
        std::mem::forget(ledger);
    }
    let filled = filling.elapsed();
    let time = |f: &mut dyn FnMut()| {
        let t = Instant::now();
        f();
        t.elapsed().as_secs_f64()
    };
    let mut host = None;
    let start = time(&mut || host = Some(Host::builder().state(&state_dir).build().expect("host")));
    let host = host.expect("host started");
    let written = host.ledger_stats().map_or(0, |s| s.last_seq);
    let status = time(&mut || drop(host.status()));
    drop(host);
    // Started again: the usage sums the first start stored are read, and
    // only the rows after them (the first start's own) are added.
    let mut again = None;
    let restart =
        time(&mut || again = Some(Host::builder().state(&state_dir).build().expect("host")));
    drop(again);
    // A database from before the sums were kept: every row is added once.
    State::open(&state_dir)
        .expect("state")
        .forget_usage_sums()
        .expect("sums forgotten");
    let mut upgraded = None;
    let first_kept =
        time(&mut || upgraded = Some(Host::builder().state(&state_dir).build().expect("host")));
    drop(upgraded);
    let state = State::open(&state_dir).expect("state");
    // What start-up reads from the ledger, query by query.
    let parts = [
        (
            "open seats",
            time(&mut || {
                std::hint::black_box(state.open_seats().expect("open seats"));
            }),
        ),
        (
            "counters and peaks",
            time(&mut || {
                std::hint::black_box(state.ledger_counters().expect("counters"));
            }),
        ),
        (
            "last lease id",
            time(&mut || {
                std::hint::black_box(state.last_lease_id().expect("last lease id"));
            }),
        ),
        (
            "first free invocation id",
            time(&mut || {
                std::hint::black_box(state.first_free_invocation_id().expect("ids"));
            }),
        ),
    ];
    // What `tollgate status` and the admin API's status read from the
    // state directory: grants, seats held per grant, usage totals.
    let state_status = time(&mut || {
        std::hint::black_box(state.status(SystemClock.now_secs()).expect("status"));
    });
    // What the dashboard reads every 30 s: the last 48 hours, per hour.
    let usage_48h = time(&mut || {
        let filter = tollgate::store::state::UsageFilter {
            since: Some(SystemClock.now_secs().saturating_sub(48 * 3600)),
            hourly: true,
            ..Default::default()
        };
        std::hint::black_box(state.usage(&filter).expect("usage"));
    });
    let mut full_rows = 0;
    let full = time(&mut || full_rows = state.audit().expect("audit").rows);
    let after = written.saturating_sub(1_000);
    let hash = state.chain_hash_at(after).expect("hash");
    let mut since_rows = 0;
    let since = time(&mut || since_rows = state.audit_after(after, hash).expect("audit").rows);
    drop(state);
    // `tollgate serve` on the same state directory: from its start to
    // listening, then `/metrics` and the admin status over HTTP, each the
    // slowest of 5 (the full audit a server starts runs meanwhile).
    let (serve_start, metrics, admin_status) = {
        const TOKEN: &str = http::ADMIN_TOKEN;
        let config_dir = tempfile::Builder::new()
            .prefix("tollgate-bench-s-serve-")
            .tempdir()
            .expect("config dir");
        let t = Instant::now();
        let server = http::Server::serve(
            config_dir,
            &state_dir.display().to_string(),
            &format!("admin_token = {TOKEN:?}"),
        );
        let started = t.elapsed().as_secs_f64();
        let slowest = |path: &str, token: Option<&str>, expect: &str| {
            (0..5)
                .map(|_| {
                    let (body, took) = server.get(path, token);
                    assert!(body.contains(expect), "{path}: {body}");
                    took.as_secs_f64()
                })
                .fold(0.0, f64::max)
        };
        let metrics = slowest("/metrics", Some(TOKEN), "tollgate_checkouts_total");
        let status = slowest("/v1/admin/status", Some(TOKEN), "\"licenses\"");
        (started, metrics, status)
    };
    let verdict = |secs: f64| if secs < 1.0 { "met" } else { "missed" };
    let what = format!(
        "{written} ledger rows (filled in {:.0} s)",
        filled.as_secs_f64()
    );
    row(
        "S",
        &format!(
            "start-up of a host on {what} after its ledger writer crashed: the usage sums as the writer last stored them (every {} rows), the rest added at start (s)",
            tollgate::store::state::SUMS_STORED_EVERY_ROWS
        ),
        format!("{start:.2}"),
        "-".into(),
        verdict(start).into(),
        "< 1 s",
    );
    row(
        "S",
        "start-up of the same host again, after a clean stop (s)",
        format!("{restart:.2}"),
        "-".into(),
        verdict(restart).into(),
        "< 1 s",
    );
    row(
        "S",
        "start-up of the same ledger with no usage sums stored (a database from before they were kept): every row added once (s)",
        format!("{first_kept:.2}"),
        "-".into(),
        "-".into(),
        "report (once)",
    );
    row(
        "S",
        "start-up's ledger reads, one by one, on a third start (s)",
        parts
            .iter()
            .map(|(what, secs)| format!("{what} {secs:.2}"))
            .collect::<Vec<_>>()
            .join("; "),
        "-".into(),
        "-".into(),
        "report",
    );
    row(
        "S",
        "status of that host (s)",
        format!("{status:.3}"),
        "-".into(),
        verdict(status).into(),
        "< 1 s",
    );
    row(
        "S",
        "`tollgate status` on that state directory (grants, seats held per grant, usage totals) (s)",
        format!("{state_status:.3}"),
        "-".into(),
        verdict(state_status).into(),
        "< 1 s",
    );
    row(
        "S",
        "usage of the last 48 hours per hour (what the dashboard reads every 30 s; a scan of the rows) (s)",
        format!("{usage_48h:.2}"),
        "-".into(),
        "-".into(),
        "report",
    );
    row(
        "S",
        "`tollgate serve` on that state directory: start to listening, its two plugins compiled cold (s)",
        format!("{serve_start:.2}"),
        "-".into(),
        verdict(serve_start).into(),
        "< 1 s",
    );
    row(
        "S",
        "`GET /metrics` of that server, slowest of 5 (s)",
        format!("{metrics:.3}"),
        "-".into(),
        verdict(metrics).into(),
        "< 1 s",
    );
    row(
        "S",
        "`GET /v1/admin/status` of that server, slowest of 5 (s)",
        format!("{admin_status:.3}"),
        "-".into(),
        verdict(admin_status).into(),
        "< 1 s",
    );
    row(
        "S",
        "audit verify --since-checkpoint (last 1,000 rows) vs in full (s)",
        format!("{since:.3} ({since_rows} rows)"),
        format!("{full:.2} ({full_rows} rows)"),
        format!("{:.4}", since / full),
        "only what came after",
    );
}

/// The three rows a licensed call leaves (checkout, release, return of one
/// seat), as the host writes them.
struct CallRows {
    license: std::sync::Arc<str>,
    plugin: std::sync::Arc<str>,
    digest: std::sync::Arc<str>,
    start_ms: u64,
}

impl CallRows {
    fn new() -> Self {
        Self {
            license: LICENSE.into(),
            plugin: "licensed".into(),
            digest: "d".repeat(64).into(),
            start_ms: SystemClock.now_secs().saturating_sub(86_400) * 1000,
        }
    }

    /// Records call `call`'s rows.
    fn record(&self, ledger: &dyn tollgate::license::ledger::Ledger, call: u64) {
        use tollgate::license::ReclaimReason;
        use tollgate::license::ledger::{EventKind, UsageEvent};
        let ended = EventKind::Return(ReclaimReason::InvocationEnded);
        for kind in [EventKind::Checkout, EventKind::Release, ended] {
            ledger.record(UsageEvent {
                lease_id: (kind != ended).then_some(call),
                seat_id: Some(call),
                grant_id: Some("bench-grant".into()),
                ..UsageEvent::new(
                    kind,
                    self.start_ms + call / 100,
                    self.license.clone(),
                    self.plugin.clone(),
                    self.digest.clone(),
                    call,
                )
            });
        }
    }
}

/// Case W: the durable ledger writer's CPU per licensed call against how
/// many calls share a commit (group size), without Wasm or HTTP: one
/// thread records a call's three rows and asks for a commit after every
/// `group` calls. A least-squares fit splits the cost into a part per
/// commit (the transaction and its fsync) and a part per call (hashing and
/// inserting three rows), which no grouping removes.
fn case_w(plan: &Plan) {
    use tollgate::license::ledger::Ledger;
    const GROUPS: [u64; 5] = [1, 10, 30, 100, 1000];
    let rounds = plan.rounds.clamp(3, 5);
    let dir = tempfile::Builder::new()
        .prefix("tollgate-bench-w-")
        .tempdir()
        .expect("scratch dir");
    let state_dir = dir.path().join("state");
    drop(State::open(&state_dir).expect("state"));
    let ledger =
        tollgate::store::SqliteLedger::open(&state_dir.join("tollgate.db")).expect("ledger");
    let rows_of = CallRows::new();
    let mut call = 0;
    // (group, µs of writer CPU per call) per round and group.
    let mut points: Vec<(f64, f64)> = Vec::new();
    for _ in 0..rounds {
        for group in GROUPS {
            let calls = (group * 20).max(plan.calls as u64);
            ledger.sync().expect("committed");
            let before = ledger.stats();
            for _ in 0..calls {
                call += 1;
                rows_of.record(&ledger, call);
                if call % group == 0 {
                    ledger.sync().expect("committed");
                }
            }
            ledger.sync().expect("committed");
            let after = ledger.stats();
            let cpu = |s: tollgate::store::CommitStats| {
                s.writer_cpu
                    .expect("case W needs a thread's CPU time from /proc (Linux)")
            };
            let (c0, c1) = (cpu(before), cpu(after));
            points.push((group as f64, (c1 - c0).as_secs_f64() * 1e6 / calls as f64));
        }
    }
    for group in GROUPS {
        let per_call = median(
            points
                .iter()
                .filter(|p| p.0 == group as f64)
                .map(|p| p.1)
                .collect(),
        );
        row(
            "W",
            &format!(
                "ledger writer CPU per call (3 rows), {group} call(s) per commit, µs; synchronous=FULL"
            ),
            format!("{per_call:.2}"),
            "-".into(),
            "-".into(),
            "report",
        );
    }
    // per_call = a + b / group, least squares over every point.
    let n = points.len() as f64;
    let xs: Vec<f64> = points.iter().map(|p| 1.0 / p.0).collect();
    let (mx, my) = (
        xs.iter().sum::<f64>() / n,
        points.iter().map(|p| p.1).sum::<f64>() / n,
    );
    let sxy: f64 = xs
        .iter()
        .zip(&points)
        .map(|(x, p)| (x - mx) * (p.1 - my))
        .sum();
    let sxx: f64 = xs.iter().map(|x| (x - mx).powi(2)).sum();
    let b = sxy / sxx;
    let a = my - b * mx;
    row(
        "W",
        "fit: writer CPU = per call + per commit / calls per commit, µs",
        format!("{a:.2} per call + {b:.0} per commit"),
        "-".into(),
        "-".into(),
        &format!(
            "≤ 5 µs per request needs {}",
            if a >= 5.0 {
                "fewer or cheaper rows per call: no group size reaches it".to_string()
            } else {
                format!("≥ {:.0} calls per commit", (b / (5.0 - a)).ceil())
            }
        ),
    );
}

fn case_h() {
    let host = Host::builder()
        .license(LICENSE, Terms::new(Seats::Unlimited))
        .build()
        .expect("host");
    const PLUGINS: u32 = 20;
    let before = rss_bytes();
    for i in 0..PLUGINS {
        host.load_plugin(
            PluginSpec::file(format!("hello-{i}"), guest("hello-licensed")).requires(LICENSE),
        )
        .expect("load");
    }
    let per_plugin = (rss_bytes().saturating_sub(before)) as f64 / f64::from(PLUGINS);
    host.load_plugin(PluginSpec::file("slow", guest("slow")).requires(LICENSE))
        .expect("slow");
    host.invoke("slow", b"1").expect("warm");
    const IN_FLIGHT: usize = 32;
    let idle = rss_bytes();
    let barrier = Barrier::new(IN_FLIGHT + 1);
    let mut busy = 0;
    std::thread::scope(|s| {
        for _ in 0..IN_FLIGHT {
            s.spawn(|| {
                barrier.wait();
                host.invoke("slow", b"600").expect("slow call");
            });
        }
        barrier.wait();
        std::thread::sleep(Duration::from_millis(300));
        busy = rss_bytes();
    });
    let per_call = busy.saturating_sub(idle) as f64 / IN_FLIGHT as f64;
    row(
        "H",
        &format!(
            "resident memory per loaded plugin ({PLUGINS} loaded) / per call in flight ({IN_FLIGHT} at once)"
        ),
        format!(
            "{:.0} KiB / {:.0} KiB",
            per_plugin / 1024.0,
            per_call / 1024.0
        ),
        "-".into(),
        "-".into(),
        "report",
    );
}

/// One benchmark case.
type Case = dyn Fn(&Plan);

fn main() {
    if let Some(config) = std::env::var_os(http::SERVE_ENV) {
        http::serve_child(std::path::Path::new(&config));
        return;
    }
    if let Some(cache) = std::env::var_os(many::FILL_ENV) {
        many::fill(std::path::Path::new(&cache));
        return;
    }
    let quick = std::env::args().any(|a| a == "--quick");
    // `cargo bench` passes `--bench`; ignore it and other flags below.
    let plan = if quick {
        Plan {
            rounds: 3,
            calls: 200,
            window: Duration::from_millis(300),
            pairs: 20_000,
            ledger_rows: 30_000,
        }
    } else {
        Plan {
            rounds: 9,
            calls: 2_000,
            window: Duration::from_millis(1_500),
            pairs: 200_000,
            ledger_rows: 10_000_000,
        }
    };
    // Case letters on the command line (e.g. `-- B C`) pick cases; default all.
    let only: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with('-'))
        .collect();
    let (date, commit) = (today(), commit());
    let written = if quick && std::env::var_os("TOLLGATE_BENCH_RESULTS").is_none() {
        None
    } else {
        open_results(&date, &commit, &only)
    };
    let knobs: Vec<String> = std::env::vars()
        .filter(|(k, _)| k.starts_with("TOLLGATE_BENCH_"))
        .map(|(k, v)| format!("{k}={v}"))
        .collect();
    say(&format!(
        "commit {commit}, {date}; cases: {}; {}",
        if only.is_empty() {
            "all but G'".to_string()
        } else {
            only.join(" ")
        },
        if knobs.is_empty() {
            "no TOLLGATE_BENCH_* settings".to_string()
        } else {
            knobs.join(" ")
        }
    ));
    say(&format!(
        "machine: {}; rounds {} (medians of interleaved rounds; B, D and L: {}, with a bootstrap interval)\n",
        machine(),
        plan.rounds,
        plan.close_rounds()
    ));
    say("| case | what | licensed | baseline | ratio | target |");
    say("|---|---|---|---|---|---|");
    let named = |case: &str| only.iter().any(|o| o.eq_ignore_ascii_case(case));
    // G' needs wasmtime-cli, which CI does not build: it runs when named.
    let wanted = |case: &str| named(case) || (only.is_empty() && case != "G'");
    let cases: [(&str, &Case); 16] = [
        ("A", &case_a),
        ("B", &case_b),
        ("B'", &plain::case_b_prime),
        ("B0", &case_b0),
        ("C", &case_c),
        ("D", &case_d),
        ("E", &case_e),
        ("F", &case_f),
        ("G", &http::case_g),
        ("G'", &reference::case_g_prime),
        ("H", &|_: &Plan| case_h()),
        ("I", &shared::case_i),
        ("L", &case_l),
        ("P", &many::case_p),
        ("S", &case_s),
        ("W", &case_w),
    ];
    for (name, case) in cases {
        if wanted(name) {
            case(&plan);
        }
    }
    if let Some(path) = written {
        eprintln!("table written to {}", path.display());
    }
}
