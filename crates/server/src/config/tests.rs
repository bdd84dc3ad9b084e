//! Unit tests of the config file: parsing, every kind of problem, defaults,
//! environment overrides and the bundled example.
//!
//! Configs that parse are checked value by value. Every problem message is
//! checked as a snapshot under `snapshots/`: the text `check-config` prints
//! for a bad input, with that input, line by line, as the snapshot's
//! description, so a reviewer reads what is wrong, where, and what to do.

use super::*;
use std::collections::HashMap;
use std::fs;
use tollgate::Limits;
use tollgate::runtime::{ComponentSource, Preopen};

/// A directory under the system temp dir, removed on drop.
struct ConfigDir(tempfile::TempDir);

impl ConfigDir {
    fn new() -> Self {
        let dir = tempfile::Builder::new()
            .prefix("tollgate-config-test-")
            .tempdir()
            .expect("create temp dir");
        Self(dir)
    }

    fn path(&self) -> &Path {
        self.0.path()
    }

    /// Writes `contents` to `relative`, creating parent directories.
    fn file(&self, relative: &str, contents: &str) -> PathBuf {
        let path = self.path().join(relative);
        if let Some(parent) = path.parent() {
            fs::create_dir_all(parent).expect("create parent dir");
        }
        fs::write(&path, contents).expect("write temp file");
        path
    }

    fn dir(&self, relative: &str) -> PathBuf {
        let path = self.path().join(relative);
        fs::create_dir_all(&path).expect("create dir");
        path
    }

    /// The config file path inside this directory.
    fn config(&self) -> PathBuf {
        self.path().join("tollgate.toml")
    }

    /// A temp dir holding a component at `plugins/hello.wasm`.
    fn with_component() -> Self {
        let dir = Self::new();
        dir.file("plugins/hello.wasm", "\0asm");
        dir
    }

    /// `shown` with this directory's path written as `[dir]`, so snapshots
    /// do not depend on where the test ran.
    fn redact(&self, shown: &str) -> String {
        shown.replace(&self.path().display().to_string(), "[dir]")
    }
}

/// Parses `text` as if it were `tollgate.toml` in `dir`.
fn parse_in(dir: &ConfigDir, text: &str) -> Result<Config, ConfigError> {
    Config::parse(text, &dir.config())
}

fn ok(dir: &ConfigDir, text: &str) -> Config {
    match parse_in(dir, text) {
        Ok(config) => config,
        Err(e) => panic!("expected a valid config, got:\n{e}"),
    }
}

/// The error `text` gets as `tollgate.toml` in `dir`.
fn refused(dir: &ConfigDir, text: &str) -> ConfigError {
    match parse_in(dir, text) {
        Ok(config) => panic!("expected problems, got {config:#?}"),
        Err(e) => e,
    }
}

/// `text` with its lines numbered from 1, indented.
fn numbered(text: &str) -> String {
    text.lines()
        .enumerate()
        .map(|(i, line)| format!("{:>5}| {line}", i + 1).trim_end().to_string())
        .collect::<Vec<_>>()
        .join("\n")
}

/// Compares the snapshot `name` with `input`, under the heading `what`,
/// followed by `shown`, what the user is told about it.
#[track_caller]
fn assert_shown(name: &str, what: &str, input: &str, shown: &str) {
    insta::with_settings!({
        omit_expression => true,
        prepend_module_to_snapshot => false,
    }, {
        insta::assert_snapshot!(name, format!("{what}:\n{input}\n\nshown:\n{shown}"));
    });
}

/// Checks `text` as `tollgate.toml` in `dir` and compares it, with its
/// lines numbered, and what `check-config` prints for it with the snapshot
/// `name`.
#[track_caller]
fn assert_problems(name: &str, dir: &ConfigDir, text: &str) {
    let shown = dir.redact(&refused(dir, text).to_string());
    assert_shown(name, "tollgate.toml", &numbered(text), &shown);
}

const MINIMAL_PLUGIN: &str = r#"
[[plugin]]
name = "hello"
component = "plugins/hello.wasm"
"#;

#[test]
fn an_empty_file_gives_the_defaults() {
    let dir = ConfigDir::new();
    let config = ok(&dir, "");
    assert_eq!(config.path, dir.config());
    assert_eq!(config.listen, "127.0.0.1:7878".parse().expect("addr"));
    assert_eq!(config.state, None);
    assert_eq!(config.admin_token, None);
    assert_eq!(config.log_format, LogFormat::Human);
    assert_eq!(config.grace_period, Duration::from_secs(10));
    assert_eq!(config.compile_cache, None);
    assert_eq!(config.max_concurrent_calls, 64);
    assert_eq!(config.read_timeout, Duration::from_secs(30));
    assert_eq!(config.max_connections, 1024);
    assert!(config.plugins.is_empty());
    assert!(config.licenses.is_empty());
}

#[test]
fn a_plugin_with_only_name_and_component_gets_default_limits() {
    let dir = ConfigDir::with_component();
    let config = ok(&dir, MINIMAL_PLUGIN);
    assert_eq!(
        config.plugins,
        [PluginSpec::file(
            "hello",
            dir.path().join("plugins/hello.wasm")
        )]
    );
    let plugin = &config.plugins[0];
    assert_eq!(plugin.limits, Limits::default());
    assert!(plugin.requires.is_empty() && plugin.may_use.is_empty());
    assert!(plugin.sandbox.dirs.is_empty() && plugin.sandbox.pass_env.is_empty());
}

