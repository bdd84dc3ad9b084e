//! Loading a plugin: check the component, pre-link it once, keep its limits.

use super::Runtime;
use super::bindings::ServiceOfferPre;
use super::sandbox::InvocationState;
use crate::license::{Entitlement, InvalidLicenseId, InvalidPluginName, LicenseId, PluginName};
use serde::Serialize;
use sha2::{Digest, Sha256};
use std::borrow::Cow;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::Duration;
use wasmtime::component::Component;

/// The WIT package plugins are built against.
pub const WIT_PACKAGE: &str = "tollgate:plugin@0.1.0";

/// Largest component file accepted.
const MAX_COMPONENT_BYTES: u64 = 256 * 1024 * 1024;

/// Limits applied to each invocation of a plugin. Every limit counts the
/// whole call: all of its core instances, memories and tables together,
/// however many the component declares. [`Limits::default`] is the one
/// source of the default values: the config file, the admin API and
/// `tollgate run` take theirs from it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Limits {
    /// Most linear memory, in bytes, of all the call's memories together.
    pub memory_bytes: usize,
    /// Most wall time per call.
    pub time: Duration,
    /// How long `acquire` may wait for a seat; `None`: refuse at once.
    pub wait_for_seat: Option<Duration>,
    /// Largest input a caller may send, in bytes. `tollgate serve` refuses a
    /// larger request body (413) before reading it; [`crate::Host::invoke`]
    /// passes whatever its caller gives.
    pub max_input_bytes: usize,
    /// Largest output returned to the caller, in bytes.
    pub max_output_bytes: usize,
    /// Most leases one invocation may hold at once.
    pub max_leases: usize,
    /// Most seats one invocation may acquire in all (each is a ledger row).
    pub max_acquires: usize,
    /// Most core module instances one call may create (its modules, and the
    /// adapter and shim modules the component tooling adds).
    pub max_instances: usize,
    /// Most linear memories one call may create.
    pub max_memories: usize,
    /// Most tables one call may create.
    pub max_tables: usize,
    /// Most table elements, of all the call's tables together.
    pub max_table_elements: usize,
    /// Most resources one call may hold at once: entries of its host
    /// resource table (leases, WASI streams and files) and, separately,
    /// component-model handles (its own resources included).
    pub max_resources: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            memory_bytes: 64 * 1024 * 1024,
            time: Duration::from_secs(5),
            wait_for_seat: None,
            max_input_bytes: 1024 * 1024,
            max_output_bytes: 16 * 1024 * 1024,
            max_leases: 1024,
            max_acquires: 10_000,
            // Every Rust guest in guest-examples (wasm32-wasip2) has 3 core
            // instances, 1 memory, 2 tables and under 100 table elements;
            // Python and JavaScript components bundle more modules (an
            // interpreter, libc, adapters) in one memory. The defaults leave
            // room for those, and the pooling allocator reserves slots for
            // every call at these counts.
            max_instances: 32,
            max_memories: 4,
            max_tables: 8,
            max_table_elements: 1 << 20,
            max_resources: 4096,
        }
    }
}

/// Where a plugin's component comes from.
#[derive(Clone, PartialEq, Eq)]
pub enum ComponentSource {
    /// A `.wasm` file, read again when the plugin is reloaded.
    File(PathBuf),
    /// Component bytes in memory, kept (shared, not copied) with the loaded
    /// plugin's spec.
    Bytes(Arc<[u8]>),
}

impl std::fmt::Debug for ComponentSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::File(path) => f.debug_tuple("File").field(path).finish(),
            Self::Bytes(bytes) => write!(f, "Bytes({} bytes)", bytes.len()),
        }
    }
}

/// What an operator says about a plugin: its name, component, licenses and
/// limits. The config file, the admin API and `tollgate run` all build one;
/// a loaded [`Plugin`] keeps the spec it was loaded from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PluginSpec {
    /// Unique name on this host, a [`PluginName`]; checked when loaded.
    pub name: String,
    /// The component.
    pub component: ComponentSource,
    /// License ids every call must hold, or its result is withheld; each a
    /// [`LicenseId`], checked when loaded.
    pub requires: Vec<String>,
    /// Further license ids the plugin may ask for; checked when loaded.
    pub may_use: Vec<String>,
    /// Per-invocation limits.
    pub limits: Limits,
    /// What the sandbox lets the plugin see (nothing by default).
    pub sandbox: Sandbox,
}

