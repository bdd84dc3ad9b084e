//! A test harness for plugin authors: load your component into a host with
//! the licenses you choose, call it, and assert outcomes and seat counters
//! in an ordinary `cargo test`.
//!
//! ```
//! use tollgate::testing::TestHost;
//!
//! # fn main() -> Result<(), tollgate::testing::TestError> {
//! # let component = test_guests::bytes::HELLO_LICENSED;
//! // Your own plugin: .plugin("hello", "target/wasm32-wasip2/release/hello.wasm", &["demo"])
//! let host = TestHost::builder()
//!     .license("demo", 1)
//!     .plugin_bytes("hello", component, &["demo"])
//!     .build()?;
//! assert_eq!(host.call_text("hello", "world")?, "hello, world! (licensed by demo)");
//! let seats = host.counters("demo");
//! assert_eq!((seats.checkouts, seats.releases, seats.in_use), (1, 1, 0));
//! host.assert_balanced(); // every seat handed out came back
//! # Ok(())
//! # }
//! ```

use crate::host::{Host, HostError};
use crate::license::{Counters, LicenseStatus};
use crate::runtime::{InvokeError, Limits, LoadError, PluginSpec};
use crate::{Seats, Terms};
use std::path::Path;

/// Why a test host could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum TestError {
    /// The host itself did not start.
    #[error(transparent)]
    Host(#[from] HostError),
    /// A plugin did not load.
    #[error(transparent)]
    Load(#[from] LoadError),
    /// A call failed (see [`TestHost::call_text`]).
    #[error(transparent)]
    Invoke(#[from] InvokeError),
    /// A plugin's output was not UTF-8 text.
    #[error("plugin {plugin} returned output that is not UTF-8 text")]
    NotText {
        /// The plugin.
        plugin: String,
    },
}

fn requiring(spec: PluginSpec, ids: &[&str]) -> PluginSpec {
    ids.iter().fold(spec, |spec, id| spec.requires(*id))
}

/// Builds a [`TestHost`]: licenses first, then plugins.
#[derive(Debug, Default)]
pub struct TestHostBuilder {
    licenses: Vec<(String, Terms)>,
    plugins: Vec<PluginSpec>,
}

impl TestHostBuilder {
    /// Installs license `id` with `seats` counted seats and no expiry.
    pub fn license(self, id: &str, seats: u32) -> Self {
        self.license_terms(id, Terms::new(Seats::Counted(seats)))
    }

    /// Installs license `id` with `seats` counted seats valid until
    /// `expires_at` (seconds since the Unix epoch); a time in the past
    /// installs an expired license.
    pub fn license_until(self, id: &str, seats: u32, expires_at: u64) -> Self {
        self.license_terms(
            id,
            Terms {
                expires_at: Some(expires_at),
                ..Terms::new(Seats::Counted(seats))
            },
        )
    }

    /// Installs license `id` with any terms (unlimited seats, a validity
    /// window, a plugin binding).
    pub fn license_terms(mut self, id: &str, terms: Terms) -> Self {
        self.licenses.push((id.to_string(), terms));
        self
    }

    /// Loads the component at `path` as plugin `name`, requiring `requires`.
    pub fn plugin(self, name: &str, path: impl AsRef<Path>, requires: &[&str]) -> Self {
        self.plugin_spec(requiring(PluginSpec::file(name, path.as_ref()), requires))
    }

    /// Loads component `bytes` as plugin `name`, requiring `requires`.
    pub fn plugin_bytes(self, name: &str, bytes: impl Into<Vec<u8>>, requires: &[&str]) -> Self {
        self.plugin_spec(requiring(PluginSpec::bytes(name, bytes.into()), requires))
    }

    /// Loads a plugin described in full (limits, sandbox, allowed ids).
    pub fn plugin_spec(mut self, spec: PluginSpec) -> Self {
        self.plugins.push(spec);
        self
    }

    /// Starts the host and loads every plugin.
    pub fn build(self) -> Result<TestHost, TestError> {
        let mut builder = Host::builder();
        for (id, terms) in self.licenses {
            builder = builder.license(id, terms);
        }
        let host = builder.build()?;
        for spec in self.plugins {
            host.load_plugin(spec)?;
        }
        Ok(TestHost { host })
    }
}

/// A host with in-memory licenses and ledger, for tests.
#[derive(Debug)]
pub struct TestHost {
    host: Host,
}

impl TestHost {
    /// A builder for a test host.
    pub fn builder() -> TestHostBuilder {
        TestHostBuilder::default()
    }

    /// The host underneath, for anything the harness does not cover.
    pub fn host(&self) -> &Host {
        &self.host
    }

    /// Calls `plugin` with `input`, exactly as the host serves a call.
    pub fn call(&self, plugin: &str, input: &[u8]) -> Result<Vec<u8>, InvokeError> {
        self.host.invoke(plugin, input)
    }

    /// Calls `plugin` with text and returns its output as text.
    pub fn call_text(&self, plugin: &str, input: &str) -> Result<String, TestError> {
        let out = self.call(plugin, input.as_bytes())?;
        String::from_utf8(out).map_err(|_| TestError::NotText {
            plugin: plugin.to_string(),
        })
    }

    /// The full status of license `id`.
    ///
    /// # Panics
    /// If no license `id` was installed: a mistake in the test itself.
    pub fn license(&self, id: &str) -> LicenseStatus {
        self.host
            .licenses()
            .describe(id)
            .unwrap_or_else(|| panic!("the test host has no license {id:?}"))
    }

    /// Counters of license `id`: checkouts, releases, reclaims by reason,
    /// denials by reason, seats in use, peak.
    ///
    /// # Panics
    /// If no license `id` was installed.
    pub fn counters(&self, id: &str) -> Counters {
        self.license(id).counters
    }

    /// Counters of plugin `plugin`'s use of license `id` (zero if none).
    ///
    /// # Panics
    /// If no license `id` was installed.
    pub fn plugin_counters(&self, id: &str, plugin: &str) -> Counters {
        self.license(id)
            .per_plugin
            .get(plugin)
            .cloned()
            .unwrap_or_default()
    }

    /// Asserts that no seat is held, every lease handed out came back
    /// (`checkouts == releases + reclaims`), every seat taken went back
    /// (`checkouts - retakes == returns`), and no grant was oversold.
    ///
    /// # Panics
    /// When any of that does not hold, naming the license and its counters.
    pub fn assert_balanced(&self) {
        for l in self.host.licenses().status().licenses {
            let c = &l.counters;
            assert!(c.balanced(), "license {}: seats not all back: {c:?}", l.id);
            for g in &l.grants {
                let limit = g.terms.seats.limit().unwrap_or(u32::MAX);
                let peak = g.counters.peak;
                assert!(
                    peak <= limit,
                    "license {} grant {}: oversold: peak {peak} of {limit} seats",
                    l.id,
                    g.id
                );
            }
        }
    }
}

/// Limits suited to tests: the defaults with a short time limit, so a
/// plugin that hangs fails its test quickly.
pub fn quick_limits() -> Limits {
    Limits {
        time: std::time::Duration::from_secs(2),
        ..Limits::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ReclaimReason;

    #[test]
    fn licensed_call_counts_and_balances() {
        let host = TestHost::builder()
            .license("demo", 1)
            .plugin_bytes("hello", test_guests::bytes::HELLO_LICENSED, &["demo"])
            .build()
            .expect("test host");
        assert_eq!(
            host.call_text("hello", "world").expect("licensed"),
            "hello, world! (licensed by demo)"
        );
        let c = host.counters("demo");
        assert_eq!((c.checkouts, c.releases, c.in_use, c.peak), (1, 1, 0, 1));
        assert_eq!(host.plugin_counters("demo", "hello").checkouts, 1);
        assert_eq!(host.plugin_counters("demo", "nobody").checkouts, 0);
        host.assert_balanced();
    }

    #[test]
    fn expiry_is_seen_by_the_plugin_and_enforced() {
        let host = TestHost::builder()
            .license_until("demo", 2, 4_000_000_000)
            .license_until("old", 1, 1)
            .plugin_bytes("ids", test_guests::bytes::IDS, &["demo"])
            .plugin_bytes("hello", test_guests::bytes::HELLO_LICENSED, &["old"])
            .build()
            .expect("test host");
        assert_eq!(
            host.call_text("ids", "").expect("licensed"),
            "demo: seats=2 in-use=0->1 expires=4000000000\n"
        );
        match host.call("hello", b"world") {
            Err(InvokeError::Unlicensed { missing, .. }) => assert_eq!(
                missing,
                vec![crate::runtime::MissingLicense {
                    id: "old".into(),
                    denial: Some(crate::Denial::Expired),
                    lapsed: false,
                }]
            ),
            other => panic!("expected the result withheld, got {other:?}"),
        }
        let old = host.counters("old");
        assert_eq!(old.denials.get(crate::Denial::Expired), 1);
        assert_eq!((old.checkouts, old.withheld), (0, 1));
        host.assert_balanced();
    }

    #[test]
    fn unlicensed_call_is_withheld_and_reported() {
        let host = TestHost::builder()
            .license("demo", 1)
            .license("other", 1)
            .plugin_spec(
                PluginSpec::bytes("freeloader", test_guests::bytes::NO_LICENSE)
                    .requires("demo")
                    .limits(quick_limits()),
            )
            .build()
            .expect("test host");
        let err = host.call("freeloader", b"x").expect_err("withheld");
        assert!(err.is_unlicensed(), "{err}");
        assert_eq!(host.counters("demo").withheld, 1);
        host.assert_balanced();
    }

    #[test]
    #[should_panic(expected = "seats not all back")]
    fn assert_balanced_catches_a_held_seat() {
        let host = TestHost::builder()
            .license("demo", 1)
            .build()
            .expect("test host");
        let holder = crate::license::Holder {
            plugin: "test".into(),
            component_digest: "none".into(),
            invocation: 0,
        };
        let mut call = host.host().licenses().call(
            holder,
            std::sync::Arc::new(crate::license::Entitlement::to(["demo"])),
            crate::license::CallLimits {
                wait: None,
                max_leases: 1,
                max_acquires: 1,
            },
        );
        call.acquire("demo").expect("seat");
        host.assert_balanced();
        call.end(ReclaimReason::StoreDropped);
    }

    #[test]
    fn bad_component_is_a_load_error() {
        let err = TestHost::builder()
            .plugin_bytes("junk", b"not wasm".to_vec(), &[])
            .build()
            .expect_err("refused");
        assert!(matches!(err, TestError::Load(_)), "{err}");
    }
}
