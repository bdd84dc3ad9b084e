//! [`Host`]: licenses plus plugins, the API an operator embeds.

use crate::ledger::{Ledger, MemoryLedger};
use crate::license::{Clock, LicenseError, LicenseManager, ManagerStatus, SystemClock, Terms};
use crate::runtime::{InvokeError, LoadError, Plugin, PluginSpec, Runtime, RuntimeError};
use serde::Serialize;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, PoisonError, RwLock};

/// Builds a [`Host`].
pub struct HostBuilder {
    licenses: Vec<(String, Terms)>,
    ledger: Option<Arc<dyn Ledger>>,
    clock: Arc<dyn Clock>,
}

impl Default for HostBuilder {
    fn default() -> Self {
        Self {
            licenses: Vec::new(),
            ledger: None,
            clock: Arc::new(SystemClock),
        }
    }
}

impl HostBuilder {
    /// Adds a license with these terms.
    pub fn license(mut self, id: impl Into<String>, terms: Terms) -> Self {
        self.licenses.push((id.into(), terms));
        self
    }

    /// Sends usage events to `ledger` (default: an in-memory ledger).
    pub fn ledger(mut self, ledger: Arc<dyn Ledger>) -> Self {
        self.ledger = Some(ledger);
        self
    }

    /// Reads time from `clock` (default: the system clock).
    pub fn clock(mut self, clock: Arc<dyn Clock>) -> Self {
        self.clock = clock;
        self
    }

    /// Starts the runtime and installs the licenses.
    pub fn build(self) -> Result<Host, HostError> {
        let ledger = self
            .ledger
            .unwrap_or_else(|| Arc::new(MemoryLedger::default()));
        let licenses = Arc::new(LicenseManager::new(ledger, self.clock));
        for (id, terms) in self.licenses {
            licenses.install(&id, terms)?;
        }
        Ok(Host {
            runtime: Runtime::new()?,
            licenses,
            plugins: RwLock::new(BTreeMap::new()),
            invocations: AtomicU64::new(1),
        })
    }
}

/// Errors from building or configuring a [`Host`].
#[derive(Debug, thiserror::Error)]
pub enum HostError {
    /// The runtime could not start.
    #[error(transparent)]
    Runtime(#[from] RuntimeError),
    /// A license could not be installed.
    #[error(transparent)]
    License(#[from] LicenseError),
    /// A plugin could not be loaded.
    #[error(transparent)]
    Load(#[from] LoadError),
}

/// Invocation counts of one plugin.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct PluginStatus {
    /// The plugin's name.
    pub name: String,
    /// sha256 of its component, hex.
    pub digest: String,
    /// License ids it requires.
    pub requires: Vec<String>,
    /// Calls started.
    pub invocations: u64,
    /// Calls whose result reached the caller.
    pub ok: u64,
    /// Calls withheld as unlicensed.
    pub unlicensed: u64,
    /// Calls that trapped, timed out or failed.
    pub failed: u64,
}

/// A snapshot of the host: licenses with counters, and plugins.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct HostStatus {
    /// The license manager's counters.
    #[serde(flatten)]
    pub licenses: ManagerStatus,
    /// Per plugin, sorted by name.
    pub plugins: Vec<PluginStatus>,
}

/// The plugin host: a license manager and the plugins it licenses.
///
/// `Host` is `Send + Sync`; call [`Host::invoke`] from as many threads as you like.
pub struct Host {
    runtime: Runtime,
    licenses: Arc<LicenseManager>,
    plugins: RwLock<BTreeMap<String, Arc<Plugin>>>,
    invocations: AtomicU64,
}

impl std::fmt::Debug for Host {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Host").finish_non_exhaustive()
    }
}

impl Host {
    /// A builder for a host.
    pub fn builder() -> HostBuilder {
        HostBuilder::default()
    }

    /// The license manager.
    pub fn licenses(&self) -> &Arc<LicenseManager> {
        &self.licenses
    }

    /// Installs (or replaces the terms of) a license.
    pub fn install_license(&self, id: &str, terms: Terms) -> Result<(), LicenseError> {
        self.licenses.install(id, terms)
    }

    /// Loads a plugin; its name must be new on this host.
    pub fn load_plugin(&self, spec: PluginSpec) -> Result<Arc<Plugin>, LoadError> {
        if self.plugin(&spec.name).is_some() {
            return Err(LoadError::DuplicateName(spec.name));
        }
        let plugin = Arc::new(self.runtime.load(spec)?);
        let mut plugins = self.plugins.write().unwrap_or_else(PoisonError::into_inner);
        if plugins.contains_key(plugin.name()) {
            return Err(LoadError::DuplicateName(plugin.name().to_string()));
        }
        plugins.insert(plugin.name().to_string(), plugin.clone());
        Ok(plugin)
    }

    /// Unloads a plugin; calls in flight finish. Returns whether it was loaded.
    pub fn unload_plugin(&self, name: &str) -> bool {
        self.plugins
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(name)
            .is_some()
    }

    /// The loaded plugin named `name`.
    pub fn plugin(&self, name: &str) -> Option<Arc<Plugin>> {
        self.plugins
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(name)
            .cloned()
    }

    /// Calls plugin `name` with `input`. The output is returned only if the
    /// call held every license its plugin requires.
    pub fn invoke(&self, name: &str, input: &[u8]) -> Result<Vec<u8>, InvokeError> {
        let plugin = self
            .plugin(name)
            .ok_or_else(|| InvokeError::UnknownPlugin(name.to_string()))?;
        let invocation = self.invocations.fetch_add(1, Ordering::Relaxed);
        self.runtime
            .invoke(&plugin, &self.licenses, invocation, input)
    }

    /// The license ids plugin `name` may use that are installed here.
    pub fn license_ids(&self, name: &str) -> Option<Vec<String>> {
        self.plugin(name)
            .map(|p| self.licenses.ids_for(p.entitlement()))
    }

    /// Licenses with counters, and plugins with invocation counts.
    pub fn status(&self) -> HostStatus {
        let plugins: Vec<Arc<Plugin>> = self
            .plugins
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .values()
            .cloned()
            .collect();
        HostStatus {
            licenses: self.licenses.status(),
            plugins: plugins
                .iter()
                .map(|p| {
                    let s = p.stats();
                    PluginStatus {
                        name: p.name().to_string(),
                        digest: p.digest().to_string(),
                        requires: p.requires().to_vec(),
                        invocations: s.invocations.load(Ordering::Relaxed),
                        ok: s.ok.load(Ordering::Relaxed),
                        unlicensed: s.unlicensed.load(Ordering::Relaxed),
                        failed: s.failed.load(Ordering::Relaxed),
                    }
                })
                .collect(),
        }
    }
}
