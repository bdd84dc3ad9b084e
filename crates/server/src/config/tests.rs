//! Unit tests of the config file: parsing, every kind of problem, defaults,
//! environment overrides and the bundled example.

use super::*;
use std::collections::HashMap;
use std::fs;
use std::sync::atomic::{AtomicUsize, Ordering};
use tollgate::Limits;
use tollgate::runtime::{ComponentSource, Preopen};

/// A directory under the system temp dir, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new() -> Self {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let path = std::env::temp_dir().join(format!(
            "tollgate-config-test-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = fs::remove_dir_all(&path);
        fs::create_dir_all(&path).expect("create temp dir");
        Self(path)
    }

    fn path(&self) -> &Path {
        &self.0
    }

    /// Writes `contents` to `relative`, creating parent directories.
    fn file(&self, relative: &str, contents: &str) -> PathBuf {
        let path = self.0.join(relative);
        if let Some(parent) = path.parent() {
            fs::create_dir_all(parent).expect("create parent dir");
        }
        fs::write(&path, contents).expect("write temp file");
        path
    }

    fn dir(&self, relative: &str) -> PathBuf {
        let path = self.0.join(relative);
        fs::create_dir_all(&path).expect("create dir");
        path
    }

    /// The config file path inside this directory.
    fn config(&self) -> PathBuf {
        self.0.join("tollgate.toml")
    }

    /// A temp dir holding a component at `plugins/hello.wasm`.
    fn with_component() -> Self {
        let dir = Self::new();
        dir.file("plugins/hello.wasm", "\0asm");
        dir
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

/// Parses `text` as if it were `tollgate.toml` in `dir`.
fn parse_in(dir: &TempDir, text: &str) -> Result<Config, ConfigError> {
    Config::parse(text, &dir.config())
}

fn ok(dir: &TempDir, text: &str) -> Config {
    match parse_in(dir, text) {
        Ok(config) => config,
        Err(e) => panic!("expected a valid config, got:\n{e}"),
    }
}

/// The problems of `text`, as (line, message).
fn problems(dir: &TempDir, text: &str) -> Vec<(usize, String)> {
    match parse_in(dir, text) {
        Ok(config) => panic!("expected problems, got {config:#?}"),
        Err(e) => e
            .problems
            .into_iter()
            .map(|p| (p.line, p.message))
            .collect(),
    }
}

/// Asserts that exactly one problem sits on `line` and mentions every part of `wanted`.
#[track_caller]
fn assert_problem(found: &[(usize, String)], line: usize, wanted: &[&str]) {
    let on_line: Vec<&String> = found
        .iter()
        .filter(|(l, _)| *l == line)
        .map(|(_, m)| m)
        .collect();
    assert_eq!(
        on_line.len(),
        1,
        "expected one problem on line {line}, found {found:#?}"
    );
    for part in wanted {
        assert!(
            on_line[0].contains(part),
            "problem on line {line} should mention {part:?}: {:?}",
            on_line[0]
        );
    }
}

const MINIMAL_PLUGIN: &str = r#"
[[plugin]]
name = "hello"
component = "plugins/hello.wasm"
"#;

#[test]
fn an_empty_file_gives_the_defaults() {
    let dir = TempDir::new();
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
    let dir = TempDir::with_component();
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
    let dir = TempDir::with_component();
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
    let dir = TempDir::new();
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
fn the_bundled_example_without_its_files_names_each_missing_one() {
    let dir = TempDir::new();
    let found = problems(&dir, include_str!("example.toml"));
    let text = include_str!("example.toml");
    let line_of = |needle: &str| {
        text.lines()
            .position(|l| l.contains(needle))
            .map(|i| i + 1)
            .expect("needle in example")
    };
    assert_problem(&found, line_of("admin_token_file ="), &["admin.token"]);
    assert_problem(&found, line_of("{ host = \"data\""), &["data"]);
    assert_problem(&found, line_of("{ host = \"scratch\""), &["scratch"]);
    let components = found
        .iter()
        .filter(|(_, m)| m.contains("`component`"))
        .count();
    assert_eq!(components, 2, "{found:#?}");
    assert_eq!(found.len(), 5, "{found:#?}");
}

#[test]
fn a_syntax_error_has_its_line_and_column() {
    let dir = TempDir::new();
    let err = parse_in(
        &dir,
        "listen = \"127.0.0.1:1\"\n\nmax_concurrent_calls = = 3\n",
    )
    .expect_err("syntax error");
    assert_eq!(err.problems.len(), 1, "{err}");
    let problem = &err.problems[0];
    assert_eq!(problem.line, 3);
    assert_eq!(problem.column, 24);
    assert!(problem.message.starts_with("TOML syntax"), "{problem:?}");
}

#[test]
fn several_syntax_errors_and_value_problems_are_reported_together() {
    let dir = TempDir::new();
    let text = "\
memory_typo = 1
log_format = jsno
listen = \"nowhere\"
grace_period = \"10s\"
grace_period = \"20s\"
";
    let found = problems(&dir, text);
    assert_problem(&found, 1, &["unknown key `memory_typo`"]);
    assert_problem(&found, 2, &["TOML syntax", "\"jsno\""]);
    assert_problem(&found, 3, &["`listen`", "\"nowhere\""]);
    assert_problem(&found, 5, &["`grace_period` is set twice"]);
    assert_eq!(found.len(), 4, "{found:#?}");
}

#[test]
fn an_unclosed_bracket_reports_only_syntax_errors() {
    let dir = TempDir::new();
    let text = "\
listen = 7
[[plugin]
name = \"a\"
";
    let found = problems(&dir, text);
    assert!(!found.is_empty());
    assert!(
        found.iter().all(|(_, m)| m.starts_with("TOML syntax")),
        "{found:#?}"
    );
    assert_eq!(found[0].0, 2, "{found:#?}");

    // The parser reports an unclosed array after another error on the same line.
    let found = problems(&dir, "a = [1,\nb = 2\n");
    assert!(
        found.iter().all(|(_, m)| m.starts_with("TOML syntax")),
        "{found:#?}"
    );
}

#[test]
fn unknown_keys_are_reported_everywhere_with_suggestions() {
    let dir = TempDir::with_component();
    dir.dir("data");
    let text = r#"
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
"#;
    let found = problems(&dir, text);
    assert_problem(
        &found,
        2,
        &[
            "unknown key `lisen` at the top level",
            "did you mean `listen`?",
        ],
    );
    assert_problem(
        &found,
        3,
        &[
            "unknown key `frobnicate`",
            "remove it",
            "known keys: listen",
        ],
    );
    assert_problem(
        &found,
        8,
        &["unknown key `memroy` in [[plugin]] \"hello\"; did you mean `memory`?"],
    );
    assert_problem(
        &found,
        10,
        &[
            "unknown key `mdoe`",
            "`dirs` entry 1",
            "did you mean `mode`?",
        ],
    );
    assert_problem(
        &found,
        13,
        &[
            "unknown key `inclde`",
            "[license.\"demo\"]",
            "did you mean `include`?",
        ],
    );
    assert_eq!(found.len(), 5, "{found:#?}");
}

#[test]
fn plugins_and_licenses_suggest_their_plural_forms() {
    let dir = TempDir::new();
    let found = problems(&dir, "[[plugins]]\nname = \"x\"\n");
    assert_problem(
        &found,
        1,
        &["unknown key `plugins`", "did you mean `plugin`?"],
    );
}

#[test]
fn wrong_types_say_what_was_expected() {
    let dir = TempDir::with_component();
    let text = r#"
listen = 7878
state = false
log_format = ["json"]
grace_period = 10
max_concurrent_calls = "64"
plugin = { name = "x" }
license = "demo"
"#;
    let found = problems(&dir, text);
    assert_problem(&found, 2, &["`listen` must be a string", "not an integer"]);
    assert_problem(&found, 3, &["`state` must be a path string, not a boolean"]);
    assert_problem(&found, 4, &["`log_format` must be", "not an array"]);
    assert_problem(
        &found,
        5,
        &["`grace_period` must be a duration string", "not an integer"],
    );
    assert_problem(
        &found,
        6,
        &["`max_concurrent_calls` must be a whole number, not a string"],
    );
    assert_problem(
        &found,
        7,
        &["`plugin` must be an array of tables", "[[plugin]]"],
    );
    assert_problem(
        &found,
        8,
        &["`license` must be a table", "[license.\"<id>\"]"],
    );
    assert_eq!(found.len(), 7, "{found:#?}");
}

#[test]
fn plugin_value_types_are_checked() {
    let dir = TempDir::with_component();
    let text = r#"
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
"#;
    let found = problems(&dir, text);
    assert_problem(
        &found,
        5,
        &["`requires` in [[plugin]] \"hello\" must be an array of license ids"],
    );
    assert_problem(
        &found,
        6,
        &[
            "`may_use`",
            "must hold license ids (strings), not an integer",
        ],
    );
    assert_problem(
        &found,
        7,
        &["`memory`", "size string with a unit", "\"64B\""],
    );
    assert_problem(&found, 8, &["`time_limit`", "duration string"]);
    assert_problem(&found, 9, &["`wait_for_seat`", "\"off\" or a duration"]);
    assert_problem(&found, 10, &["`dirs`", "must be an array"]);
    assert_problem(&found, 11, &["`env`", "not a boolean"]);
    assert_eq!(found.len(), 7, "{found:#?}");
}

#[test]
fn bad_top_level_values_are_reported() {
    let dir = TempDir::new();
    let text = r#"
listen = "localhost"
log_format = "jsno"
grace_period = "ten seconds"
max_concurrent_calls = 0
admin_token = "short"
read_timeout = "0s"
max_connections = 0
"#;
    let found = problems(&dir, text);
    assert_problem(&found, 2, &["`listen`", "\"127.0.0.1:7878\""]);
    assert_problem(
        &found,
        3,
        &["unknown log format \"jsno\"", "did you mean `json`?"],
    );
    assert_problem(
        &found,
        4,
        &["`grace_period`", "\"ten seconds\" is not a duration"],
    );
    assert_problem(&found, 5, &["`max_concurrent_calls` is 0", "1 to 10000"]);
    assert_problem(
        &found,
        6,
        &["admin token is 5 characters long", "at least 16"],
    );
    assert!(
        !found.iter().any(|(_, m)| m.contains("\"short\"")),
        "the token must not be echoed: {found:#?}"
    );
    assert_problem(&found, 7, &["`read_timeout` is 0s", "above 0"]);
    assert_problem(&found, 8, &["`max_connections` is 0", "1 to 100000"]);
    assert_eq!(found.len(), 7, "{found:#?}");

    let found = problems(&dir, "max_concurrent_calls = 10001\n");
    assert_problem(&found, 1, &["is 10001"]);
    let found = problems(&dir, "max_concurrent_calls = -1\n");
    assert_problem(&found, 1, &["is -1"]);
    let found = problems(&dir, "state = \"\"\n");
    assert_problem(&found, 1, &["`state` is empty"]);
}

#[test]
fn bad_plugin_values_are_reported() {
    let dir = TempDir::with_component();
    dir.file("a-file", "");
    let text = r#"
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
"#;
    let found = problems(&dir, text);
    assert_problem(
        &found,
        3,
        &["invalid plugin name \"Hello\": it contains 'H'", "a-z"],
    );
    assert_problem(&found, 4, &["`component`", "is not a file"]);
    assert_problem(
        &found,
        5,
        &["invalid license id \"demo license\": it contains ' '"],
    );
    assert_problem(
        &found,
        6,
        &["`memory`", "\"5GiB\"", "between 64KiB and 4GiB"],
    );
    assert_problem(&found, 7, &["`time_limit`", "more than 0 and at most 1h"]);
    assert_problem(&found, 8, &["`wait_for_seat`", "zero", "\"off\""]);
    assert_problem(
        &found,
        9,
        &["`max_request_bytes`", "fractions are not accepted"],
    );
    assert_problem(
        &found,
        10,
        &["`max_response_bytes`", "unknown unit \"furlongs\""],
    );
    // Two problems on line 11: one per bad entry.
    let line_11: Vec<&String> = found
        .iter()
        .filter(|(l, _)| *l == 11)
        .map(|(_, m)| m)
        .collect();
    assert_eq!(line_11.len(), 2, "{found:#?}");
    assert!(
        line_11
            .iter()
            .any(|m| m.contains("\"1BAD\" starts with '1'"))
    );
    assert!(line_11.iter().any(|m| m.contains("admin token")));
    assert_problem(
        &found,
        13,
        &[
            "`host` in `dirs` entry 1",
            "missing",
            "create the directory",
        ],
    );
    let line_14: Vec<&String> = found
        .iter()
        .filter(|(l, _)| *l == 14)
        .map(|(_, m)| m)
        .collect();
    assert_eq!(line_14.len(), 3, "{found:#?}");
    assert!(line_14.iter().any(|m| m.contains("is not a directory")));
    assert!(
        line_14
            .iter()
            .any(|m| m.contains("absolute path such as \"/relative\""))
    );
    assert!(
        line_14
            .iter()
            .any(|m| m.contains("`mode`") && m.contains("\"rw\""))
    );
    assert_eq!(found.len(), 14, "{found:#?}");
}

#[test]
fn time_limit_and_memory_bounds() {
    let dir = TempDir::with_component();
    let with = |extra: &str| format!("{MINIMAL_PLUGIN}{extra}\n");
    assert_eq!(
        ok(&dir, &with("time_limit = \"1h\"")).plugins[0]
            .limits
            .time,
        Duration::from_secs(3600)
    );
    let found = problems(&dir, &with("time_limit = \"61m\""));
    assert_problem(&found, 5, &["at most 1h"]);
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
    let found = problems(&dir, &with("memory = \"1KiB\""));
    assert_problem(&found, 5, &["between 64KiB and 4GiB"]);
}

#[test]
fn missing_required_keys_point_at_the_plugin_header() {
    let dir = TempDir::with_component();
    let text = r#"
[[plugin]]
name = "a"
component = "plugins/hello.wasm"

[[plugin]]
memory = "1MiB"

[[plugin]]
name = "c"
dirs = [{ guest = "/x" }]
"#;
    let found = problems(&dir, text);
    let line_6: Vec<&String> = found
        .iter()
        .filter(|(l, _)| *l == 6)
        .map(|(_, m)| m)
        .collect();
    assert_eq!(line_6.len(), 2, "{found:#?}");
    assert!(
        line_6
            .iter()
            .any(|m| m.contains("missing required key `name` in [[plugin]] #2"))
    );
    assert!(
        line_6
            .iter()
            .any(|m| m.contains("missing required key `component` in [[plugin]] #2"))
    );
    assert_problem(
        &found,
        9,
        &["missing required key `component` in [[plugin]] \"c\""],
    );
    assert_problem(&found, 11, &["missing key `host` in `dirs` entry 1 of"]);
    assert_eq!(found.len(), 4, "{found:#?}");
}

#[test]
fn duplicate_plugin_names_point_at_the_second() {
    let dir = TempDir::with_component();
    let text = format!("{MINIMAL_PLUGIN}\n{MINIMAL_PLUGIN}");
    let found = problems(&dir, &text);
    assert_problem(
        &found,
        8,
        &[
            "plugin name \"hello\" is already used by the [[plugin]] on line 3",
            "its own name",
        ],
    );
    assert_eq!(found.len(), 1, "{found:#?}");
}

#[test]
fn duplicate_guest_paths_are_reported() {
    let dir = TempDir::with_component();
    dir.dir("a");
    let text = format!(
        "{MINIMAL_PLUGIN}dirs = [{{ host = \"a\", guest = \"/d\" }}, {{ host = \"a\", guest = \"/d\" }}]\n"
    );
    let found = problems(&dir, &text);
    assert_problem(&found, 5, &["already uses \"/d\""]);
}

#[test]
fn license_rules_must_name_configured_plugins_and_used_ids() {
    let dir = TempDir::with_component();
    let text = r#"
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
"#;
    let found = problems(&dir, text);
    // Only the misspelt name: an `include` of unknown plugins says nothing more.
    assert_problem(
        &found,
        9,
        &[
            "`include` in [license.\"demo\"] names plugin \"helo\"",
            "did you mean `hello`?",
        ],
    );
    assert_problem(
        &found,
        10,
        &["names plugin \"ghost\"", "configured plugins: hello"],
    );
    assert_problem(&found, 11, &["`reserve`", "\"nobody\""]);
    assert_problem(
        &found,
        13,
        &["no [[plugin]] lists license `dmeo`", "did you mean `demo`?"],
    );
    assert_problem(&found, 16, &["license `unused`", "or remove these rules"]);
    assert_problem(
        &found,
        18,
        &["invalid license id \"bad id\": it contains ' '"],
    );
    assert_eq!(found.len(), 6, "{found:#?}");
}

#[test]
fn license_rules_that_contradict_each_other_are_reported() {
    let dir = TempDir::with_component();
    let text = r#"
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
"#;
    let found = problems(&dir, text);
    let line_14: Vec<&String> = found
        .iter()
        .filter(|(l, _)| *l == 14)
        .map(|(_, m)| m)
        .collect();
    assert_eq!(line_14.len(), 2, "{found:#?}");
    assert!(
        line_14
            .iter()
            .any(|m| m.contains("plugin \"hello\" requires license `demo`")
                && m.contains("remove \"hello\" from `exclude`"))
    );
    assert!(line_14.iter().any(|m| {
        m.contains("`exclude` in [license.\"demo\"] lists \"other\", which `include` also lists")
    }));
    let line_15: Vec<&String> = found
        .iter()
        .filter(|(l, _)| *l == 15)
        .map(|(_, m)| m)
        .collect();
    assert_eq!(line_15.len(), 3, "{found:#?}");
    assert!(
        line_15
            .iter()
            .any(|m| m.contains("reserves seats for \"hello\""))
    );
    assert!(
        line_15
            .iter()
            .any(|m| m.contains("reserves seats for \"other\""))
    );
    assert!(
        line_15
            .iter()
            .any(|m| m.contains("reserves 5 seats but `max_per_plugin` is 2"))
    );
    assert_eq!(found.len(), 5, "{found:#?}");

    let text = format!(
        "{MINIMAL_PLUGIN}requires = [\"demo\"]\n[license.demo]\nmax_per_plugin = 0\nreserve = {{ hello = -1 }}\n"
    );
    let found = problems(&dir, &text);
    assert_problem(
        &found,
        7,
        &["`max_per_plugin` in [license.\"demo\"] is 0", "`exclude`"],
    );
    assert_problem(&found, 8, &["`reserve.hello`", "is -1"]);
}

#[test]
fn many_problems_in_one_file_are_reported_together_in_line_order() {
    let dir = TempDir::with_component();
    let text = r#"listen = "127.0.0.1"
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
"#;
    let err = parse_in(&dir, text).expect_err("problems");
    let lines: Vec<usize> = err.problems.iter().map(|p| p.line).collect();
    assert_eq!(lines, [1, 2, 7, 8, 11, 12, 16], "{err}");
    let shown = err.to_string();
    let first = format!(
        "{}: 7 problems:\n  line 1, column 10: `listen`",
        dir.config().display()
    );
    assert!(shown.starts_with(&first), "{shown}");
    assert!(shown.contains("\n  line 7, column 1: unknown key `memroy` in [[plugin]] \"hello\"; did you mean `memory`?"), "{shown}");
    assert!(
        shown.contains(
            "\n  line 16, column 21: `include` in [license.\"demo\"] names plugin \"nope\""
        ),
        "{shown}"
    );
    assert_eq!(shown.lines().count(), 8);
}

#[test]
fn one_problem_is_not_plural() {
    let dir = TempDir::new();
    let err = parse_in(&dir, "listen = 1\n").expect_err("problem");
    assert!(
        err.to_string()
            .contains(": 1 problem:\n  line 1, column 10: "),
        "{err}"
    );
}

#[test]
fn columns_count_characters_not_bytes() {
    let dir = TempDir::new();
    let err = parse_in(&dir, "# ünïcödé\n\"ключ\" = 1\n").expect_err("problem");
    assert_eq!((err.problems[0].line, err.problems[0].column), (2, 1));
    let dir = TempDir::with_component();
    let text = format!("{MINIMAL_PLUGIN}requires = [\"ü\", \"a b\"]\n");
    let err = parse_in(&dir, &text).expect_err("problem");
    let columns: Vec<(usize, usize)> = err.problems.iter().map(|p| (p.line, p.column)).collect();
    assert_eq!(columns, [(5, 13), (5, 18)], "{err}");
}

#[test]
fn admin_token_file_is_read_trimmed_relative_to_the_config() {
    let dir = TempDir::new();
    dir.file("secrets/token", "\n  0123456789abcdef-token  \n\n");
    let config = ok(&dir, "admin_token_file = \"secrets/token\"\n");
    assert_eq!(
        config.admin_token.as_deref(),
        Some("0123456789abcdef-token")
    );
}

#[test]
fn admin_token_file_problems() {
    let dir = TempDir::new();
    dir.file("empty", " \n");
    dir.file("short", "abc\n");
    dir.dir("a-dir");
    let found = problems(&dir, "admin_token_file = \"nope\"\n");
    assert_problem(
        &found,
        1,
        &["`admin_token_file`", "nope", "create it or fix the path"],
    );
    let found = problems(&dir, "admin_token_file = \"empty\"\n");
    assert_problem(&found, 1, &["is empty", "write the token"]);
    let found = problems(&dir, "admin_token_file = \"short\"\n");
    assert_problem(&found, 1, &["3 characters long"]);
    let found = problems(&dir, "admin_token_file = \"a-dir\"\n");
    assert_problem(&found, 1, &["not a regular file"]);
    let found = problems(
        &dir,
        "admin_token = \"0123456789abcdef\"\nadmin_token_file = \"empty\"\n",
    );
    assert_problem(&found, 2, &["both set", "keep only one"]);
    assert_eq!(found.len(), 1, "{found:#?}");
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
    let dir = TempDir::new();
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
    let dir = TempDir::new();
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
fn bad_environment_values_are_problems_on_line_zero_and_change_nothing() {
    let dir = TempDir::new();
    let mut config = ok(&dir, "");
    let before = config.clone();
    let err = config
        .apply_env(env_of(&[
            ("TOLLGATE_LISTEN", "localhost:80"),
            ("TOLLGATE_STATE", "/elsewhere"),
            ("TOLLGATE_LOG_FORMAT", "JSON!"),
            ("TOLLGATE_ADMIN_TOKEN", "x"),
            ("TOLLGATE_ADMIN_TOKEN_FILE", "/nonexistent/token"),
        ]))
        .expect_err("bad values");
    assert_eq!(config, before, "nothing may change on error");
    assert_eq!(err.path, dir.config());
    assert!(err.problems.iter().all(|p| p.line == 0 && p.column == 0));
    let messages: Vec<&str> = err.problems.iter().map(|p| p.message.as_str()).collect();
    assert_eq!(messages.len(), 3, "{messages:#?}");
    assert!(messages.iter().any(|m| m.contains("TOLLGATE_LISTEN")));
    assert!(messages.iter().any(|m| m.contains("TOLLGATE_LOG_FORMAT")));
    assert!(
        messages
            .iter()
            .any(|m| m.contains("TOLLGATE_ADMIN_TOKEN and TOLLGATE_ADMIN_TOKEN_FILE are both set"))
    );

    let err = config
        .apply_env(env_of(&[("TOLLGATE_ADMIN_TOKEN", "too-short")]))
        .expect_err("short token");
    assert!(
        err.problems[0]
            .message
            .contains("TOLLGATE_ADMIN_TOKEN: the admin token is 9 characters long")
    );
    assert!(!err.to_string().contains("too-short"), "{err}");
    let err = config
        .apply_env(env_of(&[(
            "TOLLGATE_ADMIN_TOKEN_FILE",
            "/nonexistent/token",
        )]))
        .expect_err("missing file");
    assert!(
        err.problems[0]
            .message
            .contains("TOLLGATE_ADMIN_TOKEN_FILE: cannot read token file /nonexistent/token")
    );
    // Problems outside the file have no position in the rendering.
    assert!(
        err.to_string()
            .contains(":\n  environment variable TOLLGATE_ADMIN_TOKEN_FILE"),
        "{err}"
    );
}

#[test]
fn load_reads_the_file() {
    let dir = TempDir::with_component();
    let path = dir.file("tollgate.toml", MINIMAL_PLUGIN);
    let config = Config::load(&path).expect("valid");
    assert_eq!(
        config.plugins[0].component,
        ComponentSource::File(dir.path().join("plugins/hello.wasm"))
    );
}

#[test]
fn load_reports_missing_large_and_non_utf8_files() {
    let dir = TempDir::new();
    let missing = dir.path().join("nope.toml");
    let err = Config::load(&missing).expect_err("missing");
    assert_eq!(err.path, missing);
    assert_eq!(err.problems.len(), 1);
    assert_eq!(err.problems[0].line, 0);
    assert!(err.problems[0].message.contains("not found"), "{err}");

    let err = Config::load(dir.path()).expect_err("a directory");
    assert_eq!(err.problems[0].line, 0, "{err}");

    let big = dir.file("big.toml", &"# padding\n".repeat(110_000));
    let err = Config::load(&big).expect_err("too large");
    assert_eq!(err.problems[0].line, 0);
    assert!(
        err.problems[0].message.contains("larger than 1024 KiB"),
        "{err}"
    );

    let latin1 = dir.path().join("latin1.toml");
    fs::write(&latin1, b"listen = \"127.0.0.1:1\"\n# caf\xe9\n").expect("write");
    let err = Config::load(&latin1).expect_err("not UTF-8");
    assert_eq!(
        (err.problems[0].line, err.problems[0].column),
        (2, 6),
        "{err}"
    );
    assert!(err.problems[0].message.contains("UTF-8"));
}

#[test]
fn debug_output_hides_the_admin_token() {
    let dir = TempDir::new();
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
    ];
    for (text, bytes) in cases {
        assert_eq!(units::size(text), Ok(bytes), "{text}");
    }
    for bad in [
        "",
        "MiB",
        "64",
        "64 M",
        "1.5MiB",
        "-1MiB",
        "99999999999999999999GiB",
    ] {
        assert!(units::size(bad).is_err(), "{bad:?} should be rejected");
    }
    assert!(units::size("64Mib").is_ok());
    assert!(
        units::size("64MIb").is_ok(),
        "units are matched without regard to case"
    );
    assert!(
        units::size("64Mi")
            .expect_err("bad unit")
            .contains("did you mean `MiB`?")
    );
    for (bad, unit) in [("64m", "MiB"), ("64K", "KiB"), ("1g", "GiB")] {
        let why = units::size(bad).expect_err("bad unit");
        assert!(why.contains(&format!("did you mean `{unit}`?")), "{why}");
    }
}

#[test]
fn suggestions_need_an_edit_distance_of_at_most_two() {
    let keys = ["memory", "time_limit", "requires"];
    assert_eq!(units::closest("memroy", keys), Some("memory"));
    assert_eq!(units::closest("mem", keys), None);
    assert_eq!(units::closest("require", keys), Some("requires"));
    assert_eq!(units::closest("time-limit", keys), Some("time_limit"));
    assert_eq!(units::closest("zzz", keys), None);
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
    let dir = TempDir::new();
    assert_eq!(
        ok(&dir, "max_concurrent_calls = 1_000\n").max_concurrent_calls,
        1000
    );
    assert_eq!(
        ok(&dir, "max_concurrent_calls = 0x10\n").max_concurrent_calls,
        16
    );
    let found = problems(&dir, "max_concurrent_calls = 99999999999999999999\n");
    assert_eq!(found.len(), 1, "{found:#?}");
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
    let dir = TempDir::new();
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
    let dir = TempDir::with_component();
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
    let dir = TempDir::with_component();
    // A 100,000-character name is reported once, and the plugin's other
    // problems name it by number.
    let unknown: String = (0..200).map(|i| format!("u{i} = 1\n")).collect();
    let text = format!(
        "[[plugin]]\nname = \"{}\"\ncomponent = \"plugins/hello.wasm\"\n{unknown}",
        "A".repeat(100_000)
    );
    let err = parse_in(&dir, &text).expect_err("problems");
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
    let found = problems(
        &dir,
        &format!("{plugins}[license.demo]\ninclude = [\"zzzzzz-nothing\", \"plugin-1x\"]\n"),
    );
    let include_line = 15 * 4 + 2;
    let messages: Vec<&String> = found
        .iter()
        .filter(|(l, _)| *l == include_line)
        .map(|(_, m)| m)
        .collect();
    assert_eq!(messages.len(), 2, "{found:#?}");
    assert!(
        messages[0].contains("configured plugins: plugin-0, plugin-1,")
            && messages[0].contains("plugin-9, and 5 more"),
        "{}",
        messages[0]
    );
    assert!(
        messages[1].contains("did you mean `plugin-1`?"),
        "{}",
        messages[1]
    );
}

#[test]
fn plugin_dirs_that_overlap_host_state_are_problems() {
    let dir = TempDir::with_component();
    for d in ["state/sub", "cache", "secrets", "data"] {
        dir.dir(d);
    }
    dir.file("secrets/admin.token", "test-admin-token-0123456789");
    let text = r#"state = "state"
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
"#;
    let found = problems(&dir, text);
    let state = dir.path().join("state");
    assert_problem(
        &found,
        9,
        &["overlaps the state directory", &state.display().to_string()],
    );
    // "." holds the config file itself (and everything else).
    assert_problem(&found, 10, &["overlaps the config file", "tollgate.toml"]);
    assert_problem(&found, 11, &["overlaps the compile cache"]);
    assert_problem(
        &found,
        12,
        &["overlaps the admin token file", "admin.token"],
    );
    assert_eq!(found.len(), 4, "{found:#?}");
    // Without compile_cache, the default cache inside the state directory counts.
    let text = "state = \"st\"\n[[plugin]]\nname = \"hello\"\ncomponent = \"plugins/hello.wasm\"\ndirs = [{ host = \"st/compile-cache\", guest = \"/c\" }]\n";
    dir.dir("st/compile-cache");
    assert_problem(&problems(&dir, text), 5, &["overlaps the state directory"]);
}

#[test]
fn trusted_issuers_take_key_ids_and_public_keys_once_each() {
    let dir = TempDir::new();
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
    let found = problems(
        &dir,
        &format!(
            "trusted_issuers = [\n  \"{}\",\n  \"{b64}\",\n  \"0123\",\n  7,\n]\n",
            key.key_id()
        ),
    );
    assert_problem(&found, 3, &["names issuer key", "twice"]);
    assert_problem(&found, 4, &["\"0123\" is neither an issuer key id"]);
    assert_problem(&found, 5, &["must hold issuer keys (strings)"]);
    let found = problems(&dir, "trusted_issuers = \"abc\"\n");
    assert_problem(&found, 1, &["`trusted_issuers` must be an array"]);
}

#[test]
fn connection_keys_have_defaults() {
    let dir = TempDir::new();
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
    let dir = TempDir::with_component();
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

    let text = r#"
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
"#;
    let found = problems(&dir, text);
    assert_problem(
        &found,
        2,
        &["`max_connections_per_client` is 0", "1 to 100000"],
    );
    let line3: Vec<&String> = found
        .iter()
        .filter(|(l, _)| *l == 3)
        .map(|(_, m)| m)
        .collect();
    assert_eq!(line3.len(), 3, "{found:#?}");
    assert!(
        line3[0].contains("prefix must be a number from 0 to 32"),
        "{line3:?}"
    );
    assert!(
        line3[1].contains("\"proxy.example\" is not an IP address"),
        "{line3:?}"
    );
    assert!(line3[2].contains("not an integer"), "{line3:?}");
    assert_problem(&found, 4, &["`write_timeout` is 0s", "above 0"]);
    assert_problem(&found, 5, &["`max_buffered_request_bytes`", "between 1KiB"]);
    assert_problem(
        &found,
        6,
        &["\"http://api.example.com/\"", "no scheme, no path"],
    );
    assert_problem(
        &found,
        7,
        &[
            "`max_conections_per_client`",
            "did you mean `max_connections_per_client`?",
        ],
    );
    assert_problem(
        &found,
        12,
        &[
            "`max_request_bytes` in [[plugin]] \"hello\" is 2GiB",
            "over `max_buffered_request_bytes` (64MiB)",
        ],
    );
    assert_eq!(found.len(), 9, "{found:#?}");

    let found = problems(&dir, "allowed_hosts = []\n");
    assert_problem(&found, 1, &["`allowed_hosts` is empty", "[\"*\"]"]);
    let found = problems(&dir, "allowed_hosts = [\"localhost\", \"*\"]\n");
    assert_problem(&found, 1, &["\"*\" (any host) beside other names"]);
}