#[test]
fn a_complete_config_is_read_value_by_value() {
    let dir = ConfigDir::with_component();
    dir.dir("data");
    dir.dir("out");
    let text = r#"
listen = "0.0.0.0:9000"
state = "var/state"
admin_token = "0123456789abcdef0123"
log_format = "json"
grace_period = "1m 30s"
compile_cache = "/var/cache/tollgate"
max_concurrent_calls = 10000
read_timeout = "2s"
max_connections = 50000

[[plugin]]
name = "hello"
component = "plugins/hello.wasm"
requires = ["demo", "acme:pro"]
may_use = ["extra.v1"]
memory = "128MiB"
time_limit = "250ms"
wait_for_seat = "2s"
dirs = [
  { host = "data", guest = "/data" },
  { host = "out", guest = "/out", mode = "rw" },
]
env = ["LANG", "_X1"]
max_request_bytes = "2KB"
max_response_bytes = "1GiB"

[[plugin]]
name = "other_2"
component = "plugins/hello.wasm"
requires = ["demo"]
wait_for_seat = "off"

[license.demo]
include = ["hello", "other_2"]
exclude = []
reserve = { hello = 2, other_2 = 0 }
max_per_plugin = 3
pool = "exact"

[license."acme:pro"]
exclude = ["other_2"]
"#;
    let config = ok(&dir, text);
    assert_eq!(config.listen, "0.0.0.0:9000".parse().expect("addr"));
    assert_eq!(config.state, Some(dir.path().join("var/state")));
    assert_eq!(config.admin_token.as_deref(), Some("0123456789abcdef0123"));
    assert_eq!(config.log_format, LogFormat::Json);
    assert_eq!(config.grace_period, Duration::from_secs(90));
    assert_eq!(
        config.compile_cache,
        Some(PathBuf::from("/var/cache/tollgate"))
    );
    assert_eq!(config.max_concurrent_calls, 10000);
    assert_eq!(config.read_timeout, Duration::from_secs(2));
    assert_eq!(config.max_connections, 50000);

    let hello = &config.plugins[0];
    assert_eq!(hello.name, "hello");
    assert_eq!(hello.requires, ["demo", "acme:pro"]);
    assert_eq!(hello.may_use, ["extra.v1"]);
    assert_eq!(
        hello.limits,
        Limits {
            memory_bytes: 128 << 20,
            time: Duration::from_millis(250),
            wait_for_seat: Some(Duration::from_secs(2)),
            max_input_bytes: 2000,
            max_output_bytes: 1 << 30,
            ..Limits::default()
        }
    );
    assert_eq!(
        hello.sandbox.dirs,
        [
            Preopen {
                host: dir.path().join("data"),
                guest: "/data".into(),
                writable: false
            },
            Preopen {
                host: dir.path().join("out"),
                guest: "/out".into(),
                writable: true
            },
        ]
    );
    assert!(hello.sandbox.env.is_empty());
    assert_eq!(hello.sandbox.pass_env, ["LANG", "_X1"]);

    let other = &config.plugins[1];
    assert_eq!(other.name, "other_2");
    assert_eq!(other.limits.wait_for_seat, None);

    assert_eq!(config.licenses.len(), 2);
    let demo = &config.licenses["demo"];
    assert_eq!(demo.include, ["hello", "other_2"]);
    assert!(demo.exclude.is_empty());
    assert_eq!(
        demo.reserve,
        BTreeMap::from([("hello".to_string(), 2), ("other_2".to_string(), 0)])
    );
    assert_eq!(demo.max_per_plugin, Some(3));
    assert!(demo.exact, "pool = \"exact\"");
    assert_eq!(
        config.licenses["acme:pro"],
        LicenseRules {
            exclude: vec!["other_2".into()],
            ..LicenseRules::default()
        }
    );
}

#[test]
fn the_bundled_example_parses_when_its_paths_exist() {
    let dir = ConfigDir::new();
    dir.file("plugins/hello_licensed.wasm", "\0asm");
    dir.dir("data");
    dir.dir("scratch");
    dir.file("admin.token", "  s3cret-token-of-32-characters!!\n");
    let path = dir.file("tollgate.toml", include_str!("example.toml"));
    let config = match Config::load(&path) {
        Ok(config) => config,
        Err(e) => panic!("the example config should be valid:\n{e}"),
    };
    assert_eq!(
        config.admin_token.as_deref(),
        Some("s3cret-token-of-32-characters!!")
    );
    assert_eq!(config.state, Some(dir.path().join("state")));
    assert_eq!(config.compile_cache, Some(dir.path().join("cache")));
    let names: Vec<&str> = config.plugins.iter().map(|p| p.name.as_str()).collect();
    assert_eq!(names, ["hello", "hello-batch"]);
    assert_eq!(
        config.plugins[0].component,
        ComponentSource::File(dir.path().join("plugins/hello_licensed.wasm"))
    );
    assert_eq!(config.plugins[0].sandbox.dirs.len(), 2);
    assert!(config.licenses.contains_key("demo"));
    assert!(config.licenses.contains_key("acme:pro"));
}

#[test]
fn the_bundled_example_shows_every_key() {
    let example = include_str!("example.toml");
    // Set, as a section header, or quoted in a comment.
    let written = |key: &str| {
        example.contains(&format!("`{key} ="))
            || example.lines().any(|line| {
                let line = line.trim_start_matches(['#', ' ']);
                line.starts_with(&format!("{key} ="))
                    || line.starts_with(&format!("[{key}."))
                    || line.starts_with(&format!("[[{key}]]"))
            })
    };
    let missing: Vec<&str> = document::top_level_keys()
        .chain(document::plugin_keys())
        .chain(document::license_rule_keys())
        .filter(|key| !written(key))
        .collect();
    assert!(missing.is_empty(), "example.toml lacks {missing:?}");
}

#[test]
fn the_bundled_example_without_its_files_names_each_missing_one() {
    let dir = ConfigDir::new();
    assert_problems(
        "example_without_its_files",
        &dir,
        include_str!("example.toml"),
    );
}

