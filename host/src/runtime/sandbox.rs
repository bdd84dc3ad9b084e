//! Per-invocation store state: a deny-all WASI context, the licensing state,
//! and the memory limiter.

use super::licensing::LicensingView;
use super::plugin::Plugin;
use super::stdio::PluginLog;
use crate::license::CallSeats;
use wasmtime::ResourceLimiter;
use wasmtime::component::ResourceTable;
use wasmtime_wasi::{FsPerms, WasiCtx, WasiCtxView, WasiView};

/// Caps linear memory and tables, and remembers whether the cap was hit.
pub(crate) struct Limiter {
    memory_bytes: usize,
    pub(crate) memory_hit: bool,
}

/// Most table elements a plugin may have.
const MAX_TABLE_ELEMENTS: usize = 1 << 20;

impl ResourceLimiter for Limiter {
    fn memory_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        if desired > self.memory_bytes {
            self.memory_hit = true;
            return Ok(false);
        }
        Ok(true)
    }

    fn table_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        Ok(desired <= MAX_TABLE_ELEMENTS)
    }
}

/// Everything one invocation's `Store` holds.
pub(crate) struct InvocationState {
    wasi: WasiCtx,
    table: ResourceTable,
    pub(crate) limiter: Limiter,
    pub(crate) licensing: CallSeats,
}

impl InvocationState {
    /// A sandbox with only the plugin's configured directories and env
    /// vars (none by default), no network, no stdin, and stdout and stderr
    /// logged under the plugin's name.
    pub(crate) fn new(plugin: &Plugin, licensing: CallSeats) -> Self {
        let mut wasi = WasiCtx::builder();
        wasi.stdout(PluginLog::new(plugin.name.clone(), "stdout"))
            .stderr(PluginLog::new(plugin.name.clone(), "stderr"))
            .allow_tcp(false)
            .allow_udp(false)
            .allow_ip_name_lookup(false);
        for (key, value) in &plugin.sandbox.env {
            wasi.env(key, value);
        }
        for dir in &plugin.sandbox.dirs {
            let perms = if dir.writable {
                FsPerms::ReadWrite
            } else {
                FsPerms::ReadOnly
            };
            // Checked when the plugin was loaded; a directory removed since
            // then is left out and logged rather than failing the call.
            if let Err(e) = wasi.preopened_dir(&dir.host, &dir.guest, perms) {
                tracing::warn!(plugin = %plugin.name, "cannot open {} for the sandbox: {e}", dir.host.display());
            }
        }
        let memory_bytes = plugin.limits.memory_bytes;
        let wasi = wasi.build();
        Self {
            wasi,
            table: ResourceTable::new(),
            limiter: Limiter {
                memory_bytes,
                memory_hit: false,
            },
            licensing,
        }
    }

    pub(crate) fn licensing_view(&mut self) -> LicensingView<'_> {
        LicensingView {
            seats: &mut self.licensing,
            table: &mut self.table,
        }
    }
}

impl WasiView for InvocationState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}
