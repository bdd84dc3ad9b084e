//! [`Host`]: licenses plus plugins, the API an operator embeds.

use crate::license::ledger::{Ledger, LedgerError, MemoryLedger};
use crate::license::store::{
    InvocationIds, RecoverError, StoreError, apply, recover, recover_shared,
};
use crate::license::{
    CallLimits, Clock, Entitlement, Holder, LicenseError, LicenseId, LicenseManager, ManagerStatus,
    PluginName, SystemClock, Terms,
};
use crate::licensing::LicensedCall;
use crate::runtime::{
    Allocator, COMPILE_CACHE_KEY_FILE, CompileCache, InvokeError, Invoked, KEY_FILE_IN_CACHE,
    LoadError, Plugin, PluginSpec, RecordError, Runtime, RuntimeError,
};
use crate::store::SqliteLedger;
use crate::store::state::{HostLock, IssuerPin, State, StateError};
use serde::Serialize;
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::{Arc, PoisonError, RwLock};

/// Builds a [`Host`].
pub struct HostBuilder {
    licenses: Vec<(String, Terms)>,
    trials: Vec<(String, Terms)>,
    ledger: Option<Arc<dyn Ledger>>,
    state: Option<PathBuf>,
    clock: Arc<dyn Clock>,
    allocator: Allocator,
    compile_cache: Option<PathBuf>,
    protected: Vec<(PathBuf, String)>,
    pinned_issuers: Option<Vec<IssuerPin>>,
    shared_seats: bool,
}

impl Default for HostBuilder {
    fn default() -> Self {
        Self {
            licenses: Vec::new(),
            trials: Vec::new(),
            ledger: None,
            state: None,
            clock: Arc::new(SystemClock),
            allocator: Allocator::default(),
            compile_cache: None,
            protected: Vec::new(),
            pinned_issuers: None,
            shared_seats: false,
        }
    }
}

impl HostBuilder {
    /// Adds a license with these terms.
    pub fn license(mut self, id: impl Into<String>, terms: Terms) -> Self {
        self.licenses.push((id.into(), terms));
        self
    }

    /// Adds a trial license: counted in memory, never written to the ledger.
    pub fn trial_license(mut self, id: impl Into<String>, terms: Terms) -> Self {
        self.trials.push((id.into(), terms));
        self
    }

    /// Uses the state directory `dir`: installed licenses, revocations and
    /// the durable SQLite ledger. Leases a dead host left open are reclaimed
    /// as `host-restart` on start.
    pub fn state(mut self, dir: impl Into<PathBuf>) -> Self {
        self.state = Some(dir.into());
        self
    }

    /// Sends usage events to `ledger` (default: an in-memory ledger, or the
    /// durable ledger of the state directory).
    pub fn ledger(mut self, ledger: Arc<dyn Ledger>) -> Self {
        self.ledger = Some(ledger);
        self
    }

    /// Keeps compiled components in `dir`, keyed by the engine's compatibility
    /// hash and the component's sha256, so a restart does not recompile.
    /// Each entry is authenticated with a secret kept in the state directory
    /// (`compile-cache.key`), or in `dir` (`cache.key`) for a host without
    /// one; an entry that fails the check is compiled again, never loaded.
    pub fn compile_cache(mut self, dir: impl Into<PathBuf>) -> Self {
        self.compile_cache = Some(dir.into());
        self
    }

    /// Keeps plugins' sandbox directories away from `path` (described as
    /// `what` in errors): a plugin whose `dirs` contain it, or lie inside
    /// it, is refused. The state directory and the compile cache are always
    /// protected; a server adds its config file and admin token file.
    pub fn protect(mut self, path: impl Into<PathBuf>, what: impl Into<String>) -> Self {
        self.protected.push((path.into(), what.into()));
        self
    }

