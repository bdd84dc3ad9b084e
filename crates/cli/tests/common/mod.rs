//! Shared by the `serve` test files: a scratch state dir with a trusted
//! issuer and license, and a `tollgate serve` child on a loopback port.
#![allow(dead_code)]

use serde_json::Value;
use std::collections::{BTreeMap, HashMap};
use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub const BIN: &str = env!("CARGO_BIN_EXE_tollgate");
pub const TOKEN: &str = "test-admin-token-0123456789";

pub fn guest(name: &str) -> PathBuf {
    PathBuf::from(test_guests::path(name))
}

pub struct Server {
    pub child: Child,
    pub base: String,
    pub agent: ureq::Agent,
}

pub fn tg(root: &std::path::Path, args: &[&str]) -> std::process::Output {
    Command::new(BIN)
        .args(args)
        .env("TOLLGATE_STATE", root.join("state"))
        .output()
        .expect("tollgate runs")
}

/// A scratch dir with a trusted issuer and license `demo` with `seats` seats,
/// removed when dropped.
pub fn prepare(tag: &str, seats: &str) -> tempfile::TempDir {
    let scratch = tempfile::Builder::new()
        .prefix(&format!("tollgate-serve-{tag}-"))
        .tempdir()
        .expect("scratch");
    let root = scratch.path();
    let p = |n: &str| root.join(n).to_string_lossy().into_owned();
    assert!(
        tg(root, &["issuer", "keygen", "--out", &p("keys")])
            .status
            .success()
    );
    assert!(
        tg(root, &["trust", "add", &p("keys/issuer.pub")])
            .status
            .success()
    );
    sign_demo(root, seats);
    assert!(
        tg(root, &["license", "install", &p("demo.license")])
            .status
            .success()
    );
    std::fs::write(root.join("admin.token"), TOKEN).expect("token");
    scratch
}

pub const PLUGINS: &str = r#"
[[plugin]]
name = "hello"
component = "HELLO"
requires = ["demo"]
max_request_bytes = "64B"

[[plugin]]
name = "slow"
component = "SLOW"
requires = ["demo"]
may_use = ["zero"]

[[plugin]]
name = "waiter"
component = "HELLO"
requires = ["demo"]
wait_for_seat = "300ms"

[[plugin]]
name = "freeloader"
component = "NONE"
requires = ["demo"]

[[plugin]]
name = "excluded"
component = "HELLO"
requires = ["other"]
may_use = ["demo"]

[[plugin]]
name = "trapper"
component = "TRAPPER"
requires = ["demo"]

[[plugin]]
name = "spinner"
component = "SPINNER"
requires = ["demo"]
time_limit = "200ms"

[license.demo]
exclude = ["excluded"]
"#;

impl Server {
    pub fn start(root: &std::path::Path, grace: &str) -> Server {
        Self::start_with(root, grace, "")
    }

    /// Starts with `settings` (top-level config lines) added.
    pub fn start_with(root: &std::path::Path, grace: &str, settings: &str) -> Server {
        Self::start_with_plugins(root, grace, settings, "")
    }

    /// Starts with `settings` (top-level config lines) and `plugins`
    /// (further `[[plugin]]` tables, where HELLO, SLOW, NONE, TRAPPER,
    /// SPINNER and FLOODER name those guests) added.
    pub fn start_with_plugins(
        root: &std::path::Path,
        grace: &str,
        settings: &str,
        plugins: &str,
    ) -> Server {
        let config = format!(
            "listen = \"127.0.0.1:0\"\nstate = \"state\"\nadmin_token_file = \"admin.token\"\ngrace_period = \"{grace}\"\n{settings}\n{PLUGINS}\n{plugins}"
        )
        .replace("HELLO", &guest("hello-licensed").to_string_lossy())
        .replace("SLOW", &guest("slow").to_string_lossy())
        .replace("NONE", &guest("no-license").to_string_lossy())
        .replace("TRAPPER", &guest("trapper").to_string_lossy())
        .replace("SPINNER", &guest("spinner").to_string_lossy())
        .replace("FLOODER", &guest("flooder").to_string_lossy());
        std::fs::write(root.join("tollgate.toml"), config).expect("config");
        let check = Command::new(BIN)
            .args([
                "check-config",
                &root.join("tollgate.toml").to_string_lossy(),
            ])
            .output()
            .expect("check");
        assert!(
            check.status.success(),
            "{}",
            String::from_utf8_lossy(&check.stderr)
        );
        Self::spawn(root, Command::new(BIN), &["--log-format", "json"])
            .unwrap_or_else(|e| panic!("serve did not start: {e}"))
    }

