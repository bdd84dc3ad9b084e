//! Case P: many small plugins. With a warm compile cache, how long a host
//! takes to load N distinct small plugins, and what each costs resident.
//!
//! The plugins are the small licensed hello guest, each with a custom
//! section naming it, so each has its own digest and its own compile-cache
//! entry, as N plugin authors' components would. The cache is filled by a
//! process of its own (this bench binary started again with
//! [`FILL_ENV`]), so the measuring process starts with none of the cold
//! compiles' memory to reuse.

use super::{LICENSE, Plan, env_number, guest, row, rss_bytes};
use std::path::Path;
use std::sync::Arc;
use std::time::Instant;
use tollgate::{Host, PluginSpec, Seats, Terms};

/// The environment variable that makes this binary fill a compile cache:
/// its value is the cache directory; [`COUNT_ENV`] says how many plugins.
pub(crate) const FILL_ENV: &str = "TOLLGATE_BENCH_P_FILL";
/// How many plugins case P loads (default 1,000; 30 with `--quick`).
const COUNT_ENV: &str = "TOLLGATE_BENCH_P_PLUGINS";

/// `component` with a custom section `tollgate-bench` holding `i` appended:
/// the same code, another digest.
fn distinct(component: &[u8], i: usize) -> Arc<[u8]> {
    let name = b"tollgate-bench";
    let payload = i.to_le_bytes();
    let mut section = Vec::new();
    leb128(&mut section, name.len());
    section.extend_from_slice(name);
    section.extend_from_slice(&payload);
    let mut out = component.to_vec();
    out.push(0); // custom section id
    leb128(&mut out, section.len());
    out.extend_from_slice(&section);
    out.into()
}

/// Appends `n` as unsigned LEB128.
fn leb128(out: &mut Vec<u8>, mut n: usize) {
    loop {
        let byte = (n & 0x7f) as u8;
        n >>= 7;
        if n == 0 {
            out.push(byte);
            return;
        }
        out.push(byte | 0x80);
    }
}

/// A host with the compile cache `cache` and `count` distinct small plugins
/// loaded; returns it with how many came from the cache.
fn load_all(cache: &Path, count: usize) -> (Host, usize) {
    let host = Host::builder()
        .license(LICENSE, Terms::new(Seats::Unlimited))
        .compile_cache(cache)
        .build()
        .expect("host");
    let base = std::fs::read(guest("hello-licensed")).expect("hello-licensed guest");
    let mut cached = 0;
    for i in 0..count {
        let plugin = host
            .load_plugin(PluginSpec::bytes(format!("p{i}"), distinct(&base, i)).requires(LICENSE))
            .expect("load");
        cached += usize::from(plugin.from_cache());
    }
    (host, cached)
}

/// The plugin count: [`COUNT_ENV`], else `default`.
fn count(default: usize) -> usize {
    env_number(COUNT_ENV, default)
}

/// Fills the compile cache `cache` (the child process's whole work).
pub(crate) fn fill(cache: &Path) {
    let (_, cached) = load_all(cache, count(0));
    assert_eq!(cached, 0, "the cache was empty");
}

/// Case P.
pub(crate) fn case_p(plan: &Plan) {
    let n = count(if plan.rounds > 3 { 1_000 } else { 30 });
    let scratch = tempfile::Builder::new()
        .prefix("tollgate-bench-p-")
        .tempdir()
        .expect("scratch dir");
    let cache = scratch.path().join("cache");
    let started = Instant::now();
    let filled = std::process::Command::new(std::env::current_exe().expect("this bench's path"))
        .env(FILL_ENV, &cache)
        .env(COUNT_ENV, n.to_string())
        .status()
        .expect("start the cache filler");
    assert!(filled.success(), "the cache filler failed: {filled}");
    let cold = started.elapsed().as_secs_f64();
    let before = rss_bytes();
    let t = Instant::now();
    let (host, cached) = load_all(&cache, n);
    let warm = t.elapsed().as_secs_f64();
    let per_plugin = rss_bytes().saturating_sub(before) as f64 / n as f64;
    assert_eq!(cached, n, "every plugin came from the cache");
    // Each answers.
    for i in [0, n / 2, n - 1] {
        host.invoke(&format!("p{i}"), b"x")
            .expect("a loaded plugin answers");
    }
    let scaled = warm * 1_000.0 / n as f64;
    row(
        "P",
        &format!(
            "{n} distinct small plugins loaded with a warm compile cache (s; compiling them first, in a process of its own, took {cold:.1} s)"
        ),
        format!("{warm:.2}"),
        "-".into(),
        format!("{scaled:.2} s per 1,000"),
        &format!(
            "< 5 s per 1,000: {}",
            if scaled < 5.0 { "met" } else { "missed" }
        ),
    );
    let kib = per_plugin / 1024.0;
    row(
        "P",
        &format!("resident memory per loaded plugin, {n} loaded from the cache (KiB)"),
        format!("{kib:.0}"),
        "-".into(),
        "-".into(),
        &format!("< 1 MiB: {}", if kib < 1024.0 { "met" } else { "missed" }),
    );
}