/// A host directory the plugin sees inside its sandbox.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Preopen {
    /// The directory on the host.
    pub host: PathBuf,
    /// Its absolute path inside the sandbox.
    pub guest: String,
    /// Whether the plugin may change it.
    pub writable: bool,
}

/// What a plugin's WASI sandbox exposes beyond the deny-all default.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Sandbox {
    /// Preopened directories.
    pub dirs: Vec<Preopen>,
    /// Environment variables, name and value.
    pub env: Vec<(String, String)>,
    /// Names of this process's environment variables passed through, with
    /// the values they have when the plugin is loaded (or reloaded); unset
    /// ones are left out.
    pub pass_env: Vec<String>,
}

impl PluginSpec {
    /// A plugin named `name` loaded from the file at `path`.
    pub fn file(name: impl Into<String>, path: impl Into<PathBuf>) -> Self {
        Self::new(name, ComponentSource::File(path.into()))
    }

    /// A plugin named `name` from component `bytes`.
    pub fn bytes(name: impl Into<String>, bytes: impl Into<Arc<[u8]>>) -> Self {
        Self::new(name, ComponentSource::Bytes(bytes.into()))
    }

    fn new(name: impl Into<String>, component: ComponentSource) -> Self {
        Self {
            name: name.into(),
            component,
            requires: Vec::new(),
            may_use: Vec::new(),
            limits: Limits::default(),
            sandbox: Sandbox::default(),
        }
    }

    /// Adds a required license id.
    pub fn requires(mut self, id: impl Into<String>) -> Self {
        self.requires.push(id.into());
        self
    }

    /// Adds a license id the plugin may use without requiring it.
    pub fn may_use(mut self, id: impl Into<String>) -> Self {
        self.may_use.push(id.into());
        self
    }

    /// Sets what the sandbox exposes.
    pub fn sandbox(mut self, sandbox: Sandbox) -> Self {
        self.sandbox = sandbox;
        self
    }

    /// Sets the limits.
    pub fn limits(mut self, limits: Limits) -> Self {
        self.limits = limits;
        self
    }
}

