//! Case G: `tollgate serve` under HTTP load, licensed plugin against the
//! same plugin unlicensed, the durable ledger on this machine's disk.
//!
//! The server runs in a process of its own (this bench binary started again
//! with `TOLLGATE_BENCH_SERVE` set), a fresh one with a fresh state
//! directory for every round, stopped before the next. The load comes from
//! processes of their own too: `wrk` (closed loop, keep-alive connections)
//! for requests per second at saturation, and `oha` at a fixed open-loop
//! rate with latency correction for the latency at moderate load, so that
//! a stalled server shows in p99 instead of slowing the load down. Each
//! round also times this disk's fsync, since an acknowledged durable call
//! cannot cost less than one. Verdicts come from a bootstrap confidence
//! interval over the rounds: a target is met only when the whole interval
//! clears it. Every round's raw figures go to `G.csv` beside the table.

use super::{Bound, LICENSE, Plan, durable_host, guest, median, ratio_row, row, say};
use std::io::{BufRead as _, BufReader, Write as _};
use std::os::unix::fs::FileExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The request body every call sends: the guest reads it and answers.
pub(crate) const BODY: &str = "work:16 the quick brown fox jumps over the lazy dog";

/// The connections oha keeps open to offer its open-loop rate.
const OHA_CONNECTIONS: usize = 64;

/// The environment variable that makes this binary a server process: its
/// value is the configuration file to serve.
pub(crate) const SERVE_ENV: &str = "TOLLGATE_BENCH_SERVE";

/// Runs `tollgate serve` on `config` in this process and prints the
/// address it listens on as the first line of stdout; returns when the
/// server stops (SIGTERM).
pub(crate) fn serve_child(config: &Path) {
    let config = tollgate_server::config::Config::load(config).expect("bench server config");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("server runtime");
    rt.block_on(tollgate_server::serve(config, |addr| {
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, "{addr}");
        let _ = out.flush();
    }))
    .expect("bench server runs");
}

/// The admin token of the bench's servers.
pub(crate) const ADMIN_TOKEN: &str = "bench-admin-token-0123456789abcdef";

/// A server's durable ledger over some stretch: commits, rows, and its
/// writer thread's CPU seconds.
#[derive(Clone, Copy)]
struct LedgerFigures {
    commits: f64,
    rows: f64,
    writer_s: f64,
}

/// A `tollgate serve` process of its own, stopped when dropped.
pub(crate) struct Server {
    child: Child,
    base: String,
    /// The state directory's parent, where this disk's fsync is timed too;
    /// removed after the server stops.
    dir: tempfile::TempDir,
}

impl Server {
    /// Starts a server with the licensed and bare bench plugins and a
    /// signed license in a fresh state directory under the temp dir.
    pub(crate) fn start() -> Self {
        let dir = tempfile::Builder::new()
            .prefix("tollgate-bench-g-")
            .tempdir()
            .expect("bench dir");
        drop(durable_host(&dir.path().join("state")));
        Self::serve(dir, "state", &format!("admin_token = {ADMIN_TOKEN:?}"))
    }

