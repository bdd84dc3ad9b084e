//! What anchors host state from outside the database, and what keeps the
//! sandbox and the compile cache away from it (issue 13, holes 7 and 8):
//! signed ledger checkpoints, grants checked against their signed text,
//! pinned issuer keys, authenticated compile cache entries, plugin
//! directories kept off host state, and private file modes.

use rusqlite::Connection;
use serde_json::Value;
use sha2::{Digest, Sha256};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use tollgate::license::issuer::IssuerPublicKey;
use tollgate::license::ledger::{EventKind, Ledger, UsageEvent};
use tollgate::runtime::{Preopen, Sandbox};
use tollgate::store::SqliteLedger;
use tollgate::store::chain::{kind_from_names, row_hash};
use tollgate::{Host, LoadError, PluginSpec, Seats, Terms};

mod common;

use common::*;

/// Appends `n` checkout/release pairs to the ledger of `root`'s state, with
/// the writer every host uses.
fn record_calls(root: &Path, first: u64, n: u64) {
    let ledger = SqliteLedger::open(&root.join("state/tollgate.db")).expect("ledger");
    for i in first..first + n {
        for kind in [EventKind::Checkout, EventKind::Release] {
            ledger.record(UsageEvent {
                lease_id: Some(i),
                seat_id: Some(i),
                ..UsageEvent::new(
                    kind,
                    1_800_000_000_000 + i,
                    "demo".into(),
                    "hello".into(),
                    "d".into(),
                    i,
                )
            });
        }
    }
    ledger.sync().expect("committed");
}