/// Why a plugin could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// The plugin name is not a valid [`PluginName`].
    #[error(transparent)]
    InvalidName(#[from] InvalidPluginName),
    /// A plugin with this name is already loaded.
    #[error("a plugin named {0:?} is already loaded; unload it first or pick another name")]
    DuplicateName(String),
    /// A license id in the manifest is not a valid [`LicenseId`].
    #[error("plugin {plugin}: {source}")]
    InvalidLicenseId {
        /// The plugin.
        plugin: String,
        /// What is wrong.
        source: InvalidLicenseId,
    },
    /// The component file could not be read.
    #[error("plugin {plugin}: cannot read {path}: {source}")]
    Read {
        /// The plugin.
        plugin: String,
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The component file is too large.
    #[error(
        "plugin {plugin}: {path} is {size} bytes, over the {MAX_COMPONENT_BYTES}-byte limit for a component"
    )]
    TooLarge {
        /// The plugin.
        plugin: String,
        /// The file.
        path: PathBuf,
        /// Its size.
        size: u64,
    },
    /// The bytes are a core Wasm module, not a component.
    #[error(
        "plugin {plugin}: this is a core WebAssembly module, not a component; build it for wasm32-wasip2 (or wrap it with `wasm-tools component new`) against {WIT_PACKAGE}"
    )]
    CoreModule {
        /// The plugin.
        plugin: String,
    },
    /// The component declares more than one call may have in the pooling
    /// allocator (core instances, memories, tables, or a memory or table
    /// larger than a slot).
    #[error(
        "plugin {plugin}: it declares more than one call may have on this host ({reason}); a call may have at most the plugin's limits of core instances, memories and tables, and `memory` per memory"
    )]
    OverCallLimits {
        /// The plugin.
        plugin: String,
        /// What wasmtime reported.
        reason: String,
    },
    /// The plugin's memory limit is larger than the pooling allocator's
    /// memory slot, so its calls could not grow to the limit they were
    /// given.
    #[error(
        "plugin {plugin}: its memory limit ({limit} bytes) is larger than the {slot} bytes a call may have in this host's pooling allocator; lower the plugin's memory limit, or build the host with an allocator sized for it (`Allocator::pooling` with this plugin's limits, or `Allocator::OnDemand`)"
    )]
    OverMemorySlot {
        /// The plugin.
        plugin: String,
        /// Its memory limit, in bytes.
        limit: usize,
        /// The pool's memory slot, in bytes.
        slot: usize,
    },
    /// The bytes are not WebAssembly at all, or are malformed.
    #[error("plugin {plugin}: not a valid WebAssembly component: {reason}")]
    Malformed {
        /// The plugin.
        plugin: String,
        /// What wasmtime reported.
        reason: String,
    },
    /// The component needs imports this host does not provide.
    #[error(
        "plugin {plugin}: it imports something this host does not provide ({reason}); plugins may import only WASI 0.2 and {WIT_PACKAGE}/licensing"
    )]
    WrongImports {
        /// The plugin.
        plugin: String,
        /// What wasmtime reported.
        reason: String,
    },
    /// Built against another version of the WIT package.
    #[error(
        "plugin {plugin}: built for {found}, but this host provides {WIT_PACKAGE}; rebuild it against this host's wit/ (or run it on a host that provides {found})"
    )]
    WitVersion {
        /// The plugin.
        plugin: String,
        /// The package version the plugin was built for.
        found: String,
    },
    /// A sandbox directory is unusable.
    #[error("plugin {plugin}: sandbox: {reason}")]
    Sandbox {
        /// The plugin.
        plugin: String,
        /// What is wrong.
        reason: String,
    },
    /// The component does not export the service interface.
    #[error(
        "plugin {plugin}: it does not export {WIT_PACKAGE}/service with `invoke` ({reason}); build it for world service-offer"
    )]
    WrongExports {
        /// The plugin.
        plugin: String,
        /// What wasmtime reported.
        reason: String,
    },
}

/// Counts of one plugin's invocations by outcome.
#[derive(Debug, Default)]
pub struct PluginStats {
    /// Calls started.
    pub invocations: AtomicU64,
    /// Calls whose result reached the caller.
    pub ok: AtomicU64,
    /// Calls whose result was withheld as unlicensed.
    pub unlicensed: AtomicU64,
    /// Calls that trapped, timed out or returned an error.
    pub failed: AtomicU64,
}

/// A loaded plugin: the spec it was loaded from, digest and its pre-linked
/// instance.
pub struct Plugin {
    pub(crate) name: Arc<str>,
    pub(crate) digest: Arc<str>,
    pub(crate) spec: PluginSpec,
    /// The sandbox's environment: its variables, then those passed through.
    pub(crate) env: Vec<(String, String)>,
    pub(crate) entitlement: Arc<Entitlement>,
    pub(crate) pre: ServiceOfferPre<InvocationState>,
    pub(crate) stats: PluginStats,
    pub(crate) from_cache: bool,
}

impl std::fmt::Debug for Plugin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Plugin")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

impl Plugin {
    /// The plugin's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The sha256 of its component, hex.
    pub fn digest(&self) -> &str {
        &self.digest
    }

    /// The spec it was loaded from.
    pub fn spec(&self) -> &PluginSpec {
        &self.spec
    }

    /// The license ids every call must hold.
    pub fn requires(&self) -> &[String] {
        &self.spec.requires
    }

    /// The license ids it may ask for.
    pub fn entitlement(&self) -> &Entitlement {
        &self.entitlement
    }

    /// Its limits.
    pub fn limits(&self) -> &Limits {
        &self.spec.limits
    }

    /// Whether its compiled form came from the compile cache.
    pub fn from_cache(&self) -> bool {
        self.from_cache
    }

    /// Its invocation counts.
    pub fn stats(&self) -> &PluginStats {
        &self.stats
    }
}