    /// Starts a server in `dir` on the state directory `state` (relative
    /// to `dir`, or absolute) with the licensed and bare bench plugins, the
    /// configuration ending with `extra`; returns once it listens.
    pub(crate) fn serve(dir: tempfile::TempDir, state: &str, extra: &str) -> Self {
        let config = format!(
            "listen = \"127.0.0.1:0\"\nstate = {state:?}\ncompile_cache = \"cache\"\n\
             max_concurrent_calls = 256\n\
             trusted_proxies = [\"127.0.0.1\"]\n{extra}\n\
             [[plugin]]\nname = \"licensed\"\ncomponent = {:?}\nrequires = [\"{LICENSE}\"]\n\
             [[plugin]]\nname = \"bare\"\ncomponent = {:?}\n",
            guest("bench-leased").display().to_string(),
            guest("bench-bare").display().to_string(),
        );
        let path = dir.path().join("tollgate.toml");
        std::fs::write(&path, config).expect("write config");
        let mut child = Command::new(std::env::current_exe().expect("this bench's path"))
            .env(SERVE_ENV, &path)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::piped())
            .spawn()
            .expect("start the server process");
        let mut line = String::new();
        BufReader::new(child.stdout.take().expect("server stdout"))
            .read_line(&mut line)
            .expect("server prints its address");
        assert!(!line.trim().is_empty(), "the server process ended early");
        Self {
            child,
            base: format!("http://{}", line.trim()),
            dir,
        }
    }

    /// The body of this server's answer to a GET of `path`, and how long
    /// it took (a connection of its own).
    pub(crate) fn get(&self, path: &str, token: Option<&str>) -> (String, Duration) {
        let started = Instant::now();
        let mut request = ureq::get(format!("{}{path}", self.base));
        if let Some(token) = token {
            request = request.header("authorization", format!("Bearer {token}"));
        }
        let body = ok_body(request.call(), &format!("GET {path}"));
        (body, started.elapsed())
    }

    /// The server's ledger figures so far, from its `/metrics`: commits,
    /// rows and the writer thread's CPU time.
    fn ledger(&self) -> Option<LedgerFigures> {
        let (text, _) = self.get("/metrics", Some(ADMIN_TOKEN));
        let value = |name: &str| {
            text.lines()
                .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
        };
        Some(LedgerFigures {
            commits: value("tollgate_ledger_commits_total")?,
            rows: value("tollgate_ledger_rows_total")?,
            writer_s: value("tollgate_ledger_writer_cpu_seconds_total")?,
        })
    }

    pub(crate) fn url(&self, plugin: &str) -> String {
        format!("{}/v1/plugins/{plugin}/invoke", self.base)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        // SIGTERM: the server drains and stops; killed if it does not.
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(self.child.id().to_string())
            .status();
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The body of a 200 answer; panics naming `what` on anything else.
pub(crate) fn ok_body(
    answer: Result<ureq::http::Response<ureq::Body>, ureq::Error>,
    what: &str,
) -> String {
    answer
        .and_then(|mut r| r.body_mut().read_to_string())
        .unwrap_or_else(|e| panic!("{what}: {e}"))
}

/// What one load run measured.
#[derive(Clone, Copy, Default)]
pub(crate) struct Load {
    pub(crate) rps: f64,
    /// Requests answered (wrk only; 0 from oha).
    requests: f64,
    p50_us: f64,
    p99_us: f64,
}

/// The wrk script: POSTs [`BODY`] and prints the figures as one line.
pub(crate) fn wrk_script(dir: &Path) -> PathBuf {
    let path = dir.join("post.lua");
    std::fs::write(
        &path,
        format!(
            "wrk.method = \"POST\"\nwrk.body = {BODY:?}\n\
             done = function(summary, latency, requests)\n\
             io.write(string.format(\"TOLLGATE %d %d %d %d %d %d\\n\", summary.requests, summary.duration,\n\
             latency:percentile(50), latency:percentile(99), summary.errors.status,\n\
             summary.errors.connect + summary.errors.read + summary.errors.write + summary.errors.timeout))\n\
             end\n"
        ),
    )
    .expect("write the wrk script");
    path
}

/// `wrk` with `connections` keep-alive connections for `secs` seconds.
pub(crate) fn wrk(script: &Path, url: &str, connections: usize, secs: u64) -> Load {
    let out = Command::new("wrk")
        .args(["-t2", &format!("-c{connections}"), &format!("-d{secs}s")])
        .arg("-s")
        .arg(script)
        .arg(url)
        .output()
        .expect("case G needs wrk (apt-get install wrk; crates/bench/install-tools.sh)");
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text
        .lines()
        .find_map(|l| l.strip_prefix("TOLLGATE "))
        .unwrap_or_else(|| panic!("wrk printed no figures: {text}"));
    let f: Vec<f64> = line
        .split_whitespace()
        .map(|v| v.parse().expect("wrk figure"))
        .collect();
    let [
        requests,
        duration_us,
        p50,
        p99,
        status_errors,
        socket_errors,
    ] = f[..]
    else {
        panic!("wrk printed {line:?}");
    };
    assert_eq!(
        status_errors, 0.0,
        "{url}: {status_errors} answers were not 2xx under wrk"
    );
    assert_eq!(socket_errors, 0.0, "{url}: {socket_errors} socket errors");
    Load {
        rps: requests / (duration_us / 1e6),
        requests,
        p50_us: p50,
        p99_us: p99,
    }
}

/// Where `oha` is: `TOLLGATE_BENCH_OHA` if set, else
/// `target/bench-tools/bin/oha` (where `crates/bench/install-tools.sh` puts
/// it), else on `PATH`.
fn oha_path() -> Option<PathBuf> {
    if let Some(path) = std::env::var_os("TOLLGATE_BENCH_OHA") {
        return Some(PathBuf::from(path));
    }
    let tools = PathBuf::from(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../target/bench-tools/bin/oha"
    ));
    if tools.is_file() {
        return Some(tools);
    }
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|p| p.join("oha"))
            .find(|p| p.is_file())
    })
}