#[test]
fn syntax_errors_are_reported_beside_value_problems() {
    let dir = ConfigDir::new();
    assert_problems(
        "syntax_error",
        &dir,
        "listen = \"127.0.0.1:1\"\n\nmax_concurrent_calls = = 3\n",
    );
    assert_problems(
        "syntax_errors_and_value_problems",
        &dir,
        r#"memory_typo = 1
log_format = jsno
listen = "nowhere"
grace_period = "10s"
grace_period = "20s"
"#,
    );
    // After an unclosed bracket the recovered structure is guesswork: only
    // the syntax errors are reported.
    assert_problems(
        "unclosed_header",
        &dir,
        "listen = 7\n[[plugin]\nname = \"a\"\n",
    );
    // The parser reports an unclosed array after another error on the same line.
    assert_problems("unclosed_array", &dir, "a = [1,\nb = 2\n");
}

#[test]
fn unknown_keys_are_reported_everywhere_with_suggestions() {
    let dir = ConfigDir::with_component();
    dir.dir("data");
    assert_problems(
        "unknown_keys",
        &dir,
        r#"
lisen = "127.0.0.1:1"
frobnicate = true

[[plugin]]
name = "hello"
component = "plugins/hello.wasm"
memroy = "1MiB"
requires = ["demo"]
dirs = [{ host = "data", guest = "/data", mdoe = "rw" }]

[license.demo]
inclde = ["hello"]
"#,
    );
    assert_problems("plural_plugins", &dir, "[[plugins]]\nname = \"x\"\n");
    assert_problems("plural_licenses", &dir, "[licenses.demo]\ninclude = []\n");
}

#[test]
fn wrong_types_say_what_was_expected() {
    let dir = ConfigDir::with_component();
    assert_problems(
        "wrong_top_level_types",
        &dir,
        r#"
listen = 7878
state = false
log_format = ["json"]
grace_period = 10
max_concurrent_calls = "64"
plugin = { name = "x" }
license = "demo"
"#,
    );
    assert_problems(
        "wrong_plugin_types",
        &dir,
        r#"
[[plugin]]
name = "hello"
component = "plugins/hello.wasm"
requires = "demo"
may_use = [1]
memory = 64
time_limit = 5
wait_for_seat = false
dirs = "data"
env = [true]
"#,
    );
}

#[test]
fn bad_top_level_values_are_reported() {
    let dir = ConfigDir::new();
    let text = r#"
listen = "localhost"
log_format = "jsno"
grace_period = "ten seconds"
max_concurrent_calls = 0
admin_token = "short"
read_timeout = "0s"
max_connections = 0
"#;
    assert_problems("bad_top_level_values", &dir, text);
    let shown = refused(&dir, text).to_string();
    assert!(
        !shown.contains("\"short\""),
        "the token must not be echoed: {shown}"
    );
    for (name, text) in [
        (
            "max_concurrent_calls_too_many",
            "max_concurrent_calls = 10001\n",
        ),
        (
            "max_concurrent_calls_negative",
            "max_concurrent_calls = -1\n",
        ),
        ("state_empty", "state = \"\"\n"),
        ("one_problem", "listen = 1\n"),
    ] {
        assert_problems(name, &dir, text);
    }
}

#[test]
fn every_setting_has_its_checks() {
    let dir = ConfigDir::new();
    dir.file("token", "0123456789abcdef0123\n");
    assert_problems(
        "every_setting_wrong",
        &dir,
        r#"
listen = "127.0.0.1:99999"
state = 1
compile_cache = ""
admin_token = 16
trusted_issuers = {}
log_format = "Human"
grace_period = "-1s"
max_concurrent_calls = 1.5
read_timeout = "2h"
max_connections = 100001
max_connections_per_client = true
trusted_proxies = "10.0.0.0/8"
write_timeout = 30
max_buffered_request_bytes = 1024
allowed_hosts = "localhost"
"#,
    );
    // The later of two settings that exclude each other is reported, and
    // neither is read.
    assert_problems(
        "admin_token_file_before_admin_token",
        &dir,
        "admin_token_file = \"nope\"\nadmin_token = \"short\"\n",
    );
    assert_problems(
        "durations_over_1h",
        &dir,
        "read_timeout = \"61m\"\nwrite_timeout = \"1h 1s\"\n",
    );
}

#[test]
fn bad_plugin_values_are_reported() {
    let dir = ConfigDir::with_component();
    dir.file("a-file", "");
    assert_problems(
        "bad_plugin_values",
        &dir,
        r#"
[[plugin]]
name = "Hello"
component = "plugins"
requires = ["demo license"]
memory = "5GiB"
time_limit = "0s"
wait_for_seat = "0s"
max_request_bytes = "1.5MiB"
max_response_bytes = "10 furlongs"
env = ["1BAD", "OK", "TOLLGATE_ADMIN_TOKEN"]
dirs = [
  { host = "missing", guest = "/m" },
  { host = "a-file", guest = "relative", mode = "rx" },
]
"#,
    );
}

#[test]
fn time_limit_and_memory_bounds() {
    let dir = ConfigDir::with_component();
    let with = |extra: &str| format!("{MINIMAL_PLUGIN}{extra}\n");
    assert_eq!(
        ok(&dir, &with("time_limit = \"1h\"")).plugins[0]
            .limits
            .time,
        Duration::from_secs(3600)
    );
    assert_eq!(
        ok(&dir, &with("memory = \"4GiB\"")).plugins[0]
            .limits
            .memory_bytes,
        4 << 30
    );
    assert_eq!(
        ok(&dir, &with("memory = \"64 kib\"")).plugins[0]
            .limits
            .memory_bytes,
        64 << 10
    );
    assert_problems("time_limit_over_1h", &dir, &with("time_limit = \"61m\""));
    assert_problems("memory_under_64kib", &dir, &with("memory = \"1KiB\""));
}

