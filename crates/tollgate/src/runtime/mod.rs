//! The wasmtime side: one engine, a linker with WASI p2 (deny-all) and the
//! licensing interface, one pre-linked `InstancePre` per plugin, and a fresh
//! `Store` per invocation with memory and time limits.

pub(crate) mod bindings;
mod cache;
mod invocation;
mod plugin;
mod resident;
mod sandbox;
mod stdio;
mod witsection;

pub use witsection::SECTION as WIT_VERSION_SECTION;

pub use cache::{CacheError, CompileCache, KEY_FILE as COMPILE_CACHE_KEY_FILE, KEY_FILE_IN_CACHE};

pub use crate::licensing::MissingLicense;
pub(crate) use invocation::Invoked;
pub use invocation::{InvokeError, RecordError};
pub use plugin::{
    ComponentSource, Inspection, Limits, LoadError, Plugin, PluginSpec, PluginStats, Preopen,
    Sandbox, WIT_PACKAGE,
};
pub use resident::resident_memory_bytes;

use sandbox::InvocationState;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;
use wasmtime::component::Linker;
use wasmtime::{Config, Engine};

/// How often the epoch advances; time limits are rounded up to this.
pub const EPOCH_TICK: Duration = Duration::from_millis(5);

/// How much of each pooled memory and table is reset in place (only the
/// pages a call touched, found with `PAGEMAP_SCAN` where the kernel has it)
/// rather than decommitted: decommitting costs every core a TLB flush.
const POOL_KEEP_RESIDENT: usize = 4 << 20;

/// Calls at once the default allocator pools slots for; more wait for one.
pub const DEFAULT_POOL_CALLS: u32 = 64;

/// Errors setting up the runtime itself.
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    /// wasmtime refused the engine configuration or the linker setup, or
    /// the async runtime did not start.
    #[error("could not set up the WebAssembly runtime")]
    Setup(#[source] Box<dyn std::error::Error + Send + Sync>),
    /// The compile cache or its key could not be used.
    #[error(transparent)]
    CompileCache(#[from] cache::CacheError),
}

/// The engine, the linker shared by every plugin, and the epoch ticker.
pub struct Runtime {
    engine: Engine,
    cache: Option<CompileCache>,
    engine_id: cache::EngineId,
    linker: Linker<InvocationState>,
    ticker: Option<EpochTicker>,
    /// Drives calls made through the blocking API; async callers bring
    /// their own tokio runtime.
    blocking: Option<tokio::runtime::Runtime>,
    /// The allocator in use, and why it is not the one asked for, if not.
    allocator: Allocator,
    fallback: Option<String>,
    /// One permit per pooled call slot: a call past them waits for one
    /// instead of failing to instantiate. `None` on demand.
    slots: Option<tokio::sync::Semaphore>,
}

impl std::fmt::Debug for Runtime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Runtime").finish_non_exhaustive()
    }
}

/// How instances get their memory.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Allocator {
    /// Memory is mapped for each instance when it starts.
    OnDemand,
    /// Slots are reserved up front for this many calls at once, each with
    /// at most `max_memory_bytes` of linear memory and the per-call counts
    /// of core instances, memories and tables; starting an instance reuses
    /// slots, and a call past `instances` waits for a free one. Where the
    /// platform refuses the reservation (a limit on address space, say),
    /// the runtime falls back to [`Allocator::OnDemand`] and says why
    /// ([`Runtime::allocator_fallback`]). Build it with
    /// [`Allocator::pooling`].
    Pooling {
        /// Most calls alive at once (one component instance each).
        instances: u32,
        /// Largest linear memory of one call.
        max_memory_bytes: usize,
        /// Most core instances of one call.
        instances_per_call: u32,
        /// Most linear memories of one call.
        memories_per_call: u32,
        /// Most tables of one call.
        tables_per_call: u32,
        /// Most elements of one table (a call's tables together have at
        /// most the plugin's limit).
        max_table_elements: usize,
    },
}

