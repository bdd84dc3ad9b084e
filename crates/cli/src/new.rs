//! `tollgate new`: scaffolds a plugin project (Rust, Python or JavaScript)
//! that builds and runs licensed out of the box.

use super::{Exit, Failure};
use anyhow::Context;
use clap::{Args, ValueEnum};
use std::path::{Path, PathBuf};
use tollgate::license::{LicenseId, PluginName};

/// The WIT contract, copied into Python and JavaScript projects.
const WIT: &str = include_str!("../../../wit/tollgate.wit");
/// Where the `tollgate-guest` SDK lies in the source tree this binary came from.
const SDK_IN_TREE: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../../guest-examples/tollgate-guest"
);
/// The tollgate host crate this binary was built from, for the Rust
/// project's `cargo test` (through `tollgate::testing`).
const HOST_IN_TREE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../tollgate");
/// The componentize-py release the Python template is tested with.
const COMPONENTIZE_PY: &str = "0.25.1";
/// The componentize-js release the JavaScript template is tested with.
const COMPONENTIZE_JS: &str = "0.23.0";

/// A plugin project's language.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub(crate) enum Lang {
    /// Rust on the tollgate-guest SDK, built with cargo for wasm32-wasip2.
    Rust,
    /// Python, built with componentize-py.
    Python,
    /// JavaScript, built with componentize-js.
    Js,
}

/// Arguments of `tollgate new`.
#[derive(Debug, Args)]
#[command(after_help = "Examples:
  tollgate new hello                      # Rust, in ./hello
  tollgate new hello-py --lang python
  tollgate new hello-js --lang js --dir plugins/hello-js
Each project's README.md gives its build command and the `tollgate run` line.")]
pub(crate) struct NewArgs {
    /// Plugin name: 1-64 of a-z, 0-9, '-', '_', starting with a letter.
    name: String,
    /// Language of the project.
    #[arg(long, value_enum, default_value_t = Lang::Rust)]
    lang: Lang,
    /// Directory to create. Default: ./NAME
    #[arg(long)]
    dir: Option<PathBuf>,
    /// License id the plugin asks for and requires.
    #[arg(long, default_value = "demo")]
    license: String,
    /// Path of the tollgate-guest SDK crate (Rust only). Default: the one
    /// in the source tree this tollgate was built from.
    #[arg(long)]
    sdk: Option<PathBuf>,
    /// Path of the tollgate host crate that the Rust project's `cargo test`
    /// runs the plugin under. Default: the one in the source tree this
    /// tollgate was built from; if absent, the project gets no test.
    #[arg(long)]
    host_crate: Option<PathBuf>,
}

/// A plugin name (see [`PluginName`]) that also names the project's
/// package: Cargo refuses a package name starting with a digit.
fn check_name(name: &str) -> anyhow::Result<PluginName> {
    let name: PluginName = name.parse()?;
    if name.starts_with(|c: char| c.is_ascii_digit()) {
        anyhow::bail!(
            "plugin name {:?} starts with a digit, which a package name may not; start it with a letter (e.g. hello-world)",
            name.as_str()
        );
    }
    Ok(name)
}

/// One file of a new project: where it goes and the template it is made from.
type Template = (&'static str, &'static str);

/// The Rust project's files (`tests/plugin.rs` only with a host crate).
const RUST: &[Template] = &[
    (
        "Cargo.toml",
        include_str!("../templates/rust/Cargo.toml.tmpl"),
    ),
    ("src/lib.rs", include_str!("../templates/rust/src/lib.rs")),
    ("README.md", include_str!("../templates/rust/README.md")),
    (".gitignore", include_str!("../templates/rust/gitignore")),
];
/// The Rust project's test, run by `cargo test` under the host crate.
const RUST_TEST: Template = (
    "tests/plugin.rs",
    include_str!("../templates/rust/tests/plugin.rs"),
);
/// `{{host_dev_dependency}}` in the Rust Cargo.toml when there is a host crate.
const RUST_HOST_DEV_DEPENDENCY: &str = include_str!("../templates/rust/host-dev-dependency.toml");
/// `{{test_section}}` in the Rust README when there is a host crate.
const RUST_README_TEST: &str = include_str!("../templates/rust/README-test.md");
/// The Python project's files, besides `wit/`.
const PYTHON: &[Template] = &[
    ("app.py", include_str!("../templates/python/app.py")),
    (
        "requirements.txt",
        include_str!("../templates/python/requirements.txt"),
    ),
    ("build.sh", include_str!("../templates/python/build.sh")),
    ("README.md", include_str!("../templates/python/README.md")),
    (".gitignore", include_str!("../templates/python/gitignore")),
];
/// The JavaScript project's files, besides `wit/`.
const JS: &[Template] = &[
    ("plugin.js", include_str!("../templates/js/plugin.js")),
    ("package.json", include_str!("../templates/js/package.json")),
    ("README.md", include_str!("../templates/js/README.md")),
    (".gitignore", include_str!("../templates/js/gitignore")),
];