#[test]
fn plugin_tables_must_be_complete_and_unique() {
    let dir = ConfigDir::with_component();
    dir.dir("a");
    assert_problems(
        "missing_required_keys",
        &dir,
        r#"
[[plugin]]
name = "a"
component = "plugins/hello.wasm"

[[plugin]]
memory = "1MiB"

[[plugin]]
name = "c"
dirs = [{ guest = "/x" }]
"#,
    );
    assert_problems(
        "duplicate_plugin_names",
        &dir,
        &format!("{MINIMAL_PLUGIN}\n{MINIMAL_PLUGIN}"),
    );
    assert_problems(
        "duplicate_guest_paths",
        &dir,
        &format!(
            "{MINIMAL_PLUGIN}dirs = [{{ host = \"a\", guest = \"/d\" }}, {{ host = \"a\", guest = \"/d\" }}]\n"
        ),
    );
}

#[test]
fn license_rules_must_name_configured_plugins_and_used_ids() {
    let dir = ConfigDir::with_component();
    // An `include` of unknown plugins names only the misspelt one.
    assert_problems(
        "license_names_unknown_plugins_and_ids",
        &dir,
        r#"
[[plugin]]
name = "hello"
component = "plugins/hello.wasm"
requires = ["demo"]
may_use = ["extra"]

[license.demo]
include = ["helo"]
exclude = ["ghost"]
reserve = { nobody = 1 }

[license.dmeo]
max_per_plugin = 1

[license.unused]

[license."bad id"]
"#,
    );
}

#[test]
fn license_rules_that_contradict_each_other_are_reported() {
    let dir = ConfigDir::with_component();
    assert_problems(
        "license_rules_contradict",
        &dir,
        r#"
[[plugin]]
name = "hello"
component = "plugins/hello.wasm"
requires = ["demo"]

[[plugin]]
name = "other"
component = "plugins/hello.wasm"
may_use = ["demo"]

[license.demo]
include = ["other"]
exclude = ["hello", "other"]
reserve = { other = 5, hello = 1 }
max_per_plugin = 2
"#,
    );
    assert_problems(
        "license_counts_out_of_range",
        &dir,
        &format!(
            "{MINIMAL_PLUGIN}requires = [\"demo\"]\n[license.demo]\nmax_per_plugin = 0\nreserve = {{ hello = -1 }}\n"
        ),
    );
}

#[test]
fn license_rule_values_are_checked() {
    let dir = ConfigDir::with_component();
    assert_problems(
        "license_rule_types",
        &dir,
        &format!(
            "{MINIMAL_PLUGIN}requires = [\"demo\", \"pro\"]\nmay_use = [\"x\"]\n\n[license.demo]\ninclude = \"hello\"\nexclude = [1]\nreserve = [\"hello\"]\nmax_per_plugin = \"2\"\n\n[license.pro]\ninclude = []\npool = \"fast\"\n\n[license.x]\npool = 1\nnotes = \"\"\nreserve = {{ hello = \"1\" }}\nexclude = [\"hello\"]\n"
        ),
    );
    assert_problems(
        "license_not_a_table",
        &dir,
        &format!("{MINIMAL_PLUGIN}may_use = [\"demo\"]\n[license]\ndemo = 3\n"),
    );
    // A plugin that requires the license but is left out of `include`.
    assert_problems(
        "license_include_leaves_out_a_requirer",
        &dir,
        &format!(
            "{MINIMAL_PLUGIN}requires = [\"demo\"]\n\n[[plugin]]\nname = \"b\"\ncomponent = \"plugins/hello.wasm\"\nmay_use = [\"demo\"]\n\n[license.demo]\ninclude = [\"b\"]\nreserve = {{ hello = 99999999999 }}\nmax_per_plugin = 4294967296\n"
        ),
    );
}

#[test]
fn many_problems_in_one_file_are_reported_together_in_line_order() {
    let dir = ConfigDir::with_component();
    assert_problems(
        "many_problems_in_line_order",
        &dir,
        r#"listen = "127.0.0.1"
log_format = "xml"

[[plugin]]
name = "hello"
component = "plugins/hello.wasm"
memroy = "1MiB"
time_limit = "forever"

[[plugin]]
name = "hello"
component = "plugins/missing.wasm"
requires = ["demo"]

[license.demo]
include = ["hello", "nope"]
"#,
    );
}

#[test]
fn columns_count_characters_not_bytes() {
    let dir = ConfigDir::with_component();
    assert_problems(
        "columns_after_multibyte_comment",
        &dir,
        "# ünïcödé\n\"ключ\" = 1\n",
    );
    assert_problems(
        "columns_after_multibyte_values",
        &dir,
        &format!("{MINIMAL_PLUGIN}requires = [\"ü\", \"a b\"]\n"),
    );
}

#[test]
fn admin_token_file_is_read_trimmed_relative_to_the_config() {
    let dir = ConfigDir::new();
    dir.file("secrets/token", "\n  0123456789abcdef-token  \n\n");
    let config = ok(&dir, "admin_token_file = \"secrets/token\"\n");
    assert_eq!(
        config.admin_token.as_deref(),
        Some("0123456789abcdef-token")
    );
}

#[test]
fn admin_token_file_problems() {
    let dir = ConfigDir::new();
    dir.file("empty", " \n");
    dir.file("short", "abc\n");
    dir.dir("a-dir");
    for (name, text) in [
        ("admin_token_file_missing", "admin_token_file = \"nope\"\n"),
        ("admin_token_file_empty", "admin_token_file = \"empty\"\n"),
        ("admin_token_file_short", "admin_token_file = \"short\"\n"),
        (
            "admin_token_file_a_directory",
            "admin_token_file = \"a-dir\"\n",
        ),
        (
            "admin_token_and_file",
            "admin_token = \"0123456789abcdef\"\nadmin_token_file = \"empty\"\n",
        ),
    ] {
        assert_problems(name, &dir, text);
    }
}