fn db(root: &Path) -> Connection {
    Connection::open(root.join("state/tollgate.db")).expect("database")
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Recomputes every row hash and the chain head, as someone who edited
/// rows and knows the (public) hash scheme would.
fn recompute_chain(conn: &Connection) {
    let rows: Vec<UsageEvent> = conn
        .prepare("SELECT seq, at_ms, kind, reason, license_id, plugin, digest, lease_id, invocation_id, seat_id, grant_id, count FROM ledger ORDER BY seq")
        .expect("prepare")
        .query_map([], |r| {
            let kind: String = r.get(2)?;
            let reason: Option<String> = r.get(3)?;
            Ok(UsageEvent {
                seq: r.get(0)?,
                at_ms: r.get(1)?,
                kind: kind_from_names(&kind, reason.as_deref()).expect("known kind"),
                license_id: r.get::<_, String>(4)?.into(),
                plugin: r.get::<_, String>(5)?.into(),
                component_digest: r.get::<_, String>(6)?.into(),
                lease_id: r.get(7)?,
                invocation_id: r.get(8)?,
                seat_id: r.get(9)?,
                grant_id: r.get::<_, Option<String>>(10)?.map(Into::into),
                count: r.get(11)?,
                token: None,
            })
        })
        .expect("rows")
        .collect::<Result<_, _>>()
        .expect("rows");
    let mut prev = [0u8; 32];
    for e in &rows {
        prev = row_hash(&prev, e);
        conn.execute(
            "UPDATE ledger SET hash = ?1 WHERE seq = ?2",
            rusqlite::params![&prev[..], e.seq],
        )
        .expect("rehash");
    }
    conn.execute(
        "UPDATE chain_head SET seq = ?1, hash = ?2",
        rusqlite::params![rows.last().map_or(0, |e| e.seq), &prev[..]],
    )
    .expect("head");
}

#[test]
fn verify_since_a_checkpoint_reads_only_the_rows_added_after_it() {
    let scratch = prepare("anchor-since", "2");
    let root = scratch.path();
    let cp = root.join("cp").to_string_lossy().into_owned();
    record_calls(root, 1, 10);
    let made = tg(root, &["audit", "checkpoint", "--out", &cp]);
    assert!(made.status.success(), "{}", text(&made));
    record_calls(root, 11, 5);
    let since = |json: bool| {
        let mut args = vec!["audit", "verify", "--checkpoint", &cp, "--since-checkpoint"];
        if json {
            args.push("--json");
        }
        tg(root, &args)
    };

    let out = since(true);
    assert!(out.status.success(), "{}", text(&out));
    let report: Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(
        (&report["rows"], &report["after"], &report["head_seq"]),
        (&Value::from(10), &Value::from(20), &Value::from(30)),
        "only rows 21..30 are read: {report}"
    );
    assert_eq!(report["checkpoint"]["problems"], Value::Array(vec![]));
    let out = since(false);
    assert!(
        text(&out)
            .contains("ledger verified after checkpoint row 20: 10 rows, chain head at row 30"),
        "{}",
        text(&out)
    );

    // A row after the checkpoint edited: named.
    db(root)
        .execute("UPDATE ledger SET plugin = 'other' WHERE seq = 25", [])
        .expect("tamper");
    let out = since(false);
    assert_eq!(out.status.code(), Some(5), "{}", text(&out));
    assert!(
        text(&out).contains("row 25 does not match its hash"),
        "{}",
        text(&out)
    );
    db(root)
        .execute("UPDATE ledger SET plugin = 'hello' WHERE seq = 25", [])
        .expect("restore");

    // A row before it edited: not read again, so only the full check sees it.
    db(root)
        .execute("UPDATE ledger SET plugin = 'other' WHERE seq = 5", [])
        .expect("tamper");
    let out = since(false);
    assert!(out.status.success(), "{}", text(&out));
    let full = tg(root, &["audit", "verify", "--checkpoint", &cp]);
    assert_eq!(full.status.code(), Some(5), "{}", text(&full));
    assert!(
        text(&full).contains("row 5 does not match its hash"),
        "{}",
        text(&full)
    );

    // The row the checkpoint vouches for edited: the checkpoint fails, and
    // every row is checked.
    db(root)
        .execute("UPDATE ledger SET hash = zeroblob(32) WHERE seq = 20", [])
        .expect("tamper");
    let out = since(true);
    assert_eq!(out.status.code(), Some(5), "{}", text(&out));
    let report: Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(
        (&report["rows"], &report["after"]),
        (&Value::from(30), &Value::from(0))
    );

    let alone = tg(root, &["audit", "verify", "--since-checkpoint"]);
    assert_eq!(alone.status.code(), Some(2), "{}", text(&alone));
    assert!(text(&alone).contains("--checkpoint"), "{}", text(&alone));
}

/// A plain `audit verify` of a ledger changed behind tollgate's back finds
/// the usage sums stored up to row 30 no longer match, and passes once the
/// sums are dropped too (as a careful attacker would).
fn sums_give_it_away_unless_dropped(root: &Path) {
    let plain = tg(root, &["audit", "verify"]);
    assert_eq!(plain.status.code(), Some(5), "{}", text(&plain));
    assert!(
        text(&plain).contains("stored usage sums up to row 30 differ"),
        "{}",
        text(&plain)
    );
    db(root)
        .execute_batch("DELETE FROM ledger_sums_mark")
        .expect("drop the sums");
    let plain = tg(root, &["audit", "verify"]);
    assert!(
        plain.status.success(),
        "the chain alone cannot show the change: {}",
        text(&plain)
    );
}

#[test]
fn checkpoints_catch_a_cut_tail_and_a_recomputed_chain() {
    let scratch = prepare("anchor-cp", "2");
    let root = scratch.path();
    let p = |n: &str| root.join(n).to_string_lossy().into_owned();
    record_calls(root, 1, 10);
    let made = tg(root, &["audit", "checkpoint", "--out", &p("cp")]);
    assert!(made.status.success(), "{}", text(&made));
    let cp = std::fs::read_to_string(root.join("cp")).expect("checkpoint");
    assert!(
        cp.starts_with("tollgate-checkpoint v1\nseq: 20\nhash: "),
        "{cp}"
    );
    let mode = |f: &str| {
        std::fs::metadata(root.join(f))
            .expect(f)
            .permissions()
            .mode()
            & 0o777
    };
    assert_eq!((mode("cp"), mode("state/host.key")), (0o600, 0o600));
    // Printed to stdout without --out, in the same format.
    let printed = tg(root, &["audit", "checkpoint"]);
    assert!(
        String::from_utf8_lossy(&printed.stdout).starts_with("tollgate-checkpoint v1\nseq: 20\n")
    );

    // The ledger grows: it still extends the checkpoint.
    record_calls(root, 11, 5);
    let ok = tg(root, &["audit", "verify", "--checkpoint", &p("cp")]);
    assert!(ok.status.success(), "{}", text(&ok));
    assert!(text(&ok).contains("checkpoint verified"), "{}", text(&ok));
    let pristine = root.join("pristine");
    copy_dir(&root.join("state"), &pristine);

    // Attack 1: cut the tail (rows 8..30) and move the chain head back.
    {
        let conn = db(root);
        conn.execute_batch(
            "DELETE FROM ledger WHERE seq > 7;
             UPDATE chain_head SET seq = 7, hash = (SELECT hash FROM ledger WHERE seq = 7);",
        )
        .expect("truncate");
    }
    // The usage sums the writer stored up to row 30 give the cut away,
    // unless they go too; then the chain alone cannot show it.
    sums_give_it_away_unless_dropped(root);
    let anchored = tg(root, &["audit", "verify", "--checkpoint", &p("cp")]);
    assert_eq!(anchored.status.code(), Some(5), "{}", text(&anchored));
    assert!(
        text(&anchored).contains("chain head is at row 7, behind the checkpoint's row 20"),
        "{}",
        text(&anchored)
    );
    let as_json: Value = serde_json::from_slice(
        &tg(
            root,
            &["audit", "verify", "--json", "--checkpoint", &p("cp")],
        )
        .stdout,
    )
    .expect("json");
    assert_eq!(as_json["problems"].as_array().map(Vec::len), Some(0));
    assert_eq!(as_json["checkpoint"]["seq"], 20);
    assert!(
        !as_json["checkpoint"]["problems"]
            .as_array()
            .expect("problems")
            .is_empty()
    );

    // Attack 2: edit an early row (hide who used the seat) and recompute
    // the whole chain; no row is missing.
    std::fs::remove_dir_all(root.join("state")).expect("reset");
    copy_dir(&pristine, &root.join("state"));
    {
        let conn = db(root);
        conn.execute(
            "UPDATE ledger SET plugin = 'someone-else' WHERE seq = 3",
            [],
        )
        .expect("edit");
        recompute_chain(&conn);
    }
    // The stored usage sums count the row for its first plugin, unless
    // they go too; then the chain alone cannot show it.
    sums_give_it_away_unless_dropped(root);
    let anchored = tg(root, &["audit", "verify", "--checkpoint", &p("cp")]);
    assert_eq!(anchored.status.code(), Some(5), "{}", text(&anchored));
    assert!(
        text(&anchored).contains("row 20 has hash") && text(&anchored).contains("was rewritten"),
        "{}",
        text(&anchored)
    );

    // A checkpoint of another host is reported as such.
    let other_scratch = prepare("anchor-cp-other", "1");
    let other = other_scratch.path();
    let foreign = tg(other, &["audit", "checkpoint", "--out", &p("foreign")]);
    assert!(foreign.status.success(), "{}", text(&foreign));
    std::fs::remove_dir_all(root.join("state")).expect("reset");
    copy_dir(&pristine, &root.join("state"));
    let out = tg(root, &["audit", "verify", "--checkpoint", &p("foreign")]);
    assert_eq!(out.status.code(), Some(5), "{}", text(&out));
    assert!(
        text(&out).contains("signed by another host key"),
        "{}",
        text(&out)
    );
    // An edited checkpoint does not verify.
    std::fs::write(root.join("edited"), cp.replace("seq: 20", "seq: 2")).expect("edit");
    let out = tg(root, &["audit", "verify", "--checkpoint", &p("edited")]);
    assert_eq!(out.status.code(), Some(5), "{}", text(&out));
    assert!(
        text(&out).contains("checkpoint file was altered"),
        "{}",
        text(&out)
    );
    // A broken chain gets no checkpoint.
    db(root)
        .execute("UPDATE ledger SET plugin = 'x' WHERE seq = 2", [])
        .expect("edit");
    let refused = tg(root, &["audit", "checkpoint"]);
    assert_eq!(refused.status.code(), Some(5), "{}", text(&refused));
    assert!(refused.stdout.is_empty());
}

/// Writes a small config for `root` (state `state`, plugin `hello`) with
/// `settings` added, and starts `tollgate serve` on it, under umask 000 when
/// `open_umask`. `Err` holds the exit status and output of a refused start.
fn serve(root: &Path, settings: &str, open_umask: bool) -> Result<Server, String> {
    let config = format!(
        "listen = \"127.0.0.1:0\"\nstate = \"state\"\nadmin_token_file = \"admin.token\"\n{settings}\n\
         [[plugin]]\nname = \"hello\"\ncomponent = {:?}\nrequires = [\"demo\"]\n",
        guest("hello-licensed")
    );
    std::fs::write(root.join("tollgate.toml"), config).expect("config");
    let command = if open_umask {
        tollgate_under_open_umask()
    } else {
        Command::new(BIN)
    };
    Server::spawn(root, command, &[])
}

/// The tollgate binary, run through a shell that first sets umask 000: what
/// it creates is private only if it makes it so itself.
fn tollgate_under_open_umask() -> Command {
    let mut command = Command::new("sh");
    command.args(["-c", "umask 000 && exec \"$0\" \"$@\"", BIN]);
    command
}

#[test]
fn a_grant_edited_in_the_database_is_refused() {
    let scratch = prepare("anchor-grant", "1");
    let root = scratch.path();
    db(root)
        .execute("UPDATE grants SET seats = NULL", [])
        .expect("tamper");
    let status = tg(root, &["status", "--json"]);
    assert_eq!(status.status.code(), Some(2), "{}", text(&status));
    let message = text(&status);
    assert!(
        message.contains(
            "of license demo is refused: column `seats` says unlimited, the signed license says 1"
        ),
        "{message}"
    );
    let refused = serve(root, "", false)
        .err()
        .expect("serve refuses to start");
    assert!(
        refused.contains("column `seats` says unlimited"),
        "{refused}"
    );
}

fn issuer_id(root: &Path, keys: &str) -> (String, String) {
    let text = std::fs::read_to_string(root.join(keys).join("issuer.pub")).expect("pub");
    let key = IssuerPublicKey::from_file_text(&text).expect("key");
    let b64 = text
        .lines()
        .find_map(|l| l.strip_prefix("key:"))
        .expect("key line")
        .trim()
        .to_string();
    (key.key_id(), b64)
}

#[test]
fn pinned_issuers_refuse_a_database_that_trusts_other_keys() {
    let scratch = prepare("anchor-pin", "1");
    let root = scratch.path();
    let (id, public) = issuer_id(root, "keys");
    for pin in [&id, &public] {
        let server = serve(root, &format!("trusted_issuers = [{pin:?}]"), false)
            .expect("the pinned key is the trusted one");
        assert_eq!(server.invoke("hello", b"x").0, 200);
        assert!(server.terminate().success());
    }
    // Someone with write access to the database trusts a key of their own.
    let p = |n: &str| root.join(n).to_string_lossy().into_owned();
    assert!(
        tg(root, &["issuer", "keygen", "--out", &p("intruder")])
            .status
            .success()
    );
    assert!(
        tg(
            root,
            &[
                "trust",
                "add",
                &p("intruder/issuer.pub"),
                "--name",
                "intruder"
            ]
        )
        .status
        .success()
    );
    let (intruder, _) = issuer_id(root, "intruder");
    let refused = serve(root, &format!("trusted_issuers = [{id:?}]"), false)
        .err()
        .expect("refused");
    assert!(
        refused.contains(&format!(
            "trusted in the database but not pinned: {intruder} (named \"intruder\")"
        )),
        "{refused}"
    );
    // A pinned key the database lacks is named too.
    assert!(
        tg(root, &["issuer", "keygen", "--out", &p("absent")])
            .status
            .success()
    );
    let (absent, _) = issuer_id(root, "absent");
    let refused = serve(
        root,
        &format!("trusted_issuers = [{id:?}, {intruder:?}, {absent:?}]"),
        false,
    )
    .err()
    .expect("refused");
    assert!(
        refused.contains(&format!("pinned but not trusted in the database: {absent}"))
            && !refused.contains("not pinned:"),
        "{refused}"
    );
    // check-config reports a malformed entry with its line and column.
    std::fs::write(root.join("bad.toml"), "trusted_issuers = [\"abc\"]\n").expect("write");
    let check = Command::new(BIN)
        .args(["check-config", &p("bad.toml")])
        .output()
        .expect("check");
    assert_eq!(check.status.code(), Some(2));
    assert!(
        text(&check)
            .contains("line 1, column 20: `trusted_issuers`: \"abc\" is neither an issuer key id"),
        "{}",
        text(&check)
    );
}

fn cache_entries(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let path = entry.path();
        if path.is_dir() {
            out.extend(cache_entries(&path));
        } else if path.extension().is_some_and(|e| e == "cwasm") {
            out.push(path);
        }
    }
    out
}

