//! Issued licenses end to end through the `tollgate` binary: keygen, sign,
//! trust, install, run, status, usage, audit, revoke — every bad input
//! rejected with nothing changed — and kill -9 recovery.

use serde_json::Value;
use std::os::unix::fs::MetadataExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_tollgate");
/// User and group id of `nobody`, for checks that root would pass.
const NOBODY: u32 = 65534;

fn guest(name: &str) -> String {
    test_guests::path(name).to_owned()
}

/// A scratch directory with a state directory and an issuer key.
struct Env {
    root: tempfile::TempDir,
}

impl Env {
    fn new(tag: &str) -> Self {
        let root = tempfile::Builder::new()
            .prefix(&format!("tollgate-issued-{tag}-"))
            .tempdir()
            .expect("scratch dir");
        Self { root }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.root.path().join(name)
    }

    fn p(&self, name: &str) -> String {
        self.path(name).to_string_lossy().into_owned()
    }

    fn command(&self, args: &[&str]) -> Command {
        let mut c = Command::new(BIN);
        c.args(args)
            .env("TOLLGATE_STATE", self.path("state"))
            .env_remove("TOLLGATE_LOG");
        c
    }

    fn tg(&self, args: &[&str]) -> Output {
        self.command(args).output().expect("tollgate runs")
    }

    /// Runs and expects exit `code`; returns stdout + stderr.
    fn expect(&self, code: i32, args: &[&str]) -> String {
        let o = self.tg(args);
        let all = format!(
            "{}{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        );
        assert_eq!(o.status.code(), Some(code), "tollgate {args:?}:\n{all}");
        assert!(!all.contains("panicked"), "{all}");
        all
    }

    fn json(&self, args: &[&str]) -> Value {
        let o = self.tg(args);
        assert_eq!(
            o.status.code(),
            Some(0),
            "{}",
            String::from_utf8_lossy(&o.stderr)
        );
        serde_json::from_slice(&o.stdout).expect("JSON output")
    }

    /// keygen + trust: returns the issuer key path.
    fn issuer(&self, name: &str, trust: bool) -> String {
        self.expect(0, &["issuer", "keygen", "--out", &self.p(name)]);
        if trust {
            self.expect(0, &["trust", "add", &self.p(&format!("{name}/issuer.pub"))]);
        }
        self.p(&format!("{name}/issuer.key"))
    }

    /// Signs license `id` with `seats` seats and nothing else into `out`.
    fn license(&self, key: &str, out: &str, id: &str, seats: u32) -> String {
        self.sign(
            key,
            out,
            &["--license-id", id, "--seats", &seats.to_string()],
        )
    }

    fn sign(&self, key: &str, out: &str, extra: &[&str]) -> String {
        let out = self.p(out);
        let mut args = vec!["issuer", "sign", "--key", key, "--out", &out];
        args.extend_from_slice(extra);
        self.expect(0, &args);
        out
    }
}

fn counters<'a>(status: &'a Value, id: &str) -> &'a Value {
    let license = status
        .as_array()
        .expect("status array")
        .iter()
        .find(|l| l["id"] == id)
        .expect("license in status");
    &license["counters"]
}

fn reclaims(c: &Value) -> u64 {
    c["reclaims"]
        .as_object()
        .expect("reclaims")
        .values()
        .filter_map(Value::as_u64)
        .sum()
}

#[test]
fn keygen_sign_trust_install_run_report_audit_revoke() {
    let env = Env::new("path");
    let key = env.issuer("keys", false);
    let mode = std::os::unix::fs::PermissionsExt::mode(
        &std::fs::metadata(&key).expect("key").permissions(),
    );
    assert_eq!(mode & 0o777, 0o600, "secret key is private");
    let lic = env.sign(
        &key,
        "acme.license",
        &[
            "--license-id",
            "acme",
            "--seats",
            "2",
            "--expires",
            "2099-01-01",
            "--customer",
            "ACME Corp",
        ],
    );
    let text = std::fs::read_to_string(&lic).expect("license file");
    assert!(
        text.starts_with("tollgate-license v1\n") && text.contains("customer: ACME Corp"),
        "{text}"
    );

    // Not trusted yet: refused, nothing installed.
    let out = env.expect(2, &["license", "install", &lic]);
    assert!(out.contains("does not trust"), "{out}");
    env.expect(
        0,
        &[
            "trust",
            "add",
            &env.p("keys/issuer.pub"),
            "--name",
            "acme-issuer",
        ],
    );
    assert_eq!(
        env.json(&["trust", "list", "--json"])[0]["name"],
        "acme-issuer"
    );
    let out = env.expect(0, &["license", "install", &lic]);
    assert!(out.contains("installed license acme: 2 seat(s)"), "{out}");
    let out = env.expect(0, &["license", "install", &lic]);
    assert!(out.contains("already installed; nothing changed"), "{out}");
    // A second grant adds its seats.
    let more = env.license(&key, "more.license", "acme", 1);
    env.expect(0, &["license", "install", &more]);
    assert_eq!(
        env.json(&["license", "list", "--json"])
            .as_array()
            .map(Vec::len),
        Some(2)
    );

    let hello = guest("hello-licensed");
    let out = env.expect(
        0,
        &[
            "run",
            &hello,
            "--requires",
            "acme",
            "--repeat",
            "40",
            "--concurrency",
            "2",
            "--input",
            "/dev/null",
        ],
    );
    assert!(out.contains("40 calls: 40 ok"), "{out}");
    env.expect(3, &["run", &guest("no-license"), "--requires", "acme"]);
    env.expect(4, &["run", &guest("trapper"), "--requires", "acme"]);

    let status = env.json(&["status", "--json"]);
    assert_eq!(status[0]["seats"], 3);
    assert_eq!(status[0]["issued_by"].as_object().map(|m| m.len()), Some(1));
    let c = counters(&status, "acme");
    assert_eq!(
        (
            c["checkouts"].as_u64(),
            c["releases"].as_u64(),
            c["withheld"].as_u64()
        ),
        (Some(41), Some(40), Some(1))
    );
    assert_eq!(c["reclaims"]["trapped"], 1);
    assert_eq!(c["in_use"], 0);
    assert!(c["peak"].as_u64().is_some_and(|p| (1..=2).contains(&p)));
    let table = env.expect(0, &["status"]);
    assert!(
        table.contains("acme") && table.contains("active"),
        "{table}"
    );

    let usage = env.json(&["usage", "--format", "json"]);
    let row = |plugin: &str| {
        usage
            .as_array()
            .expect("rows")
            .iter()
            .find(|r| r["plugin"] == plugin)
            .cloned()
            .expect("row")
    };
    assert_eq!(row("hello_licensed")["checkouts"], 40);
    assert_eq!(row("no_license")["withheld"], 1);
    assert_eq!(row("trapper")["reclaims"], 1);
    let csv = env.expect(0, &["usage", "--format", "csv", "--plugin", "trapper"]);
    assert!(
        csv.starts_with("day,license_id,plugin,checkouts") && csv.lines().count() == 2,
        "{csv}"
    );
    let none = env.json(&["usage", "--format", "json", "--since", "2099-01-01"]);
    assert_eq!(none.as_array().map(Vec::len), Some(0));

    let out = env.expect(0, &["audit", "verify"]);
    assert!(out.contains("ledger verified"), "{out}");

    env.expect(0, &["license", "revoke", "acme"]);
    let out = env.expect(3, &["run", &hello, "--requires", "acme"]);
    assert!(out.contains("refused: revoked"), "{out}");
    assert_eq!(env.json(&["status", "--json"])[0]["revoked"], true);

    // Editing a row is caught.
    let db = rusqlite::Connection::open(env.path("state/tollgate.db")).expect("db");
    db.execute(
        "UPDATE ledger SET plugin = 'someone-else' WHERE seq = 5",
        [],
    )
    .expect("tamper");
    let out = env.expect(5, &["audit", "verify"]);
    assert!(out.contains("row 5 does not match its hash"), "{out}");
}