fn env_of(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
    let map: HashMap<String, String> = pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    move |name| map.get(name).cloned()
}

#[test]
fn environment_overrides_replace_file_values() {
    let dir = ConfigDir::new();
    let token_file = dir.file("tok", "abcdefghijklmnopqrstuvwxyz\n");
    let mut config = ok(
        &dir,
        "listen = \"127.0.0.1:1\"\nadmin_token = \"from-the-file-0123\"\n",
    );
    config
        .apply_env(env_of(&[
            ("TOLLGATE_LISTEN", "[::1]:8080"),
            ("TOLLGATE_STATE", "/srv/state"),
            ("TOLLGATE_LOG_FORMAT", "json"),
            ("TOLLGATE_ADMIN_TOKEN", "from-the-environment"),
        ]))
        .expect("valid overrides");
    assert_eq!(config.listen, "[::1]:8080".parse().expect("addr"));
    assert_eq!(config.state, Some(PathBuf::from("/srv/state")));
    assert_eq!(config.log_format, LogFormat::Json);
    assert_eq!(config.admin_token.as_deref(), Some("from-the-environment"));

    let file_var = token_file.to_string_lossy().into_owned();
    config
        .apply_env(env_of(&[("TOLLGATE_ADMIN_TOKEN_FILE", &file_var)]))
        .expect("token file");
    assert_eq!(
        config.admin_token.as_deref(),
        Some("abcdefghijklmnopqrstuvwxyz")
    );
}

#[test]
fn unset_and_empty_environment_variables_change_nothing() {
    let dir = ConfigDir::new();
    let mut config = ok(&dir, "log_format = \"json\"\n");
    let before = config.clone();
    config.apply_env(|_| None).expect("nothing set");
    assert_eq!(config, before);
    config
        .apply_env(env_of(&[
            ("TOLLGATE_LOG_FORMAT", ""),
            ("TOLLGATE_LISTEN", ""),
        ]))
        .expect("empty values are unset");
    assert_eq!(config, before);
}

#[test]
fn bad_environment_values_are_problems_outside_the_file_and_change_nothing() {
    let dir = ConfigDir::new();
    let mut config = ok(&dir, "");
    let before = config.clone();
    let cases: [(&str, &[(&str, &str)]); 3] = [
        (
            "env_bad_values",
            &[
                ("TOLLGATE_LISTEN", "localhost:80"),
                ("TOLLGATE_STATE", "/elsewhere"),
                ("TOLLGATE_LOG_FORMAT", "JSON!"),
                ("TOLLGATE_ADMIN_TOKEN", "x"),
                ("TOLLGATE_ADMIN_TOKEN_FILE", "/nonexistent/token"),
            ],
        ),
        ("env_short_token", &[("TOLLGATE_ADMIN_TOKEN", "too-short")]),
        (
            "env_missing_token_file",
            &[("TOLLGATE_ADMIN_TOKEN_FILE", "/nonexistent/token")],
        ),
    ];
    for (name, pairs) in cases {
        let err = config.apply_env(env_of(pairs)).expect_err("bad values");
        assert_eq!(config, before, "nothing may change on error");
        assert!(err.problems.iter().all(|p| p.line == 0 && p.column == 0));
        let shown = dir.redact(&err.to_string());
        assert!(!shown.contains("too-short"), "{shown}");
        let set: Vec<String> = pairs.iter().map(|(k, v)| format!("  {k}={v}")).collect();
        assert_shown(name, "environment", &set.join("\n"), &shown);
    }
}

#[test]
fn load_reads_the_file() {
    let dir = ConfigDir::with_component();
    let path = dir.file("tollgate.toml", MINIMAL_PLUGIN);
    let config = Config::load(&path).expect("valid");
    assert_eq!(
        config.plugins[0].component,
        ComponentSource::File(dir.path().join("plugins/hello.wasm"))
    );
}

#[test]
fn load_reports_missing_large_and_non_utf8_files() {
    let dir = ConfigDir::new();
    let big = dir.file("big.toml", &"# padding\n".repeat(110_000));
    let latin1 = dir.path().join("latin1.toml");
    fs::write(&latin1, b"listen = \"127.0.0.1:1\"\n# caf\xe9\n").expect("write");
    for (name, description, path) in [
        (
            "load_missing",
            "  (none at this path)",
            dir.path().join("nope.toml"),
        ),
        (
            "load_directory",
            "  (a directory)",
            dir.path().to_path_buf(),
        ),
        ("load_too_large", "  (1.1 MB of comments)", big),
        (
            "load_not_utf8",
            "    1| listen = \"127.0.0.1:1\"\n    2| # caf\\xe9 (Latin-1)",
            latin1,
        ),
    ] {
        let err = Config::load(&path).expect_err(name);
        assert_eq!(err.path, path);
        assert_shown(name, "file", description, &dir.redact(&err.to_string()));
    }
}

#[test]
fn debug_output_hides_the_admin_token() {
    let dir = ConfigDir::new();
    let config = ok(&dir, "admin_token = \"very-secret-token-123\"\n");
    let shown = format!("{config:?}");
    assert!(!shown.contains("very-secret"), "{shown}");
    assert!(shown.contains("<redacted>"), "{shown}");
}