#[test]
fn a_compile_cache_entry_the_host_did_not_write_is_compiled_again() {
    let scratch = tempfile::Builder::new()
        .prefix("tollgate-anchor-cache-")
        .tempdir()
        .expect("scratch");
    let root = scratch.path();
    let host = || {
        Host::builder()
            .state(root.join("state"))
            .compile_cache(root.join("cache"))
            .license("demo", Terms::new(Seats::Unlimited))
            .build()
            .expect("host")
    };
    let hello = test_guests::bytes::HELLO_LICENSED;
    let other = test_guests::bytes::NO_LICENSE;
    let (hello_out, other_out) = {
        let h = host();
        let a = h
            .load_plugin(PluginSpec::bytes("hello", hello).requires("demo"))
            .expect("hello");
        h.load_plugin(PluginSpec::bytes("other", other))
            .expect("other");
        assert!(!a.from_cache());
        (
            h.invoke("hello", b"x").expect("hello runs"),
            h.invoke("other", b"x").expect("other runs"),
        )
    };
    assert_ne!(hello_out, other_out);
    let entries = cache_entries(&root.join("cache"));
    let named = |bytes: &[u8]| {
        let name = format!("{}.cwasm", hex::encode(Sha256::digest(bytes)));
        entries
            .iter()
            .find(|p| p.file_name().is_some_and(|n| n.to_string_lossy() == name))
            .cloned()
            .expect("entry")
    };
    let (hello_entry, other_entry) = (named(hello), named(other));
    // Someone puts another component's real, validly serialized entry at
    // hello's cache path.
    std::fs::copy(&other_entry, &hello_entry).expect("swap");
    {
        let h = host();
        let a = h
            .load_plugin(PluginSpec::bytes("hello", hello).requires("demo"))
            .expect("hello");
        assert!(!a.from_cache(), "the foreign entry was not deserialized");
        assert_eq!(h.invoke("hello", b"x").expect("runs"), hello_out);
    }
    // The entry was written again, and is used from then on.
    {
        let h = host();
        let a = h
            .load_plugin(PluginSpec::bytes("hello", hello).requires("demo"))
            .expect("hello");
        assert!(a.from_cache());
        assert_eq!(h.invoke("hello", b"x").expect("runs"), hello_out);
    }
    // Bytes wasmtime wrote without this host's key (what an entry held
    // before, and all anyone without the key can make) are refused too.
    let bare = wasmtime::component::Component::new(&wasmtime::Engine::default(), other)
        .and_then(|c| c.serialize())
        .expect("serialized");
    std::fs::write(&hello_entry, bare).expect("plant");
    let h = host();
    let a = h
        .load_plugin(PluginSpec::bytes("hello", hello).requires("demo"))
        .expect("hello");
    assert!(!a.from_cache());
    assert_eq!(h.invoke("hello", b"x").expect("runs"), hello_out);
    drop(h);
}