impl Default for Allocator {
    /// Pooling, for [`DEFAULT_POOL_CALLS`] calls at once of plugins within
    /// [`Limits::default`]: instantiating from a pool is several times
    /// faster than mapping memory per call.
    fn default() -> Self {
        Self::pooling(DEFAULT_POOL_CALLS, [&Limits::default()])
    }
}

impl Allocator {
    /// A pool for `calls` calls at once of plugins with these `limits`:
    /// each call may take the most any of them allows, and there are slots
    /// for every call to take that much at once.
    pub fn pooling<'a>(calls: u32, limits: impl IntoIterator<Item = &'a Limits>) -> Self {
        let count = |n: usize| u32::try_from(n).unwrap_or(u32::MAX);
        let mut pool = Allocator::Pooling {
            instances: calls.max(1),
            max_memory_bytes: 0,
            instances_per_call: 0,
            memories_per_call: 0,
            tables_per_call: 0,
            max_table_elements: 0,
        };
        let mut any = false;
        for l in limits {
            any = true;
            if let Allocator::Pooling {
                max_memory_bytes,
                instances_per_call,
                memories_per_call,
                tables_per_call,
                max_table_elements,
                ..
            } = &mut pool
            {
                *max_table_elements = (*max_table_elements).max(l.max_table_elements);
                *max_memory_bytes = (*max_memory_bytes).max(l.memory_bytes);
                *instances_per_call = (*instances_per_call).max(count(l.max_instances));
                *memories_per_call = (*memories_per_call).max(count(l.max_memories));
                *tables_per_call = (*tables_per_call).max(count(l.max_tables));
            }
        }
        if any {
            pool
        } else {
            Self::pooling(calls, [&Limits::default()])
        }
    }

    /// The largest linear memory one call may have, if the allocator caps it.
    pub fn memory_slot(&self) -> Option<usize> {
        match self {
            Allocator::OnDemand => None,
            Allocator::Pooling {
                max_memory_bytes, ..
            } => Some(*max_memory_bytes),
        }
    }

    /// The wasmtime configuration of this allocator.
    fn strategy(self) -> wasmtime::InstanceAllocationStrategy {
        let Allocator::Pooling {
            instances,
            max_memory_bytes,
            instances_per_call,
            memories_per_call,
            tables_per_call,
            max_table_elements,
        } = self
        else {
            return wasmtime::InstanceAllocationStrategy::OnDemand;
        };
        // Sized per call, so that no call can starve the others: a
        // component instance (one per call) may hold at most the per-call
        // counts of core instances, memories and tables (a component over
        // them is refused when it is loaded), and the totals hold that many
        // for every call that may run at once. With the defaults (64 calls;
        // 32 core instances, 4 memories and 8 tables per call) that is 2048
        // core instances, 256 memory slots and 512 tables; a memory slot
        // reserves address space only (4 GiB of it, plus guards), and pages
        // are committed as a call touches them. Calls past `instances` wait
        // for a slot permit before they instantiate, so the totals are
        // never the limit a call runs into.
        let per_call = |n: u32| n.max(1);
        let mut pool = wasmtime::PoolingAllocationConfig::default();
        pool.total_component_instances(instances)
            .max_core_instances_per_component(per_call(instances_per_call))
            .max_memories_per_component(per_call(memories_per_call))
            .max_tables_per_component(per_call(tables_per_call))
            .max_memories_per_module(per_call(memories_per_call))
            .max_tables_per_module(per_call(tables_per_call))
            .total_core_instances(instances.saturating_mul(per_call(instances_per_call)))
            .total_memories(instances.saturating_mul(per_call(memories_per_call)))
            .total_tables(instances.saturating_mul(per_call(tables_per_call)))
            .max_memory_size(max_memory_bytes)
            .table_elements(max_table_elements)
            .linear_memory_keep_resident(POOL_KEEP_RESIDENT)
            .table_keep_resident(POOL_KEEP_RESIDENT)
            .pagemap_scan(wasmtime::Enabled::Auto);
        wasmtime::InstanceAllocationStrategy::Pooling(pool)
    }
}