/// `oha` at an open-loop `rate` of requests per second for `secs` seconds,
/// latencies corrected for coordinated omission.
fn run_oha(oha: &Path, url: &str, rate: f64, secs: u64) -> Load {
    let out = Command::new(oha)
        .args([
            "--no-tui",
            "--output-format",
            "json",
            "--latency-correction",
        ])
        .args([
            "-c",
            "64",
            "-q",
            &format!("{rate:.0}"),
            "-z",
            &format!("{secs}s"),
        ])
        .args(["-m", "POST", "-d", BODY])
        .arg(url)
        .output()
        .expect("run oha");
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "oha printed no JSON ({e}): {}",
            String::from_utf8_lossy(&out.stderr)
        )
    });
    let codes = &json["statusCodeDistribution"];
    let ok = codes["200"].as_f64().unwrap_or(0.0);
    let all: f64 = codes.as_object().map_or(0.0, |m| {
        m.values().filter_map(serde_json::Value::as_f64).sum()
    });
    assert!(all > 0.0 && ok == all, "{url}: oha saw answers {codes}");
    let secs = |v: &serde_json::Value| v.as_f64().expect("oha latency") * 1e6;
    Load {
        rps: json["summary"]["requestsPerSec"].as_f64().unwrap_or(0.0),
        requests: 0.0,
        p50_us: secs(&json["latencyPercentiles"]["p50"]),
        p99_us: secs(&json["latencyPercentiles"]["p99"]),
    }
}

/// The median and 99th percentile (µs) of `n` 4 KiB writes each followed
/// by `fdatasync`, in `dir`: what one durable commit cannot go below.
fn fsync_us(dir: &Path, n: usize) -> (f64, f64) {
    let path = dir.join("fsync-probe");
    let file = std::fs::File::create(&path).expect("fsync probe");
    let page = [7u8; 4096];
    let mut times: Vec<f64> = (0..n)
        .map(|i| {
            let t = Instant::now();
            file.write_all_at(&page, (i % 64) as u64 * 4096)
                .expect("probe write");
            file.sync_data().expect("probe fdatasync");
            t.elapsed().as_secs_f64() * 1e6
        })
        .collect();
    let _ = std::fs::remove_file(&path);
    times.sort_by(f64::total_cmp);
    (times[n / 2], times[(n * 99 / 100).min(n - 1)])
}

/// CPU time stolen by the hypervisor and all CPU time so far (ticks), from
/// `/proc/stat`.
fn cpu_ticks() -> (u64, u64) {
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let fields: Vec<u64> = stat
        .lines()
        .next()
        .unwrap_or("")
        .split_whitespace()
        .skip(1)
        .filter_map(|v| v.parse().ok())
        .collect();
    (fields.get(7).copied().unwrap_or(0), fields.iter().sum())
}

