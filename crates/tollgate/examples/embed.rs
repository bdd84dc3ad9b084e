//! tollgate's licensing in an embedder's own wasmtime store.
//!
//! The store's data is the embedder's: their WASI context and resource
//! table, and next to them tollgate's licensing state for the one call the
//! store runs. WASI and tollgate's licensing interface are linked side by
//! side; the embedder instantiates the `hello-licensed` plugin and calls
//! `invoke` themselves, then ends the call through tollgate's guard, which
//! delivers the output only if the plugin held its license to the end and
//! only once the call's usage is recorded.
//!
//! Run it with `cargo run -p tollgate --example embed`.

use tollgate::license::CallLimits;
use tollgate::licensing::{self, CallEnd, LicensedCall, LicensingView};
use tollgate::{Host, Limits, ReclaimReason, Seats, Terms};
use wasmtime::component::{Component, Linker, ResourceTable};
use wasmtime::{Engine, Store};
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};

/// The embedder's store data.
struct Embedder {
    wasi: WasiCtx,
    table: ResourceTable,
    licensing: LicensedCall,
}

impl WasiView for Embedder {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

#[tokio::main]
async fn main() -> wasmtime::Result<()> {
    // tollgate's side: a license manager with two seats of `demo`.
    let host = Host::builder()
        .license("demo", Terms::new(Seats::Counted(2)))
        .build()?;

    // The embedder's side: their engine and linker, WASI and tollgate's
    // licensing linked side by side.
    let engine = Engine::default();
    let mut linker = Linker::<Embedder>::new(&engine);
    wasmtime_wasi::p2::add_to_linker_async(&mut linker)?;
    licensing::add_to_linker(&mut linker, |s: &mut Embedder| {
        LicensingView::new(&mut s.licensing, &mut s.table)
    })?;
    let bytes = test_guests::bytes::HELLO_LICENSED;
    let component = Component::new(&engine, bytes)?;

    // One call: open its licensing, run it in the embedder's store.
    let call = host.open_call(
        "hello",
        bytes,
        &["demo"],
        CallLimits::from(&Limits::default()),
    )?;
    let mut store = Store::new(
        &engine,
        Embedder {
            wasi: WasiCtx::builder().build(),
            table: ResourceTable::new(),
            licensing: call,
        },
    );
    let returned = invoke(&linker, &mut store, &component, b"world").await;

    // End it: the store goes, so no guest code runs after this; the seat
    // returns, and the output comes back only if licensed and recorded.
    let call = store.into_data().licensing;
    let output = match returned {
        Ok(returned) => call.finish_async(returned).await?,
        Err(trap) => {
            let stopped = CallEnd::Stopped {
                reason: ReclaimReason::Trapped,
                report: (),
            };
            call.end(stopped).commit_async().await?;
            return Err(trap);
        }
    };
    match output {
        Ok(output) => println!("{}", String::from_utf8_lossy(&output)),
        Err(message) => println!("the plugin returned an error: {message}"),
    }

    for license in host.status().licenses.licenses {
        let c = &license.counters;
        println!(
            "{}: checkouts {}, retakes {}, releases {}, reclaims {}, returns {}, in use {}, withheld {}",
            license.id,
            c.checkouts,
            c.retakes,
            c.releases,
            c.reclaims.total(),
            c.returns.total(),
            c.in_use,
            c.withheld
        );
    }
    Ok(())
}

/// Instantiates `component` in `store` and calls its `invoke` with `input`.
async fn invoke(
    linker: &Linker<Embedder>,
    store: &mut Store<Embedder>,
    component: &Component,
    input: &[u8],
) -> wasmtime::Result<Result<Vec<u8>, String>> {
    let instance = linker.instantiate_async(&mut *store, component).await?;
    let service = instance
        .get_export_index(&mut *store, None, "tollgate:plugin/service@0.1.0")
        .ok_or_else(|| wasmtime::format_err!("the component exports no service interface"))?;
    let func = instance
        .get_export_index(&mut *store, Some(&service), "invoke")
        .ok_or_else(|| wasmtime::format_err!("the service interface has no invoke"))?;
    let func =
        instance.get_typed_func::<(&[u8],), (Result<Vec<u8>, String>,)>(&mut *store, &func)?;
    let (returned,) = func.call_async(&mut *store, (input,)).await?;
    Ok(returned)
}
