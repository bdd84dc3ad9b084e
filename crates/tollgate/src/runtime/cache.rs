//! The compile cache: compiled components kept on disk so a restart does
//! not compile again.
//!
//! A cache entry is native code, so the host deserializes only entries it
//! wrote itself for that very component on that very engine: each entry
//! carries an HMAC-SHA256 over the component's sha256, the engine's
//! compatibility hash and the compiled bytes, keyed by a random secret the
//! host keeps in its state directory (mode 0600). A file someone else put at
//! an entry's path, including a real entry of another component, fails the
//! check and is compiled anew, never deserialized.

use crate::store::files;
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use hmac::{Hmac, Mac};
use sha2::Sha256;
use std::path::{Path, PathBuf};
use wasmtime::component::Component;

/// The cache key's file in a state directory.
pub const KEY_FILE: &str = "compile-cache.key";
/// The cache key's file inside the cache directory, for a host without a
/// state directory.
pub const KEY_FILE_IN_CACHE: &str = "cache.key";
/// First line of a cache key file.
const KEY_HEADER: &str = "tollgate-compile-cache-key v1";
/// First bytes of every cache entry.
const ENTRY_MAGIC: &[u8] = b"tollgate-cwasm v1\n";
/// Domain separation for entry MACs.
const MAC_CONTEXT: &[u8] = b"tollgate compile cache entry v1\0";
/// Length of an entry's MAC.
const TAG_BYTES: usize = 32;
/// Largest entry read; anything larger was not written by this host.
const MAX_ENTRY_BYTES: u64 = 1 << 30;

/// A compile cache directory and the secret that authenticates its entries.
pub struct CompileCache {
    dir: PathBuf,
    key: [u8; 32],
}

impl std::fmt::Debug for CompileCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CompileCache")
            .field("dir", &self.dir)
            .finish_non_exhaustive()
    }
}

/// The compile cache or its key could not be used.
#[derive(Debug, thiserror::Error)]
pub enum CacheError {
    /// A file or directory of the cache could not be created or read.
    #[error(
        "cannot use the compile cache {} (key file {}): {}; make it writable by the host's user only, or choose another `compile_cache`",
        .dir.display(), .key_file.display(), .path.display()
    )]
    Unusable {
        /// The cache directory.
        dir: PathBuf,
        /// The key file.
        key_file: PathBuf,
        /// The path that failed.
        path: PathBuf,
        /// What the file system said.
        #[source]
        source: std::io::Error,
    },
    /// The key file is not a key.
    #[error(
        "the compile cache key {} is damaged (not a `{KEY_HEADER}` file with a 32-byte secret); delete it and the cache entries of {}: the host makes a new key and compiles again",
        .key_file.display(), .dir.display()
    )]
    DamagedKey {
        /// The cache directory.
        dir: PathBuf,
        /// The key file.
        key_file: PathBuf,
    },
}

impl CompileCache {
    /// The cache in `dir` (created 0700 if missing), its entries keyed by the
    /// secret in `key_file` (created 0600 on first use).
    pub fn open(dir: impl Into<PathBuf>, key_file: &Path) -> Result<Self, CacheError> {
        let dir = dir.into();
        let why = |what: &Path, source: std::io::Error| CacheError::Unusable {
            dir: dir.clone(),
            key_file: key_file.to_path_buf(),
            path: what.to_path_buf(),
            source,
        };
        files::create_dir(&dir).map_err(|e| why(&dir, e))?;
        let text = files::read_or_create(key_file, || {
            let mut secret = [0u8; 32];
            getrandom::fill(&mut secret)
                .map_err(|e| std::io::Error::other(format!("no randomness from the OS: {e}")))?;
            Ok(format!("{KEY_HEADER}\nsecret: {}\n", B64.encode(secret)).into_bytes())
        })
        .map_err(|e| why(key_file, e))?;
        let key = std::str::from_utf8(&text)
            .ok()
            .filter(|t| t.lines().next().map(str::trim) == Some(KEY_HEADER))
            .and_then(|t| t.lines().find_map(|l| l.strip_prefix("secret:")))
            .and_then(|s| B64.decode(s.trim()).ok())
            .and_then(|b| <[u8; 32]>::try_from(b).ok())
            .ok_or_else(|| CacheError::DamagedKey {
                dir: dir.clone(),
                key_file: key_file.to_path_buf(),
            })?;
        Ok(Self { dir, key })
    }

    /// The cache directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Where the entry of component `digest` on engine `engine` lives.
    pub(crate) fn entry_path(&self, engine: &EngineId, digest: &str) -> PathBuf {
        self.dir.join(&engine.dir).join(format!("{digest}.cwasm"))
    }