#[test]
fn plugin_rules_and_trials() {
    let env = Env::new("rules");
    let key = env.issuer("keys", true);
    let lic = env.sign(
        &key,
        "only.license",
        &[
            "--license-id",
            "pro",
            "--seats",
            "5",
            "--plugin",
            "someone-else",
        ],
    );
    env.expect(0, &["license", "install", &lic]);
    let out = env.expect(3, &["run", &guest("hello-licensed"), "--requires", "pro"]);
    assert!(out.contains("refused: not-entitled"), "{out}");
    // By digest: the same component is entitled under any name.
    let bytes = std::fs::read(guest("hello-licensed")).expect("guest");
    let digest: String = sha256_hex(&bytes);
    let by_digest = env.sign(
        &key,
        "digest.license",
        &[
            "--license-id",
            "pinned",
            "--seats",
            "1",
            "--plugin",
            &format!("sha256:{digest}"),
        ],
    );
    env.expect(0, &["license", "install", &by_digest]);
    env.expect(
        0,
        &[
            "run",
            &guest("hello-licensed"),
            "--requires",
            "pinned",
            "--name",
            "renamed",
        ],
    );
    // Trial licenses are counted but never billed.
    env.expect(
        0,
        &["run", &guest("hello-licensed"), "--license", "trial=1"],
    );
    let usage = env.json(&["usage", "--format", "json", "--license", "trial"]);
    assert_eq!(usage.as_array().map(Vec::len), Some(0), "{usage}");
    let out = env.expect(2, &["run", &guest("hello-licensed"), "--license", "pro=1"]);
    assert!(out.contains("same id as an installed license"), "{out}");
}

fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(bytes))
}

