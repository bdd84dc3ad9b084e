//! A throwaway PostgreSQL server for tests: `initdb` into a temporary
//! directory, a server on a free loopback port with its durability on
//! (`fsync`, `synchronous_commit`), stopped and removed when dropped.
//!
//! The server binaries are found in `TOLLGATE_PG_BIN`, else through
//! `pg_config --bindir`, else in Debian's `/usr/lib/postgresql/*/bin`. A
//! test that needs PostgreSQL and finds none fails with what to install:
//! it never passes without having run.
//!
//! Run as root (as in CI), the server runs as the `postgres` user, since
//! PostgreSQL refuses to run as root.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

/// Why a throwaway server could not be had.
#[derive(Debug)]
pub struct Unavailable(pub String);

impl std::fmt::Display for Unavailable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "no PostgreSQL server for the tests: {}; install PostgreSQL 15 (Debian: apt-get install postgresql) or point TOLLGATE_PG_BIN at its bin directory",
            self.0
        )
    }
}

impl std::error::Error for Unavailable {}

/// A running throwaway server; stopped (immediately) and removed on drop.
pub struct TestPostgres {
    bin: PathBuf,
    dir: tempfile::TempDir,
    port: u16,
    /// The user the server runs as, when started by root.
    run_as: Option<String>,
    /// An address it listens on besides the loopback one.
    also_on: Option<String>,
}

impl TestPostgres {
    /// Starts a new server, or panics naming why none could be started.
    pub fn start() -> Self {
        Self::try_start().unwrap_or_else(|e| panic!("{e}"))
    }

    /// Starts a new server that also listens on `addr` (an address of
    /// this machine, such as one end of a veth pair) and lets any client
    /// of `addr`'s /24 in, or panics naming why none could be started.
    pub fn start_also_on(addr: &str) -> Self {
        let server = Self::start();
        server.edit_conf("pg_hba.conf", |rules| {
            format!("{rules}\nhost all all {addr}/24 trust\n")
        });
        let mut server = server;
        server.stop();
        server.also_on = Some(addr.to_string());
        server.restart();
        server
    }

    /// Starts a new server.
    pub fn try_start() -> Result<Self, Unavailable> {
        let bin = find_bin()?;
        let run_as = is_root().then(|| "postgres".to_string());
        let dir = tempfile::Builder::new()
            .prefix("tollgate-pg-")
            .tempdir()
            .map_err(|e| Unavailable(format!("cannot make a temporary directory: {e}")))?;
        if let Some(user) = &run_as {
            let chown = Command::new("chown")
                .args(["-R", user])
                .arg(dir.path())
                .output();
            check("chown", chown)?;
        }
        let data = dir.path().join("data");
        let initdb = as_user(&run_as, &bin.join("initdb"))
            .arg("-D")
            .arg(&data)
            .args(["-A", "trust", "-U", "postgres", "-E", "UTF8", "--no-sync"])
            .output();
        check("initdb", initdb)?;
        let mut server = Self {
            bin,
            dir,
            port: 0,
            run_as,
            also_on: None,
        };
        // A port found free may be taken before the server binds it: try
        // a few.
        let mut last = None;
        for _ in 0..5 {
            server.port = free_port()?;
            match server.start_server() {
                Ok(()) => return Ok(server),
                Err(e) => last = Some(e),
            }
        }
        Err(last.unwrap_or_else(|| Unavailable("the server did not start".into())))
    }

    /// The connection URL of database `postgres` as user `postgres`.
    pub fn url(&self) -> String {
        self.url_of("postgres")
    }

    /// The connection URL of database `db`.
    pub fn url_of(&self, db: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{db}", self.port)
    }

    /// The port it listens on (loopback).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Stops the server (fast shutdown); [`TestPostgres::restart`] starts
    /// it again on the same port and data.
    pub fn stop(&self) {
        let out = self.pg_ctl(&["stop", "-m", "fast", "-w"]).output();
        if let Err(e) = check("pg_ctl stop", out) {
            panic!("{e}");
        }
    }

    /// Starts the stopped server again on the same port and data.
    pub fn restart(&self) {
        self.start_server().unwrap_or_else(|e| panic!("{e}"));
    }

    /// The server's postmaster process id.
    pub fn pid(&self) -> u32 {
        self.try_pid().unwrap_or_else(|| {
            panic!(
                "no pid in {}/data/postmaster.pid",
                self.dir.path().display()
            )
        })
    }