    /// Runs `command` (the tollgate binary, or a wrapper that execs it) as
    /// `serve` on `root`'s `tollgate.toml` with `extra` arguments, logging to
    /// `serve.log`: the running server, or the exit status, first line and
    /// log of a start it refused.
    pub fn spawn(
        root: &std::path::Path,
        mut command: Command,
        extra: &[&str],
    ) -> Result<Server, String> {
        let mut child = command
            .args([
                "serve",
                "--config",
                &root.join("tollgate.toml").to_string_lossy(),
            ])
            .args(extra)
            .stdout(Stdio::piped())
            .stderr(Stdio::from(
                std::fs::File::create(root.join("serve.log")).expect("log"),
            ))
            .spawn()
            .expect("serve starts");
        let mut line = String::new();
        BufReader::new(child.stdout.take().expect("stdout"))
            .read_line(&mut line)
            .expect("first line");
        match line.trim().strip_prefix("tollgate serve: listening on ") {
            Some(base) => Ok(Server {
                child,
                base: base.to_string(),
                agent: ureq::Agent::config_builder()
                    .http_status_as_error(false)
                    .build()
                    .into(),
            }),
            None => {
                let status = child.wait().expect("exits");
                let log = std::fs::read_to_string(root.join("serve.log")).unwrap_or_default();
                Err(format!("{status}: {line}{log}"))
            }
        }
    }

    pub fn invoke(&self, plugin: &str, body: &[u8]) -> (u16, String, Option<String>) {
        let mut r = self
            .agent
            .post(format!("{}/v1/plugins/{plugin}/invoke", self.base))
            .send(body)
            .expect("request");
        let retry = r
            .headers()
            .get("retry-after")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        (
            r.status().as_u16(),
            r.body_mut().read_to_string().expect("body"),
            retry,
        )
    }

    pub fn admin(
        &self,
        method: &str,
        path: &str,
        body: Option<&str>,
        token: Option<&str>,
    ) -> (u16, String) {
        let url = format!("{}{path}", self.base);
        let auth = token.map(|t| format!("Bearer {t}"));
        let mut r = match (method, body) {
            ("GET", _) => {
                let mut req = self.agent.get(&url);
                if let Some(a) = &auth {
                    req = req.header("Authorization", a);
                }
                req.call()
            }
            ("DELETE", _) => {
                let mut req = self.agent.delete(&url);
                if let Some(a) = &auth {
                    req = req.header("Authorization", a);
                }
                req.call()
            }
            (_, b) => {
                let mut req = self.agent.post(&url);
                if let Some(a) = &auth {
                    req = req.header("Authorization", a);
                }
                req.send(b.unwrap_or(""))
            }
        }
        .expect("admin request");
        (
            r.status().as_u16(),
            r.body_mut().read_to_string().expect("body"),
        )
    }

    pub fn json(&self, path: &str) -> Value {
        let (status, body) = self.admin("GET", path, None, Some(TOKEN));
        assert_eq!(status, 200, "{path}: {body}");
        serde_json::from_str(&body).expect("JSON")
    }

    pub fn demo(&self) -> Value {
        self.json("/v1/admin/licenses/demo")
    }