#[test]
fn bad_input_is_rejected_and_changes_nothing() {
    let env = Env::new("bad");
    let key = env.issuer("keys", true);
    let other = env.issuer("other", false);
    let good = env.license(&key, "good.license", "acme", 2);
    env.expect(0, &["license", "install", &good]);
    let text = std::fs::read_to_string(&good).expect("license");
    let snapshot = || {
        (
            env.json(&["license", "list", "--json"]),
            env.json(&["trust", "list", "--json"]),
            env.json(&["status", "--json"]),
        )
    };
    let before = snapshot();

    let write = |name: &str, body: &[u8]| {
        let p = env.path(name);
        std::fs::write(&p, body).expect("write");
        p.to_string_lossy().into_owned()
    };
    let sig_line = text
        .lines()
        .find(|l| l.starts_with("signature: "))
        .expect("signature")
        .to_string();
    let flipped = {
        let mut chars: Vec<char> = sig_line.chars().collect();
        chars[15] = if chars[15] == 'A' { 'B' } else { 'A' };
        chars.into_iter().collect::<String>()
    };
    let cases: Vec<(String, &str)> = vec![
        (
            write(
                "terms.license",
                text.replace("seats: 2", "seats: 200").as_bytes(),
            ),
            "signature does not match the license terms",
        ),
        (
            write(
                "customer.license",
                text.replace("license-id: acme", "license-id: acme\ncustomer: Mallory")
                    .as_bytes(),
            ),
            "signature does not match",
        ),
        (
            write("sig.license", text.replace(&sig_line, &flipped).as_bytes()),
            "signature does not match",
        ),
        (
            write(
                "trunc.license",
                text.replace(&sig_line, &sig_line[..30]).as_bytes(),
            ),
            "signature does not match",
        ),
        (
            env.license(&other, "untrusted.license", "acme", 9),
            "which this host does not trust",
        ),
        (
            env.sign(
                &key,
                "expired.license",
                &[
                    "--license-id",
                    "acme",
                    "--seats",
                    "9",
                    "--expires",
                    "2001-01-01",
                ],
            ),
            "the license expired at 2001-01-01T00:00:00Z",
        ),
        // A license whose window starts later is a renewal installed ahead
        // of time, not bad input (see `a_renewal_installed_ahead_waits_for_its_window`).
        (
            write(
                "v9.license",
                text.replace("tollgate-license v1", "tollgate-license v9")
                    .as_bytes(),
            ),
            "license format `tollgate-license v9` is not supported",
        ),
        (
            write("junk.license", b"this is not a license\n"),
            "not a tollgate license file",
        ),
        (write("binary.license", &[0xff, 0x00, 0xfe]), "not UTF-8"),
        (
            write("huge.license", &vec![b'x'; 200_000]),
            "larger than any license file",
        ),
        (env.p("missing.license"), "cannot read"),
    ];
    for (file, needle) in &cases {
        let out = env.expect(2, &["license", "install", file]);
        assert!(out.contains(needle), "{file}: expected {needle:?} in {out}");
        assert!(out.contains("was not installed"), "{out}");
    }
    // Keys and key files.
    let out = env.expect(2, &["trust", "add", &good]);
    assert!(out.contains("not an issuer public key"), "{out}");
    let out = env.expect(
        2,
        &[
            "issuer",
            "sign",
            "--key",
            &env.p("keys/issuer.pub"),
            "--license-id",
            "x",
            "--seats",
            "1",
            "--out",
            &env.p("x"),
        ],
    );
    assert!(out.contains("not an issuer secret key"), "{out}");
    let out = env.expect(2, &["issuer", "keygen", "--out", &env.p("keys")]);
    assert!(out.contains("exists already; pass --force"), "{out}");
    let out = env.expect(2, &["license", "revoke", "nope"]);
    assert!(out.contains("no license \"nope\" is installed"), "{out}");
    assert_eq!(snapshot(), before, "nothing changed");
}

