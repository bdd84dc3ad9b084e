//! Case B': what a new user gets from the library's defaults, against the
//! smallest host one could write on wasmtime alone for the same component:
//! one `InstancePre`, a fresh `Store` per call, wasmtime's default
//! (on-demand) allocator, synchronous calls, no epoch, and `acquire` /
//! `release` answered with no bookkeeping at all.

use super::{Bound, LICENSE, Plan, guest, paired, per_call, ratio_row, side_by_side_rounds};
use ::tollgate::runtime::Allocator;
use ::tollgate::{Host, PluginSpec, Seats, Terms};
use std::time::Instant;
use wasmtime::component::{Component, HasSelf, Linker, Resource, ResourceTable};
use wasmtime::{Engine, Store};
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};

/// The `service-offer` world's host side, synchronous, as wasmtime
/// generates it.
mod generated {
    wasmtime::component::bindgen!({
        path: "../../wit",
        world: "service-offer",
    });
}

use generated::tollgate::plugin::licensing::{self as wit, Lease, LicenseError, LicenseInfo};
use generated::{ServiceOffer, ServiceOfferPre};

/// A store's data: WASI with nothing granted, and its resource table.
struct Plain {
    wasi: WasiCtx,
    table: ResourceTable,
}

impl WasiView for Plain {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

impl wit::HostLease for Plain {
    fn license_id(&mut self, _: Resource<Lease>) -> String {
        LICENSE.to_string()
    }

    fn valid(&mut self, _: Resource<Lease>) -> bool {
        true
    }

    fn drop(&mut self, _: Resource<Lease>) -> wasmtime::Result<()> {
        Ok(())
    }
}

impl wit::Host for Plain {
    fn license_ids(&mut self) -> Vec<String> {
        vec![LICENSE.to_string()]
    }

    fn describe(&mut self, _: String) -> Result<LicenseInfo, LicenseError> {
        Err(LicenseError::UnknownLicense)
    }

    fn acquire(&mut self, _: String) -> Result<Resource<Lease>, LicenseError> {
        Ok(Resource::new_own(0))
    }

    fn release(&mut self, _: Resource<Lease>) {}
}

/// The minimal host: one engine with wasmtime's defaults, one pre-linked
/// component.
struct PlainHost {
    engine: Engine,
    pre: ServiceOfferPre<Plain>,
}

impl PlainHost {
    fn new(component: &[u8]) -> Self {
        let engine = Engine::default();
        let mut linker = Linker::new(&engine);
        wasmtime_wasi::p2::add_to_linker_sync(&mut linker).expect("WASI links");
        ServiceOffer::add_to_linker::<_, HasSelf<Plain>>(&mut linker, |s| s)
            .expect("licensing links");
        let component = Component::new(&engine, component).expect("component compiles");
        let pre = ServiceOfferPre::new(linker.instantiate_pre(&component).expect("pre-links"))
            .expect("exports the service");
        Self { engine, pre }
    }

    /// One call in a fresh store.
    fn invoke(&self, input: &[u8]) -> Vec<u8> {
        let state = Plain {
            wasi: WasiCtx::builder().build(),
            table: ResourceTable::new(),
        };
        let mut store = Store::new(&self.engine, state);
        let instance = self.pre.instantiate(&mut store).expect("instantiates");
        instance
            .tollgate_plugin_service()
            .call_invoke(&mut store, input)
            .expect("runs")
            .expect("answers")
    }

    /// Mean microseconds per call over `n` sequential calls.
    fn per_call(&self, input: &[u8], n: u32) -> f64 {
        let start = Instant::now();
        for _ in 0..n {
            std::hint::black_box(self.invoke(input));
        }
        start.elapsed().as_secs_f64() * 1e6 / f64::from(n)
    }
}

/// B': `Host::builder()` as a new user builds it, licensed call of
/// `bench-leased`, against [`PlainHost`] calling the same component.
pub(crate) fn case_b_prime(plan: &Plan) {
    let input = b"work:16 the quick brown fox jumps over the lazy dog";
    let bytes = std::fs::read(guest("bench-leased")).expect("bench-leased component");
    let plain = PlainHost::new(&bytes);
    let host = Host::builder()
        .license(LICENSE, Terms::new(Seats::Unlimited))
        .build()
        .expect("host with the defaults");
    host.load_plugin(PluginSpec::file("leased", guest("bench-leased")).requires(LICENSE))
        .expect("leased guest");
    assert_eq!(
        plain.invoke(input),
        host.invoke("leased", input).expect("licensed call"),
        "both hosts run the same work"
    );
    per_call(&host, "leased", input, 50);
    plain.per_call(input, 50);
    let pairs = paired(side_by_side_rounds(
        plan.rounds,
        || per_call(&host, "leased", input, plan.calls),
        || plain.per_call(input, plan.calls),
    ));
    let fallback = host
        .allocator_fallback()
        .map_or(String::new(), |why| format!("; fell back: {why}"));
    ratio_row(
        "B'",
        &format!(
            "per licensed call, `Host::builder()` defaults ({}{fallback}) vs a minimal wasmtime host (on demand, sync, no epoch, no bookkeeping) (µs/call)",
            match host.allocator() {
                Allocator::OnDemand => "on demand",
                Allocator::Pooling { .. } => "pooling",
            }
        ),
        &pairs,
        1,
        Ok(Bound::AtMost(0.60)),
    );
}