    pub fn wait_in_use(&self, want: u64) {
        let became = wait_until(Duration::from_secs(10), || {
            self.demo()["counters"]["in_use"].as_u64() == Some(want)
        });
        assert!(became, "in_use never became {want}: {}", self.demo());
    }

    /// `GET /metrics`, parsed.
    pub fn metrics(&self) -> Exposition {
        let (status, text) = self.admin("GET", "/metrics", None, Some(TOKEN));
        assert_eq!(status, 200, "{text}");
        Exposition::parse(&text).unwrap_or_else(|e| panic!("{e} in\n{text}"))
    }

    pub fn terminate(mut self) -> std::process::ExitStatus {
        let pid = self.child.id().to_string();
        assert!(
            Command::new("kill")
                .args(["-TERM", &pid])
                .status()
                .expect("kill")
                .success()
        );
        self.child.wait().expect("exits")
    }
}

/// How long [`wait_until`] pauses between two asks.
const POLL_EVERY: Duration = Duration::from_millis(5);

/// Asks `done` until it holds, for at most `within`; whether it came to
/// hold. Between asks it pauses [`POLL_EVERY`], so that asking (often an
/// HTTP request) leaves the server the CPU to get there.
pub fn wait_until(within: Duration, mut done: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + within;
    loop {
        if done() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(POLL_EVERY);
    }
}

/// A Prometheus text exposition (format 0.0.4), parsed: the declared type
/// of each family and the value of each sample.
#[derive(Debug)]
pub struct Exposition {
    /// Family name to its `# TYPE`.
    types: HashMap<String, String>,
    /// Sample name and labels to its value.
    samples: HashMap<(String, BTreeMap<String, String>), f64>,
}

impl Exposition {
    /// Parses `text`, refusing a sample whose family has no `# TYPE` line
    /// before it, a family typed twice, a series given twice, and lines
    /// that are not comments, `# HELP`, `# TYPE` or samples.
    pub fn parse(text: &str) -> Result<Exposition, String> {
        let mut types = HashMap::new();
        let mut samples = HashMap::new();
        for (n, line) in text.lines().enumerate() {
            let at = |what: &str| format!("line {}: {what}: {line:?}", n + 1);
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                let (name, kind) = rest.split_once(' ').ok_or_else(|| at("no type"))?;
                if !["counter", "gauge", "histogram", "summary", "untyped"].contains(&kind) {
                    return Err(at("unknown type"));
                }
                if types.insert(name.to_string(), kind.to_string()).is_some() {
                    return Err(at("family typed twice"));
                }
                continue;
            }
            if line.starts_with('#') || line.is_empty() {
                continue;
            }
            let (series, value) = line.rsplit_once(' ').ok_or_else(|| at("no value"))?;
            let value = match value {
                "+Inf" => f64::INFINITY,
                "-Inf" => f64::NEG_INFINITY,
                v => v.parse::<f64>().map_err(|_| at("bad value"))?,
            };
            let (name, labels) = match series.split_once('{') {
                None => (series, BTreeMap::new()),
                Some((name, labels)) => {
                    let labels = labels
                        .strip_suffix('}')
                        .ok_or_else(|| at("labels not closed"))?;
                    (name, parse_labels(labels).map_err(|e| at(&e))?)
                }
            };
            let family = ["_bucket", "_sum", "_count"]
                .iter()
                .find_map(|suffix| {
                    let base = name.strip_suffix(suffix)?;
                    (types.get(base).map(String::as_str) == Some("histogram")).then_some(base)
                })
                .unwrap_or(name);
            if !types.contains_key(family) {
                return Err(at("sample before its family's # TYPE"));
            }
            if samples.insert((name.to_string(), labels), value).is_some() {
                return Err(at("series given twice"));
            }
        }
        Ok(Exposition { types, samples })
    }

    /// The `# TYPE` of the family `name`.
    pub fn type_of(&self, name: &str) -> Option<&str> {
        self.types.get(name).map(String::as_str)
    }

    /// The value of the sample `name` with exactly `labels`.
    pub fn value(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        let labels = labels
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        self.samples.get(&(name.to_string(), labels)).copied()
    }

    /// The samples named `name`, each as its labels and value.
    pub fn series(&self, name: &str) -> Vec<(&BTreeMap<String, String>, f64)> {
        self.samples
            .iter()
            .filter(|((n, _), _)| n == name)
            .map(|((_, labels), v)| (labels, *v))
            .collect()
    }
}