#[test]
fn plugin_dirs_may_not_reach_host_state() {
    let scratch = tempfile::Builder::new()
        .prefix("tollgate-anchor-dirs-")
        .tempdir()
        .expect("scratch");
    let root = scratch.path();
    for d in ["data", "secrets", "cache"] {
        std::fs::create_dir_all(root.join(d)).expect("dir");
    }
    std::fs::write(root.join("secrets/admin.token"), TOKEN).expect("token");
    let host = Host::builder()
        .state(root.join("state"))
        .compile_cache(root.join("cache"))
        .protect(root.join("secrets/admin.token"), "the admin token file")
        .build()
        .expect("host");
    let with_dir = |name: &str, dir: PathBuf| {
        PluginSpec::bytes(name, test_guests::bytes::NO_LICENSE).sandbox(Sandbox {
            dirs: vec![Preopen {
                host: dir,
                guest: "/d".into(),
                writable: true,
            }],
            ..Sandbox::default()
        })
    };
    let cases = [
        (root.join("state"), "the state directory"),
        (root.to_path_buf(), "the state directory"),
        (root.join("cache"), "the compile cache"),
        (root.join("data/../cache"), "the compile cache"),
        (root.join("secrets"), "the admin token file"),
    ];
    for (i, (dir, what)) in cases.into_iter().enumerate() {
        match host.load_plugin(with_dir(&format!("p{i}"), dir.clone())) {
            Err(e @ LoadError::Sandbox { .. }) => {
                let message = e.to_string();
                assert!(
                    message.contains(&format!("directory {} overlaps {what}", dir.display())),
                    "{message}"
                );
            }
            other => panic!("{}: expected a refusal, got {other:?}", dir.display()),
        }
    }
    host.load_plugin(with_dir("fine", root.join("data")))
        .expect("a directory apart from host state loads");
    drop(host);
}