/// Fills in a template's `{{key}}` placeholders from `values`, in one pass
/// (a value is never scanned for placeholders). A placeholder alone on its
/// line whose value is empty or ends in a newline stands for whole lines, so
/// an empty one leaves no blank line. An unknown or unclosed placeholder is
/// an error.
fn render(template: &str, values: &[(&str, &str)]) -> anyhow::Result<String> {
    let mut out = String::with_capacity(template.len());
    let mut rest = template;
    while let Some(open) = rest.find("{{") {
        let (before, tail) = rest.split_at(open);
        let close = tail
            .find("}}")
            .context("unclosed placeholder: a {{ without its }}")?;
        let key = &tail[2..close];
        let value = values
            .iter()
            .find_map(|(k, v)| (*k == key).then_some(*v))
            .with_context(|| format!("unknown placeholder {{{{{key}}}}}"))?;
        out.push_str(before);
        rest = &tail[close + 2..];
        let alone = (out.is_empty() || out.ends_with('\n')) && rest.starts_with('\n');
        if alone && (value.is_empty() || value.ends_with('\n')) {
            rest = &rest[1..];
        }
        out.push_str(value);
    }
    out.push_str(rest);
    Ok(out)
}

/// `path` as a TOML string, quotes and escapes included.
fn toml_string(path: &Path) -> String {
    toml::Value::String(path.display().to_string()).to_string()
}

/// The files of a new project, as (relative path, contents).
fn files(
    args: &NewArgs,
    sdk: Option<&Path>,
    host: Option<&Path>,
) -> anyhow::Result<Vec<(&'static str, String)>> {
    let lib_name = args.name.replace('-', "_");
    let sdk_path = sdk.map_or_else(String::new, toml_string);
    let host_path = host.map_or_else(String::new, toml_string);
    let mut values = vec![
        ("name", args.name.as_str()),
        ("lib_name", lib_name.as_str()),
        ("license", args.license.as_str()),
        ("sdk_path", sdk_path.as_str()),
        ("host_path", host_path.as_str()),
        ("componentize_py", COMPONENTIZE_PY),
        ("componentize_js", COMPONENTIZE_JS),
    ];
    let (templates, test) = match args.lang {
        Lang::Rust => (RUST, host.map(|_| RUST_TEST)),
        Lang::Python => (PYTHON, None),
        Lang::Js => (JS, None),
    };
    let (dev_dependency, test_section) = match test {
        Some(_) => (
            render(RUST_HOST_DEV_DEPENDENCY, &values)?,
            render(RUST_README_TEST, &values)?,
        ),
        None => (String::new(), String::new()),
    };
    values.push(("host_dev_dependency", &dev_dependency));
    values.push(("test_section", &test_section));
    let mut files = Vec::new();
    for (path, template) in templates.iter().chain(test.as_ref()) {
        let text =
            render(template, &values).with_context(|| format!("in the template of {path}"))?;
        files.push((*path, text));
    }
    if args.lang != Lang::Rust {
        files.push(("wit/tollgate.wit", WIT.to_string()));
    }
    Ok(files)
}