    fn mac(&self, engine: &EngineId, digest: &str, compiled: &[u8]) -> Hmac<Sha256> {
        // A 32-byte key is always a valid HMAC key.
        let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(&self.key)
            .unwrap_or_else(|_| unreachable!("HMAC takes keys of any length"));
        mac.update(MAC_CONTEXT);
        for part in [digest.as_bytes(), engine.full.as_bytes()] {
            mac.update(&(part.len() as u64).to_le_bytes());
            mac.update(part);
        }
        mac.update(compiled);
        mac
    }

    /// The cached compiled form of component `digest`: `Ok(None)` when there
    /// is no entry, `Err` with the reason when the entry is refused (not
    /// written by this host for this component and engine, or unusable).
    pub(crate) fn load(
        &self,
        engine: &wasmtime::Engine,
        id: &EngineId,
        digest: &str,
    ) -> Result<Option<Component>, String> {
        let path = self.entry_path(id, digest);
        match std::fs::metadata(&path) {
            Ok(m) if m.len() > MAX_ENTRY_BYTES => {
                return Err(format!("it is {} bytes, larger than any entry", m.len()));
            }
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(format!("cannot read it: {e}")),
        }
        let bytes = match std::fs::read(&path) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(format!("cannot read it: {e}")),
        };
        let Some(rest) = bytes.strip_prefix(ENTRY_MAGIC) else {
            return Err("it is not an entry this host wrote (no tollgate header)".into());
        };
        if rest.len() < TAG_BYTES {
            return Err("it is truncated".into());
        }
        let (tag, compiled) = rest.split_at(TAG_BYTES);
        self.mac(id, digest, compiled)
            .verify_slice(tag)
            .map_err(|_| {
                format!("its MAC does not match: this host did not write it for component {digest} on this engine")
            })?;
        deserialize(engine, compiled)
            .map(Some)
            .map_err(|e| format!("{e:#}"))
    }

    /// Writes the compiled form of component `digest` (mode 0600, under a
    /// 0700 directory), replacing any entry there.
    pub(crate) fn store(
        &self,
        component: &Component,
        id: &EngineId,
        digest: &str,
    ) -> std::io::Result<()> {
        let compiled = component.serialize().map_err(std::io::Error::other)?;
        let tag = self.mac(id, digest, &compiled).finalize().into_bytes();
        let mut entry = Vec::with_capacity(ENTRY_MAGIC.len() + TAG_BYTES + compiled.len());
        entry.extend_from_slice(ENTRY_MAGIC);
        entry.extend_from_slice(&tag);
        entry.extend_from_slice(&compiled);
        let path = self.entry_path(id, digest);
        if let Some(dir) = path.parent() {
            files::create_dir(dir)?;
        }
        files::write_atomic(&path, &entry)
    }
}

/// Names an engine configuration: the sha256 of wasmtime's precompile
/// compatibility hash, which changes with the wasmtime version, the target
/// and every setting that affects compiled code.
#[derive(Clone, Debug)]
pub(crate) struct EngineId {
    /// All 64 hex digits, bound into each entry's MAC.
    full: String,
    /// The cache subdirectory: `engine-` and the first 16 hex digits.
    dir: String,
}

impl EngineId {
    pub(crate) fn of(engine: &wasmtime::Engine) -> Self {
        use sha2::Digest as _;
        use std::hash::Hash as _;
        struct Feed(Sha256);
        impl std::hash::Hasher for Feed {
            fn write(&mut self, bytes: &[u8]) {
                self.0.update(bytes);
            }
            fn finish(&self) -> u64 {
                0
            }
        }
        let mut feed = Feed(Sha256::new());
        engine.precompile_compatibility_hash().hash(&mut feed);
        let full = hex::encode(feed.0.finalize());
        let dir = format!("engine-{}", &full[..16]);
        Self { full, dir }
    }
}

/// Deserializes compiled bytes this host wrote and authenticated.
#[allow(unsafe_code)]
fn deserialize(engine: &wasmtime::Engine, compiled: &[u8]) -> wasmtime::Result<Component> {
    // SAFETY: `compiled` comes from a cache entry whose HMAC, keyed by this
    // host's secret (mode 0600 in its state directory), covers the
    // component's sha256, this engine's compatibility hash and these exact
    // bytes: so this host's `Component::serialize` wrote them for this
    // component on an engine like this one. wasmtime still checks its own
    // header. The bytes were read into memory, not mapped, so a later change
    // to the file cannot touch a running host.
    unsafe { Component::deserialize(engine, compiled) }
}
