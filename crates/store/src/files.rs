//! Files and directories only the host's own user may use: directories
//! 0700, files 0600, whatever the process umask is.
//!
//! The state directory, its keys, the compile cache and its entries are
//! created through these helpers, so a permissive umask (`umask 000`) never
//! leaves host state readable or writable by other users.

use std::io::Write as _;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::Path;

/// Mode of directories the host creates.
pub(crate) const DIR_MODE: u32 = 0o700;
/// Mode of files the host creates.
pub(crate) const FILE_MODE: u32 = 0o600;

/// Creates `dir` and any missing parents, each new one with mode 0700 (set
/// explicitly, so the umask neither widens nor narrows it). Directories that
/// exist already keep their mode.
pub fn create_dir(dir: &Path) -> std::io::Result<()> {
    if dir.is_dir() {
        return Ok(());
    }
    if let Some(parent) = dir.parent()
        && !parent.as_os_str().is_empty()
    {
        create_dir(parent)?;
    }
    match std::fs::DirBuilder::new().mode(DIR_MODE).create(dir) {
        Ok(()) => std::fs::set_permissions(dir, std::fs::Permissions::from_mode(DIR_MODE)),
        // Another process made it in the meantime.
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists && dir.is_dir() => Ok(()),
        Err(e) => Err(e),
    }
}

/// Opens `path` for writing as a new file with mode 0600; fails if it exists.
pub fn create_new(path: &Path) -> std::io::Result<std::fs::File> {
    let file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(FILE_MODE)
        .open(path)?;
    file.set_permissions(std::fs::Permissions::from_mode(FILE_MODE))?;
    Ok(file)
}

/// Opens (creating with mode 0600 if missing) `path` for writing, without
/// truncating it.
pub fn open_or_create(path: &Path) -> std::io::Result<std::fs::File> {
    match create_new(path) {
        Ok(file) => Ok(file),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => std::fs::OpenOptions::new()
            .write(true)
            .create(false)
            .truncate(false)
            .open(path),
        Err(e) => Err(e),
    }
}

/// Writes `bytes` to `path` with mode 0600: into a new temporary file beside
/// it, synced, then renamed over `path`, so readers see the old or the new
/// contents, never a part.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let tmp = path.with_extension(format!("tmp{}", std::process::id()));
    let _ = std::fs::remove_file(&tmp);
    let written = create_new(&tmp).and_then(|mut f| {
        f.write_all(bytes)?;
        f.sync_all()
    });
    match written.and_then(|()| std::fs::rename(&tmp, path)) {
        Ok(()) => Ok(()),
        Err(e) => {
            let _ = std::fs::remove_file(&tmp);
            Err(e)
        }
    }
}

/// Reads the secret kept in `path`, or creates it from `make` (mode 0600)
/// on first use. Two processes racing to create it agree on one: the loser
/// reads the winner's file.
pub fn read_or_create(
    path: &Path,
    make: impl FnOnce() -> std::io::Result<Vec<u8>>,
) -> std::io::Result<Vec<u8>> {
    match std::fs::read(path) {
        Ok(bytes) => return Ok(bytes),
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
        Err(_) => {}
    }
    let bytes = make()?;
    // Written under a temporary name and linked into place, so no reader
    // ever sees a half-written key; `hard_link` fails if another process
    // created the key first, and then its key is the one used.
    let tmp = path.with_extension(format!("new{}", std::process::id()));
    let _ = std::fs::remove_file(&tmp);
    let written = create_new(&tmp).and_then(|mut f| {
        f.write_all(&bytes)?;
        f.sync_all()
    });
    let linked = written.and_then(|()| std::fs::hard_link(&tmp, path));
    let _ = std::fs::remove_file(&tmp);
    match linked {
        Ok(()) => Ok(bytes),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => std::fs::read(path),
        Err(e) => Err(e),
    }
}

/// Whether `a` and `b` are the same path or one contains the other, after
/// resolving symbolic links and `..` where the paths exist (lexically where
/// they do not).
pub fn overlaps(a: &Path, b: &Path) -> bool {
    let (a, b) = (resolved(a), resolved(b));
    a.starts_with(&b) || b.starts_with(&a)
}

/// `path` made absolute, with symbolic links resolved for the longest part
/// that exists and `.`/`..` removed from the rest.
fn resolved(path: &Path) -> std::path::PathBuf {
    let absolute = std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf());
    let mut existing = absolute.as_path();
    let mut rest = Vec::new();
    loop {
        if let Ok(real) = existing.canonicalize() {
            let mut out = real;
            for part in rest.iter().rev() {
                match part {
                    std::path::Component::ParentDir => {
                        out.pop();
                    }
                    std::path::Component::CurDir => {}
                    other => out.push(other),
                }
            }
            return out;
        }
        let mut parts = existing.components();
        match parts.next_back() {
            Some(last) => {
                rest.push(last);
                existing = parts.as_path();
            }
            None => return absolute,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overlap_is_containment_either_way_through_links() {
        let scratch = tempfile::Builder::new()
            .prefix("tollgate-overlap-")
            .tempdir()
            .expect("scratch dir");
        let root = scratch.path();
        create_dir(&root.join("state/cache")).expect("dirs");
        std::fs::create_dir_all(root.join("data")).expect("data");
        std::os::unix::fs::symlink(root.join("state"), root.join("link")).expect("link");
        assert!(overlaps(&root.join("state"), &root.join("state/cache")));
        assert!(overlaps(&root.join("state/cache"), &root.join("state")));
        assert!(overlaps(root, &root.join("state/not-yet/x")));
        assert!(overlaps(&root.join("link"), &root.join("state/host.key")));
        assert!(overlaps(
            &root.join("data/../state"),
            &root.join("state/cache")
        ));
        assert!(!overlaps(&root.join("data"), &root.join("state")));
        assert!(!overlaps(&root.join("stat"), &root.join("state")));
    }

    #[test]
    fn secrets_are_created_once_with_mode_0600() {
        let scratch = tempfile::Builder::new()
            .prefix("tollgate-secret-")
            .tempdir()
            .expect("scratch dir");
        // A directory `create_dir` makes, so its mode is checked below.
        let root = scratch.path().join("secret");
        create_dir(&root).expect("dir");
        let key = root.join("k");
        let first = read_or_create(&key, || Ok(b"one".to_vec())).expect("created");
        let second = read_or_create(&key, || Ok(b"two".to_vec())).expect("read");
        assert_eq!(
            (first.as_slice(), second.as_slice()),
            (&b"one"[..], &b"one"[..])
        );
        let mode = std::fs::metadata(&key).expect("meta").permissions().mode() & 0o777;
        assert_eq!(mode, FILE_MODE);
        let mode = std::fs::metadata(&root).expect("meta").permissions().mode() & 0o777;
        assert_eq!(mode, DIR_MODE);
    }
}
