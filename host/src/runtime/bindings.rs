//! Host bindings generated from `wit/` (world `service-offer`).

wasmtime::component::bindgen!({
    path: "../wit",
    world: "service-offer",
    imports: { default: trappable },
    with: {
        "tollgate:plugin/licensing.lease": super::licensing::LeaseRef,
    },
});

pub use self::tollgate::plugin::licensing;