pub(crate) fn run(args: NewArgs) -> Result<Exit, Failure> {
    check_name(&args.name).map_err(Failure::usage)?;
    args.license
        .parse::<LicenseId>()
        .map_err(|e| Failure::usage(anyhow::anyhow!("--license: {e}")))?;
    let dir = args
        .dir
        .clone()
        .unwrap_or_else(|| PathBuf::from(&args.name));
    if dir.exists() {
        let empty = std::fs::read_dir(&dir)
            .with_context(|| format!("cannot read {}", dir.display()))
            .map_err(Failure::usage)?
            .next()
            .is_none();
        if !empty {
            return Err(Failure::usage(anyhow::anyhow!(
                "{} already exists and is not empty; choose another --dir or remove it",
                dir.display()
            )));
        }
    }
    let sdk = match (args.lang, &args.sdk) {
        (Lang::Rust, given) => {
            let path = given.clone().unwrap_or_else(|| PathBuf::from(SDK_IN_TREE));
            let found = path.join("Cargo.toml").is_file();
            let path = path.canonicalize().ok().filter(|_| found).ok_or_else(|| {
                Failure::usage(anyhow::anyhow!(
                    "the tollgate-guest SDK is not at {}; pass --sdk PATH to its crate directory (guest-examples/tollgate-guest in the tollgate sources)",
                    path.display()
                ))
            })?;
            Some(path)
        }
        _ => None,
    };
    let host = match (args.lang, &args.host_crate) {
        (Lang::Rust, Some(given)) => Some(
            given
                .canonicalize()
                .ok()
                .filter(|p| p.join("Cargo.toml").is_file())
                .ok_or_else(|| {
                    Failure::usage(anyhow::anyhow!(
                        "the tollgate host crate is not at {}; pass --host-crate PATH to its directory (crates/tollgate in the tollgate sources)",
                        given.display()
                    ))
                })?,
        ),
        (Lang::Rust, None) => Path::new(HOST_IN_TREE)
            .canonicalize()
            .ok()
            .filter(|p| p.join("Cargo.toml").is_file()),
        _ => None,
    };
    if args.lang == Lang::Rust && host.is_none() {
        eprintln!(
            "note: the tollgate sources are not at {HOST_IN_TREE}, so the project gets no `cargo test`; pass --host-crate PATH to add one"
        );
    }
    for (rel, text) in files(&args, sdk.as_deref(), host.as_deref())? {
        let path = dir.join(rel);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)
                .with_context(|| format!("cannot create {}", parent.display()))
                .map_err(Failure::usage)?;
        }
        std::fs::write(&path, text)
            .with_context(|| format!("cannot write {}", path.display()))
            .map_err(Failure::usage)?;
    }
    #[cfg(unix)]
    if args.lang == Lang::Python {
        use std::os::unix::fs::PermissionsExt;
        let script = dir.join("build.sh");
        std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755))
            .with_context(|| format!("cannot make {} executable", script.display()))
            .map_err(Failure::usage)?;
    }
    println!(
        "created {} ({:?} plugin {}); see {}/README.md to build and run it",
        dir.display(),
        args.lang,
        args.name,
        dir.display()
    );
    Ok(Exit::Ok)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        for ok in ["a", "hello", "hello-world", "x_1", "x9"] {
            assert_eq!(check_name(ok).expect(ok), ok);
        }
        for bad in ["", "-a", "A", "a/b", "../x", "a b", "a.b", &"a".repeat(65)] {
            let err = check_name(bad).expect_err(bad).to_string();
            assert!(err.starts_with("invalid plugin name"), "{err}");
        }
        // A plugin name, but not a package name.
        let err = check_name("1a").expect_err("1a").to_string();
        assert!(err.contains("starts with a digit"), "{err}");
    }

    /// `tollgate new hello-x --lang LANG --license acme.pro`.
    fn args(lang: Lang) -> NewArgs {
        NewArgs {
            name: "hello-x".into(),
            lang,
            dir: None,
            license: "acme.pro".into(),
            sdk: None,
            host_crate: None,
        }
    }

    /// The file at `path` among `files`.
    fn file<'a>(files: &'a [(&str, String)], path: &str) -> &'a str {
        files
            .iter()
            .find_map(|(p, text)| (*p == path).then_some(text.as_str()))
            .unwrap_or_else(|| {
                panic!(
                    "no {path} among {:?}",
                    files.iter().map(|f| f.0).collect::<Vec<_>>()
                )
            })
    }

    #[test]
    fn every_template_fills_every_placeholder() {
        let sdk = Path::new("/sdk/tollgate-guest");
        let host = Path::new("/src/crates/tollgate");
        for (lang, host, paths) in [
            (
                Lang::Rust,
                Some(host),
                &[
                    "Cargo.toml",
                    "src/lib.rs",
                    "README.md",
                    ".gitignore",
                    "tests/plugin.rs",
                ][..],
            ),
            (
                Lang::Rust,
                None,
                &["Cargo.toml", "src/lib.rs", "README.md", ".gitignore"],
            ),
            (
                Lang::Python,
                None,
                &[
                    "app.py",
                    "requirements.txt",
                    "build.sh",
                    "README.md",
                    ".gitignore",
                    "wit/tollgate.wit",
                ],
            ),
            (
                Lang::Js,
                None,
                &[
                    "plugin.js",
                    "package.json",
                    "README.md",
                    ".gitignore",
                    "wit/tollgate.wit",
                ],
            ),
        ] {
            let files = files(&args(lang), Some(sdk), host).expect("every template renders");
            let made: Vec<&str> = files.iter().map(|f| f.0).collect();
            assert_eq!(made, paths, "{lang:?}");
            for (path, text) in &files {
                assert!(
                    !text.contains("{{"),
                    "{lang:?} {path} kept a placeholder:\n{text}"
                );
            }
            for path in ["Cargo.toml", "README.md"] {
                let Some((_, text)) = files.iter().find(|f| f.0 == path) else {
                    continue;
                };
                assert!(
                    !text.contains("\n\n\n"),
                    "{lang:?} {path} has a gap:\n{text}"
                );
                assert!(
                    !text.ends_with("\n\n"),
                    "{lang:?} {path} ends in a gap:\n{text}"
                );
            }
            let readme = file(&files, "README.md");
            assert!(readme.starts_with("# hello-x\n"), "{readme}");
            assert!(
                readme.contains("tollgate run hello_x.wasm --license acme.pro=1 --input -"),
                "{readme}"
            );
            assert_eq!(readme.contains("cargo test"), host.is_some(), "{readme}");
        }
    }

    #[test]
    fn rust_manifest_is_toml_with_the_paths_given() {
        let sdk = Path::new(r#"/odd "dir"\with\backslashes/tollgate-guest"#);
        let host = Path::new("/src/crates/tollgate");
        let with_host = files(&args(Lang::Rust), Some(sdk), Some(host)).expect("renders");
        let manifest: toml::Table = toml::from_str(file(&with_host, "Cargo.toml")).expect("TOML");
        assert_eq!(manifest["package"]["name"].as_str(), Some("hello-x"));
        assert_eq!(
            manifest["dependencies"]["tollgate-guest"]["path"].as_str(),
            sdk.to_str()
        );
        let dev = &manifest["target"][r#"cfg(not(target_family = "wasm"))"#]["dev-dependencies"];
        assert_eq!(dev["tollgate"]["path"].as_str(), host.to_str());

        let no_host = files(&args(Lang::Rust), Some(sdk), None).expect("renders");
        let manifest: toml::Table = toml::from_str(file(&no_host, "Cargo.toml")).expect("TOML");
        assert!(manifest.get("target").is_none(), "{manifest}");
    }

    #[test]
    fn js_package_is_json_naming_the_plugin() {
        let files = files(&args(Lang::Js), None, None).expect("renders");
        let package: serde_json::Value =
            serde_json::from_str(file(&files, "package.json")).expect("JSON");
        assert_eq!(package["name"], "hello-x");
        assert_eq!(
            package["devDependencies"]["@bytecodealliance/componentize-js"],
            COMPONENTIZE_JS
        );
    }

    #[test]
    fn render_fills_in_one_pass_and_refuses_unknown_placeholders() {
        let values = [
            ("name", "x"),
            ("lines", "a\nb\n"),
            ("none", ""),
            ("raw", "{{name}}"),
        ];
        assert_eq!(render("hi {{name}}!", &values).expect("renders"), "hi x!");
        assert_eq!(render("{{raw}}", &values).expect("renders"), "{{name}}");
        assert_eq!(
            render("1\n{{lines}}\n2\n{{none}}\n3 {{none}}\n", &values).expect("renders"),
            "1\na\nb\n2\n3 \n"
        );
        let err = render("a {{nmae}} b", &values).expect_err("unknown key");
        assert_eq!(err.to_string(), "unknown placeholder {{nmae}}");
        let err = render("a {{name", &values).expect_err("unclosed");
        assert!(err.to_string().contains("unclosed placeholder"), "{err}");
    }
}
