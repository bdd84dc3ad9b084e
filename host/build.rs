//! Builds the example plugins so `tollgate demo` can bundle them.

include!("../guest-examples/build_support.rs");

/// The guests the demo and `tollgate::examples` bundle.
const BUNDLED: &[&str] = &[
    "hello-licensed",
    "drop-licensed",
    "ids",
    "no-license",
    "greedy",
];

fn main() {
    let guests = build_guests();
    if let Some((_, path)) = guests.first() {
        // Integration tests of the binary find every guest here.
        let dir = path.parent().expect("guest components live in a directory");
        println!("cargo:rustc-env=TOLLGATE_GUEST_DIR={}", dir.display());
    }
    let mut code = String::new();
    for (name, path) in &guests {
        if !BUNDLED.contains(&name.as_str()) {
            continue;
        }
        let konst = name.to_uppercase().replace('-', "_");
        code.push_str(&format!(
            "/// The `{name}` example plugin, as component bytes.\n\
             pub const {konst}: &[u8] = include_bytes!({path:?});\n"
        ));
    }
    let out = std::path::PathBuf::from(std::env::var_os("OUT_DIR").expect("cargo sets OUT_DIR"));
    std::fs::write(out.join("examples.rs"), code).expect("write examples.rs");
}