fn read_component(plugin: &str, path: &Path) -> Result<Vec<u8>, LoadError> {
    let read_err = |source| LoadError::Read {
        plugin: plugin.to_string(),
        path: path.to_path_buf(),
        source,
    };
    let size = std::fs::metadata(path).map_err(read_err)?.len();
    if size > MAX_COMPONENT_BYTES {
        return Err(LoadError::TooLarge {
            plugin: plugin.to_string(),
            path: path.to_path_buf(),
            size,
        });
    }
    std::fs::read(path).map_err(read_err)
}

/// The 8-byte header of a core module (version 1, layer 0).
const CORE_MODULE_HEADER: [u8; 8] = *b"\0asm\x01\0\0\0";

impl Runtime {
    /// Checks, compiles and pre-links a plugin.
    pub fn load(&self, spec: PluginSpec) -> Result<Plugin, LoadError> {
        let name = PluginName::try_from(spec.name.as_str())?.into_string();
        if let Some(slot) = self.allocator.memory_slot()
            && spec.limits.memory_bytes > slot
        {
            return Err(LoadError::OverMemorySlot {
                plugin: name,
                limit: spec.limits.memory_bytes,
                slot,
            });
        }
        for id in spec.requires.iter().chain(&spec.may_use) {
            LicenseId::try_from(id.as_str()).map_err(|source| LoadError::InvalidLicenseId {
                plugin: name.clone(),
                source,
            })?;
        }
        let bytes = match &spec.component {
            ComponentSource::File(path) => Cow::Owned(read_component(&name, path)?),
            ComponentSource::Bytes(bytes) => Cow::Borrowed(&**bytes),
        };
        if bytes.starts_with(&CORE_MODULE_HEADER) {
            return Err(LoadError::CoreModule { plugin: name });
        }
        if !bytes.starts_with(b"\0asm") {
            let reason = "it does not start with the WebAssembly magic bytes \\0asm (is this the right file?)";
            return Err(LoadError::Malformed {
                plugin: name,
                reason: reason.to_string(),
            });
        }
        for dir in &spec.sandbox.dirs {
            if !dir.host.is_dir() {
                return Err(LoadError::Sandbox {
                    plugin: name,
                    reason: format!("{} is not a directory on this host", dir.host.display()),
                });
            }
            if !dir.guest.starts_with('/') {
                return Err(LoadError::Sandbox {
                    plugin: name,
                    reason: format!("guest path {:?} must be absolute", dir.guest),
                });
            }
        }
        let digest = hex::encode(Sha256::digest(&bytes));
        check_recorded_version(&name, &bytes)?;
        let (component, from_cache) = self.compile(&name, &digest, &bytes)?;
        check_wit_version(&name, &self.engine, &component)?;
        let instance_pre =
            self.linker
                .instantiate_pre(&component)
                .map_err(|e| LoadError::WrongImports {
                    plugin: name.clone(),
                    reason: format!("{e:#}"),
                })?;
        let pre = ServiceOfferPre::new(instance_pre).map_err(|e| LoadError::WrongExports {
            plugin: name.clone(),
            reason: format!("{e:#}"),
        })?;
        let entitlement = Entitlement::to(spec.requires.iter().chain(&spec.may_use).cloned());
        let passed = spec
            .sandbox
            .pass_env
            .iter()
            .filter_map(|key| std::env::var(key).ok().map(|value| (key.clone(), value)));
        let env = spec.sandbox.env.iter().cloned().chain(passed).collect();
        Ok(Plugin {
            name: name.into(),
            digest: digest.into(),
            spec,
            env,
            entitlement: Arc::new(entitlement),
            pre,
            stats: PluginStats::default(),
            from_cache,
        })
    }

