//! Builds every example and rogue guest and records where each one is.

include!("../guest-examples/build_support.rs");

fn main() {
    let guests = build_guests();
    let mut code = String::from(
        "/// Every guest in guest-examples, as (name, component path).\npub const GUESTS: &[(&str, &str)] = &[\n",
    );
    for (name, path) in &guests {
        code.push_str(&format!(
            "    ({name:?}, {:?}),\n",
            path.display().to_string()
        ));
    }
    code.push_str("];\n\n");
    for (name, path) in &guests {
        let konst = name.to_uppercase().replace('-', "_");
        code.push_str(&format!(
            "/// Path of the `{name}` guest component.\npub const {konst}: &str = {:?};\n",
            path.display().to_string()
        ));
    }
    code.push_str("\n/// Calls `$m!(test_name)` once per guest, to check every guest has a test.\n#[macro_export]\nmacro_rules! for_each_guest {\n    ($m:ident) => {\n");
    for (name, _) in &guests {
        code.push_str(&format!("        $m!({});\n", name.replace('-', "_")));
    }
    code.push_str("    };\n}\n");
    let out = std::path::PathBuf::from(std::env::var_os("OUT_DIR").expect("cargo sets OUT_DIR"));
    std::fs::write(out.join("guests.rs"), code).expect("write guests.rs");
}