/// An engine with epoch interruption, the component model and `allocator`.
fn engine(allocator: Allocator) -> Result<Engine, wasmtime::Error> {
    let mut config = Config::new();
    config.epoch_interruption(true);
    config.wasm_component_model(true);
    config.allocation_strategy(allocator.strategy());
    Engine::new(&config)
}

impl Runtime {
    /// A runtime with epoch interruption and the service-offer linker;
    /// compiled components are kept in `cache` when given.
    pub fn new(allocator: Allocator, cache: Option<CompileCache>) -> Result<Self, RuntimeError> {
        let setup = |e: wasmtime::Error| RuntimeError::Setup(e.into());
        let (engine, allocator, fallback) = match engine(allocator) {
            Ok(engine) => (engine, allocator, None),
            Err(refused) if allocator != Allocator::OnDemand => {
                let why = format!(
                    "the pooling allocator could not reserve its slots ({refused:#}); \
                     instances get their memory on demand instead, which is slower per call. \
                     Raise the address-space limit (`ulimit -v`) or pool fewer calls at once"
                );
                tracing::warn!("{why}");
                let engine = engine(Allocator::OnDemand).map_err(setup)?;
                (engine, Allocator::OnDemand, Some(why))
            }
            Err(e) => return Err(setup(e)),
        };
        let slots = match allocator {
            Allocator::Pooling { instances, .. } => {
                Some(tokio::sync::Semaphore::new(instances as usize))
            }
            Allocator::OnDemand => None,
        };
        let mut linker = Linker::new(&engine);
        wasmtime_wasi::p2::add_to_linker_async(&mut linker).map_err(setup)?;
        crate::licensing::add_to_linker(&mut linker, InvocationState::licensing_view)
            .map_err(setup)?;
        let ticker = Some(EpochTicker::start(engine.clone()));
        let blocking = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("tollgate-io")
            .enable_all()
            .build()
            .map_err(|e| RuntimeError::Setup(e.into()))?;
        let engine_id = cache::EngineId::of(&engine);
        Ok(Self {
            engine,
            cache,
            engine_id,
            linker,
            ticker,
            blocking: Some(blocking),
            allocator,
            fallback,
            slots,
        })
    }

    /// The allocator in use: the one asked for, or on demand after a
    /// fallback.
    pub fn allocator(&self) -> Allocator {
        self.allocator
    }

    /// Why the pooling allocator asked for is not in use, if it is not.
    pub fn allocator_fallback(&self) -> Option<&str> {
        self.fallback.as_deref()
    }

    /// The wasmtime engine.
    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    /// The compile cache directory, if there is one.
    pub fn compile_cache_dir(&self) -> Option<&std::path::Path> {
        self.cache.as_ref().map(CompileCache::dir)
    }

    /// Runs `call` to completion on this thread, for the blocking API.
    /// Must not be called from inside an async runtime.
    pub(crate) fn block_on<F: std::future::Future>(&self, call: F) -> F::Output {
        match &self.blocking {
            Some(rt) => rt.block_on(call),
            None => unreachable!("the runtime is only taken when dropped"),
        }
    }
}

impl Drop for Runtime {
    fn drop(&mut self) {
        if let Some(t) = self.ticker.take() {
            t.stop();
        }
        // Never blocks, so a host may be dropped anywhere, async code included.
        if let Some(rt) = self.blocking.take() {
            rt.shutdown_background();
        }
    }
}

/// A thread that advances the engine's epoch every [`EPOCH_TICK`].
struct EpochTicker {
    stop: Arc<AtomicBool>,
    thread: JoinHandle<()>,
}

impl EpochTicker {
    fn start(engine: Engine) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::Builder::new()
            .name("tollgate-epoch".into())
            .spawn(move || {
                while !flag.load(Ordering::Relaxed) {
                    std::thread::sleep(EPOCH_TICK);
                    engine.increment_epoch();
                }
            })
            .unwrap_or_else(|e| panic!("cannot start the epoch ticker thread: {e}"));
        Self { stop, thread }
    }

    fn stop(self) {
        self.stop.store(true, Ordering::Relaxed);
        let _ = self.thread.join();
    }
}