#[test]
fn sizes_parse_in_binary_and_decimal_units() {
    let cases = [
        ("0B", 0),
        ("1B", 1),
        ("64KiB", 64 << 10),
        ("64 MiB", 64 << 20),
        ("2GiB", 2 << 30),
        ("3KB", 3_000),
        ("3MB", 3_000_000),
        ("3gb", 3_000_000_000),
        ("64Mib", 64 << 20),
        ("64MIb", 64 << 20),
    ];
    for (text, bytes) in cases {
        assert_eq!(units::size(text), Ok(bytes), "{text}");
    }
    let bad = [
        "",
        "MiB",
        "64",
        "64 M",
        "1.5MiB",
        "-1MiB",
        "99999999999999999999GiB",
        "64Mi",
        "64m",
        "64K",
        "1g",
    ];
    let shown: Vec<String> = bad
        .iter()
        .map(|text| match units::size(text) {
            Ok(bytes) => panic!("{text:?} should be refused, not read as {bytes}"),
            Err(why) => format!("  {why}"),
        })
        .collect();
    let sizes: Vec<String> = bad.iter().map(|text| format!("  {text:?}")).collect();
    assert_shown("bad_sizes", "sizes", &sizes.join("\n"), &shown.join("\n"));
}

#[test]
fn suggestions_need_an_edit_distance_of_at_most_two() {
    let keys = ["memory", "time_limit", "requires"];
    assert_eq!(units::closest("memroy", keys), Some("memory"));
    assert_eq!(units::closest("mem", keys), None);
    assert_eq!(units::closest("require", keys), Some("requires"));
    assert_eq!(units::closest("time-limit", keys), Some("time_limit"));
    assert_eq!(units::closest("zzz", keys), None);
    assert_eq!(units::closest("MEMROY", keys), Some("memory"), "any case");
    assert_eq!(units::closest("rqeuires", keys), Some("requires"));
}

#[test]
fn variable_names_follow_their_rule() {
    // Plugin names and license ids follow `tollgate_license::names`.
    assert!(units::env_name("_A1").is_ok());
    assert!(units::env_name("A-B").is_err());
    assert!(units::env_name("").is_err());
}

#[test]
fn integers_may_use_any_toml_notation() {
    let dir = ConfigDir::new();
    assert_eq!(
        ok(&dir, "max_concurrent_calls = 1_000\n").max_concurrent_calls,
        1000
    );
    assert_eq!(
        ok(&dir, "max_concurrent_calls = 0x10\n").max_concurrent_calls,
        16
    );
    assert_problems(
        "integer_too_large",
        &dir,
        "max_concurrent_calls = 99999999999999999999\n",
    );
}

#[test]
fn positions_agree_with_a_plain_scan_at_every_offset() {
    // Multi-byte characters, empty lines and lines longer than the
    // position index's stride.
    let long = "ä".repeat(300) + &"x".repeat(300);
    let text = format!("a = 1\n\n# ünï\n{long}\n\"ключ\" = 2\nend");
    for offset in 0..=text.len() + 2 {
        let mut at = offset.min(text.len());
        while !text.is_char_boundary(at) {
            at -= 1;
        }
        let before = &text[..at];
        let line = before.matches('\n').count() + 1;
        let column = before[before.rfind('\n').map_or(0, |i| i + 1)..]
            .chars()
            .count()
            + 1;
        assert_eq!(
            document::line_column(&text, offset),
            (line, column),
            "offset {offset}"
        );
    }
}

#[test]
fn a_large_file_full_of_problems_is_checked_in_linear_time() {
    // 60,000 unknown keys (about 600 KB): each problem's line is found
    // without rescanning the file (this took over a minute when it was).
    let dir = ConfigDir::new();
    let text: String = (0..60_000).map(|i| format!("k{i} = 1\n")).collect();
    let started = std::time::Instant::now();
    let err = parse_in(&dir, &text).expect_err("problems");
    let elapsed = started.elapsed();
    assert_eq!(err.problems.len(), 60_000);
    assert_eq!(
        (err.problems[59_999].line, err.problems[59_999].column),
        (60_000, 1)
    );
    assert!(err.problems[59_999].message.contains("`k59999`"));
    assert!(elapsed < Duration::from_secs(15), "took {elapsed:?}");

    // Many problems on one long line with multi-byte text before them.
    let pairs: Vec<String> = (0..20_000).map(|i| format!("k{i} = \"é\"")).collect();
    let text = format!("{MINIMAL_PLUGIN}dirs = [{{ {} }}]\n", pairs.join(", "));
    let dir = ConfigDir::with_component();
    let started = std::time::Instant::now();
    let err = parse_in(&dir, &text).expect_err("problems");
    assert!(
        started.elapsed() < Duration::from_secs(15),
        "took {:?}",
        started.elapsed()
    );
    let last = err
        .problems
        .iter()
        .find(|p| p.message.contains("`k19999`"))
        .expect("the last key");
    let line = text.lines().nth(last.line - 1).expect("line");
    let column = line[..line.find("k19999").expect("key")].chars().count() + 1;
    assert_eq!(last.column, column);
}

#[test]
fn long_bad_names_and_many_unknown_names_keep_messages_short() {
    let dir = ConfigDir::with_component();
    // A 100,000-character name is reported once, and the plugin's other
    // problems name it by number.
    let unknown: String = (0..200).map(|i| format!("u{i} = 1\n")).collect();
    let text = format!(
        "[[plugin]]\nname = \"{}\"\ncomponent = \"plugins/hello.wasm\"\n{unknown}",
        "A".repeat(100_000)
    );
    let err = refused(&dir, &text);
    assert_eq!(err.problems.len(), 201, "{err}");
    assert!(
        err.problems[1..]
            .iter()
            .all(|p| p.message.contains("[[plugin]] #1"))
    );
    assert!(
        err.to_string().len() < 200_000,
        "{} bytes",
        err.to_string().len()
    );

    // An unknown name among many plugins lists ten of them, not all.
    let plugins: String = (0..15)
        .map(|i| {
            format!("[[plugin]]\nname = \"plugin-{i}\"\ncomponent = \"plugins/hello.wasm\"\nmay_use = [\"demo\"]\n")
        })
        .collect();
    assert_problems(
        "unknown_plugin_among_many",
        &dir,
        &format!("{plugins}[license.demo]\ninclude = [\"zzzzzz-nothing\", \"plugin-1x\"]\n"),
    );
}

