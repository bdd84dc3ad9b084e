//! Host bindings generated from `wit/` (world `service-offer`).

wasmtime::component::bindgen!({
    path: "../../wit",
    world: "service-offer",
    // Only `acquire` may wait (for a seat); every other host call returns
    // at once and stays a plain call.
    imports: {
        "tollgate:plugin/licensing.acquire": async | trappable,
        default: trappable,
    },
    exports: { default: async },
    with: {
        "tollgate:plugin/licensing.lease": crate::licensing::LeaseRef,
    },
});

pub use self::tollgate::plugin::licensing;
