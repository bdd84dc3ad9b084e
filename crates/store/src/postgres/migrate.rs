//! Moves a single host's state directory into the shared store: its
//! trusted issuers (names and scopes), its grants (signed text, installed
//! again through the store's own checks), its revocations (with their
//! times) and its whole ledger, as that host's hash chain.
//!
//! The state directory is opened read-only with its host lock held, so no
//! host runs on it meanwhile, and its chain must verify. Everything is
//! compared with what the store holds before the first write: an item the
//! store has already is not moved again, an item the store holds
//! differently refuses the whole move. The ledger goes through the host's
//! own [`Shipper`], so a host later started on this state directory with
//! the store goes on with the same chain. At the end the host's chain is
//! verified in the store and its rows and head hash compared with the
//! local chain.

use super::ledger::Shipper;
use super::{PgError, PgStore};
use crate::state::{Grant, HostKey, HostLock, IntegrityError, State, StateError, TrustedIssuer};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use tollgate_license::issuer::{IssuerPublicKey, format_time};

/// Why a state directory was not moved, or not wholly.
#[derive(Debug, thiserror::Error)]
pub enum MigrateError {
    /// The state directory could not be read.
    #[error(transparent)]
    State(#[from] StateError),
    /// A host runs on the state directory.
    #[error(
        "a tollgate host is running on state directory {0}; stop it first, so that its ledger does not grow while it moves; nothing was moved"
    )]
    HostRunning(PathBuf),
    /// The state directory's own ledger chain does not verify.
    #[error(
        "the ledger of state directory {dir} does not verify: {problem}; nothing was moved. `tollgate audit verify --state {dir}` lists every problem; restore the state directory from a backup"
    )]
    ChainBroken {
        /// The state directory.
        dir: PathBuf,
        /// The first problem found, naming its row.
        problem: String,
    },
    /// A trusted issuer's key id is not the id of its stored public key.
    #[error(
        "trusted issuer key {0} in the state directory does not match its stored public key: the database was changed outside tollgate; restore it from a backup"
    )]
    KeyMismatch(String),
    /// The host key could not be read or made.
    #[error(transparent)]
    HostKey(#[from] IntegrityError),
    /// The shared store could not be read.
    #[error(transparent)]
    Store(#[from] PgError),
    /// The store's chain of this host does not verify.
    #[error(
        "the shared store's ledger of host {host} does not verify at row {seq}; nothing was moved. `tollgate audit verify --store URL` shows it"
    )]
    StoreChainBroken {
        /// The host id.
        host: String,
        /// The first row whose hash does not follow.
        seq: u64,
    },
    /// The store holds an item differently from the state directory.
    #[error(
        "{item} differs between the state directory and the shared store: here {here}, in the store {there}; nothing was moved. Make them agree (or move into another database), then run `tollgate store migrate` again"
    )]
    Conflict {
        /// What it is.
        item: String,
        /// What the state directory holds.
        here: String,
        /// What the store holds.
        there: String,
    },
    /// The store refused an item while moving.
    #[error(
        "{item} was not moved: {source}. What came before it was moved; put this right and run `tollgate store migrate` again (nothing moves twice)"
    )]
    Refused {
        /// What it is.
        item: String,
        /// Why.
        #[source]
        source: PgError,
    },
    /// After moving, the store's chain of this host is not the local one.
    #[error(
        "after moving, the shared store's ledger of host {host} does not match the state directory's: {detail}; run `tollgate audit verify --store URL`"
    )]
    Unverified {
        /// The host id.
        host: String,
        /// What differs.
        detail: String,
    },
}

/// A single host's state directory opened to be moved: read-only, its host
/// lock held (no host starts on it meanwhile), its ledger's chain verified.
#[derive(Debug)]
pub struct SourceDir {
    state: State,
    _lock: HostLock,
    /// Rows of its verified chain.
    rows: u64,
    /// The hash of its last row.
    head: [u8; 32],
}

impl SourceDir {
    /// Opens state directory `dir`; refused while a host runs on it, or if
    /// its ledger's chain does not verify (naming the first bad row).
    pub fn open(dir: &Path) -> Result<Self, MigrateError> {
        let state = State::open_read_only(dir)?;
        let lock = state.lock_host().map_err(|e| match e {
            StateError::HostRunning(dir) => MigrateError::HostRunning(dir),
            e => e.into(),
        })?;
        let report = state.audit()?;
        if let Some(problem) = report.problems.first() {
            return Err(MigrateError::ChainBroken {
                dir: dir.to_path_buf(),
                problem: problem.clone(),
            });
        }
        let head = state.chain_hash_at(report.head_seq)?;
        Ok(Self {
            state,
            _lock: lock,
            rows: report.rows,
            head,
        })
    }