#[test]
fn broken_state_is_named() {
    let env = Env::new("state");
    // A corrupt database.
    std::fs::create_dir_all(env.path("corrupt")).expect("dir");
    std::fs::write(env.path("corrupt/tollgate.db"), vec![0x5a; 16384]).expect("write");
    let out = env.expect(2, &["status", "--state", &env.p("corrupt")]);
    assert!(
        out.contains("damaged or not a tollgate database") && out.contains("move it aside"),
        "{out}"
    );
    assert_eq!(
        std::fs::read(env.path("corrupt/tollgate.db"))
            .expect("db")
            .len(),
        16384,
        "left untouched"
    );
    // A state directory that cannot be created.
    std::fs::write(env.path("a-file"), "x").expect("write");
    let out = env.expect(2, &["status", "--state", &env.p("a-file/state")]);
    assert!(out.contains("cannot use state directory"), "{out}");
    // A directory without permission. Root may use any directory, so a test
    // run as root runs this host as user nobody, who must get through the
    // scratch dir (made 0700) for the refusal to come from this directory.
    std::fs::set_permissions(
        env.root.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .expect("chmod");
    std::fs::create_dir_all(env.path("locked-dir")).expect("dir");
    std::fs::set_permissions(
        env.path("locked-dir"),
        std::os::unix::fs::PermissionsExt::from_mode(0o500),
    )
    .expect("chmod");
    let mut status = env.command(&["status", "--state", &env.p("locked-dir")]);
    let owner = std::fs::metadata(env.path("locked-dir"))
        .expect("dir")
        .uid();
    if owner == 0 {
        status.uid(NOBODY).gid(NOBODY);
    }
    let o = status.output().expect("tollgate runs");
    let out = format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    assert_eq!(o.status.code(), Some(2), "{out}");
    assert!(
        out.contains("cannot use state directory") && out.contains("Permission denied"),
        "{out}"
    );
    // A database another process holds locked.
    env.expect(0, &["status"]);
    let db = rusqlite::Connection::open(env.path("state/tollgate.db")).expect("db");
    db.execute_batch("BEGIN EXCLUSIVE; INSERT INTO revocations VALUES ('held', 0);")
        .expect("lock");
    let key = env.issuer("keys", false);
    let out = env.expect(2, &["trust", "add", &env.p("keys/issuer.pub")]);
    assert!(out.contains("locked by another process"), "{out}");
    db.execute_batch("ROLLBACK").expect("unlock");
    let _ = key;
    // One host per state directory: a second host is refused while one runs
    // (this one holds a seat for 30 s, and is killed before).
    std::fs::write(env.path("hold"), "30000").expect("input");
    let opened = env.path("holder.acks");
    let mut running = env
        .command(&[
            "run",
            &guest("slow"),
            "--license",
            "t=1",
            "--timeout",
            "60s",
            "--input",
            &env.p("hold"),
            "--ack-log",
            &env.p("holder.acks"),
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn");
    // `run` opens its ack log once its host holds the state directory.
    let deadline = Instant::now() + Duration::from_secs(60);
    while !opened.exists() {
        if let Some(exit) = running.try_wait().expect("holder") {
            panic!("the first host ended before it ran its call: {exit}");
        }
        assert!(Instant::now() < deadline, "the first host never started");
        std::thread::sleep(Duration::from_millis(5));
    }
    let out = env.expect(2, &["run", &guest("hello-licensed"), "--license", "t=1"]);
    assert!(out.contains("another tollgate host is running"), "{out}");
    let _ = running.kill();
    let _ = running.wait();
}

/// Kills `tollgate run` with SIGKILL at random moments while calls run,
/// restarts, and checks that no acknowledged call's events are missing, the
/// chain verifies, and every seat is free.
#[test]
fn kill_nine_loses_no_acknowledged_call_and_no_seat() {
    let env = Env::new("crash");
    let key = env.issuer("keys", true);
    let lic = env.license(&key, "crash.license", "crash", 2);
    env.expect(0, &["license", "install", &lic]);
    let input = env.path("input");
    std::fs::write(&input, "3").expect("input");
    let acks = env.p("acks.txt");
    let rounds = 4;
    let mut seed = std::process::id() as u64;
    for round in 0..rounds {
        let mut child = env
            .command(&[
                "run",
                &guest("slow"),
                "--requires",
                "crash",
                "--repeat",
                "1000000",
                "--concurrency",
                "2",
                "--wait",
                "5s",
                "--input",
                &input.to_string_lossy(),
                "--ack-log",
                &acks,
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn");
        seed = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        let wait_ms = 400 + (seed >> 33) % 600;
        // Not a wait for anything: the kill lands at a random moment of the
        // run, which is what this test is about.
        std::thread::sleep(Duration::from_millis(wait_ms));
        child.kill().expect("SIGKILL");
        let status = child.wait().expect("reaped");
        assert!(!status.success(), "round {round}: killed, not finished");
    }
    // Restart: a new host reclaims what the dead one left open.
    env.expect(0, &["run", &guest("hello-licensed"), "--requires", "crash"]);
    let acked: Vec<(u64, String)> = std::fs::read_to_string(&acks)
        .expect("ack log")
        .lines()
        .filter_map(|l| {
            l.split_once(' ')
                .and_then(|(i, o)| Some((i.parse().ok()?, o.to_string())))
        })
        .collect();
    assert!(
        acked.len() > 20,
        "calls were acknowledged before each kill: {}",
        acked.len()
    );
    let db = rusqlite::Connection::open(env.path("state/tollgate.db")).expect("db");
    for (invocation, outcome) in &acked {
        let rows: Vec<String> = db
            .prepare("SELECT kind FROM ledger WHERE invocation_id = ?1 ORDER BY seq")
            .and_then(|mut s| {
                s.query_map([invocation], |r| r.get(0))
                    .and_then(Iterator::collect)
            })
            .expect("query");
        match outcome.as_str() {
            "ok" => assert_eq!(
                rows,
                vec!["checkout", "release", "return"],
                "acknowledged call {invocation}"
            ),
            other => assert!(
                !rows.is_empty(),
                "acknowledged {other} call {invocation} has no events"
            ),
        }
    }
    let out = env.expect(0, &["audit", "verify"]);
    assert!(out.contains("ledger verified"), "{out}");
    let status = env.json(&["status", "--json"]);
    let c = counters(&status, "crash");
    assert_eq!(c["in_use"], 0, "{c}");
    assert_eq!(
        c["checkouts"].as_u64(),
        Some(c["releases"].as_u64().unwrap_or(0) + reclaims(c)),
        "{c}"
    );
    eprintln!(
        "crash test: {rounds} kills, {} acknowledged calls, {} host-restart reclaims",
        acked.len(),
        c["reclaims"]["host-restart"]
    );
    let open: u64 = db
        .query_row(
            "SELECT count(*) FROM ledger c WHERE kind = 'checkout' AND NOT EXISTS
             (SELECT 1 FROM ledger e WHERE e.seat_id = c.seat_id AND e.kind = 'return')",
            [],
            |r| r.get(0),
        )
        .expect("seats never returned");
    assert_eq!(open, 0);
    let _ = Path::new(&acks);
}

/// Grants are enforced one by one from the command line: a renewal is
/// installed ahead of time and gives no seat before its window; revoking
/// one grant leaves the other; revoking the id covers grants installed
/// later until `unrevoke`.
#[test]
fn grants_are_revoked_one_by_one_or_all_and_renewals_wait_for_their_window() {
    let env = Env::new("grants");
    let key = env.issuer("keys", true);
    let renewal = env.sign(
        &key,
        "renewal.license",
        &[
            "--license-id",
            "acme",
            "--seats",
            "4",
            "--not-before",
            "2098-01-01",
        ],
    );
    let out = env.expect(0, &["license", "install", &renewal]);
    assert!(
        out.contains("comes into force at 2098-01-01T00:00:00Z"),
        "{out}"
    );
    let hello = guest("hello-licensed");
    let out = env.expect(3, &["run", &hello, "--requires", "acme"]);
    assert!(
        out.contains("refused: expired"),
        "no seat before its window: {out}"
    );

    let now = env.license(&key, "now.license", "acme", 1);
    env.expect(0, &["license", "install", &now]);
    env.expect(0, &["run", &hello, "--requires", "acme"]);
    let listed = env.json(&["license", "list", "--json"]);
    let grant_of = |file: &str| {
        let text = std::fs::read_to_string(file).expect("license");
        text.lines()
            .find_map(|l| l.strip_prefix("grant: "))
            .expect("grant line")
            .to_string()
    };
    assert!(listed.to_string().contains(&grant_of(&now)), "{listed}");
    let current = grant_of(&now);
    let out = env.expect(0, &["license", "revoke", "--grant", &current]);
    assert!(
        out.contains(&format!("grant {current} of license acme revoked")),
        "{out}"
    );
    let out = env.expect(3, &["run", &hello, "--requires", "acme"]);
    assert!(
        out.contains("refused: "),
        "only the future grant is left: {out}"
    );
    let out = env.expect(2, &["license", "revoke", "--grant", "no-such-grant"]);
    assert!(
        out.contains("no grant \"no-such-grant\" is installed"),
        "{out}"
    );

    // Revoking the id also covers a grant installed afterwards.
    env.expect(0, &["license", "revoke", "acme"]);
    let later = env.license(&key, "later.license", "acme", 2);
    let out = env.expect(0, &["license", "install", &later]);
    assert!(out.contains("license acme is revoked"), "{out}");
    let out = env.expect(3, &["run", &hello, "--requires", "acme"]);
    assert!(out.contains("refused: revoked"), "{out}");
    let out = env.expect(0, &["license", "unrevoke", "acme"]);
    assert!(out.contains("no longer revoked"), "{out}");
    env.expect(0, &["run", &hello, "--requires", "acme"]);
    let status = env.json(&["status", "--json"]);
    assert_eq!(
        status[0]["seats"], 2,
        "only the later grant is in force: {status}"
    );
    let grants = status[0]["grants"].as_array().expect("grants");
    assert_eq!(grants.len(), 3, "{status}");
    let shown = |id: &str| {
        grants
            .iter()
            .find(|g| g["grant_id"] == id)
            .cloned()
            .expect("grant in status")
    };
    assert_eq!(shown(&current)["revoked"], true);
    assert_eq!(shown(&grant_of(&renewal))["in_force"], false);
    assert_eq!(shown(&grant_of(&later))["in_force"], true);
    assert_eq!(shown(&grant_of(&later))["in_use"], 0);
    let table = env.expect(0, &["status"]);
    for needle in [
        format!("grant {current}"),
        "revoked".to_string(),
        "not yet".to_string(),
        "in force".to_string(),
    ] {
        assert!(table.contains(&needle), "{needle} in {table}");
    }
    let out = env.expect(0, &["audit", "verify"]);
    assert!(out.contains("ledger verified"), "{out}");
}

/// The `grant:` line of a license file.
fn grant_in(file: &str) -> String {
    std::fs::read_to_string(file)
        .expect("license")
        .lines()
        .find_map(|l| l.strip_prefix("grant: "))
        .expect("grant line")
        .to_string()
}

/// The license report of `id` in `status --json`.
fn report<'a>(status: &'a Value, id: &str) -> &'a Value {
    status
        .as_array()
        .expect("status array")
        .iter()
        .find(|l| l["id"] == id)
        .expect("license in status")
}

impl Env {
    /// keygen + `trust add --name NAME [extra]`: returns the key path.
    fn named_issuer(&self, dir: &str, name: &str, extra: &[&str]) -> String {
        let key = self.issuer(dir, false);
        let public = self.p(&format!("{dir}/issuer.pub"));
        let mut args = vec!["trust", "add", &public, "--name", name];
        args.extend_from_slice(extra);
        self.expect(0, &args);
        key
    }

    /// Copies the grants of `license` from another state directory's
    /// database into this one's with SQL, bypassing `license install`.
    fn insert_grant_rows(&self, from_state: &str, license: &str) {
        let db = rusqlite::Connection::open(self.path("state/tollgate.db")).expect("db");
        db.execute(
            "ATTACH DATABASE ?1 AS other",
            [self.p(&format!("{from_state}/tollgate.db"))],
        )
        .expect("attach");
        let n = db
            .execute(
                "INSERT INTO grants SELECT * FROM other.grants WHERE license_id = ?1",
                [license],
            )
            .expect("insert");
        assert!(n > 0, "no grant of {license} to copy");
    }
}

#[test]
fn an_issuer_cannot_grant_an_id_another_issuer_granted() {
    let env = Env::new("taken");
    let a = env.named_issuer("a", "vendor-a", &[]);
    let b = env.named_issuer("b", "vendor-b", &[]);
    let mine = env.license(&a, "a.license", "acme", 1);
    env.expect(0, &["license", "install", &mine]);
    // Another trusted issuer signs the same id with more seats.
    let theirs = env.license(&b, "b.license", "acme", 5);
    let out = env.expect(2, &["license", "install", &theirs]);
    assert!(
        out.contains("acme is already granted by issuer \"vendor-a\"")
            && out.contains("issuer \"vendor-b\" may grant it too only if")
            && out.contains("tollgate trust scope vendor-b --ids acme")
            && out.contains("tollgate trust scope vendor-a --ids acme"),
        "{out}"
    );
    let status = env.json(&["status", "--json"]);
    let acme = report(&status, "acme");
    assert_eq!(acme["seats"], 1, "{status}");
    assert_eq!(acme["issued_by"].as_object().map(|m| m.len()), Some(1));
    assert_eq!(
        env.json(&["license", "list", "--json"])
            .as_array()
            .map(Vec::len),
        Some(1),
        "nothing was installed"
    );
    // Another id stays open to the second issuer (the default scope `*`).
    let other = env.license(&b, "w.license", "widget", 2);
    env.expect(0, &["license", "install", &other]);
}

#[test]
fn a_grant_outside_its_issuers_scope_is_refused() {
    let env = Env::new("outside");
    let a = env.named_issuer("a", "vendor-a", &["--ids", "acme-*", "tools.?"]);
    let b = env.named_issuer("b", "vendor-b", &[]);
    let list = env.json(&["trust", "list", "--json"]);
    let scope_of = |name: &str| {
        list.as_array()
            .expect("issuers")
            .iter()
            .find(|i| i["name"] == name)
            .map(|i| i["scope"].clone())
            .expect("issuer listed")
    };
    assert_eq!(
        scope_of("vendor-a"),
        serde_json::json!(["acme-*", "tools.?"])
    );
    assert_eq!(scope_of("vendor-b"), serde_json::json!(["*"]));
    for id in ["acme-pro", "tools.x"] {
        let lic = env.license(&a, &format!("{id}.license"), id, 1);
        env.expect(0, &["license", "install", &lic]);
    }
    for id in ["other", "acme", "tools.xy"] {
        let lic = env.license(&a, &format!("{id}.license"), id, 1);
        let out = env.expect(2, &["license", "install", &lic]);
        assert!(
            out.contains(&format!(
                "issuer \"vendor-a\" (key {}) may grant only ids in its scope [acme-*, tools.?], and {id} is not one",
                issuer_in(&env.p("acme-pro.license"))
            )) && out.contains(&format!("tollgate trust scope vendor-a --ids {id}")),
            "{out}"
        );
    }
    // The default scope does not reach ids another issuer names explicitly.
    let lic = env.license(&b, "basic.license", "acme-basic", 1);
    let out = env.expect(2, &["license", "install", &lic]);
    assert!(
        out.contains("the scope of issuer \"vendor-a\" names it explicitly"),
        "{out}"
    );
    let lic = env.license(&b, "free.license", "free", 1);
    env.expect(0, &["license", "install", &lic]);
    let out = env.expect(2, &["trust", "add", &env.p("b/issuer.pub"), "--ids", "a b"]);
    assert!(out.contains("is not a license id pattern"), "{out}");
    assert_eq!(
        env.json(&["license", "list", "--json"])
            .as_array()
            .map(Vec::len),
        Some(3)
    );
}

/// The `issuer:` line (the signing key's id) of a license file.
fn issuer_in(file: &str) -> String {
    std::fs::read_to_string(file)
        .expect("license")
        .lines()
        .find_map(|l| l.strip_prefix("issuer: "))
        .expect("issuer line")
        .to_string()
}

#[test]
fn a_rotated_key_with_the_same_name_keeps_the_scope() {
    let env = Env::new("rotate");
    let old = env.named_issuer("old", "vendor-a", &["--ids", "acme-*"]);
    let lic = env.license(&old, "old.license", "acme-pro", 1);
    env.expect(0, &["license", "install", &lic]);
    // The new key is added with the issuer's name and no --ids.
    let new = env.named_issuer("new", "vendor-a", &[]);
    let list = env.json(&["trust", "list", "--json"]);
    assert_eq!(list.as_array().map(Vec::len), Some(2));
    for issuer in list.as_array().expect("issuers") {
        assert_eq!(issuer["name"], "vendor-a", "{list}");
        assert_eq!(issuer["scope"], serde_json::json!(["acme-*"]), "{list}");
    }
    let outside = env.license(&new, "outside.license", "other", 1);
    let out = env.expect(2, &["license", "install", &outside]);
    assert!(
        out.contains("may grant only ids in its scope [acme-*]"),
        "{out}"
    );
    // Same issuer, same id: the new key's grant adds to the old key's.
    let renewal = env.license(&new, "new.license", "acme-pro", 2);
    env.expect(0, &["license", "install", &renewal]);
    assert_eq!(
        report(&env.json(&["status", "--json"]), "acme-pro")["seats"],
        3
    );
    // Another key under the name may not bring another scope along.
    env.expect(0, &["issuer", "keygen", "--out", &env.p("third")]);
    let out = env.expect(
        2,
        &[
            "trust",
            "add",
            &env.p("third/issuer.pub"),
            "--name",
            "vendor-a",
            "--ids",
            "*",
        ],
    );
    assert!(
        out.contains("issuer \"vendor-a\" already has the id scope [acme-*]")
            && out.contains("tollgate trust scope vendor-a --ids"),
        "{out}"
    );
    assert_eq!(
        env.json(&["trust", "list", "--json"])
            .as_array()
            .map(Vec::len),
        Some(2),
        "the third key was not trusted"
    );
}

#[test]
fn an_id_named_in_both_scopes_explicitly_is_shared() {
    let env = Env::new("share");
    let a = env.named_issuer("a", "vendor-a", &[]);
    let b = env.named_issuer("b", "vendor-b", &[]);
    let mine = env.license(&a, "a.license", "acme", 1);
    env.expect(0, &["license", "install", &mine]);
    let theirs = env.license(&b, "b.license", "acme", 2);
    env.expect(2, &["license", "install", &theirs]);
    // Named in one scope only: the other issuer's default `*` no longer covers it.
    env.expect(0, &["trust", "scope", "vendor-a", "--ids", "acme", "*"]);
    let out = env.expect(2, &["license", "install", &theirs]);
    assert!(out.contains("names it explicitly"), "{out}");
    let out = env.expect(0, &["trust", "scope", "vendor-b", "--ids", "acme", "*"]);
    assert!(
        out.contains("may now grant license ids [acme, *] (was [*])"),
        "{out}"
    );
    env.expect(0, &["license", "install", &theirs]);
    let status = env.json(&["status", "--json"]);
    let acme = report(&status, "acme");
    assert_eq!(acme["seats"], 3, "{status}");
    assert_eq!(acme["conflicts"], serde_json::json!([]), "{status}");
    env.expect(0, &["run", &guest("hello-licensed"), "--requires", "acme"]);
    // Taking the id out of one scope again leaves that issuer's grant out.
    env.expect(0, &["trust", "scope", "vendor-b", "--ids", "*"]);
    let status = env.json(&["status", "--json"]);
    assert_eq!(report(&status, "acme")["seats"], 1, "{status}");
    let out = env.expect(2, &["trust", "scope", "nobody", "--ids", "*"]);
    assert!(
        out.contains("no trusted issuer is named \"nobody\""),
        "{out}"
    );
}

#[test]
fn grant_rows_inserted_with_sql_outside_the_scopes_give_no_seats() {
    let env = Env::new("sqlrows");
    let a = env.named_issuer("a", "vendor-a", &["--ids", "acme-*"]);
    let b = env.named_issuer("b", "vendor-b", &[]);
    let c = env.named_issuer("c", "vendor-c", &[]);
    let hello = guest("hello-licensed");
    // The same keys trusted with default scopes in a scratch state directory,
    // whose grants are copied over with SQL.
    let scratch = env.p("scratch");
    for dir in ["a", "c"] {
        env.expect(
            0,
            &[
                "trust",
                "add",
                &env.p(&format!("{dir}/issuer.pub")),
                "--state",
                &scratch,
            ],
        );
    }
    let outside = env.license(&a, "other.license", "other", 3);
    env.expect(2, &["license", "install", &outside]);
    env.expect(0, &["license", "install", &outside, "--state", &scratch]);
    env.insert_grant_rows(&scratch, "other");
    let out = env.expect(3, &["run", &hello, "--requires", "other"]);
    assert!(
        out.contains(&format!(
            "grant {} of license other from issuer \"vendor-a\" is outside its scope [acme-*]",
            grant_in(&outside)
        )) && out.contains("tollgate trust scope vendor-a --ids other"),
        "{out}"
    );

    // An id one issuer granted, taken by another with a row inserted by SQL:
    // neither grant gives a seat until the operator decides.
    let own = env.license(&b, "widget-b.license", "widget", 1);
    env.expect(0, &["license", "install", &own]);
    env.expect(0, &["run", &hello, "--requires", "widget"]);
    let taken = env.license(&c, "widget-c.license", "widget", 5);
    env.expect(0, &["license", "install", &taken, "--state", &scratch]);
    env.insert_grant_rows(&scratch, "widget");
    let out = env.expect(3, &["run", &hello, "--requires", "widget"]);
    assert!(
        out.contains("license widget is granted by several issuers (vendor-b, vendor-c)")
            && out.contains("license revoke --grant"),
        "{out}"
    );
    let status = env.json(&["status", "--json"]);
    let widget = report(&status, "widget");
    assert_eq!(widget["seats"], 0, "{status}");
    assert_eq!(widget["conflicts"][0]["kind"], "conflict", "{status}");
    assert_eq!(
        widget["conflicts"][0]["grants"].as_array().map(Vec::len),
        Some(2),
        "{status}"
    );
    assert_eq!(
        report(&status, "other")["conflicts"][0]["kind"],
        "outside-scope"
    );
    // The operator keeps vendor-b's grant: revoking vendor-c's resolves it.
    env.expect(0, &["license", "revoke", "--grant", &grant_in(&taken)]);
    env.expect(0, &["run", &hello, "--requires", "widget"]);
    let status = env.json(&["status", "--json"]);
    assert_eq!(report(&status, "widget")["seats"], 1, "{status}");
    assert_eq!(
        report(&status, "widget")["conflicts"],
        serde_json::json!([])
    );
}

/// The tables of a state directory as tollgate wrote them before issuer
/// scopes (schema 1).
const SCHEMA_1: &str = "
CREATE TABLE trusted_issuers (
    key_id TEXT PRIMARY KEY, public_key BLOB NOT NULL, name TEXT, added_at INTEGER NOT NULL);
CREATE TABLE grants (
    grant_id TEXT PRIMARY KEY, license_id TEXT NOT NULL, issuer TEXT NOT NULL,
    seats INTEGER, not_before INTEGER, expires_at INTEGER, plugins TEXT NOT NULL,
    customer TEXT, issued_at INTEGER NOT NULL, installed_at INTEGER NOT NULL, file TEXT NOT NULL);
CREATE INDEX grants_license ON grants(license_id);
CREATE TABLE revocations (license_id TEXT PRIMARY KEY, revoked_at INTEGER NOT NULL);
CREATE TABLE ledger (
    seq INTEGER PRIMARY KEY, at_ms INTEGER NOT NULL, kind TEXT NOT NULL, reason TEXT,
    license_id TEXT NOT NULL, plugin TEXT NOT NULL, digest TEXT NOT NULL,
    lease_id INTEGER, invocation_id INTEGER NOT NULL, hash BLOB NOT NULL);
CREATE INDEX ledger_lease ON ledger(lease_id);
CREATE TABLE chain_head (id INTEGER PRIMARY KEY CHECK (id = 1), seq INTEGER NOT NULL, hash BLOB NOT NULL);
PRAGMA user_version = 1;
";

#[test]
fn a_state_directory_from_before_scopes_gets_default_scopes_and_reports_shared_ids() {
    let env = Env::new("upgrade");
    let a = env.issuer("a", false);
    let b = env.issuer("b", false);
    // Each issuer's grants made in a scratch state directory of its own...
    let licenses = [
        (&a, "a", "acme", "1"),
        (&b, "b", "acme", "2"),
        (&a, "a", "solo", "1"),
    ];
    for (key, dir, id, seats) in licenses {
        let scratch = env.p(&format!("scratch-{dir}"));
        env.expect(
            0,
            &[
                "trust",
                "add",
                &env.p(&format!("{dir}/issuer.pub")),
                "--state",
                &scratch,
            ],
        );
        let lic = env.sign(
            key,
            &format!("{dir}-{id}.license"),
            &["--license-id", id, "--seats", seats],
        );
        env.expect(0, &["license", "install", &lic, "--state", &scratch]);
    }
    // ...copied into a database with the schema-1 tables, the first
    // issuer named, the second not.
    std::fs::create_dir_all(env.path("state")).expect("state dir");
    let db = rusqlite::Connection::open(env.path("state/tollgate.db")).expect("db");
    db.execute_batch(SCHEMA_1).expect("schema 1");
    for dir in ["a", "b"] {
        db.execute(
            "ATTACH DATABASE ?1 AS s",
            [env.p(&format!("scratch-{dir}/tollgate.db"))],
        )
        .expect("attach");
        db.execute_batch(
            "INSERT INTO trusted_issuers (key_id, public_key, name, added_at)
               SELECT key_id, public_key, NULL, added_at FROM s.trusted_issuers;
             INSERT INTO grants SELECT * FROM s.grants;
             DETACH DATABASE s;",
        )
        .expect("copy");
    }
    let a_id = issuer_in(&env.p("a-acme.license"));
    let b_id = issuer_in(&env.p("b-acme.license"));
    db.execute(
        "UPDATE trusted_issuers SET name = 'vendor-a' WHERE key_id = ?1",
        [&a_id],
    )
    .expect("name");
    drop(db);

    let hello = guest("hello-licensed");
    let out = env.expect(3, &["run", &hello, "--requires", "acme"]);
    assert!(
        out.contains(&format!(
            "license acme is granted by several issuers ({b_id}, vendor-a)"
        )) && out.contains("WARN"),
        "{out}"
    );
    env.expect(0, &["run", &hello, "--requires", "solo"]);
    let list = env.json(&["trust", "list", "--json"]);
    for issuer in list.as_array().expect("issuers") {
        assert_eq!(issuer["scope"], serde_json::json!(["*"]), "{list}");
    }
    assert!(
        list.to_string().contains(&format!("\"name\":\"{b_id}\"")),
        "{list}"
    );
    let status = env.json(&["status", "--json"]);
    let acme = report(&status, "acme");
    assert_eq!(acme["seats"], 0, "{status}");
    let decide = acme["conflicts"][0]["decide"].as_str().unwrap_or_default();
    assert!(
        decide.contains("tollgate trust scope vendor-a --ids acme")
            && decide.contains(&format!("tollgate trust scope {b_id} --ids acme"))
            && decide.contains("tollgate license revoke --grant"),
        "{status}"
    );
    assert_eq!(report(&status, "solo")["conflicts"], serde_json::json!([]));
    let table = env.expect(0, &["status"]);
    assert!(table.contains("left out (issuer scopes)"), "{table}");

    // The operator shares it: both scopes name it.
    env.expect(0, &["trust", "scope", "vendor-a", "--ids", "acme", "*"]);
    env.expect(0, &["trust", "scope", &b_id, "--ids", "acme", "*"]);
    env.expect(0, &["run", &hello, "--requires", "acme"]);
    assert_eq!(report(&env.json(&["status", "--json"]), "acme")["seats"], 3);
    let out = env.expect(0, &["audit", "verify"]);
    assert!(out.contains("ledger verified"), "{out}");
}

/// `usage export` hands every committed row out once as a CloudEvent: a
/// run stopped after a few events resumes from its cursor file (a new
/// process each time), rows added in between come next, nothing is doubled
/// or lost, and a bad cursor is refused with what to pass.
#[test]
fn usage_export_resumes_from_its_cursor_file_with_nothing_doubled_or_lost() {
    let env = Env::new("export");
    let key = env.issuer("keys", true);
    let lic = env.sign(
        &key,
        "billing.license",
        &[
            "--license-id",
            "billing",
            "--seats",
            "2",
            "--customer",
            "Acme Corp",
        ],
    );
    env.expect(0, &["license", "install", &lic]);
    let run = |n: &str| {
        env.expect(
            0,
            &[
                "run",
                &guest("hello-licensed"),
                "--requires",
                "billing",
                "--repeat",
                n,
            ],
        );
    };
    run("4");
    let cursor = env.p("billing.cursor");
    let export = |extra: &[&str]| {
        let mut args = vec!["usage", "export", "--cursor-file", cursor.as_str()];
        args.extend_from_slice(extra);
        let o = env.tg(&args);
        assert_eq!(
            o.status.code(),
            Some(0),
            "{}",
            String::from_utf8_lossy(&o.stderr)
        );
        let lines: Vec<Value> = String::from_utf8_lossy(&o.stdout)
            .lines()
            .map(|l| serde_json::from_str(l).expect("one JSON event per line"))
            .collect();
        assert!(
            String::from_utf8_lossy(&o.stderr).contains(&format!(
                "exported {} events; next cursor: tgc1.",
                lines.len()
            )),
            "{}",
            String::from_utf8_lossy(&o.stderr)
        );
        lines
    };
    let mut events = export(&["--limit", "3"]);
    assert_eq!(events.len(), 3);
    events.extend(export(&[]));
    run("2");
    events.extend(export(&[]));
    assert!(export(&[]).is_empty(), "nothing new, nothing sent again");

    let rows = env.json(&["audit", "verify", "--json"])["rows"]
        .as_u64()
        .expect("audited rows");
    let seqs: Vec<u64> = events
        .iter()
        .map(|e| e["data"]["seq"].as_u64().expect("seq"))
        .collect();
    assert_eq!(
        seqs,
        (1..=rows).collect::<Vec<_>>(),
        "every row once, in order"
    );
    let ids: std::collections::BTreeSet<&str> = events
        .iter()
        .map(|e| e["id"].as_str().expect("id"))
        .collect();
    assert_eq!(ids.len(), events.len(), "ids are unique");
    let checkouts: Vec<&Value> = events
        .iter()
        .filter(|e| e["type"] == "tollgate.seat.checkout")
        .collect();
    assert_eq!(checkouts.len(), 6, "one per call");
    for e in &events {
        assert_eq!(e["specversion"], "1.0");
        assert!(
            e["source"]
                .as_str()
                .is_some_and(|s| s.starts_with("/tollgate/hosts/"))
        );
        assert_eq!(e["data"]["license_id"], "billing");
        assert_eq!(e["data"]["plugin"], "hello_licensed");
    }
    assert!(checkouts.iter().all(|e| e["subject"] == "Acme Corp"));
    let returns: Vec<&Value> = events
        .iter()
        .filter(|e| e["type"] == "tollgate.seat.return")
        .collect();
    assert_eq!(returns.len(), 6);
    assert!(
        returns.iter().all(|e| e["data"]["held_ms"].is_u64()),
        "{returns:?}"
    );

    // Starting over from a row number re-reads from there.
    let again = env.tg(&["usage", "export", "--after", "2", "--limit", "1"]);
    let line: Value = serde_json::from_slice(&again.stdout).expect("one event");
    assert_eq!(line["data"]["seq"], 3);
    assert_eq!(line["id"], events[2]["id"], "the same id for the same row");
    let out = env.expect(2, &["usage", "export", "--after", "tgc1.nonsense!"]);
    assert!(
        out.contains("pass the cursor the last export returned"),
        "{out}"
    );
}