#[test]
fn plugin_dirs_that_overlap_host_state_are_problems() {
    let dir = ConfigDir::with_component();
    for d in ["state/sub", "cache", "secrets", "data", "st/compile-cache"] {
        dir.dir(d);
    }
    dir.file("secrets/admin.token", "test-admin-token-0123456789");
    // "." holds the config file itself (and everything else).
    assert_problems(
        "dirs_overlap_host_state",
        &dir,
        r#"state = "state"
compile_cache = "cache"
admin_token_file = "secrets/admin.token"

[[plugin]]
name = "hello"
component = "plugins/hello.wasm"
dirs = [
  { host = "state/sub", guest = "/a" },
  { host = ".", guest = "/b" },
  { host = "cache", guest = "/c" },
  { host = "secrets", guest = "/d" },
  { host = "data", guest = "/e" },
]
"#,
    );
    // The other secrets count as the admin token does: the viewer token,
    // the TLS key and the webhook secret, whichever section names them.
    for d in ["viewer", "tls", "hooks"] {
        dir.dir(d);
    }
    dir.file("viewer/viewer.token", "viewer-token-0123456789");
    dir.file("hooks/alerts.secret", "webhook-secret-0123456789");
    let made = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).expect("cert");
    dir.file("tls/cert.pem", &made.cert.pem());
    dir.file("tls/key.pem", &made.signing_key.serialize_pem());
    assert_problems(
        "dirs_overlap_secret_files",
        &dir,
        r#"admin_token_file = "secrets/admin.token"
viewer_token_file = "viewer/viewer.token"
tls_cert = "tls/cert.pem"
tls_key = "tls/key.pem"

[[plugin]]
name = "hello"
component = "plugins/hello.wasm"
dirs = [
  { host = "viewer", guest = "/v" },
  { host = "tls", guest = "/t" },
  { host = "hooks", guest = "/h" },
]

[alerts]
webhook = "https://hooks.example.com/tollgate"
secret_file = "hooks/alerts.secret"
"#,
    );
    // Without compile_cache, the default cache inside the state directory counts.
    assert_problems(
        "dirs_overlap_default_compile_cache",
        &dir,
        "state = \"st\"\n[[plugin]]\nname = \"hello\"\ncomponent = \"plugins/hello.wasm\"\ndirs = [{ host = \"st/compile-cache\", guest = \"/c\" }]\n",
    );
}

#[test]
fn trusted_issuers_take_key_ids_and_public_keys_once_each() {
    let dir = ConfigDir::new();
    let key = tollgate_license::issuer::IssuerKey::generate()
        .expect("key")
        .public();
    let b64 = key
        .to_file_text()
        .lines()
        .find_map(|l| l.strip_prefix("key: "))
        .expect("key line")
        .to_string();
    let config = ok(&dir, &format!("trusted_issuers = [\"{}\"]\n", key.key_id()));
    assert_eq!(
        config.trusted_issuers,
        Some(vec![tollgate_store::state::IssuerPin::KeyId(key.key_id())])
    );
    let config = ok(&dir, &format!("trusted_issuers = [\"{b64}\"]\n"));
    assert_eq!(
        config.trusted_issuers,
        Some(vec![tollgate_store::state::IssuerPin::Key(key.clone())])
    );
    assert_eq!(ok(&dir, "").trusted_issuers, None);
    assert_eq!(
        ok(&dir, "trusted_issuers = []").trusted_issuers,
        Some(vec![])
    );
    // The key is new each run: snapshots name it by placeholders.
    let text = format!(
        "trusted_issuers = [\n  \"{}\",\n  \"{b64}\",\n  \"0123\",\n  7,\n]\n",
        key.key_id()
    );
    let placeholders = |shown: &str| {
        shown
            .replace(&key.key_id(), "[key id]")
            .replace(&b64, "[public key]")
    };
    assert_shown(
        "trusted_issuers_twice_and_bad",
        "tollgate.toml",
        &placeholders(&numbered(&text)),
        &placeholders(&dir.redact(&refused(&dir, &text).to_string())),
    );
    assert_problems(
        "trusted_issuers_not_an_array",
        &dir,
        "trusted_issuers = \"abc\"\n",
    );
}

#[test]
fn connection_keys_have_defaults() {
    let dir = ConfigDir::new();
    let config = ok(&dir, "");
    assert_eq!(config.max_connections_per_client, 128);
    assert!(config.trusted_proxies.is_empty());
    assert_eq!(config.write_timeout, Duration::from_secs(30));
    assert_eq!(config.max_buffered_request_bytes, 64 << 20);
    assert_eq!(config.allowed_hosts, None);
    // On loopback the host check is on, for the loopback names.
    let names = |hosts: Option<Vec<AllowedHost>>| {
        hosts.map(|h| {
            h.iter()
                .map(|a| match a {
                    AllowedHost::Name { host, port: None } => host.clone(),
                    other => format!("{other:?}"),
                })
                .collect::<Vec<_>>()
        })
    };
    assert_eq!(
        names(config.allowed_hosts()),
        Some(vec!["localhost".into(), "127.0.0.1".into(), "[::1]".into()])
    );
    let v6 = ok(&dir, "listen = \"[::1]:7878\"\n");
    assert!(v6.allowed_hosts().is_some());
    // Elsewhere it is off unless hosts are named.
    let open = ok(&dir, "listen = \"0.0.0.0:7878\"\n");
    assert_eq!(open.allowed_hosts(), None);
    let named = ok(
        &dir,
        "listen = \"0.0.0.0:7878\"\nallowed_hosts = [\"api.example.com\"]\n",
    );
    assert_eq!(
        names(named.allowed_hosts()),
        Some(vec!["api.example.com".into()])
    );
    let any = ok(&dir, "allowed_hosts = [\"*\"]\n");
    assert_eq!(any.allowed_hosts(), None);
}