    /// The rows of its ledger.
    pub fn rows(&self) -> u64 {
        self.rows
    }
}

/// How many of a kind of item moved, and how many the store had already.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct Moved {
    /// Written to the store now.
    pub moved: u64,
    /// In the store already, the same.
    pub already: u64,
}

impl Moved {
    fn count(&mut self, already: bool) {
        if already {
            self.already += 1;
        } else {
            self.moved += 1;
        }
    }
}

/// What a move did.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Migration {
    /// The host's id in the store: its state directory's host key id.
    pub host_id: String,
    /// Whether the host key was made now (the state directory had none).
    pub host_key_made: bool,
    /// Trusted issuer keys.
    pub issuers: Moved,
    /// Installed grants.
    pub grants: Moved,
    /// Revoked license ids.
    pub revocations: Moved,
    /// Grants revoked one by one.
    pub grant_revocations: Moved,
    /// Ledger rows.
    pub rows: Moved,
    /// The hash of the chain's last row, hex, the same here and in the store.
    pub head_hash: String,
}

/// A trusted issuer as people see it in a conflict.
fn issuer_terms(i: &TrustedIssuer) -> String {
    format!(
        "issuer {:?} with scope [{}]",
        i.name.as_deref().unwrap_or(&i.key_id),
        i.scope.join(", ")
    )
}

/// A grant's terms as people see them in a conflict.
fn grant_terms(g: &Grant) -> String {
    let time = |t: Option<u64>| t.map_or_else(|| "-".to_string(), format_time);
    format!(
        "license {}, issuer {}, {} seat(s), {} .. {}, plugins {:?}, customer {:?}",
        g.license_id,
        g.issuer,
        g.seats
            .map_or_else(|| "unlimited".to_string(), |n| n.to_string()),
        time(g.not_before),
        time(g.expires_at),
        g.plugins,
        g.customer
    )
}

/// Whether two grants have the same terms (whenever each was installed).
fn same_terms(a: &Grant, b: &Grant) -> bool {
    Grant {
        installed_at: b.installed_at,
        ..a.clone()
    } == *b
}

/// Local ids missing from the store `there`, counting those it has.
fn missing<'a>(
    here: &'a BTreeMap<String, u64>,
    there: &BTreeMap<String, u64>,
    counted: &mut Moved,
) -> Vec<(&'a String, u64)> {
    let mut out = Vec::new();
    for (id, at) in here {
        let already = there.contains_key(id);
        counted.count(already);
        if !already {
            out.push((id, *at));
        }
    }
    out
}