/// A 95% bootstrap confidence interval of `stat` over rounds: rounds are
/// drawn with replacement (each round's pair kept together), 2,000 times,
/// with a fixed seed so a table can be produced again from its CSV.
pub(crate) fn bootstrap(pairs: &[(f64, f64)], stat: impl Fn(&[(f64, f64)]) -> f64) -> (f64, f64) {
    let mut rng = fastrand::Rng::with_seed(0x746f_6c6c);
    let mut stats: Vec<f64> = (0..2000)
        .map(|_| {
            let sample: Vec<(f64, f64)> = (0..pairs.len())
                .map(|_| pairs[rng.usize(..pairs.len())])
                .collect();
            stat(&sample)
        })
        .collect();
    stats.sort_by(f64::total_cmp);
    (stats[50], stats[1949])
}

/// The ratio of the medians of the pairs' two sides.
pub(crate) fn ratio_of_medians(pairs: &[(f64, f64)]) -> f64 {
    median(pairs.iter().map(|p| p.0).collect()) / median(pairs.iter().map(|p| p.1).collect())
}

/// The medians of the pairs' two sides, formatted.
fn side_medians(pairs: &[(f64, f64)]) -> (String, String) {
    let side = |f: fn(&(f64, f64)) -> f64| format!("{:.0}", median(pairs.iter().map(f).collect()));
    (side(|p| p.0), side(|p| p.1))
}

/// The median of the pairs' differences.
fn median_difference(pairs: &[(f64, f64)]) -> f64 {
    median(pairs.iter().map(|p| p.0 - p.1).collect())
}

/// One CSV line per round and side, to `G.csv` in the results directory.
struct Csv {
    file: Option<std::fs::File>,
    /// The round under way and its fsync times.
    round: (usize, (f64, f64)),
}

impl Csv {
    fn open() -> Self {
        let file = super::results_dir().and_then(|dir| {
            let mut f = std::fs::File::create(dir.join("G.csv")).ok()?;
            writeln!(
                f,
                "commit,machine,connections,round,side,load,rate_asked,requests_per_s,p50_us,p99_us,fsync_p50_us,fsync_p99_us,steal_pct"
            )
            .ok()?;
            Some(f)
        });
        Self {
            file,
            round: (0, (0.0, 0.0)),
        }
    }

    /// One load run's line.
    fn load(&mut self, connections: usize, side: &str, tool: &str, rate: Option<f64>, load: Load) {
        let (round, fsync) = self.round;
        self.line(&[
            connections.to_string(),
            round.to_string(),
            side.into(),
            tool.into(),
            rate.map_or_else(String::new, |r| format!("{r:.0}")),
            format!("{:.0}", load.rps),
            format!("{:.0}", load.p50_us),
            format!("{:.0}", load.p99_us),
            format!("{:.0}", fsync.0),
            format!("{:.0}", fsync.1),
            String::new(),
        ]);
    }

    /// The round the next lines are of, and the fsync measured in it.
    fn start_round(&mut self, round: usize, fsync: (f64, f64)) {
        self.round = (round, fsync);
    }

    /// A round's own line: the CPU stolen while it ran.
    fn end_round(&mut self, round: usize, steal_pct: f64) {
        let mut fields = vec![String::new(); 11];
        fields[1] = round.to_string();
        fields[2] = "round".into();
        fields[10] = format!("{steal_pct:.2}");
        self.line(&fields);
    }

    fn line(&mut self, fields: &[String]) {
        if let Some(f) = self.file.as_mut() {
            let _ = writeln!(
                f,
                "{},{},{}",
                super::commit(),
                super::machine().replace(',', ";"),
                fields.join(",")
            );
        }
    }
}

/// Seconds per load run and server processes (rounds) for the HTTP cases:
/// at least 5 rounds of 2 s, or 2 of 1 s in a quick run.
pub(crate) fn load_plan(plan: &Plan) -> (u64, usize) {
    let secs = plan.window.as_secs().max(1) + u64::from(plan.rounds > 3);
    let rounds = if plan.rounds > 3 {
        plan.rounds.max(5)
    } else {
        2
    };
    (secs, rounds)
}