/// `k="v",k2="v2"` (values with `\\`, `\"` and `\n` escapes) as a map.
fn parse_labels(text: &str) -> Result<BTreeMap<String, String>, String> {
    let mut labels = BTreeMap::new();
    let mut rest = text;
    while !rest.is_empty() {
        let (key, after) = rest.split_once("=\"").ok_or("a label without =\"")?;
        let mut value = String::new();
        let mut chars = after.char_indices();
        let end = loop {
            match chars.next() {
                Some((i, '"')) => break i,
                Some((_, '\\')) => match chars.next() {
                    Some((_, 'n')) => value.push('\n'),
                    Some((_, c @ ('\\' | '"'))) => value.push(c),
                    _ => return Err("a bad escape in a label value".into()),
                },
                Some((_, c)) => value.push(c),
                None => return Err("a label value not closed".into()),
            }
        };
        if labels.insert(key.to_string(), value).is_some() {
            return Err(format!("label {key} given twice"));
        }
        rest = &after[end + 1..];
        rest = rest.strip_prefix(',').unwrap_or(rest);
    }
    Ok(labels)
}

/// Copies a directory tree (files and subdirectories).
pub fn copy_dir(from: &std::path::Path, to: &std::path::Path) {
    std::fs::create_dir_all(to).expect("copy");
    for entry in std::fs::read_dir(from).expect("read").flatten() {
        let path = entry.path();
        if path.is_dir() {
            copy_dir(&path, &to.join(entry.file_name()));
        } else {
            std::fs::copy(&path, to.join(entry.file_name())).expect("copy file");
        }
    }
}

pub fn code(body: &str) -> String {
    serde_json::from_str::<Value>(body)
        .map(|v| v["error"].as_str().unwrap_or("").to_string())
        .unwrap_or_default()
}

/// A test that fails before `terminate` still stops its server.
impl Drop for Server {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Spans `(start, end)` in nanoseconds reported by the early-release guest
/// for the calls delivered to `clients` concurrent HTTP clients.
pub fn delivered_spans(s: &Server, clients: usize, calls: usize) -> Vec<(u128, u128)> {
    std::thread::scope(|scope| {
        let workers: Vec<_> = (0..clients)
            .map(|_| {
                scope.spawn(|| {
                    let mut spans = Vec::new();
                    for _ in 0..calls {
                        let (st, body, _) = s.invoke("early", b"4");
                        if st == 200 {
                            let (a, b) = body.split_once(' ').expect("START END");
                            spans.push((a.parse().expect("start"), b.parse().expect("end")));
                        }
                    }
                    spans
                })
            })
            .collect();
        workers
            .into_iter()
            .flat_map(|w| w.join().expect("client"))
            .collect()
    })
}

/// Signs license `id` of `seats` with `root/keys/issuer.key` into
/// `root/out`.
pub fn sign_license(root: &std::path::Path, id: &str, seats: &str, out: &str) {
    let p = |n: &str| root.join(n).to_string_lossy().into_owned();
    let key = p("keys/issuer.key");
    let out = p(out);
    let args = [
        "issuer",
        "sign",
        "--key",
        &key,
        "--license-id",
        id,
        "--seats",
        seats,
        "--out",
        &out,
    ];
    let sign = tg(root, &args);
    assert!(
        sign.status.success(),
        "{}",
        String::from_utf8_lossy(&sign.stderr)
    );
}

/// Signs license `demo` of `seats` into `root/demo.license`.
pub fn sign_demo(root: &std::path::Path, seats: &str) {
    sign_license(root, "demo", seats, "demo.license");
}