impl PgStore {
    /// Moves state directory `source` into this store as host `host_id`
    /// (its host key's id; the key is made if it has none). Conflicts are
    /// found before anything is written; what the store holds already is
    /// left as it is and counted.
    pub async fn migrate_from(&self, source: &SourceDir) -> Result<Migration, MigrateError> {
        let state = &source.state;
        let key_dir = state.dir();
        let (key, host_key_made) = match HostKey::open(key_dir)? {
            Some(key) => (key, false),
            None => (HostKey::open_or_create(key_dir)?, true),
        };
        let host = key.key_id();
        let mut report = Migration {
            host_id: host.clone(),
            host_key_made,
            issuers: Moved::default(),
            grants: Moved::default(),
            revocations: Moved::default(),
            grant_revocations: Moved::default(),
            rows: Moved::default(),
            head_hash: hex::encode(source.head),
        };

        // Everything compared before the first write.
        let keys: BTreeMap<String, IssuerPublicKey> = state
            .trusted_keys()?
            .into_iter()
            .map(|k| (k.key_id(), k))
            .collect();
        let theirs = self.trusted().await?;
        let mut to_trust = Vec::new();
        for issuer in state.trusted()? {
            let same = |t: &TrustedIssuer| t.name == issuer.name && t.scope == issuer.scope;
            let conflict = |item: String, there: &TrustedIssuer| MigrateError::Conflict {
                item,
                here: issuer_terms(&issuer),
                there: issuer_terms(there),
            };
            if let Some(there) = theirs.iter().find(|t| t.key_id == issuer.key_id) {
                if !same(there) {
                    return Err(conflict(format!("issuer key {}", issuer.key_id), there));
                }
                report.issuers.count(true);
                continue;
            }
            if let Some(there) = theirs
                .iter()
                .find(|t| t.name == issuer.name && t.scope != issuer.scope)
            {
                return Err(conflict(
                    format!(
                        "the scope of issuer {:?}",
                        there.name.as_deref().unwrap_or("")
                    ),
                    there,
                ));
            }
            let key = keys
                .get(&issuer.key_id)
                .ok_or_else(|| MigrateError::KeyMismatch(issuer.key_id.clone()))?;
            report.issuers.count(false);
            to_trust.push((key.clone(), issuer));
        }

        let theirs: BTreeMap<String, Grant> = self
            .grants()
            .await?
            .into_iter()
            .map(|g| (g.grant_id.clone(), g))
            .collect();
        let mut to_install = Vec::new();
        for (grant, text) in state.grants_with_text()? {
            match theirs.get(&grant.grant_id) {
                Some(there) if same_terms(there, &grant) => report.grants.count(true),
                Some(there) => {
                    return Err(MigrateError::Conflict {
                        item: format!("grant {}", grant.grant_id),
                        here: grant_terms(&grant),
                        there: grant_terms(there),
                    });
                }
                None => {
                    report.grants.count(false);
                    to_install.push((grant, text));
                }
            }
        }

        let revocations = state.revocations()?;
        let to_revoke = missing(
            &revocations,
            &self.revocations().await?,
            &mut report.revocations,
        );
        let grant_revocations = state.grant_revocations()?;
        let to_revoke_grants = missing(
            &grant_revocations,
            &self.grant_revocations().await?,
            &mut report.grant_revocations,
        );

        let there = match self.host_chain(&host).await? {
            Ok(head) => head,
            Err(seq) => return Err(MigrateError::StoreChainBroken { host, seq }),
        };
        if there.rows > source.rows {
            return Err(MigrateError::Conflict {
                item: format!("the ledger of host {host}"),
                here: format!("{} rows", source.rows),
                there: format!("{} rows", there.rows),
            });
        }
        // Both chains verify: equal hashes at the store's last row mean
        // equal rows up to it.
        let here = state.chain_hash_at(there.rows)?;
        if here != there.hash {
            return Err(MigrateError::Conflict {
                item: format!(
                    "ledger row {} of host {host} (or a row before it)",
                    there.rows
                ),
                here: format!("hash {}", hex::encode(here)),
                there: format!("hash {}", hex::encode(there.hash)),
            });
        }
        report.rows.already = there.rows;

        // The writes, each item through the store's own operation.
        for (key, issuer) in to_trust {
            self.trust(
                &key,
                issuer.name.as_deref(),
                Some(issuer.scope.as_slice()),
                issuer.added_at,
            )
            .await
            .map_err(|source| MigrateError::Refused {
                item: format!("issuer key {}", issuer.key_id),
                source,
            })?;
        }
        for (grant, text) in to_install {
            self.install_text(&text, grant.installed_at)
                .await
                .map_err(|source| MigrateError::Refused {
                    item: format!("grant {} of license {}", grant.grant_id, grant.license_id),
                    source,
                })?;
        }
        for (license, at) in to_revoke {
            self.revoke(license, at)
                .await
                .map_err(|source| MigrateError::Refused {
                    item: format!("the revocation of license {license}"),
                    source,
                })?;
        }
        for (grant, at) in to_revoke_grants {
            self.revoke_grant(grant, at)
                .await
                .map_err(|source| MigrateError::Refused {
                    item: format!("the revocation of grant {grant}"),
                    source,
                })?;
        }
        let shipper = Shipper::new(self.clone(), state.db_path(), &host).await?;
        let ledger = |source| MigrateError::Refused {
            item: format!("the ledger of host {host}"),
            source,
        };
        loop {
            match shipper.ship_once().await.map_err(ledger)? {
                0 => break,
                n => report.rows.moved += n as u64,
            }
        }

        let detail = match self.host_chain(&host).await? {
            Err(seq) => Some(format!("its chain does not verify at row {seq}")),
            Ok(head) if head.rows != source.rows => Some(format!(
                "it has {} rows, the state directory {}",
                head.rows, source.rows
            )),
            Ok(head) if head.hash != source.head => Some(format!(
                "its head hash is {}, the state directory's {}",
                hex::encode(head.hash),
                report.head_hash
            )),
            Ok(_) => None,
        };
        match detail {
            Some(detail) => Err(MigrateError::Unverified { host, detail }),
            None => Ok(report),
        }
    }
}
