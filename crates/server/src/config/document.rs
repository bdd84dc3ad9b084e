//! Walks the spanned TOML document key by key, building a [`Config`] and
//! collecting every [`Problem`] with its position.

use super::units::{self, did_you_mean};
use super::{AddressRange, AllowedHost, Config, DEFAULT_LISTEN, LicenseRules, LogFormat, Problem};
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::time::Duration;
use tollgate::PluginSpec;
use tollgate::runtime::Preopen;
use tollgate_license::{LicenseId, PluginName};
use toml::Spanned;
use toml::de::{DeTable, DeValue};

type Value<'i> = Spanned<DeValue<'i>>;
type Key<'i> = Spanned<std::borrow::Cow<'i, str>>;

/// Every top-level setting, in the order the "known keys" hint lists them.
/// Each row drives the unknown-key check and its did-you-mean, the type
/// errors, the value checks and where the value goes in the [`Config`]:
/// adding a setting is adding a row (and its field and default).
const SETTINGS: &[Setting] = &[
    Setting::text("listen", "a string like \"127.0.0.1:7878\"", |c, text| {
        c.listen = units::socket_addr(text)?;
        Ok(())
    }),
    Setting::path("state", |c, path| {
        c.state = Some(path);
        Ok(())
    }),
    Setting::text("admin_token", "a string", |c, text| {
        super::check_token(text, super::ADMIN_TOKEN)?;
        c.admin_token = Some(text.to_string());
        Ok(())
    }),
    Setting::path("admin_token_file", |c, path| {
        c.admin_token = Some(super::read_token_file(&path, super::ADMIN_TOKEN)?);
        c.admin_token_file = Some(path);
        Ok(())
    }),
    Setting::path("viewer_token_file", |c, path| {
        c.viewer_token = Some(super::read_token_file(&path, super::VIEWER_TOKEN)?);
        c.viewer_token_file = Some(path);
        Ok(())
    }),
    Setting::own("trusted_issuers", |checker, value, c| {
        c.trusted_issuers = Some(checker.issuer_pins(value));
    }),
    Setting::text("log_format", "\"human\" or \"json\"", |c, text| {
        c.log_format = units::log_format(text)?;
        Ok(())
    }),
    Setting::duration("grace_period", None, |c| &mut c.grace_period),
    Setting::path("compile_cache", |c, path| {
        c.compile_cache = Some(path);
        Ok(())
    }),
    Setting::count("max_concurrent_calls", MAX_CONCURRENT_CALLS, |c| {
        &mut c.max_concurrent_calls
    }),
    Setting::duration("read_timeout", Some(MAX_READ_TIMEOUT), |c| {
        &mut c.read_timeout
    }),
    Setting::count("max_connections", MAX_CONNECTIONS, |c| {
        &mut c.max_connections
    }),
    Setting::count("max_connections_per_client", MAX_CONNECTIONS, |c| {
        &mut c.max_connections_per_client
    }),
    Setting::own("trusted_proxies", |checker, value, c| {
        c.trusted_proxies = checker.trusted_proxies(value);
    }),
    Setting::duration("write_timeout", Some(MAX_READ_TIMEOUT), |c| {
        &mut c.write_timeout
    }),
    Setting::size("max_buffered_request_bytes", MIN_BUFFERED, 16 * GIB, |c| {
        &mut c.max_buffered_request_bytes
    }),
    Setting::own("allowed_hosts", |checker, value, c| {
        checker.allowed_hosts(value, c);
    }),
    Setting::text(
        "store",
        "a string like \"postgres://tollgate@db.example:5432/tollgate\"",
        |c, text| {
            tollgate_store::postgres::check_url(text)?;
            c.store = Some(text.to_string());
            Ok(())
        },
    ),
    Setting::duration("seat_batch_ttl", Some(MAX_SEAT_BATCH_TTL), |c| {
        &mut c.seat_batch_ttl
    }),
    Setting::path("tls_cert", |c, path| {
        c.tls_cert = Some(path);
        Ok(())
    }),
    Setting::path("tls_key", |c, path| {
        c.tls_key = Some(path);
        Ok(())
    }),
];

/// Top-level keys that are sections with readers of their own, after the settings.
const SECTIONS: &[&str] = &["plugin", "license", "alerts"];

/// Settings that may not both be set, with what to do about it: the later
/// one is reported, and neither is read.
const EXCLUSIVE: &[(&str, &str, &str)] = &[(
    "admin_token",
    "admin_token_file",
    "keep only one (`admin_token_file` keeps the token out of the config)",
)];

/// The keys allowed at the top level: the settings, then the sections.
pub(super) fn top_level_keys() -> impl Iterator<Item = &'static str> {
    SETTINGS
        .iter()
        .map(|s| s.name)
        .chain(SECTIONS.iter().copied())
}

/// The license ids some plugin lists in `requires` or `may_use`.
fn used_license_ids(plugins: &[PluginRefs]) -> BTreeSet<&str> {
    plugins
        .iter()
        .flat_map(|p| p.requires.iter().chain(&p.may_use))
        .map(String::as_str)
        .collect()
}

/// The keys allowed in a `[license.<id>]` table.
pub(super) fn license_rule_keys() -> impl Iterator<Item = &'static str> {
    LICENSE_RULES.iter().map(|(name, _)| *name)
}

/// One top-level setting: its key and how its value is read.
struct Setting {
    /// The key in the file.
    name: &'static str,
    /// How the value is checked, and where it goes.
    kind: Kind,
}

/// How a setting's value is checked and stored in the [`Config`].
enum Kind {
    /// A string that `set` checks and stores; `expected` names it in type errors.
    Text {
        expected: &'static str,
        set: fn(&mut Config, &str) -> Result<(), String>,
    },
    /// A non-empty path string, resolved against the config file's
    /// directory, that `set` checks and stores.
    Path(fn(&mut Config, PathBuf) -> Result<(), String>),
    /// A duration string; with a limit, above 0 and at most the limit.
    Duration {
        limit: Option<Duration>,
        field: fn(&mut Config) -> &mut Duration,
    },
    /// A whole number from 1 to `max`.
    Count {
        max: i64,
        field: fn(&mut Config) -> &mut u32,
    },
    /// A size string from `min` to `max` bytes.
    Size {
        min: u64,
        max: u64,
        field: fn(&mut Config) -> &mut usize,
    },
    /// A list whose entries are checked together, by a reader of its own.
    Own(fn(&mut Checker<'_>, &Value<'_>, &mut Config)),
}

impl Setting {
    const fn text(
        name: &'static str,
        expected: &'static str,
        set: fn(&mut Config, &str) -> Result<(), String>,
    ) -> Self {
        let kind = Kind::Text { expected, set };
        Self { name, kind }
    }

    const fn path(name: &'static str, set: fn(&mut Config, PathBuf) -> Result<(), String>) -> Self {
        let kind = Kind::Path(set);
        Self { name, kind }
    }

    const fn duration(
        name: &'static str,
        limit: Option<Duration>,
        field: fn(&mut Config) -> &mut Duration,
    ) -> Self {
        let kind = Kind::Duration { limit, field };
        Self { name, kind }
    }

    const fn count(name: &'static str, max: i64, field: fn(&mut Config) -> &mut u32) -> Self {
        let kind = Kind::Count { max, field };
        Self { name, kind }
    }

    const fn size(
        name: &'static str,
        min: u64,
        max: u64,
        field: fn(&mut Config) -> &mut usize,
    ) -> Self {
        let kind = Kind::Size { min, max, field };
        Self { name, kind }
    }