    /// Compiles `bytes`, or loads the compiled form from the cache directory
    /// when one is set and holds an entry for this engine and digest.
    fn compile(
        &self,
        name: &str,
        digest: &str,
        bytes: &[u8],
    ) -> Result<(Component, bool), LoadError> {
        if let Some(cache) = &self.cache {
            match cache.load(&self.engine, &self.engine_id, digest) {
                Ok(Some(component)) => return Ok((component, true)),
                Ok(None) => {}
                Err(why) => tracing::warn!(
                    plugin = name,
                    "ignoring compile cache entry {}: {why}; compiling the component again",
                    cache.entry_path(&self.engine_id, digest).display()
                ),
            }
        }
        let component = Component::from_binary(&self.engine, bytes).map_err(|e| {
            let reason = format!("{e:#}");
            // wasmtime checks a component against the pool's per-component
            // counts and slot sizes when it compiles it.
            if reason.contains("pooling allocator") {
                LoadError::OverCallLimits {
                    plugin: name.to_string(),
                    reason,
                }
            } else {
                LoadError::Malformed {
                    plugin: name.to_string(),
                    reason,
                }
            }
        })?;
        if let Some(cache) = &self.cache
            && let Err(e) = cache.store(&component, &self.engine_id, digest)
        {
            tracing::warn!(
                plugin = name,
                "cannot write compile cache entry {}: {e}",
                cache.entry_path(&self.engine_id, digest).display()
            );
        }
        Ok((component, false))
    }
}

/// The `tollgate:plugin@VERSION` names a component's imports and exports use.
fn wit_packages(engine: &wasmtime::Engine, component: &Component) -> Vec<String> {
    let ty = component.component_type();
    let names = ty
        .imports(engine)
        .map(|(n, _)| n.to_string())
        .chain(ty.exports(engine).map(|(n, _)| n.to_string()));
    let mut found: Vec<String> = names
        .filter_map(|n| {
            let rest = n.strip_prefix("tollgate:plugin/")?;
            let version = rest.split_once('@').map_or("", |(_, v)| v);
            Some(format!("tollgate:plugin@{version}"))
        })
        .collect();
    found.sort();
    found.dedup();
    found
}

fn check_wit_version(
    name: &str,
    engine: &wasmtime::Engine,
    component: &Component,
) -> Result<(), LoadError> {
    match wit_packages(engine, component)
        .into_iter()
        .find(|p| p != WIT_PACKAGE)
    {
        Some(found) => Err(LoadError::WitVersion {
            plugin: name.to_string(),
            found,
        }),
        None => Ok(()),
    }
}

/// Refuses a plugin whose SDK recorded another WIT version, before linking
/// can fail with a less helpful message.
fn check_recorded_version(name: &str, bytes: &[u8]) -> Result<(), LoadError> {
    match super::witsection::recorded_version(bytes) {
        Some(v) if format!("tollgate:plugin@{v}") != WIT_PACKAGE => Err(LoadError::WitVersion {
            plugin: name.to_string(),
            found: format!("tollgate:plugin@{v}"),
        }),
        _ => Ok(()),
    }
}

/// What `tollgate inspect` shows about a component.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Inspection {
    /// sha256 of the bytes, hex.
    pub sha256: String,
    /// Size in bytes.
    pub size: usize,
    /// Names of its imports.
    pub imports: Vec<String>,
    /// Names of its exports.
    pub exports: Vec<String>,
    /// The `tollgate:plugin` package versions it uses.
    pub wit_packages: Vec<String>,
    /// The WIT version its SDK recorded in a custom section, if any.
    pub recorded_wit_version: Option<String>,
    /// `None` if this host can run it, else why not.
    pub refused: Option<String>,
}

impl Runtime {
    /// Compiles `bytes` and reports the component's interface and whether
    /// this host can run it (nothing is loaded).
    pub fn inspect(&self, bytes: &[u8]) -> Result<Inspection, LoadError> {
        let sha256 = hex::encode(Sha256::digest(bytes));
        let component =
            Component::from_binary(&self.engine, bytes).map_err(|e| LoadError::Malformed {
                plugin: "inspected".into(),
                reason: format!("{e:#}"),
            })?;
        let ty = component.component_type();
        let imports = ty
            .imports(&self.engine)
            .map(|(n, _)| n.to_string())
            .collect();
        let exports = ty
            .exports(&self.engine)
            .map(|(n, _)| n.to_string())
            .collect();
        let refused = self
            .load(PluginSpec::bytes("inspected", bytes))
            .err()
            .map(|e| e.to_string());
        Ok(Inspection {
            sha256,
            size: bytes.len(),
            imports,
            exports,
            wit_packages: wit_packages(&self.engine, &component),
            recorded_wit_version: super::witsection::recorded_version(bytes),
            refused,
        })
    }
}
