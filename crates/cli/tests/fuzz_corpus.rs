//! Replays every input of the fuzz corpora (`fuzz/corpus/*`, kept from
//! `cargo fuzz` runs) through the same parsers on the stable toolchain, so
//! what the fuzzers found stays fixed in CI: no input panics, every refusal
//! says what was wrong, and every accepted license round-trips.

use std::path::{Path, PathBuf};
use tollgate::license::issuer::{IssuerKey, IssuerPublicKey, SignedLicense};
use tollgate_server::{AdminBody, parse_admin_body};

fn corpus(target: &str) -> Vec<(PathBuf, Vec<u8>)> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../fuzz/corpus")
        .join(target);
    let mut inputs: Vec<(PathBuf, Vec<u8>)> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", dir.display()))
        .map(|entry| {
            let path = entry.expect("corpus entry").path();
            let bytes = std::fs::read(&path).expect("corpus file");
            (path, bytes)
        })
        .collect();
    inputs.sort();
    assert!(inputs.len() >= 4, "corpus {target} is nearly empty");
    inputs
}

#[test]
fn license_corpus() {
    let stranger = IssuerKey::from_file_text(
        "tollgate-issuer-secret-key v1\nsecret: AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=\n",
    )
    .expect("fixed key");
    let (mut accepted, mut refused) = (0, 0);
    for (path, bytes) in corpus("license") {
        let Ok(text) = std::str::from_utf8(&bytes) else {
            continue;
        };
        for refusal in [
            IssuerPublicKey::from_file_text(text).err(),
            IssuerKey::from_file_text(text).err(),
        ]
        .into_iter()
        .flatten()
        {
            assert!(!refusal.to_string().is_empty(), "{}", path.display());
        }
        match SignedLicense::parse(text) {
            Ok(license) => {
                accepted += 1;
                let again = SignedLicense::parse(&license.to_file_text())
                    .unwrap_or_else(|e| panic!("{}: does not round-trip: {e}", path.display()));
                assert_eq!(again.to_file_text(), license.to_file_text());
                assert!(
                    license.verify(&[stranger.public()], 0).is_err(),
                    "{}: verified by a key that never signed it",
                    path.display()
                );
            }
            Err(e) => {
                refused += 1;
                assert!(!e.to_string().is_empty(), "{}", path.display());
            }
        }
    }
    assert!(
        accepted >= 1 && refused >= 1,
        "{accepted} accepted, {refused} refused"
    );
}

#[test]
fn config_corpus() {
    let mut refused = 0;
    for (path, bytes) in corpus("config") {
        if let Err(e) =
            tollgate_server::config::Config::from_bytes(&bytes, Path::new("/corpus/tollgate.toml"))
        {
            refused += 1;
            assert!(
                !e.problems.is_empty(),
                "{}: no problem named",
                path.display()
            );
            let lines = String::from_utf8_lossy(&bytes).lines().count() + 1;
            for p in &e.problems {
                assert!(!p.message.is_empty(), "{}: {e}", path.display());
                assert!(
                    p.line <= lines && (p.line == 0 || p.column >= 1),
                    "{}: problem placed outside the file: {p:?}",
                    path.display()
                );
            }
            assert!(
                e.problems
                    .windows(2)
                    .all(|w| (w[0].line, w[0].column) <= (w[1].line, w[1].column)),
                "{}: problems out of order: {e}",
                path.display()
            );
        }
    }
    assert!(refused >= 1);
}

#[test]
fn admin_body_corpus() {
    let mut refused = 0;
    for (path, bytes) in corpus("admin_body") {
        let Some((&route, body)) = bytes.split_first() else {
            continue;
        };
        let kind = match route % 3 {
            0 => AdminBody::License,
            1 => AdminBody::LoadPlugin,
            _ => AdminBody::UsageQuery,
        };
        if let Err(e) = parse_admin_body(kind, body) {
            refused += 1;
            assert!(!e.is_empty(), "{}", path.display());
        }
    }
    assert!(refused >= 1);
}