#[test]
fn connection_keys_are_read_and_checked() {
    let dir = ConfigDir::with_component();
    let config = ok(
        &dir,
        r#"
max_connections_per_client = 8
trusted_proxies = ["10.0.0.7", "fd00::/8"]
write_timeout = "5s"
max_buffered_request_bytes = "8MiB"
allowed_hosts = ["API.example.com", "127.0.0.1:7878"]
"#,
    );
    assert_eq!(config.max_connections_per_client, 8);
    assert_eq!(
        config.trusted_proxies,
        [
            AddressRange::parse("10.0.0.7").expect("ip"),
            AddressRange::parse("fd00::/8").expect("range")
        ]
    );
    assert_eq!(config.write_timeout, Duration::from_secs(5));
    assert_eq!(config.max_buffered_request_bytes, 8 << 20);
    assert_eq!(
        config.allowed_hosts,
        Some(vec![
            AllowedHost::Name {
                host: "api.example.com".into(),
                port: None
            },
            AllowedHost::Name {
                host: "127.0.0.1".into(),
                port: Some(7878)
            },
        ])
    );

    assert_problems(
        "bad_connection_keys",
        &dir,
        r#"
max_connections_per_client = 0
trusted_proxies = ["10.0.0.0/33", "proxy.example", 7]
write_timeout = "0s"
max_buffered_request_bytes = "10B"
allowed_hosts = ["http://api.example.com/"]
max_conections_per_client = 3

[[plugin]]
name = "hello"
component = "plugins/hello.wasm"
max_request_bytes = "2GiB"
"#,
    );
    assert_problems("allowed_hosts_empty", &dir, "allowed_hosts = []\n");
    assert_problems(
        "allowed_hosts_any_beside_names",
        &dir,
        "allowed_hosts = [\"localhost\", \"*\"]\n",
    );
}

#[test]
fn a_shared_store_is_a_postgres_url_with_a_batch_ttl() {
    let dir = ConfigDir::new();
    let config = ok(&dir, "");
    assert_eq!(
        (config.store.as_deref(), config.seat_batch_ttl),
        (None, Duration::from_secs(15))
    );
    let config = ok(
        &dir,
        "store = \"postgres://tollgate@db.example:5432/tollgate\"\nseat_batch_ttl = \"30s\"\n",
    );
    assert_eq!(
        config.store.as_deref(),
        Some("postgres://tollgate@db.example:5432/tollgate")
    );
    assert_eq!(config.seat_batch_ttl, Duration::from_secs(30));
    assert_problems(
        "store_not_postgres_and_ttl_too_long",
        &dir,
        "store = \"mysql://db/x\"\nseat_batch_ttl = \"2h\"\n",
    );

    let mut config = ok(&dir, "");
    config
        .apply_env(env_of(&[("TOLLGATE_STORE", "postgresql://h/db")]))
        .expect("a store from the environment");
    assert_eq!(config.store.as_deref(), Some("postgresql://h/db"));
    let err = config
        .apply_env(env_of(&[("TOLLGATE_STORE", "db.example")]))
        .expect_err("not a URL");
    assert!(
        err.to_string().contains(
            "environment variable TOLLGATE_STORE: \"db.example\" is not a PostgreSQL URL"
        ),
        "{err}"
    );
}

const PLUGIN_WITH_DEMO: &str = r#"
[[plugin]]
name = "hello"
component = "plugins/hello.wasm"
requires = ["demo"]
"#;

#[test]
fn alerts_are_read_with_their_webhook_secret_and_thresholds() {
    let dir = ConfigDir::with_component();
    dir.file("alerts.secret", "  0123456789abcdef0123\n");
    let config = ok(
        &dir,
        &format!(
            "{PLUGIN_WITH_DEMO}
[alerts]
webhook = \"https://hooks.example.com/tollgate\"
secret_file = \"alerts.secret\"
[alerts.license.demo]
in_use_percent = 80
in_use_for = \"1m\"
denials_per_minute = 10
expires_within = \"14days\"
"
        ),
    );
    let alerts = &config.alerts;
    assert_eq!(
        alerts.webhook.as_deref(),
        Some("https://hooks.example.com/tollgate")
    );
    assert_eq!(alerts.secret.as_deref(), Some("0123456789abcdef0123"));
    assert!(
        !format!("{config:?}").contains("0123456789abcdef0123"),
        "the secret is redacted"
    );
    assert_eq!(
        alerts.licenses["demo"],
        super::Thresholds {
            in_use_percent: Some(80),
            in_use_for: Duration::from_secs(60),
            denials_per_minute: Some(10),
            expires_within: Some(Duration::from_secs(14 * 86_400)),
        }
    );
}

#[test]
fn bad_alert_settings_are_reported() {
    let dir = ConfigDir::with_component();
    dir.file("short.secret", "short");
    assert_problems(
        "bad_alerts",
        &dir,
        &format!(
            "{PLUGIN_WITH_DEMO}
[alerts]
webhook = \"ftp://hooks.example.com/\"
secret_file = \"short.secret\"
ca_file = \"short.secret\"
colour = \"red\"
[alerts.license.demo]
in_use_percent = 120
in_use_for = \"soon\"
denials_per_minute = 0
[alerts.license.dmeo]
expires_within = \"14d\"
"
        ),
    );
    assert_problems(
        "alerts_webhook_without_secret",
        &dir,
        &format!(
            "{PLUGIN_WITH_DEMO}
[alerts]
webhook = \"http://127.0.0.1:9000/hook\"
[alerts.license.demo]
in_use_for = \"1m\"
"
        ),
    );
}