    const fn own(name: &'static str, read: fn(&mut Checker<'_>, &Value<'_>, &mut Config)) -> Self {
        let kind = Kind::Own(read);
        Self { name, kind }
    }
}

/// The keys of a `[[plugin]]` table besides `name` and `component` (which
/// [`Checker::plugin`] reads first, as the plugin's identity), in the order
/// the "known keys" hint lists them. Each row drives the unknown-key check
/// and its did-you-mean, and reads its value, with its problems, into the
/// plugin's [`PluginSpec`]; an absent key keeps the spec's default.
const PLUGIN_SETTINGS: &[(&str, PluginReader)] = &[
    ("requires", |checker, value, place, spec| {
        spec.requires = checker.license_ids(value, "requires", place);
    }),
    ("may_use", |checker, value, place, spec| {
        spec.may_use = checker.license_ids(value, "may_use", place);
    }),
    ("memory", |checker, value, place, spec| {
        if let Some(bytes) = checker.size(value, "memory", place, MIN_MEMORY, MAX_MEMORY) {
            spec.limits.memory_bytes = bytes;
        }
    }),
    ("time_limit", |checker, value, place, spec| {
        if let Some(limit) = checker.time_limit(value, place) {
            spec.limits.time = limit;
        }
    }),
    ("wait_for_seat", |checker, value, place, spec| {
        spec.limits.wait_for_seat = checker.wait_for_seat(value, place);
    }),
    ("dirs", |checker, value, place, spec| {
        spec.sandbox.dirs = checker.dirs(value, place);
    }),
    ("env", |checker, value, place, spec| {
        spec.sandbox.pass_env = checker.pass_env(value, place);
    }),
    ("max_request_bytes", |checker, value, place, spec| {
        if let Some(bytes) = checker.size(value, "max_request_bytes", place, 1, MAX_MEMORY) {
            spec.limits.max_input_bytes = bytes;
        }
    }),
    ("max_response_bytes", |checker, value, place, spec| {
        if let Some(bytes) = checker.size(value, "max_response_bytes", place, 1, MAX_MEMORY) {
            spec.limits.max_output_bytes = bytes;
        }
    }),
];

/// Reads one key of a `[[plugin]]` table: the checker, the value, the place
/// part of messages, and the spec read so far.
type PluginReader = fn(&mut Checker<'_>, &Value<'_>, &str, &mut PluginSpec);

/// Every key of a `[[plugin]]` table, in the order the hint lists them.
pub(super) fn plugin_keys() -> impl Iterator<Item = &'static str> {
    ["name", "component"]
        .into_iter()
        .chain(PLUGIN_SETTINGS.iter().map(|(name, _)| *name))
}

const DIR_KEYS: &[&str] = &["host", "guest", "mode"];

/// The keys of a `[license.<id>]` table, in the order the "known keys" hint
/// lists them. Each row drives the unknown-key check and its did-you-mean,
/// and reads its value, with the type errors, into a [`RulesDraft`];
/// [`Checker::license`] then checks the rules against each other and the
/// plugins.
const LICENSE_RULES: &[(&str, RuleReader)] = &[
    ("include", |checker, value, place, names, draft| {
        draft.include = checker.plugin_refs(value, "include", place, names);
    }),
    ("exclude", |checker, value, place, names, draft| {
        draft.exclude = checker.plugin_refs(value, "exclude", place, names);
    }),
    ("reserve", |checker, value, place, names, draft| {
        draft.reserve = checker.reservations(value, place, names);
    }),
    ("max_per_plugin", |checker, value, place, _, draft| {
        draft.max_per_plugin = checker.max_per_plugin(value, place);
    }),
    ("pool", |checker, value, place, _, draft| {
        draft.exact = checker.pool(value, place);
    }),
];

/// Reads one key of a `[license.<id>]` table: the checker, the value, the
/// place part of messages, the configured plugins, and the rules read so far.
type RuleReader = fn(&mut Checker<'_>, &Value<'_>, &str, &Names<'_>, &mut RulesDraft);

/// A `[license.<id>]` table's values as read, with where each plugin name is.
#[derive(Default)]
struct RulesDraft {
    /// `include`: configured plugin names.
    include: Vec<(String, Range<usize>)>,
    /// `exclude`: configured plugin names.
    exclude: Vec<(String, Range<usize>)>,
    /// `reserve`: configured plugin names with their seats, where valid.
    reserve: Vec<Reservation>,
    /// `max_per_plugin`, where valid.
    max_per_plugin: Option<u32>,
    /// `pool = "exact"`.
    exact: bool,
}

/// What a configured path must name.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Want {
    /// A file, such as a plugin's component.
    File,
    /// A directory, such as a preopened host directory.
    Dir,
}

/// One entry of `reserve`.
struct Reservation {
    /// The plugin's name.
    name: String,
    /// Where the name is.
    name_span: Range<usize>,
    /// The seats, if a valid count.
    seats: Option<u32>,
    /// Where the seats are.
    seats_span: Range<usize>,
}

const GIB: u64 = 1 << 30;
/// Smallest `memory`: one WebAssembly page.
const MIN_MEMORY: u64 = 64 * 1024;
const MAX_MEMORY: u64 = 4 * GIB;
const MAX_TIME_LIMIT: Duration = Duration::from_secs(3600);
const MAX_CONCURRENT_CALLS: i64 = 10_000;
const MAX_CONNECTIONS: i64 = 100_000;
const MAX_READ_TIMEOUT: Duration = Duration::from_secs(3600);
/// Longest `seat_batch_ttl`: a dead host's seats come back after it.
const MAX_SEAT_BATCH_TTL: Duration = Duration::from_secs(600);
/// Smallest `max_buffered_request_bytes`.
const MIN_BUFFERED: u64 = 1024;

/// Most plugin names compared, over the whole file, in did-you-mean
/// searches for unknown plugin names; once spent, unknown names are reported
/// without a suggestion, so a file full of them is checked in linear time.
const PLUGIN_HINT_BUDGET: usize = 100_000;
/// Most plugin names listed in one message.
const MAX_LISTED_PLUGINS: usize = 10;
/// Longest name or id quoted in the place part of each message about its
/// table; longer ones are cut, so messages stay short however long a bad
/// name is.
const MAX_QUOTED: usize = 64;

/// The 1-based line and column (in characters) of byte `offset` in `text`.
pub(super) fn line_column(text: &str, offset: usize) -> (usize, usize) {
    Positions::new(text).at(offset)
}

/// Lines and columns of byte offsets in one text, each found without
/// rescanning the text, so thousands of problems in a large file cost no
/// more than reading it once.
struct Positions<'t> {
    text: &'t str,
    /// Byte offset where each line starts.
    line_starts: Vec<usize>,
    /// `(byte offset, characters before it)` at every [`Self::STRIDE`]
    /// bytes (moved back to a character boundary).
    marks: Vec<(usize, usize)>,
}

impl<'t> Positions<'t> {
    const STRIDE: usize = 256;

    fn new(text: &'t str) -> Self {
        let line_starts = std::iter::once(0)
            .chain(text.match_indices('\n').map(|(i, _)| i + 1))
            .collect();
        let mut marks = Vec::with_capacity(text.len() / Self::STRIDE + 1);
        let (mut at, mut chars) = (0, 0);
        for stride in 0..=text.len() / Self::STRIDE {
            let mut next = stride * Self::STRIDE;
            while !text.is_char_boundary(next) {
                next -= 1;
            }
            chars += text[at..next].chars().count();
            at = next;
            marks.push((at, chars));
        }
        Self {
            text,
            line_starts,
            marks,
        }
    }

