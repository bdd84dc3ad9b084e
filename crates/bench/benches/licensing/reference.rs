//! Case G': `tollgate serve`, licensed, against `wasmtime serve` (the
//! reference `wasi:http` host, wasmtime-cli 48 built by
//! `crates/bench/install-tools.sh --wasmtime`) running a `wasi:http`
//! component that does the same work (`bench-http`: reads the body, answers
//! the same 16 bytes). Both servers run in processes of their own, a fresh
//! pair every round, and `wrk` loads them one after the other, the order
//! alternating by round. Run it by name (`-- "G'"`); a run of every case
//! leaves it out, since CI does not build wasmtime-cli.

use super::http::{BODY, Server, ok_body, wrk, wrk_script};
use super::{Bound, Plan, guest, ratio_row, say};
use std::io::{BufRead as _, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};

/// Connections at saturation, as in case G.
const CONNECTIONS: usize = 64;

/// Where `wasmtime` is: `TOLLGATE_BENCH_WASMTIME` if set, else
/// `target/bench-tools/bin/wasmtime` (where the install script puts it).
fn wasmtime_path() -> PathBuf {
    std::env::var_os("TOLLGATE_BENCH_WASMTIME")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/../../target/bench-tools/bin/wasmtime"
            ))
        })
}

/// A `wasmtime serve` process of its own, killed when dropped.
struct Reference {
    child: Child,
    url: String,
}

impl Reference {
    /// `wasmtime serve` on a free local port with its best settings here:
    /// the pooling allocator keeping linear memory resident (reset by
    /// `memset`, not `madvise`), `-Scli` for the component's stdio, a fresh
    /// instance per request (its default for WASIp2, as tollgate does).
    fn start(wasmtime: &std::path::Path) -> Self {
        let mut child = Command::new(wasmtime)
            .args(["serve", "--addr", "127.0.0.1:0", "-Scli"])
            .args([
                "-O",
                "pooling-allocator=y,pooling-memory-keep-resident=1048576,pooling-table-keep-resident=65536",
            ])
            .arg(guest("bench-http"))
            .stderr(Stdio::piped())
            .stdout(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| {
                panic!(
                    "case G' needs wasmtime-cli 48 at {} ({e}); run crates/bench/install-tools.sh --wasmtime",
                    wasmtime.display()
                )
            });
        let stderr = child.stderr.take().expect("wasmtime stderr");
        let mut lines = BufReader::new(stderr).lines();
        let url = lines
            .by_ref()
            .map_while(Result::ok)
            .find_map(|l| {
                l.strip_prefix("Serving HTTP on ")
                    .map(|u| u.trim_end_matches('/').to_string())
            })
            .expect("wasmtime serve printed no address");
        // Keep draining its stderr so that it never blocks on a full pipe.
        std::thread::spawn(move || lines.for_each(drop));
        Self { child, url }
    }
}

impl Drop for Reference {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The body of the answer to a POST of the bench body to `url`.
fn answer(url: &str) -> String {
    ok_body(ureq::post(url).send(BODY), &format!("POST {url}"))
}

/// Case G'.
pub(crate) fn case_g_prime(plan: &Plan) {
    let wasmtime = wasmtime_path();
    let (secs, rounds) = super::http::load_plan(plan);
    let scripts = tempfile::tempdir().expect("script dir");
    let script = wrk_script(scripts.path());
    let version = Command::new(&wasmtime)
        .arg("--version")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default();
    // (licensed, reference) and (bare, reference) requests/s per round.
    let (mut licensed_pairs, mut bare_pairs) = (Vec::new(), Vec::new());
    for round in 0..rounds {
        let server = Server::start();
        let reference = Reference::start(&wasmtime);
        let (licensed, bare) = (server.url("licensed"), server.url("bare"));
        // The same work: both hosts answer the body with the same bytes.
        assert_eq!(answer(&licensed), answer(&reference.url), "same answer");
        for url in [&licensed, &bare, &reference.url] {
            wrk(&script, url, 8, 1);
        }
        let mut sides = vec![
            ("licensed", &licensed),
            ("bare", &bare),
            ("wasmtime", &reference.url),
        ];
        if round % 2 == 1 {
            sides.reverse();
        }
        let (mut l, mut b, mut w) = (0.0, 0.0, 0.0);
        for (side, url) in sides {
            let rps = wrk(&script, url, CONNECTIONS, secs).rps;
            match side {
                "licensed" => l = rps,
                "bare" => b = rps,
                _ => w = rps,
            }
        }
        licensed_pairs.push((l, w));
        bare_pairs.push((b, w));
        drop(reference);
        drop(server);
    }
    for (what, pairs, target) in [
        ("licensed", &licensed_pairs, true),
        ("bare", &bare_pairs, false),
    ] {
        ratio_row(
            "G'",
            &format!(
                "`tollgate serve` {what} vs `wasmtime serve` ({version}, pooling, keep-resident memory, a fresh instance per request) on the same work, requests/s, wrk with {CONNECTIONS} connections; {rounds} process pairs"
            ),
            pairs,
            0,
            if target {
                Ok(Bound::AtLeast(1.8))
            } else {
                Err("report")
            },
        );
    }
    say("");
}