#[test]
fn state_files_are_private_whatever_the_umask() {
    let scratch = tempfile::Builder::new()
        .prefix("tollgate-anchor-umask-")
        .tempdir()
        .expect("scratch");
    let root = scratch.path();
    let p = |n: &str| root.join(n).to_string_lossy().into_owned();
    let open_umask = |args: &[&str]| {
        let out = tollgate_under_open_umask()
            .args(args)
            .env("TOLLGATE_STATE", root.join("state"))
            .output()
            .expect("runs");
        assert!(out.status.success(), "{args:?}: {}", text(&out));
    };
    assert!(
        tg(root, &["issuer", "keygen", "--out", &p("keys")])
            .status
            .success()
    );
    open_umask(&["trust", "add", &p("keys/issuer.pub")]);
    sign_demo(root, "1");
    open_umask(&["license", "install", &p("demo.license")]);
    open_umask(&["audit", "checkpoint"]);
    std::fs::write(root.join("admin.token"), TOKEN).expect("token");
    let server = serve(root, "", true).expect("serves");
    assert_eq!(server.invoke("hello", b"x").0, 200);
    let mut modes = Vec::new();
    let mut walk = vec![root.join("state")];
    while let Some(path) = walk.pop() {
        let meta = std::fs::symlink_metadata(&path).expect("meta");
        if meta.is_dir() {
            walk.extend(
                std::fs::read_dir(&path)
                    .expect("dir")
                    .flatten()
                    .map(|e| e.path()),
            );
        }
        let name = path
            .strip_prefix(root)
            .expect("inside")
            .display()
            .to_string();
        modes.push((name, meta.permissions().mode() & 0o777, meta.is_dir()));
    }
    assert!(server.terminate().success());
    let names: Vec<&str> = modes.iter().map(|(n, _, _)| n.as_str()).collect();
    for expected in [
        "state",
        "state/tollgate.db",
        "state/host.key",
        "state/host.lock",
        "state/compile-cache",
        "state/compile-cache.key",
    ] {
        assert!(
            names.contains(&expected),
            "{expected} missing from {names:?}"
        );
    }
    assert!(
        names.iter().any(|n| n.ends_with(".cwasm")),
        "a cache entry was written: {names:?}"
    );
    let loose: Vec<String> = modes
        .iter()
        .filter(|(_, mode, dir)| *mode != if *dir { 0o700 } else { 0o600 })
        .map(|(n, mode, _)| format!("{n} {mode:o}"))
        .collect();
    assert!(loose.is_empty(), "not private under umask 000: {loose:?}");
}