/// Case G. `TOLLGATE_BENCH_CLIENTS=8,32,64` picks the connection counts
/// (default all three); the largest one is the saturation target's, and
/// the moderate load runs at half of the bare plugin's rate there.
pub(crate) fn case_g(plan: &Plan) {
    let counts: Vec<usize> = std::env::var("TOLLGATE_BENCH_CLIENTS")
        .ok()
        .map(|v| v.split(',').filter_map(|n| n.trim().parse().ok()).collect())
        .filter(|v: &Vec<usize>| !v.is_empty())
        .unwrap_or_else(|| vec![8, 32, 64]);
    let saturation = counts.iter().copied().max().unwrap_or(64);
    let oha = oha_path().expect(
        "case G needs oha for its open-loop latency (crates/bench/install-tools.sh puts it in target/bench-tools)",
    );
    let (secs, rounds) = load_plan(plan);
    let scripts = tempfile::tempdir().expect("script dir");
    let script = wrk_script(scripts.path());
    let mut csv = Csv::open();
    let (steal0, total0) = cpu_ticks();
    // Per connection count: (licensed, bare) requests/s per round.
    let mut rps: Vec<Vec<(f64, f64)>> = vec![Vec::new(); counts.len()];
    // The ledger writer's CPU per licensed request at saturation, µs, and
    // per commit, µs; licensed requests per commit.
    let (mut writer_us, mut commit_us) = (Vec::new(), Vec::new());
    let (mut per_commit, mut rows_per_commit) = (Vec::new(), Vec::new());
    // Moderate load: (licensed, bare) p50 and p99 per round, and fsync.
    let (mut p50s, mut p99s, mut fsyncs) = (Vec::new(), Vec::new(), Vec::new());
    let mut rate_asked = Vec::new();
    for round in 0..rounds {
        let (s0, t0) = cpu_ticks();
        let server = Server::start();
        let (licensed, bare) = (server.url("licensed"), server.url("bare"));
        // Warm both plugins, the compile cache and the connections.
        wrk(&script, &licensed, 8, 1);
        wrk(&script, &bare, 8, 1);
        let fsync = fsync_us(server.dir.path(), 200);
        fsyncs.push(fsync);
        csv.start_round(round, fsync);
        let mut sides = [("licensed", &licensed), ("bare", &bare)];
        if round % 2 == 1 {
            sides.reverse();
        }
        let mut bare_at_saturation = 0.0;
        for (i, &connections) in counts.iter().enumerate() {
            let mut pair = (0.0, 0.0);
            for (side, url) in sides {
                let before = server.ledger();
                let load = wrk(&script, url, connections, secs);
                if side == "licensed" {
                    if connections == saturation
                        && let (Some(before), Some(after)) = (before, server.ledger())
                        && load.requests > 0.0
                        && after.commits > before.commits
                    {
                        let cpu_us = (after.writer_s - before.writer_s) * 1e6;
                        let commits = after.commits - before.commits;
                        writer_us.push(cpu_us / load.requests);
                        commit_us.push(cpu_us / commits);
                        per_commit.push(load.requests / commits);
                        rows_per_commit.push((after.rows - before.rows) / commits);
                    }
                    pair.0 = load.rps;
                } else {
                    pair.1 = load.rps;
                }
                csv.load(connections, side, "wrk", None, load);
            }
            if connections == saturation {
                bare_at_saturation = pair.1;
            }
            rps[i].push(pair);
        }
        let rate = bare_at_saturation / 2.0;
        rate_asked.push(rate);
        let mut p50 = (0.0, 0.0);
        let mut p99 = (0.0, 0.0);
        for (side, url) in sides {
            let load = run_oha(&oha, url, rate, secs);
            if side == "licensed" {
                (p50.0, p99.0) = (load.p50_us, load.p99_us);
            } else {
                (p50.1, p99.1) = (load.p50_us, load.p99_us);
            }
            csv.load(OHA_CONNECTIONS, side, "oha open loop", Some(rate), load);
        }
        p50s.push(p50);
        p99s.push(p99);
        drop(server);
        let (s1, t1) = cpu_ticks();
        csv.end_round(round, steal_pct(s1 - s0, t1 - t0));
    }
    let (steal1, total1) = cpu_ticks();
    for (i, &connections) in counts.iter().enumerate() {
        ratio_row(
            "G",
            &format!(
                "`tollgate serve` requests/s, wrk with {connections} keep-alive connections (own process), durable ledger on disk; {rounds} server processes"
            ),
            &rps[i],
            0,
            if connections == saturation {
                Ok(Bound::AtLeast(0.90))
            } else {
                Err("report")
            },
        );
    }
    if !writer_us.is_empty() {
        let pairs: Vec<(f64, f64)> = writer_us.iter().map(|&w| (w, 0.0)).collect();
        let first = |p: &[(f64, f64)]| median(p.iter().map(|p| p.0).collect());
        let (lo, hi) = bootstrap(&pairs, first);
        row(
            "G",
            &format!(
                "ledger writer thread's CPU per licensed request under wrk with {saturation} connections (its scheduler time over the run / requests answered), µs; synchronous=FULL"
            ),
            format!("{:.1} (95% CI {lo:.1}–{hi:.1})", first(&pairs)),
            "-".into(),
            "-".into(),
            &format!("≤ 5 µs: {}", verdict(hi <= 5.0)),
        );
        // What that CPU is made of: each commit's share (its fsync, WAL
        // writes and chain head) is spread over the calls it acknowledges.
        let calls = median(per_commit.clone());
        let rows = median(rows_per_commit.clone());
        let commit = median(commit_us.clone());
        row(
            "G",
            &format!(
                "ledger commits under wrk with {saturation} connections: licensed requests (rows) per commit; the writer's CPU per commit (µs) (from the server's /metrics)"
            ),
            format!("{calls:.1} ({rows:.1} rows) per commit"),
            format!("{commit:.0} µs per commit"),
            format!("{:.1} µs per request", commit / calls),
            "explains the writer's CPU",
        );
    }
    let fsync50 = median(fsyncs.iter().map(|f| f.0).collect());
    let fsync99 = median(fsyncs.iter().map(|f| f.1).collect());
    let rate = median(rate_asked);
    for (what, pairs, allowed) in [
        ("p50", &p50s, fsync50 + 50.0),
        ("p99", &p99s, 2.0 * fsync50 + 100.0),
    ] {
        let extra = median_difference(pairs);
        let (_, hi) = bootstrap(pairs, median_difference);
        let (licensed, bare) = side_medians(pairs);
        row(
            "G",
            &format!(
                "`tollgate serve` {what} latency at a moderate load (oha, open loop at {rate:.0} requests/s, half of bare's saturation; corrected for coordinated omission), µs"
            ),
            licensed,
            bare,
            format!("+{extra:.0} µs (95% CI up to +{hi:.0})"),
            &format!(
                "≤ +{allowed:.0} µs ({}fsync {fsync50:.0} µs + {:.0}): {}",
                if what == "p99" { "2 × " } else { "" },
                allowed - if what == "p99" { 2.0 } else { 1.0 } * fsync50,
                verdict(hi <= allowed)
            ),
        );
    }
    say(&format!(
        "\nG: this disk's fsync (4 KiB write + fdatasync, in the state directory's file system): median {fsync50:.0} µs, p99 {fsync99:.0} µs; CPU steal over the case {:.2}%.\n",
        steal_pct(steal1 - steal0, total1 - total0)
    ));
}

fn steal_pct(steal: u64, total: u64) -> f64 {
    if total == 0 {
        0.0
    } else {
        steal as f64 * 100.0 / total as f64
    }
}

pub(crate) fn verdict(met: bool) -> &'static str {
    if met { "met" } else { "missed" }
}
