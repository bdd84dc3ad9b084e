//! Passwords from PostgreSQL's password file, as its own tools read it:
//! `PGPASSFILE`, else `~/.pgpass`; lines `host:port:database:user:password`
//! where `*` matches anything and `\` escapes `:` or `\`. A file that
//! others may read is ignored, with a warning, as `libpq` does.

use std::path::{Path, PathBuf};
use tokio_postgres::config::Host;

/// The password file to read: `PGPASSFILE`, else `~/.pgpass`.
pub fn path() -> Option<PathBuf> {
    std::env::var_os("PGPASSFILE")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|home| Path::new(&home).join(".pgpass")))
}

/// The password the password file gives for `config`'s first host, port,
/// database and user, if any.
pub fn password_for(config: &tokio_postgres::Config) -> Option<String> {
    let file = path()?;
    let text = readable_only_by_owner(&file)?;
    let host = match config.get_hosts().first()? {
        Host::Tcp(name) => name.clone(),
        // A Unix socket is "localhost" to the password file.
        Host::Unix(_) => "localhost".to_string(),
    };
    let port = config
        .get_ports()
        .first()
        .copied()
        .unwrap_or(5432)
        .to_string();
    let user = config.get_user()?;
    let database = config.get_dbname().unwrap_or(user);
    lookup(&text, [&host, &port, database, user])
}

/// The file's text, unless it is missing or others may read it.
fn readable_only_by_owner(file: &Path) -> Option<String> {
    use std::os::unix::fs::PermissionsExt;
    let meta = std::fs::metadata(file).ok()?;
    if meta.permissions().mode() & 0o077 != 0 {
        tracing::warn!(
            "password file {} is ignored: others may read it; chmod 0600 it",
            file.display()
        );
        return None;
    }
    std::fs::read_to_string(file).ok()
}

/// The password of the first line of `text` whose host, port, database and
/// user fields match `wanted` (a field `*` matches anything).
pub fn lookup(text: &str, wanted: [&str; 4]) -> Option<String> {
    text.lines()
        .filter(|line| !line.trim_start().starts_with('#'))
        .find_map(|line| {
            let fields = split(line);
            let [host, port, database, user, password] = fields.as_slice() else {
                return None;
            };
            [host, port, database, user]
                .iter()
                .zip(wanted)
                .all(|(field, want)| *field == "*" || *field == want)
                .then(|| password.clone())
        })
}

/// A line's fields, split at unescaped `:`, with `\:` and `\\` unescaped.
fn split(line: &str) -> Vec<String> {
    let mut fields = vec![String::new()];
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => {
                if let Some(next) = chars.next()
                    && let Some(field) = fields.last_mut()
                {
                    field.push(next);
                }
            }
            ':' if fields.len() < 5 => fields.push(String::new()),
            c => {
                if let Some(field) = fields.last_mut() {
                    field.push(c);
                }
            }
        }
    }
    fields
}

#[cfg(test)]
mod tests {
    use super::lookup;

    #[test]
    fn the_first_matching_line_gives_the_password() {
        let text = "# comment\n\
                    db.example:5432:other:tg:wrong\n\
                    db.example:*:tollgate:tg:s3cr\\:et\\\\x\n\
                    *:*:*:*:fallback\n\
                    short:line\n";
        let want = |host, port, db, user| lookup(text, [host, port, db, user]);
        assert_eq!(
            want("db.example", "6543", "tollgate", "tg").as_deref(),
            Some("s3cr:et\\x")
        );
        assert_eq!(
            want("db.example", "5432", "other", "tg").as_deref(),
            Some("wrong")
        );
        assert_eq!(
            want("elsewhere", "1", "x", "y").as_deref(),
            Some("fallback")
        );
        assert_eq!(
            lookup("# nothing\nshort:line\n", ["a", "b", "c", "d"]),
            None
        );
        // A password may hold ':' unescaped in its last field.
        assert_eq!(
            lookup("h:1:d:u:a:b", ["h", "1", "d", "u"]).as_deref(),
            Some("a:b")
        );
    }
}