    /// Characters in `text[..offset]`; `offset` is a character boundary.
    fn chars_before(&self, offset: usize) -> usize {
        let (at, chars) = self.marks[offset / Self::STRIDE];
        chars + self.text[at..offset].chars().count()
    }

    /// The 1-based line and column (in characters) of byte `offset`.
    fn at(&self, offset: usize) -> (usize, usize) {
        let mut offset = offset.min(self.text.len());
        while !self.text.is_char_boundary(offset) {
            offset -= 1;
        }
        // Lines starting at or before `offset`; the first starts at 0.
        let line = self.line_starts.partition_point(|&start| start <= offset);
        let start = self.line_starts[line - 1];
        let column = self.chars_before(offset) - self.chars_before(start) + 1;
        (line, column)
    }
}

/// `text` quoted, cut to [`MAX_QUOTED`] characters.
fn quoted(text: &str) -> String {
    match text.char_indices().nth(MAX_QUOTED) {
        Some((cut, _)) => format!("{:?}…", &text[..cut]),
        None => format!("{text:?}"),
    }
}

/// Parses and validates `text`; the config is `None` only when the TOML
/// structure itself could not be recovered.
pub(super) fn check(text: &str, path: &Path) -> (Option<Config>, Vec<Problem>) {
    let mut checker = Checker {
        positions: Positions::new(text),
        dir: config_dir(path),
        problems: Vec::new(),
        recovered: false,
        plugin_hint_budget: PLUGIN_HINT_BUDGET,
        protected: Vec::new(),
    };
    let (root, syntax_errors) = DeTable::parse_recoverable(text);
    let mut syntax_lines = BTreeSet::new();
    // After an unclosed bracket or quote the recovered structure is guesswork.
    let unreliable = syntax_errors
        .iter()
        .any(|e| e.message().starts_with("unclosed"));
    for error in &syntax_errors {
        let span = error.span().unwrap_or(0..0);
        let (line, _) = checker.positions.at(span.start);
        // The parser often reports several errors for one mistake; one per line is enough.
        if !syntax_lines.insert(line) {
            continue;
        }
        let message = syntax_message(text, error.message(), &span);
        checker.problem(span, message);
    }
    let mut problems = std::mem::take(&mut checker.problems);
    if unreliable {
        // Report the syntax errors only.
        return (None, problems);
    }
    checker.recovered = !syntax_errors.is_empty();
    let config = checker.config(root.get_ref(), path);
    // Values on lines with syntax errors were guessed by the parser; the
    // syntax error is the problem to report there.
    problems.extend(
        checker
            .problems
            .into_iter()
            .filter(|p| !syntax_lines.contains(&p.line)),
    );
    (Some(config), problems)
}

/// The directory relative paths in `path` are resolved against.
fn config_dir(path: &Path) -> PathBuf {
    path.parent().map(Path::to_path_buf).unwrap_or_default()
}

/// A syntax error as a message that says what to do.
fn syntax_message(text: &str, message: &str, span: &Range<usize>) -> String {
    let found = text.get(span.clone()).unwrap_or("").trim();
    if message == "duplicate key" {
        format!("TOML syntax: `{found}` is set twice in the same table; keep one of them")
    } else if message.starts_with("string values must be quoted") && !found.is_empty() {
        format!("TOML syntax: string values must be quoted; write \"{found}\"")
    } else if message.starts_with("string values must be quoted") {
        "TOML syntax: a value is missing after `=`; write one (strings in quotes)".to_string()
    } else {
        format!("TOML syntax: {message}")
    }
}

/// What a TOML type is called in messages, with its article.
fn type_name(value: &DeValue<'_>) -> &'static str {
    match value {
        DeValue::String(_) => "a string",
        DeValue::Integer(_) => "an integer",
        DeValue::Float(_) => "a float",
        DeValue::Boolean(_) => "a boolean",
        DeValue::Datetime(_) => "a date-time",
        DeValue::Array(_) => "an array",
        DeValue::Table(_) => "a table",
    }
}

/// Collects problems while the document is walked.
///
/// Messages name a key and its place: `place` is `""` at the top level, else
/// text such as ` in [[plugin]] "hello"` that follows the key's name.
struct Checker<'t> {
    positions: Positions<'t>,
    dir: PathBuf,
    problems: Vec<Problem>,
    /// Set when the parser recovered from syntax errors: values with an empty
    /// span were made up by the parser and are not checked.
    recovered: bool,
    /// Plugin names that did-you-mean searches may still compare.
    plugin_hint_budget: usize,
    /// Host state no plugin directory may overlap, with what it is.
    protected: Vec<(PathBuf, &'static str)>,
}

/// The configured plugin names: in file order for messages, and as a set.
struct Names<'p> {
    list: Vec<&'p str>,
    set: HashSet<&'p str>,
}

impl<'p> Names<'p> {
    fn new(plugins: &'p [PluginRefs]) -> Self {
        let list: Vec<&str> = plugins.iter().map(|p| p.name.as_str()).collect();
        let set = list.iter().copied().collect();
        Self { list, set }
    }
}

/// What the license rules need to know about one plugin.
struct PluginRefs {
    name: String,
    requires: Vec<String>,
    may_use: Vec<String>,
}

impl<'t> Checker<'t> {
    fn problem(&mut self, span: Range<usize>, message: impl Into<String>) {
        if self.recovered && span.is_empty() {
            return;
        }
        let (line, column) = self.positions.at(span.start);
        self.problems.push(Problem {
            line,
            column,
            message: message.into(),
        });
    }

    fn line_of(&self, span: &Range<usize>) -> usize {
        self.positions.at(span.start).0
    }

    /// Reports every key of `table` that is not in `known`.
    fn unknown_keys(&mut self, table: &DeTable<'_>, known: &[&str], place: &str) {
        for key in table.keys() {
            let name = key.get_ref().as_ref();
            if known.contains(&name) {
                continue;
            }
            let hint = did_you_mean(name, known.iter().copied());
            let todo = if hint.is_empty() {
                format!("; remove it (known keys: {})", known.join(", "))
            } else {
                hint
            };
            let place = if place.is_empty() {
                " at the top level"
            } else {
                place
            };
            self.problem(key.span(), format!("unknown key `{name}`{place}{todo}"));
        }
    }

    fn wrong_type(&mut self, value: &Value<'_>, key: &str, place: &str, expected: &str) {
        self.problem(
            value.span(),
            format!(
                "`{key}`{place} must be {expected}, not {}",
                type_name(value.get_ref())
            ),
        );
    }