    fn try_pid(&self) -> Option<u32> {
        let pidfile = self.dir.path().join("data/postmaster.pid");
        std::fs::read_to_string(pidfile)
            .ok()
            .and_then(|t| t.lines().next().and_then(|l| l.trim().parse().ok()))
    }

    /// Freezes the server, its postmaster and every backend (`SIGSTOP`):
    /// connections stay open and nothing answers, as on a hung machine.
    pub fn pause(&self) {
        self.signal_all("-STOP");
    }

    /// Lets a paused server run again (`SIGCONT`).
    pub fn resume(&self) {
        self.signal_all("-CONT");
    }

    /// Sends `signal` to the postmaster and its children.
    fn signal_all(&self, signal: &str) {
        if let Err(e) = self.try_signal_all(signal) {
            panic!("{e}");
        }
    }

    fn try_signal_all(&self, signal: &str) -> Result<(), Unavailable> {
        let master = self
            .try_pid()
            .ok_or_else(|| Unavailable("the server is not running".into()))?;
        let mut pids = vec![master];
        for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
            let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
                continue;
            };
            let stat = std::fs::read_to_string(entry.path().join("stat")).unwrap_or_default();
            // The parent pid is the second field after the command's ")".
            let ppid = stat
                .rsplit_once(')')
                .and_then(|(_, rest)| rest.split_whitespace().nth(1))
                .and_then(|p| p.parse::<u32>().ok());
            if ppid == Some(master) {
                pids.push(pid);
            }
        }
        let out = Command::new("kill")
            .arg(signal)
            .args(pids.iter().map(u32::to_string))
            .output();
        check("kill", out)
    }

    /// Adds login role `user` with `password`, which must give it over TCP
    /// (SCRAM), as a server with password authentication does; the other
    /// roles keep trust authentication.
    pub fn add_password_user(&self, user: &str, password: &str) {
        let sql = format!("CREATE ROLE \"{user}\" LOGIN SUPERUSER PASSWORD '{password}'");
        let out = as_user(&self.run_as, &self.bin.join("psql"))
            .args([
                "-h",
                "127.0.0.1",
                "-U",
                "postgres",
                "-d",
                "postgres",
                "-v",
                "ON_ERROR_STOP=1",
            ])
            .args(["-p", &self.port.to_string(), "-c", &sql])
            .output();
        if let Err(e) = check("psql", out) {
            panic!("{e}");
        }
        // First match wins: this role's line goes first.
        self.edit_conf("pg_hba.conf", |rules| {
            format!("host all {user} 127.0.0.1/32 scram-sha-256\n{rules}")
        });
        self.reload();
    }

    /// Turns TLS on with the server certificate `cert_pem` and its private
    /// key `key_pem` (PEM); with `only`, connections over TCP without TLS
    /// are refused.
    pub fn enable_tls(&self, cert_pem: &str, key_pem: &str, only: bool) {
        use std::os::unix::fs::PermissionsExt;
        let data = self.dir.path().join("data");
        for (file, pem) in [("server.crt", cert_pem), ("server.key", key_pem)] {
            let path = data.join(file);
            std::fs::write(&path, pem).unwrap_or_else(|e| panic!("{e}"));
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))
                .unwrap_or_else(|e| panic!("{e}"));
            if let Some(user) = &self.run_as {
                let chown = Command::new("chown").arg(user).arg(&path).output();
                check("chown", chown).unwrap_or_else(|e| panic!("{e}"));
            }
        }
        self.edit_conf("postgresql.conf", |conf| format!("{conf}\nssl = on\n"));
        if only {
            self.edit_conf("pg_hba.conf", |rules| {
                format!("hostnossl all all 0.0.0.0/0 reject\n{rules}")
            });
        }
        self.reload();
        // The reload is read by the postmaster between connections: wait
        // until a TLS handshake is offered.
        let deadline = Instant::now() + Duration::from_secs(10);
        while !offers_tls(self.port) {
            assert!(Instant::now() < deadline, "the server did not turn TLS on");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Rewrites the data directory's configuration file `name` with what
    /// `edit` makes of its text.
    fn edit_conf(&self, name: &str, edit: impl FnOnce(String) -> String) {
        let path = self.dir.path().join("data").join(name);
        let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{e}"));
        std::fs::write(&path, edit(text)).unwrap_or_else(|e| panic!("{e}"));
    }

    /// Makes the running server read its configuration files again.
    fn reload(&self) {
        if let Err(e) = check("pg_ctl reload", self.pg_ctl(&["reload"]).output()) {
            panic!("{e}");
        }
    }

    fn start_server(&self) -> Result<(), Unavailable> {
        let listen = match &self.also_on {
            Some(addr) => format!("'127.0.0.1,{addr}'"),
            None => "127.0.0.1".to_string(),
        };
        let options = format!(
            "-p {} -k {} -c listen_addresses={listen} -c fsync=on -c synchronous_commit=on -c max_connections=200",
            self.port,
            self.dir.path().display()
        );
        let log = self.dir.path().join("server.log");
        let out = self
            .pg_ctl(&["start", "-w", "-t", "60", "-o", &options, "-l"])
            .arg(&log)
            .output();
        check("pg_ctl start", out).map_err(|e| {
            let tail = std::fs::read_to_string(&log).unwrap_or_default();
            Unavailable(format!("{}; server log:\n{tail}", e.0))
        })?;
        wait_accepting(self.port)
    }

    fn pg_ctl(&self, args: &[&str]) -> Command {
        let mut c = as_user(&self.run_as, &self.bin.join("pg_ctl"));
        c.arg("-D").arg(self.dir.path().join("data")).args(args);
        c
    }
}