/// Issue 13, hole 2: a grant row another issuer's key got into the database
/// with SQL, for an id already granted, reaches a running host at its next
/// reload of the grants: the id then gives no seat until the operator
/// decides, and the host says why.
#[test]
fn a_running_host_gives_no_seat_for_an_id_two_issuers_grant() {
    let scratch = prepare("anchor-scope", "1");
    let root = scratch.path();
    let p = |n: &str| root.join(n).to_string_lossy().into_owned();
    let server = serve(root, "", false).expect("serves");
    assert_eq!(server.invoke("hello", b"x").0, 200);
    // A second issuer, trusted, signs `demo` with more seats; its grant is
    // installed in a scratch state directory and its row copied over.
    let ok = |args: &[&str]| {
        let out = tg(root, args);
        assert!(out.status.success(), "{args:?}: {}", text(&out));
    };
    ok(&["issuer", "keygen", "--out", &p("rival")]);
    ok(&["trust", "add", &p("rival/issuer.pub"), "--name", "rival"]);
    ok(&[
        "trust",
        "add",
        &p("rival/issuer.pub"),
        "--state",
        &p("scratch"),
    ]);
    ok(&[
        "issuer",
        "sign",
        "--key",
        &p("rival/issuer.key"),
        "--license-id",
        "demo",
        "--seats",
        "5",
        "--out",
        &p("rival.license"),
    ]);
    ok(&[
        "license",
        "install",
        &p("rival.license"),
        "--state",
        &p("scratch"),
    ]);
    let conn = db(root);
    conn.execute("ATTACH DATABASE ?1 AS s", [p("scratch/tollgate.db")])
        .expect("attach");
    conn.execute("INSERT INTO grants SELECT * FROM s.grants", [])
        .expect("insert");
    drop(conn);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let refused = loop {
        let (status, body, _) = server.invoke("hello", b"x");
        if status != 200 {
            break (status, code(&body));
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the host still serves demo 10 s after a second issuer's grant of it appeared"
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    };
    assert_eq!(refused, (403, "revoked".to_string()));
    let status = server.json("/v1/admin/status");
    let demo = status["licenses"]
        .as_array()
        .and_then(|l| l.iter().find(|r| r["id"] == "demo"))
        .cloned()
        .expect("demo in status");
    assert_eq!(demo["conflicts"][0]["kind"], "conflict", "{demo}");
    assert_eq!(demo["seats"], 0, "{demo}");
    assert!(server.terminate().success());
    let log = std::fs::read_to_string(root.join("serve.log")).expect("log");
    assert_eq!(
        log.matches("license demo is granted by several issuers")
            .count(),
        1,
        "logged once, not at every reload: {log}"
    );
}