    fn string<'v>(
        &mut self,
        value: &'v Value<'_>,
        key: &str,
        place: &str,
        expected: &str,
    ) -> Option<&'v str> {
        match value.get_ref() {
            DeValue::String(s) => Some(s.as_ref()),
            _ => {
                self.wrong_type(value, key, place, expected);
                None
            }
        }
    }

    /// A non-empty path string, resolved against the config file's directory.
    fn path(&mut self, value: &Value<'_>, key: &str, place: &str) -> Option<PathBuf> {
        let raw = self.string(value, key, place, "a path string")?;
        if raw.trim().is_empty() {
            self.problem(
                value.span(),
                format!("`{key}`{place} is empty; write a path or remove the key"),
            );
            return None;
        }
        Some(self.dir.join(raw))
    }

    /// A top-level whole number `key` from 1 to `max`, if valid.
    fn count(&mut self, value: &Value<'_>, key: &str, max: i64) -> Option<u32> {
        let n = self.integer(value, key, "")?;
        match u32::try_from(n) {
            Ok(n) if (1..=max).contains(&i64::from(n)) => Some(n),
            _ => {
                self.problem(
                    value.span(),
                    format!("`{key}` is {n}; use a number from 1 to {max}"),
                );
                None
            }
        }
    }

    fn integer(&mut self, value: &Value<'_>, key: &str, place: &str) -> Option<i64> {
        match value.get_ref() {
            DeValue::Integer(i) => match i64::from_str_radix(i.as_str(), i.radix()) {
                Ok(n) => Some(n),
                Err(_) => {
                    self.problem(
                        value.span(),
                        format!("`{key}`{place} is too large; write a smaller whole number"),
                    );
                    None
                }
            },
            _ => {
                self.wrong_type(value, key, place, "a whole number");
                None
            }
        }
    }

    fn duration(&mut self, value: &Value<'_>, key: &str, place: &str) -> Option<Duration> {
        let text = self.string(value, key, place, "a duration string like \"10s\"")?;
        match units::duration(text) {
            Ok(d) => Some(d),
            Err(why) => {
                self.problem(value.span(), format!("`{key}`{place}: {why}"));
                None
            }
        }
    }

    /// A size string within `min..=max` bytes, as `usize`.
    fn size(
        &mut self,
        value: &Value<'_>,
        key: &str,
        place: &str,
        min: u64,
        max: u64,
    ) -> Option<usize> {
        let text = match value.get_ref() {
            DeValue::String(s) => s.as_ref(),
            DeValue::Integer(i) => {
                self.problem(
                    value.span(),
                    format!(
                        "`{key}`{place} must be a size string with a unit, like \"{}B\" or \"64MiB\"; a bare number is ambiguous",
                        i.as_str()
                    ),
                );
                return None;
            }
            _ => {
                self.wrong_type(value, key, place, "a size string like \"64MiB\"");
                return None;
            }
        };
        let bytes = match units::size(text) {
            Ok(bytes) => bytes,
            Err(why) => {
                self.problem(value.span(), format!("`{key}`{place}: {why}"));
                return None;
            }
        };
        if bytes < min || bytes > max {
            self.problem(
                value.span(),
                format!(
                    "`{key}`{place} is {text:?}; use between {} and {}",
                    units::show_size(min),
                    units::show_size(max)
                ),
            );
            return None;
        }
        match usize::try_from(bytes) {
            Ok(n) => Some(n),
            Err(_) => {
                self.problem(
                    value.span(),
                    format!("`{key}`{place} is {text:?}, more than this machine can address; use a smaller size"),
                );
                None
            }
        }
    }

    /// An array of strings, each checked by `check`; returns the valid ones with spans.
    fn strings(
        &mut self,
        value: &Value<'_>,
        key: &str,
        place: &str,
        what: &str,
        check: fn(&str) -> Result<(), String>,
    ) -> Vec<(String, Range<usize>)> {
        let DeValue::Array(items) = value.get_ref() else {
            self.wrong_type(value, key, place, &format!("an array of {what}s"));
            return Vec::new();
        };
        let mut out = Vec::new();
        for item in items {
            let DeValue::String(s) = item.get_ref() else {
                self.problem(
                    item.span(),
                    format!(
                        "`{key}`{place} must hold {what}s (strings), not {}",
                        type_name(item.get_ref())
                    ),
                );
                continue;
            };
            match check(s) {
                Ok(()) => out.push((s.to_string(), item.span())),
                Err(why) => self.problem(item.span(), format!("`{key}`{place}: {why}")),
            }
        }
        out
    }

    /// Builds the config from the document root, with defaults for absent keys.
    fn config(&mut self, root: &DeTable<'_>, path: &Path) -> Config {
        let mut config = Config {
            path: path.to_path_buf(),
            listen: DEFAULT_LISTEN,
            state: None,
            admin_token: None,
            admin_token_file: None,
            viewer_token: None,
            viewer_token_file: None,
            trusted_issuers: None,
            log_format: LogFormat::Human,
            grace_period: Duration::from_secs(10),
            compile_cache: None,
            max_concurrent_calls: 64,
            read_timeout: Duration::from_secs(30),
            max_connections: 1024,
            max_connections_per_client: 128,
            trusted_proxies: Vec::new(),
            write_timeout: Duration::from_secs(30),
            max_buffered_request_bytes: 64 << 20,
            allowed_hosts: None,
            plugins: Vec::new(),
            licenses: BTreeMap::new(),
            store: None,
            seat_batch_ttl: Duration::from_secs(15),
            tls_cert: None,
            tls_key: None,
            alerts: super::AlertsConfig::default(),
        };
        let known: Vec<&str> = top_level_keys().collect();
        self.unknown_keys(root, &known, "");
        let mut skipped = Vec::new();
        for &(first, second, todo) in EXCLUSIVE {
            if let (Some(a), Some(b)) = (root.get(first), root.get(second)) {
                let later = if a.span().start > b.span().start {
                    a
                } else {
                    b
                };
                self.problem(
                    later.span(),
                    format!("`{first}` and `{second}` are both set; {todo}"),
                );
                skipped.extend([first, second]);
            }
        }
        for setting in SETTINGS {
            if let Some(value) = root.get(setting.name)
                && !skipped.contains(&setting.name)
            {
                self.setting(setting, value, &mut config);
            }
        }
        self.tls(root, &mut config);
        if let (Some(viewer), Some(admin)) = (&config.viewer_token, &config.admin_token)
            && viewer == admin
            && let Some(v) = root.get("viewer_token_file")
        {
            self.problem(
                v.span(),
                "`viewer_token_file` holds the admin token; give the viewer a token of its own",
            );
            config.viewer_token = None;
        }
        if config.viewer_token.is_some()
            && config.admin_token.is_none()
            && let Some(v) = root.get("viewer_token_file")
        {
            self.problem(
                v.span(),
                "`viewer_token_file` is set without an admin token; set `admin_token_file` too (the admin API is off without it)",
            );
        }
        // Host state no plugin directory may overlap; a state directory
        // taken from the environment is checked when the host starts.
        self.protected.push((path.to_path_buf(), "the config file"));
        if let Some(state) = &config.state {
            self.protected.push((state.clone(), "the state directory"));
        }
        match (&config.compile_cache, &config.state) {
            (Some(cache), _) => self.protected.push((cache.clone(), "the compile cache")),
            (None, Some(state)) => self
                .protected
                .push((state.join("compile-cache"), "the compile cache")),
            (None, None) => {}
        }
        // Read before the plugins, so that its secret file is known when
        // their directories are checked.
        let alert_ids = match root.get("alerts") {
            Some(value) => self.alerts(value, &mut config),
            None => Vec::new(),
        };
        for (file, what) in config.secret_files() {
            self.protected.push((file.to_path_buf(), what));
        }

        let refs = match root.get("plugin") {
            Some(value) => self.plugins(value, &mut config),
            None => Vec::new(),
        };
        self.buffered_bodies(root, &config);
        if let Some(value) = root.get("license") {
            self.licenses(value, &refs, &mut config);
        }
        let used = used_license_ids(&refs);
        for (id, span) in alert_ids {
            self.unlisted_license("alerts.license", &id, span, &used, "thresholds");
        }
        config
    }

    /// Checks `tls_cert` and `tls_key` together: both or neither, and a
    /// certificate chain with the key that goes with it.
    fn tls(&mut self, root: &DeTable<'_>, config: &mut Config) {
        let span = |key: &str| root.get(key).map(|v| v.span()).unwrap_or_default();
        let problem = match (&config.tls_cert, &config.tls_key) {
            (None, None) => return,
            (Some(cert), Some(key)) => match crate::tls::server_config(cert, key) {
                Ok(_) => return,
                Err(why) => (span("tls_key"), format!("`tls_cert`/`tls_key`: {why}")),
            },
            (Some(_), None) => (
                span("tls_cert"),
                "`tls_cert` is set without `tls_key`; set both (PEM files) to serve HTTPS, or neither".to_string(),
            ),
            (None, Some(_)) => (
                span("tls_key"),
                "`tls_key` is set without `tls_cert`; set both (PEM files) to serve HTTPS, or neither".to_string(),
            ),
        };
        self.problem(problem.0, problem.1);
        config.tls_cert = None;
        config.tls_key = None;
    }

    /// Reads one top-level setting as its row in [`SETTINGS`] says.
    fn setting(&mut self, setting: &Setting, value: &Value<'_>, config: &mut Config) {
        let key = setting.name;
        let problem = match setting.kind {
            Kind::Text { expected, set } => self
                .string(value, key, "", expected)
                .and_then(|text| set(config, text).err())
                .map(|why| format!("`{key}`: {why}")),
            Kind::Path(set) => self
                .path(value, key, "")
                .and_then(|path| set(config, path).err())
                .map(|why| format!("`{key}`: {why}")),
            Kind::Duration { limit, field } => match (self.duration(value, key, ""), limit) {
                (Some(d), Some(limit)) if d.is_zero() || d > limit => Some(format!(
                    "`{key}` is {}; use a duration above 0 and at most {}",
                    humantime::format_duration(d),
                    humantime::format_duration(limit)
                )),
                (Some(d), _) => {
                    *field(config) = d;
                    None
                }
                (None, _) => None,
            },
            Kind::Count { max, field } => {
                if let Some(n) = self.count(value, key, max) {
                    *field(config) = n;
                }
                None
            }
            Kind::Size { min, max, field } => {
                if let Some(bytes) = self.size(value, key, "", min, max) {
                    *field(config) = bytes;
                }
                None
            }
            Kind::Own(read) => {
                read(self, value, config);
                None
            }
        };
        if let Some(message) = problem {
            self.problem(value.span(), message);
        }
    }

    /// Reads `trusted_proxies`: addresses and ranges.
    fn trusted_proxies(&mut self, value: &Value<'_>) -> Vec<AddressRange> {
        self.strings(value, "trusted_proxies", "", "IP range", |text| {
            AddressRange::parse(text).map(|_| ())
        })
        .into_iter()
        .filter_map(|(text, _)| AddressRange::parse(&text).ok())
        .collect()
    }

    /// Reads `allowed_hosts`: host names, or `"*"` alone.
    fn allowed_hosts(&mut self, value: &Value<'_>, config: &mut Config) {
        let hosts = self.strings(value, "allowed_hosts", "", "host name", |text| {
            AllowedHost::parse(text).map(|_| ())
        });
        let parsed: Vec<AllowedHost> = hosts
            .iter()
            .filter_map(|(text, _)| AllowedHost::parse(text).ok())
            .collect();
        if matches!(value.get_ref(), DeValue::Array(items) if items.is_empty()) {
            self.problem(
                value.span(),
                "`allowed_hosts` is empty, so every request would be refused; list the host names clients use, or write [\"*\"] to allow any",
            );
        } else if parsed.contains(&AllowedHost::Any) && parsed.len() > 1 {
            let span = hosts
                .iter()
                .find(|(text, _)| text == "*")
                .map_or(value.span(), |(_, span)| span.clone());
            self.problem(
                span,
                "`allowed_hosts` lists \"*\" (any host) beside other names; keep only \"*\" to turn the check off, or only the names",
            );
        }
        if hosts.len() == parsed.len() {
            config.allowed_hosts = Some(parsed);
        }
    }

    /// A plugin whose `max_request_bytes` is over `max_buffered_request_bytes`
    /// would have its largest bodies refused every time.
    fn buffered_bodies(&mut self, root: &DeTable<'_>, config: &Config) {
        let budget = config.max_buffered_request_bytes;
        let Some(plugins) = root.get("plugin").map(|p| p.get_ref()) else {
            return;
        };
        let DeValue::Array(items) = plugins else {
            return;
        };
        // `config.plugins` holds one plugin per table in `items`.
        let tables = items.iter().filter_map(|item| match item.get_ref() {
            DeValue::Table(table) => Some((item, table)),
            _ => None,
        });
        for (plugin, (item, table)) in config.plugins.iter().zip(tables) {
            if plugin.limits.max_input_bytes <= budget {
                continue;
            }
            let span = table
                .get("max_request_bytes")
                .map_or(item.span(), |v| v.span());
            self.problem(
                span,
                format!(
                    "`max_request_bytes` in [[plugin]] {} is {}, over `max_buffered_request_bytes` ({}), so its largest requests would always be refused; lower it or raise `max_buffered_request_bytes`",
                    quoted(&plugin.name),
                    units::show_size(plugin.limits.max_input_bytes as u64),
                    units::show_size(budget as u64)
                ),
            );
        }
    }

    /// Reads `trusted_issuers`: key ids or public keys, each once.
    fn issuer_pins(&mut self, value: &Value<'_>) -> Vec<tollgate_store::state::IssuerPin> {
        let entries = self.strings(value, "trusted_issuers", "", "issuer key", |s| {
            tollgate_store::state::IssuerPin::parse(s).map(drop)
        });
        let mut pins: Vec<tollgate_store::state::IssuerPin> = Vec::new();
        for (text, span) in entries {
            let Ok(pin) = tollgate_store::state::IssuerPin::parse(&text) else {
                continue;
            };
            if pins.iter().any(|p| p.key_id() == pin.key_id()) {
                self.problem(
                    span,
                    format!(
                        "`trusted_issuers` names issuer key {} twice; keep one entry",
                        pin.key_id()
                    ),
                );
                continue;
            }
            pins.push(pin);
        }
        pins
    }

    /// Reads every `[[plugin]]`; returns what the license rules refer to.
    fn plugins(&mut self, value: &Value<'_>, config: &mut Config) -> Vec<PluginRefs> {
        let DeValue::Array(items) = value.get_ref() else {
            self.problem(
                value.span(),
                format!(
                    "`plugin` must be an array of tables, not {}; write each plugin under its own [[plugin]] header (two brackets)",
                    type_name(value.get_ref())
                ),
            );
            return Vec::new();
        };
        let mut refs: Vec<PluginRefs> = Vec::new();
        // Where each name was first used.
        let mut first_use: HashMap<String, Range<usize>> = HashMap::new();
        for (index, item) in items.iter().enumerate() {
            let DeValue::Table(table) = item.get_ref() else {
                self.problem(
                    item.span(),
                    format!(
                        "plugin #{} must be a table, not {}; write each plugin under its own [[plugin]] header",
                        index + 1,
                        type_name(item.get_ref())
                    ),
                );
                continue;
            };
            let (plugin, name) = self.plugin(item.span(), table, index);
            if let Some((name, name_span)) = name {
                if let Some(first) = first_use.get(&name) {
                    let first_line = self.line_of(first);
                    self.problem(
                        name_span,
                        format!(
                            "plugin name {} is already used by the [[plugin]] on line {first_line}; give each plugin its own name",
                            quoted(&name)
                        ),
                    );
                } else {
                    first_use.insert(name.clone(), name_span);
                }
                refs.push(PluginRefs {
                    name,
                    requires: plugin.requires.clone(),
                    may_use: plugin.may_use.clone(),
                });
            }
            config.plugins.push(plugin);
        }
        refs
    }

    /// Reads one `[[plugin]]`, with defaults where keys are absent or wrong, and its name with its span.
    fn plugin(
        &mut self,
        span: Range<usize>,
        table: &DeTable<'_>,
        index: usize,
    ) -> (PluginSpec, Option<(String, Range<usize>)>) {
        let mut name = None;
        let mut valid_name = false;
        if let Some(value) = table.get("name") {
            let place = format!(" in [[plugin]] #{}", index + 1);
            if let Some(text) = self.string(value, "name", &place, "a string") {
                match text.parse::<PluginName>() {
                    Ok(_) => valid_name = true,
                    Err(why) => self.problem(value.span(), format!("`name`{place}: {why}")),
                }
                name = Some((text.to_string(), value.span()));
            }
        }
        // A bad name was reported once above; the plugin's other problems
        // name it by its number.
        let place = match &name {
            Some((n, _)) if valid_name => format!(" in [[plugin]] {n:?}"),
            _ => format!(" in [[plugin]] #{}", index + 1),
        };
        let known: Vec<&str> = plugin_keys().collect();
        self.unknown_keys(table, &known, &place);
        if table.get("name").is_none() {
            self.problem(
                span.clone(),
                format!("missing required key `name`{place}; add name = \"my-plugin\""),
            );
        }

        let component = match table.get("component") {
            Some(value) => self.component(value, &place),
            None => {
                self.problem(
                    span.clone(),
                    format!(
                        "missing required key `component`{place}; add component = \"path/to/plugin.wasm\" (relative to the config file)"
                    ),
                );
                None
            }
        };

        let mut plugin = PluginSpec::file(
            name.as_ref().map(|(n, _)| n.clone()).unwrap_or_default(),
            component.unwrap_or_default(),
        );
        for (key, read) in PLUGIN_SETTINGS {
            if let Some(value) = table.get(*key) {
                read(self, value, &place, &mut plugin);
            }
        }
        (plugin, name)
    }

    /// An array of license ids; returns the valid ones.
    fn license_ids(&mut self, value: &Value<'_>, key: &str, place: &str) -> Vec<String> {
        self.strings(value, key, place, "license id", |id| {
            id.parse::<LicenseId>().map(drop).map_err(|e| e.to_string())
        })
        .into_iter()
        .map(|(id, _)| id)
        .collect()
    }

    /// A call's time limit: more than 0 and at most [`MAX_TIME_LIMIT`].
    fn time_limit(&mut self, value: &Value<'_>, place: &str) -> Option<Duration> {
        let limit = self.duration(value, "time_limit", place)?;
        if limit.is_zero() || limit > MAX_TIME_LIMIT {
            self.problem(
                value.span(),
                format!("`time_limit`{place} must be more than 0 and at most 1h"),
            );
            return None;
        }
        Some(limit)
    }

    /// The host variables a plugin's sandbox passes through, never the
    /// admin token.
    fn pass_env(&mut self, value: &Value<'_>, place: &str) -> Vec<String> {
        let mut names = Vec::new();
        for (name, span) in self.strings(value, "env", place, "variable name", units::env_name) {
            if name.starts_with("TOLLGATE_ADMIN_TOKEN") {
                self.problem(
                    span,
                    format!(
                        "`env`{place} passes {name} through, which would hand the admin token to the plugin; remove it"
                    ),
                );
                continue;
            }
            names.push(name);
        }
        names
    }

    fn component(&mut self, value: &Value<'_>, place: &str) -> Option<PathBuf> {
        self.existing(value, "component", place, Want::File)
    }

    /// A path that must name an existing file or directory; reports it
    /// with what to do if it does not.
    fn existing(
        &mut self,
        value: &Value<'_>,
        key: &str,
        place: &str,
        want: Want,
    ) -> Option<PathBuf> {
        let path = self.path(value, key, place)?;
        let (wanted, verb, todo) = match want {
            Want::File => (
                "a file; point it to the plugin's .wasm component",
                "read",
                "build the plugin",
            ),
            Want::Dir => (
                "a directory; point it to a directory",
                "use",
                "create the directory",
            ),
        };
        let why = match std::fs::metadata(&path) {
            Ok(m) if m.is_file() == (want == Want::File) && m.is_dir() == (want == Want::Dir) => {
                return Some(path);
            }
            Ok(_) => format!("{} is not {wanted}", path.display()),
            Err(e) => format!(
                "cannot {verb} {}: {e}; {todo} or fix the path (relative paths start at the config file's directory)",
                path.display()
            ),
        };
        self.problem(value.span(), format!("`{key}`{place}: {why}"));
        None
    }

    fn wait_for_seat(&mut self, value: &Value<'_>, place: &str) -> Option<Duration> {
        let text = self.string(
            value,
            "wait_for_seat",
            place,
            "\"off\" or a duration string like \"2s\"",
        )?;
        if text.trim() == "off" {
            return None;
        }
        let wait = match units::duration(text) {
            Ok(wait) => wait,
            Err(why) => {
                self.problem(
                    value.span(),
                    format!("`wait_for_seat`{place}: {why}, or \"off\" to refuse at once when no seat is free"),
                );
                return None;
            }
        };
        if wait.is_zero() {
            self.problem(
                value.span(),
                format!("`wait_for_seat`{place} is zero; write \"off\" to refuse at once when no seat is free"),
            );
            return None;
        }
        Some(wait)
    }

    fn dirs(&mut self, value: &Value<'_>, place: &str) -> Vec<Preopen> {
        let DeValue::Array(items) = value.get_ref() else {
            self.wrong_type(
                value,
                "dirs",
                place,
                "an array like [{ host = \"data\", guest = \"/data\" }]",
            );
            return Vec::new();
        };
        let mut dirs: Vec<Preopen> = Vec::new();
        let mut guests: HashSet<String> = HashSet::new();
        for (index, item) in items.iter().enumerate() {
            let DeValue::Table(table) = item.get_ref() else {
                self.problem(
                    item.span(),
                    format!(
                        "`dirs`{place} must hold tables like {{ host = \"data\", guest = \"/data\" }}, not {}",
                        type_name(item.get_ref())
                    ),
                );
                continue;
            };
            let here = format!(
                " in `dirs` entry {} of {}",
                index + 1,
                place.trim_start_matches(" in ")
            );
            self.unknown_keys(table, DIR_KEYS, &here);
            let host = match table.get("host") {
                Some(value) => self
                    .host_dir(value, &here)
                    .filter(|host| self.outside_host_state(host, value, &here)),
                None => {
                    self.problem(
                        item.span(),
                        format!("missing key `host`{here}; add host = \"path/on/this/machine\""),
                    );
                    None
                }
            };
            let guest = match table.get("guest") {
                Some(value) => self.guest_dir(value, &here, &mut guests),
                None => {
                    self.problem(
                        item.span(),
                        format!("missing key `guest`{here}; add guest = \"/data\" (where the plugin sees it)"),
                    );
                    None
                }
            };
            let mut writable = Some(false);
            if let Some(value) = table.get("mode")
                && let Some(mode) = self.string(value, "mode", &here, "\"ro\" or \"rw\"")
            {
                writable = match mode {
                    "ro" => Some(false),
                    "rw" => Some(true),
                    other => {
                        self.problem(
                            value.span(),
                            format!(
                                "`mode`{here} is {other:?}; use \"ro\" (read-only, the default) or \"rw\"{}",
                                did_you_mean(other, ["ro", "rw"])
                            ),
                        );
                        None
                    }
                };
            }
            if let (Some(host), Some(guest), Some(writable)) = (host, guest, writable) {
                dirs.push(Preopen {
                    host,
                    guest,
                    writable,
                });
            }
        }
        dirs
    }

    /// Whether `host` stays clear of host state; reports it if not.
    fn outside_host_state(&mut self, host: &Path, value: &Value<'_>, place: &str) -> bool {
        let Some((path, what)) = self
            .protected
            .iter()
            .find(|(path, _)| tollgate_store::files::overlaps(host, path))
            .cloned()
        else {
            return true;
        };
        self.problem(
            value.span(),
            format!(
                "`host`{place}: {} overlaps {what} {} (one contains the other), which would let the plugin reach host state; give the plugin a directory outside it",
                host.display(),
                path.display()
            ),
        );
        false
    }

    fn host_dir(&mut self, value: &Value<'_>, place: &str) -> Option<PathBuf> {
        self.existing(value, "host", place, Want::Dir)
    }

    fn guest_dir(
        &mut self,
        value: &Value<'_>,
        place: &str,
        earlier: &mut HashSet<String>,
    ) -> Option<String> {
        let guest = self.string(
            value,
            "guest",
            place,
            "an absolute path string like \"/data\"",
        )?;
        if !guest.starts_with('/') {
            self.problem(
                value.span(),
                format!(
                    "`guest`{place} is {guest:?}; write an absolute path such as \"/{}\"",
                    guest.trim_start_matches("./")
                ),
            );
            return None;
        }
        if guest.split('/').any(|part| part == "..") {
            self.problem(
                value.span(),
                format!("`guest`{place} is {guest:?}; remove the `..` parts"),
            );
            return None;
        }
        if !earlier.insert(guest.to_string()) {
            self.problem(
                value.span(),
                format!("`guest`{place}: another entry of `dirs` already uses {guest:?}; give each directory its own guest path"),
            );
            return None;
        }
        Some(guest.to_string())
    }

    /// Reads every `[license.<id>]` and checks it against the plugins.
    fn licenses(&mut self, value: &Value<'_>, plugins: &[PluginRefs], config: &mut Config) {
        let DeValue::Table(table) = value.get_ref() else {
            self.problem(
                value.span(),
                format!(
                    "`license` must be a table of license rules, not {}; write them as [license.\"<id>\"] sections",
                    type_name(value.get_ref())
                ),
            );
            return;
        };
        let names = Names::new(plugins);
        let used = used_license_ids(plugins);
        for (key, rules) in table.iter() {
            let id = key.get_ref().as_ref();
            if let Some(rules) = self.license(key, rules, &names, plugins) {
                config.licenses.insert(id.to_string(), rules);
            }
            if id.parse::<LicenseId>().is_ok() {
                self.unlisted_license("license", id, key.span(), &used, "rules");
            }
        }
    }

    /// Reports license id `id` of a `[<section>.<id>]` table that no
    /// plugin lists in `requires` or `may_use`, so its `what` would apply
    /// to nothing.
    fn unlisted_license(
        &mut self,
        section: &str,
        id: &str,
        span: Range<usize>,
        used: &BTreeSet<&str>,
        what: &str,
    ) {
        if used.contains(id) {
            return;
        }
        let hint = did_you_mean(id, used.iter().copied());
        let todo = if hint.is_empty() {
            format!("; list it in a plugin's `requires` or `may_use`, or remove these {what}")
        } else {
            hint
        };
        self.problem(
            span,
            format!("[{section}.{id:?}]: no [[plugin]] lists license `{id}` in `requires` or `may_use`{todo}"),
        );
    }

    /// Reads the `[alerts]` section; returns the valid license ids it sets
    /// thresholds for, with where each is, for [`Checker::unlisted_license`]
    /// once the plugins are read.
    fn alerts(&mut self, value: &Value<'_>, config: &mut Config) -> Vec<(String, Range<usize>)> {
        let mut ids = Vec::new();
        let DeValue::Table(table) = value.get_ref() else {
            self.wrong_type(
                value,
                "alerts",
                "",
                "a table: write [alerts] and its settings below it",
            );
            return ids;
        };
        let place = " in [alerts]";
        self.unknown_keys(
            table,
            &["webhook", "secret_file", "ca_file", "license"],
            place,
        );
        if let Some(v) = table.get("webhook")
            && let Some(url) = self.string(
                v,
                "webhook",
                place,
                "a URL string like \"https://hooks.example.com/tollgate\"",
            )
        {
            match super::check_webhook(url) {
                Ok(()) => config.alerts.webhook = Some(url.to_string()),
                Err(why) => self.problem(v.span(), format!("`webhook`{place}: {why}")),
            }
        }
        if let Some(v) = table.get("secret_file")
            && let Some(path) = self.path(v, "secret_file", place)
        {
            match super::read_token_file(&path, super::WEBHOOK_SECRET) {
                Ok(secret) => config.alerts.secret = Some(secret),
                Err(why) => self.problem(v.span(), format!("`secret_file`{place}: {why}")),
            }
            config.alerts.secret_file = Some(path);
        }
        if let Some(v) = table.get("ca_file")
            && let Some(path) = self.path(v, "ca_file", place)
        {
            match super::read_ca_file(&path) {
                Ok(pem) => config.alerts.ca_pem = Some(pem),
                Err(why) => self.problem(v.span(), format!("`ca_file`{place}: {why}")),
            }
        }
        if let (Some(v), None) = (table.get("webhook"), table.get("secret_file")) {
            self.problem(
                v.span(),
                format!("`webhook`{place} needs `secret_file` too: receivers check each delivery's HMAC-SHA256 signature with it"),
            );
        }
        let Some(licenses) = table.get("license") else {
            return ids;
        };
        let DeValue::Table(licenses) = licenses.get_ref() else {
            self.wrong_type(
                licenses,
                "license",
                place,
                "a table: write [alerts.license.\"<id>\"] sections",
            );
            return ids;
        };
        for (key, value) in licenses.iter() {
            let id = key.get_ref().as_ref();
            let place = format!(" in [alerts.license.{}]", quoted(id));
            if let Err(why) = id.parse::<LicenseId>() {
                self.problem(key.span(), format!("[alerts.license.{id:?}]: {why}"));
                continue;
            }
            ids.push((id.to_string(), key.span()));
            let DeValue::Table(t) = value.get_ref() else {
                self.wrong_type(
                    value,
                    &format!("alerts.license.{id}"),
                    "",
                    "a table of thresholds",
                );
                continue;
            };
            self.unknown_keys(
                t,
                &[
                    "in_use_percent",
                    "in_use_for",
                    "denials_per_minute",
                    "expires_within",
                ],
                &place,
            );
            let mut th = super::Thresholds::default();
            if let Some(v) = t.get("in_use_percent")
                && let Some(n) = self.integer(v, "in_use_percent", &place)
            {
                match u32::try_from(n) {
                    Ok(n) if (1..=100).contains(&n) => th.in_use_percent = Some(n),
                    _ => self.problem(
                        v.span(),
                        format!("`in_use_percent`{place} is {n}; use a percentage from 1 to 100"),
                    ),
                }
            }
            if let Some(v) = t.get("in_use_for")
                && let Some(d) = self.duration(v, "in_use_for", &place)
            {
                th.in_use_for = d;
                if t.get("in_use_percent").is_none() {
                    self.problem(v.span(), format!("`in_use_for`{place} needs `in_use_percent`: the share of seats that must stay in use this long"));
                }
            }
            if let Some(v) = t.get("denials_per_minute")
                && let Some(n) = self.integer(v, "denials_per_minute", &place)
            {
                match u32::try_from(n) {
                    Ok(n) if n >= 1 => th.denials_per_minute = Some(n),
                    _ => self.problem(
                        v.span(),
                        format!("`denials_per_minute`{place} is {n}; use a whole number from 1"),
                    ),
                }
            }
            if let Some(v) = t.get("expires_within")
                && let Some(d) = self.duration(v, "expires_within", &place)
            {
                th.expires_within = Some(d);
            }
            config.alerts.licenses.insert(id.to_string(), th);
        }
        ids
    }

    fn license(
        &mut self,
        key: &Key<'_>,
        value: &Value<'_>,
        names: &Names<'_>,
        plugins: &[PluginRefs],
    ) -> Option<LicenseRules> {
        let id = key.get_ref().as_ref();
        let place = format!(" in [license.{}]", quoted(id));
        if let Err(why) = id.parse::<LicenseId>() {
            self.problem(key.span(), format!("[license.{id:?}]: {why}"));
        }
        let DeValue::Table(table) = value.get_ref() else {
            self.problem(
                value.span(),
                format!(
                    "`license.{id}` must be a table of rules, not {}; write [license.{id:?}] and the rules below it",
                    type_name(value.get_ref())
                ),
            );
            return None;
        };
        let known: Vec<&str> = license_rule_keys().collect();
        self.unknown_keys(table, &known, &place);
        let mut draft = RulesDraft::default();
        for (name, read) in LICENSE_RULES {
            if let Some(value) = table.get(*name) {
                read(self, value, &place, names, &mut draft);
            }
        }

        let included: HashSet<&str> = draft.include.iter().map(|(n, _)| n.as_str()).collect();
        let excluded: HashMap<&str, &Range<usize>> =
            draft.exclude.iter().map(|(n, s)| (n.as_str(), s)).collect();
        for (name, span) in &draft.exclude {
            if included.contains(name.as_str()) {
                self.problem(
                    span.clone(),
                    format!("`exclude`{place} lists {name:?}, which `include` also lists; keep it in one of them"),
                );
            }
        }
        let allowed = |name: &str| {
            (included.is_empty() || included.contains(name)) && !excluded.contains_key(name)
        };
        // A plugin that requires the license but may not use it could never return a result.
        for plugin in plugins {
            if !plugin.requires.iter().any(|r| r == id) || allowed(&plugin.name) {
                continue;
            }
            let name = &plugin.name;
            let (span, todo) = match excluded.get(name.as_str()) {
                Some(&span) => (span.clone(), format!("remove {name:?} from `exclude`")),
                None => (
                    table.get("include").map_or(key.span(), |v| v.span()),
                    format!("add {name:?} to `include`"),
                ),
            };
            self.problem(
                span,
                format!(
                    "plugin {name:?} requires license `{id}`, but the rules{place} do not let it use that license, so every call of {name:?} would be withheld; {todo} or remove `{id}` from its `requires`"
                ),
            );
        }
        let mut rules = LicenseRules {
            max_per_plugin: draft.max_per_plugin,
            exact: draft.exact,
            ..LicenseRules::default()
        };
        for entry in &draft.reserve {
            let name = &entry.name;
            if !allowed(name) {
                self.problem(
                    entry.name_span.clone(),
                    format!("`reserve`{place} reserves seats for {name:?}, which these rules do not let use the license; remove the reservation or allow the plugin"),
                );
            }
            let Some(n) = entry.seats else {
                continue;
            };
            if let Some(max) = rules.max_per_plugin
                && n > max
            {
                self.problem(
                    entry.seats_span.clone(),
                    format!("`reserve.{name}`{place} reserves {n} seats but `max_per_plugin` is {max}, so {} of them could never be used; lower one or raise the other", n - max),
                );
            }
            rules.reserve.insert(name.clone(), n);
        }
        rules.include = draft.include.into_iter().map(|(n, _)| n).collect();
        rules.exclude = draft.exclude.into_iter().map(|(n, _)| n).collect();
        Some(rules)
    }

    /// Reads `pool`: `"batch"` (the default) or `"exact"`; whether exact.
    fn pool(&mut self, value: &Value<'_>, place: &str) -> bool {
        let expected = "\"batch\" or \"exact\"";
        match self.string(value, "pool", place, expected) {
            Some("exact") => true,
            Some("batch") | None => false,
            Some(other) => {
                self.problem(
                    value.span(),
                    format!(
                        "`pool`{place} is {other:?}; use \"batch\" (seats leased from the shared store in batches, the default) or \"exact\" (one store round trip per seat, none kept idle)"
                    ),
                );
                false
            }
        }
    }

    /// Reads `max_per_plugin`: a number of seats from 1.
    fn max_per_plugin(&mut self, value: &Value<'_>, place: &str) -> Option<u32> {
        let n = self.integer(value, "max_per_plugin", place)?;
        match u32::try_from(n) {
            Ok(n) if n >= 1 => Some(n),
            _ => {
                self.problem(
                    value.span(),
                    format!(
                        "`max_per_plugin`{place} is {n}; use a number from 1 to {} (to keep a plugin off this license, use `exclude`)",
                        u32::MAX
                    ),
                );
                None
            }
        }
    }

    /// Reads `reserve`: seats per configured plugin.
    fn reservations(
        &mut self,
        value: &Value<'_>,
        place: &str,
        names: &Names<'_>,
    ) -> Vec<Reservation> {
        let DeValue::Table(reserve) = value.get_ref() else {
            self.wrong_type(
                value,
                "reserve",
                place,
                "a table like { \"my-plugin\" = 2 }",
            );
            return Vec::new();
        };
        let mut out = Vec::new();
        for (name_key, seats) in reserve.iter() {
            let name = name_key.get_ref().as_ref();
            if !names.set.contains(name) {
                self.unknown_plugin(name_key.span(), name, "reserve", place, names);
                continue;
            }
            let key = format!("reserve.{name}");
            let seats_count = self.integer(seats, &key, place).and_then(|n| {
                let count = u32::try_from(n).ok();
                if count.is_none() {
                    self.problem(
                        seats.span(),
                        format!(
                            "`{key}`{place} is {n}; use a number of seats from 0 to {}",
                            u32::MAX
                        ),
                    );
                }
                count
            });
            out.push(Reservation {
                name: name.to_string(),
                name_span: name_key.span(),
                seats: seats_count,
                seats_span: seats.span(),
            });
        }
        out
    }

    /// An array of names of loaded plugins.
    fn plugin_refs(
        &mut self,
        value: &Value<'_>,
        key: &str,
        place: &str,
        names: &Names<'_>,
    ) -> Vec<(String, Range<usize>)> {
        let mut out = Vec::new();
        for (name, span) in self.strings(value, key, place, "plugin name", |_| Ok(())) {
            if names.set.contains(name.as_str()) {
                out.push((name, span));
            } else {
                self.unknown_plugin(span, &name, key, place, names);
            }
        }
        out
    }

    fn unknown_plugin(
        &mut self,
        span: Range<usize>,
        name: &str,
        key: &str,
        place: &str,
        names: &Names<'_>,
    ) {
        let hint = if let Some(left) = self.plugin_hint_budget.checked_sub(names.list.len()) {
            self.plugin_hint_budget = left;
            did_you_mean(name, names.list.iter().copied())
        } else {
            String::new()
        };
        let todo = if !hint.is_empty() {
            hint
        } else if names.list.is_empty() {
            "; no plugins are configured: add a [[plugin]] or remove this name".to_string()
        } else if names.list.len() > MAX_LISTED_PLUGINS {
            format!(
                "; configured plugins: {}, and {} more",
                names.list[..MAX_LISTED_PLUGINS].join(", "),
                names.list.len() - MAX_LISTED_PLUGINS
            )
        } else {
            format!("; configured plugins: {}", names.list.join(", "))
        };
        self.problem(
            span,
            format!(
                "`{key}`{place} names plugin {}, which is not a configured [[plugin]]{todo}",
                quoted(name)
            ),
        );
    }
}