    /// Pins the issuer keys the state directory must trust, exactly: the
    /// host refuses to start on a database that trusts any other key or
    /// lacks one of these.
    pub fn pin_issuers(mut self, pins: Vec<IssuerPin>) -> Self {
        self.pinned_issuers = Some(pins);
        self
    }

    /// Shares counted grants' seats with other hosts through a shared store:
    /// this host hands out only the seats of the batches it is given
    /// ([`LicenseManager::set_share`]; `tollgate-server` leases them), and
    /// takes its grants from that store, not the state directory.
    pub fn shared_seats(mut self) -> Self {
        self.shared_seats = true;
        self
    }

    /// Chooses how instances get memory (default: [`Allocator::default`],
    /// a pool for 64 calls at once of plugins within [`crate::Limits::default`],
    /// falling back to on demand where the platform refuses the pool). A
    /// plugin whose memory limit exceeds the pool's slot is refused when it
    /// loads.
    pub fn allocator(mut self, allocator: Allocator) -> Self {
        self.allocator = allocator;
        self
    }

    /// Reads time from `clock` (default: the system clock).
    pub fn clock(mut self, clock: Arc<dyn Clock>) -> Self {
        self.clock = clock;
        self
    }

    /// Starts the runtime and installs the licenses.
    pub fn build(self) -> Result<Host, HostError> {
        let mut protected = Vec::new();
        if let Some(dir) = &self.state {
            protected.push((dir.clone(), "the state directory".to_string()));
        }
        let cache = match &self.compile_cache {
            None => None,
            Some(dir) => {
                // The key lives in the state directory, apart from the
                // entries it authenticates; a host without one keeps it
                // in the cache directory.
                let key_file = match &self.state {
                    Some(state) => {
                        crate::store::files::create_dir(state).map_err(|e| StateError::Dir {
                            path: state.clone(),
                            source: e.into(),
                        })?;
                        state.join(COMPILE_CACHE_KEY_FILE)
                    }
                    None => dir.join(KEY_FILE_IN_CACHE),
                };
                protected.push((dir.clone(), "the compile cache".into()));
                Some(CompileCache::open(dir, &key_file).map_err(RuntimeError::CompileCache)?)
            }
        };
        protected.extend(self.protected.iter().cloned());
        let runtime = Runtime::new(self.allocator, cache)?;
        let mut durable = None;
        let (licenses, state, lock, invocations) = match &self.state {
            None => {
                let ledger = self
                    .ledger
                    .clone()
                    .unwrap_or_else(|| Arc::new(MemoryLedger::default()));
                let licenses = Arc::new(if self.shared_seats {
                    LicenseManager::shared(ledger, self.clock.clone())
                } else {
                    LicenseManager::new(ledger, self.clock.clone())
                });
                (licenses, None, None, InvocationIds::in_memory())
            }
            Some(dir) => {
                let state = State::open(dir)?;
                if let Some(pins) = &self.pinned_issuers {
                    state.check_pinned_issuers(pins)?;
                }
                let lock = state.lock_host()?;
                let sqlite = Arc::new(SqliteLedger::open(state.db_path())?);
                durable = Some(sqlite.clone());
                let ledger: Arc<dyn Ledger> = match &self.ledger {
                    Some(l) => l.clone(),
                    None => sqlite,
                };
                let licenses = if self.shared_seats {
                    recover_shared(&state, ledger, self.clock.clone())?
                } else {
                    recover(&state, ledger, self.clock.clone())?
                };
                let state = Arc::new(state);
                let ids = InvocationIds::durable(state.clone())?;
                (licenses, Some(state), Some(lock), ids)
            }
        };
        for (id, terms) in self.licenses {
            licenses.install(&id, terms)?;
        }
        for (id, terms) in self.trials {
            if licenses.pool(&id).is_some() {
                return Err(HostError::TrialShadows(id));
            }
            licenses.install_trial(&id, terms)?;
        }
        Ok(Host {
            runtime,
            licenses,
            plugins: RwLock::new(BTreeMap::new()),
            invocations,
            state,
            durable,
            protected,
            pinned_issuers: self.pinned_issuers,
            _lock: lock,
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
    /// The state directory could not be used.
    #[error(transparent)]
    State(#[from] StateError),
    /// The durable ledger failed.
    #[error(transparent)]
    Ledger(#[from] LedgerError),
    /// The store's grants, revocations or history could not be read.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The host could not resume from its store.
    #[error(transparent)]
    Recover(#[from] RecoverError),
    /// The operation needs a state directory and the host has none.
    #[error("this host has no state directory; start it with one to install licenses")]
    NoState,
    /// A trial license has the id of an installed one.
    #[error("trial license {0:?} has the same id as an installed license; pick another id")]
    TrialShadows(String),
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
    /// Whether its compiled form came from the compile cache.
    pub from_cache: bool,
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
    invocations: InvocationIds,
    state: Option<Arc<State>>,
    durable: Option<Arc<SqliteLedger>>,
    /// Host state no plugin directory may overlap, with what it is.
    protected: Vec<(PathBuf, String)>,
    pinned_issuers: Option<Vec<IssuerPin>>,
    _lock: Option<HostLock>,
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

    /// The instance allocator in use; see [`Runtime::allocator_fallback`]
    /// for why it may not be the one asked for.
    pub fn allocator(&self) -> Allocator {
        self.runtime.allocator()
    }

    /// Why the pooling allocator asked for is not in use, if it is not.
    pub fn allocator_fallback(&self) -> Option<&str> {
        self.runtime.allocator_fallback()
    }

    /// Installs (or replaces the terms of) a license.
    pub fn install_license(&self, id: &str, terms: Terms) -> Result<(), LicenseError> {
        self.licenses.install(id, terms)
    }

    /// Loads a plugin under a name already in use, swapping it in once it
    /// is compiled; calls in flight finish on the old one.
    pub fn reload_plugin(&self, spec: PluginSpec) -> Result<Arc<Plugin>, LoadError> {
        self.check_dirs(&spec)?;
        let plugin = Arc::new(self.runtime.load(spec)?);
        let mut plugins = self.plugins.write().unwrap_or_else(PoisonError::into_inner);
        plugins.insert(plugin.name().to_string(), plugin.clone());
        Ok(plugin)
    }

    /// Loads a plugin; its name must be new on this host.
    pub fn load_plugin(&self, spec: PluginSpec) -> Result<Arc<Plugin>, LoadError> {
        if self.plugin(&spec.name).is_some() {
            return Err(LoadError::DuplicateName(spec.name));
        }
        self.check_dirs(&spec)?;
        let plugin = Arc::new(self.runtime.load(spec)?);
        let mut plugins = self.plugins.write().unwrap_or_else(PoisonError::into_inner);
        if plugins.contains_key(plugin.name()) {
            return Err(LoadError::DuplicateName(plugin.name().to_string()));
        }
        plugins.insert(plugin.name().to_string(), plugin.clone());
        Ok(plugin)
    }

    /// Refuses sandbox directories that contain host state or lie inside it.
    fn check_dirs(&self, spec: &PluginSpec) -> Result<(), LoadError> {
        for dir in &spec.sandbox.dirs {
            for (path, what) in &self.protected {
                if crate::store::files::overlaps(&dir.host, path) {
                    return Err(LoadError::Sandbox {
                        plugin: spec.name.clone(),
                        reason: format!(
                            "directory {} overlaps {what} {} (one contains the other), which would let the plugin reach host state; give the plugin a directory outside it",
                            dir.host.display(),
                            path.display()
                        ),
                    });
                }
            }
        }
        Ok(())
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

    /// The spec plugin `name` was loaded from: its component, licenses,
    /// limits and sandbox, e.g. to report its settings or to reload it.
    pub fn plugin_spec(&self, name: &str) -> Option<PluginSpec> {
        self.plugin(name).map(|p| p.spec().clone())
    }

    /// Calls plugin `name` with `input`. The output is returned only if the
    /// call held every license its plugin requires, and only once the call's
    /// usage events are durable. Blocks the thread; from async code use
    /// [`Host::invoke_async`].
    pub fn invoke(&self, name: &str, input: &[u8]) -> Result<Vec<u8>, InvokeError> {
        self.invoke_call(name, input).1
    }

    /// Like [`Host::invoke`], also returning the invocation id the ledger uses.
    pub fn invoke_call(&self, name: &str, input: &[u8]) -> (u64, Result<Vec<u8>, InvokeError>) {
        let (invocation, invoked) = self.runtime.block_on(self.run_call(name, input));
        // Waiting for the commit on this thread is much quicker than being
        // woken through the blocking runtime (BENCHMARKS.md, case F). Only
        // this call's rows are waited for: a call that recorded none (a
        // plugin needing no license) answers at once.
        (invocation, invoked.and_then(Invoked::commit))
    }

    /// [`Host::invoke`] for async callers (on a tokio runtime). Dropping the
    /// future stops the call, even inside a host call such as a wait for a
    /// seat, and its seats come back as `store-dropped`.
    pub async fn invoke_async(&self, name: &str, input: &[u8]) -> Result<Vec<u8>, InvokeError> {
        self.invoke_call_async(name, input).await.1
    }

    /// Like [`Host::invoke_async`], also returning the invocation id.
    pub async fn invoke_call_async(
        &self,
        name: &str,
        input: &[u8],
    ) -> (u64, Result<Vec<u8>, InvokeError>) {
        let (invocation, invoked) = self.run_call(name, input).await;
        let outcome = match invoked {
            Ok(invoked) => invoked.commit_async().await,
            Err(e) => Err(e),
        };
        (invocation, outcome)
    }

    /// Runs one call and ends it; its answer waits for its usage to be
    /// committed. A call that could not get an invocation id does not run
    /// and has id 0.
    async fn run_call(&self, name: &str, input: &[u8]) -> (u64, Result<Invoked, InvokeError>) {
        let invocation = match self.invocations.next() {
            Ok(id) => id,
            Err(e) => {
                return (
                    0,
                    Err(InvokeError::NotRecorded {
                        plugin: name.to_string(),
                        source: RecordError::InvocationId(e),
                    }),
                );
            }
        };
        let Some(plugin) = self.plugin(name) else {
            return (
                invocation,
                Err(InvokeError::UnknownPlugin(name.to_string())),
            );
        };
        // A call whose usage could not be recorded is refused before it
        // takes a seat: it fails closed, and memory stays bounded.
        if let Err(e) = self.licenses.ledger().ready() {
            return (
                invocation,
                Err(InvokeError::NotRecorded {
                    plugin: name.to_string(),
                    source: e.into(),
                }),
            );
        }
        let invoked = self
            .runtime
            .invoke(&plugin, &self.licenses, invocation, input)
            .await;
        (invocation, Ok(invoked))
    }

    /// Opens the licensing of one call of an embedder's own component, run
    /// in the embedder's own store (see [`crate::licensing`]): `plugin`
    /// names it in the counters and the ledger, `component` is its bytes
    /// (rules may name its sha256), and its result is delivered only if it
    /// holds every id of `requires` to its end. The call gets an invocation
    /// id of this host; it is refused, before it takes a seat, when its
    /// usage could not be recorded.
    pub fn open_call(
        &self,
        plugin: &str,
        component: &[u8],
        requires: &[&str],
        limits: CallLimits,
    ) -> Result<LicensedCall, HostError> {
        let plugin = PluginName::try_from(plugin).map_err(LoadError::from)?;
        for id in requires {
            LicenseId::try_from(*id).map_err(|source| LoadError::InvalidLicenseId {
                plugin: plugin.to_string(),
                source,
            })?;
        }
        self.licenses.ledger().ready()?;
        let invocation = self.invocations.next()?;
        let holder = Holder {
            plugin: plugin.as_str().into(),
            component_digest: format!("{:x}", Sha256::digest(component)).into(),
            invocation,
        };
        let requires: Vec<String> = requires.iter().map(|id| id.to_string()).collect();
        Ok(LicensedCall::open(
            &self.licenses,
            holder,
            Arc::new(Entitlement::to(requires.iter().cloned())),
            requires,
            limits,
        ))
    }

    /// Compiles component `bytes` and reports its interface and whether this
    /// host can run it, without loading it.
    pub fn inspect(&self, bytes: &[u8]) -> Result<crate::runtime::Inspection, LoadError> {
        self.runtime.inspect(bytes)
    }

    /// Revokes a license, every grant of it present and future: held seats
    /// end now (their calls are withheld) and new requests get `revoked`;
    /// recorded in the state directory when there is one.
    pub fn revoke_license(&self, id: &str) -> Result<usize, HostError> {
        if let Some(state) = &self.state {
            state.revoke(id, SystemClock.now_secs())?;
        }
        let ended = self.licenses.revoke(id)?;
        self.licenses.ledger().sync()?;
        Ok(ended)
    }

    /// Revokes one grant (by grant id) for good: its held seats end now.
    /// Needs a state directory; returns the license id and the seats ended.
    pub fn revoke_grant(&self, grant: &str) -> Result<(String, usize), HostError> {
        let state = self.state.as_ref().ok_or(HostError::NoState)?;
        let id = state.revoke_grant(grant, SystemClock.now_secs())?;
        let ended = self.licenses.revoke_grant(&id, grant)?;
        self.licenses.ledger().sync()?;
        Ok((id, ended))
    }

    /// Lifts the revocation of license `id`; false if it was not revoked.
    pub fn unrevoke_license(&self, id: &str) -> Result<bool, HostError> {
        let lifted = match &self.state {
            Some(state) => state.unrevoke(id)?,
            None => self.licenses.describe(id).is_some_and(|s| s.revoked),
        };
        self.licenses.unrevoke(id)?;
        Ok(lifted)
    }

    /// Verifies and installs license text into the state directory, and puts
    /// its grant in force at once. Needs a state directory.
    pub fn install_license_text(
        &self,
        text: &str,
    ) -> Result<crate::store::state::Installed, HostError> {
        let state = self.state.as_ref().ok_or(HostError::NoState)?;
        if let Some(pins) = &self.pinned_issuers {
            state.check_pinned_issuers(pins)?;
        }
        let installed = state.install_text(text, SystemClock.now_secs())?;
        if installed.new {
            self.reload_licenses()?;
        }
        Ok(installed)
    }

    /// Reads the grants and revocations of the state directory again and puts
    /// them in force (what `tollgate license …` changed while this host ran),
    /// and ends the seats of grants that expired. Without a state directory
    /// only the latter.
    pub fn reload_licenses(&self) -> Result<(), HostError> {
        // A host sharing seats takes its grants from the shared store.
        if let Some(state) = self.state.as_ref().filter(|_| !self.licenses.is_shared()) {
            apply(state.as_ref(), &self.licenses)?;
        }
        self.licenses.sweep();
        Ok(())
    }

    /// Whether new calls can be recorded: an error naming why not (commits
    /// fail, e.g. on a full disk, or too many rows wait for their commit).
    pub fn ledger_ready(&self) -> Result<(), LedgerError> {
        self.licenses.ledger().ready()
    }

    /// The state directory, if the host has one.
    pub fn state(&self) -> Option<&State> {
        self.state.as_deref()
    }

    /// Commit statistics of the durable ledger, if the host has one.
    pub fn ledger_stats(&self) -> Option<crate::store::CommitStats> {
        self.durable.as_ref().map(|l| l.stats())
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
                        from_cache: p.from_cache(),
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