impl Drop for TestPostgres {
    fn drop(&mut self) {
        // A paused server would not stop: let it run first.
        let _ = self.try_signal_all("-CONT");
        // Immediate: the data goes with the directory anyway.
        let _ = self.pg_ctl(&["stop", "-m", "immediate", "-w"]).output();
    }
}

/// Waits until the server accepts TCP connections on `port`.
fn wait_accepting(port: u16) -> Result<(), Unavailable> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(Unavailable(format!(
                "the server did not accept connections on port {port} within 30 s"
            )));
        }
        std::thread::yield_now();
    }
}

/// Whether the server on `port` answers PostgreSQL's TLS request with
/// yes (`S`).
fn offers_tls(port: u16) -> bool {
    use std::io::{Read, Write};
    let Ok(mut stream) = std::net::TcpStream::connect(("127.0.0.1", port)) else {
        return false;
    };
    // SSLRequest: length 8, code 80877103.
    let request = [0u8, 0, 0, 8, 0x04, 0xd2, 0x16, 0x2f];
    let mut answer = [0u8; 1];
    stream.write_all(&request).is_ok()
        && stream.read_exact(&mut answer).is_ok()
        && answer[0] == b'S'
}

fn free_port() -> Result<u16, Unavailable> {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .map_err(|e| Unavailable(format!("no free loopback port: {e}")))
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
}

/// `program`, run as `user` when there is one.
fn as_user(user: &Option<String>, program: &Path) -> Command {
    match user {
        Some(user) => {
            let mut c = Command::new("runuser");
            c.args(["-u", user, "--"]).arg(program);
            c
        }
        None => Command::new(program),
    }
}

fn check(what: &str, out: std::io::Result<Output>) -> Result<(), Unavailable> {
    match out {
        Ok(o) if o.status.success() => Ok(()),
        Ok(o) => Err(Unavailable(format!(
            "{what} failed ({}): {}{}",
            o.status,
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        ))),
        Err(e) => Err(Unavailable(format!("cannot run {what}: {e}"))),
    }
}

/// The directory of `initdb` and `pg_ctl`.
fn find_bin() -> Result<PathBuf, Unavailable> {
    if let Some(dir) = std::env::var_os("TOLLGATE_PG_BIN") {
        return Ok(PathBuf::from(dir));
    }
    if let Ok(o) = Command::new("pg_config").arg("--bindir").output()
        && o.status.success()
    {
        let dir = PathBuf::from(String::from_utf8_lossy(&o.stdout).trim());
        if dir.join("initdb").exists() {
            return Ok(dir);
        }
    }
    let mut found: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .map(|entries| {
            entries
                .filter_map(Result::ok)
                .map(|e| e.path().join("bin"))
                .filter(|bin| bin.join("initdb").exists())
                .collect()
        })
        .unwrap_or_default();
    found.sort();
    found
        .pop()
        .ok_or_else(|| Unavailable("initdb was not found".into()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_server_starts_answers_and_restarts() {
        let pg = TestPostgres::start();
        let alive = || std::net::TcpStream::connect(("127.0.0.1", pg.port())).is_ok();
        assert!(alive());
        pg.stop();
        assert!(!alive());
        pg.restart();
        assert!(alive());
        assert!(pg.pid() > 0);
    }
}
