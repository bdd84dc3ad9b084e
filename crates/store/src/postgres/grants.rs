//! Trust, issuer scopes, grants and revocations in the shared store, with
//! the checks a single host's state directory makes: a license is installed
//! only if its signature verifies under a trusted issuer and its id is in
//! that issuer's scope; every grant is checked again against its signed
//! text whenever the grants are read.

use super::{PgError, PgStore, from_db, to_db};
use crate::state::{
    Grant, Installed, Scopes, TrustedIssuer, issuer_name, scope_to_store, seat_grants_of,
    stored_grant_problem, verified_grant,
};
use crate::{StateError, state::ScopeError};
use deadpool_postgres::GenericClient;
use std::collections::{BTreeMap, BTreeSet};
use tollgate_license::issuer::IssuerPublicKey;
use tollgate_license::store::apply_grants;
use tollgate_license::{Grant as SeatGrant, LicenseManager};

/// The channel on which a change of trust, grants or revocations is
/// announced, so every host reads the grants again at once.
pub const CHANNEL: &str = "tollgate_grants";

/// Key of the advisory lock that serializes installs and trust changes, so
/// a scope check and the write it allows are one step across hosts.
const GRANTS_LOCK: i64 = 0x7467_6772_616e_7473; // "tggrants"

impl PgStore {
    /// Trusts an issuer key under issuer `name` (its key id when `None`),
    /// with the id scope `ids` (or the default scope for a new name); false
    /// if the key was trusted already. See `State::trust_scoped`.
    pub async fn trust(
        &self,
        key: &IssuerPublicKey,
        name: Option<&str>,
        ids: Option<&[String]>,
        now: u64,
    ) -> Result<bool, PgError> {
        let mut client = self.client().await?;
        let tx = client
            .transaction()
            .await
            .map_err(PgError::query("begin trusting an issuer"))?;
        lock_grants(&tx).await?;
        let key_id = key.key_id();
        let known: Option<String> = tx
            .query_opt(
                "SELECT name FROM trusted_issuers WHERE key_id = $1",
                &[&key_id],
            )
            .await
            .map_err(PgError::query("read a trusted issuer"))?
            .map(|r| r.get(0));
        let name = issuer_name(known.as_deref(), name, &key_id);
        let stored: Option<String> = tx
            .query_opt(
                "SELECT patterns FROM issuer_scopes WHERE name = $1",
                &[&name],
            )
            .await
            .map_err(PgError::query("read an issuer scope"))?
            .map(|r| r.get(0));
        let to_store = scope_to_store(&name, stored.as_deref(), ids).map_err(StateError::from)?;
        if let Some(patterns) = to_store {
            tx.execute(
                "INSERT INTO issuer_scopes (name, patterns) VALUES ($1, $2)",
                &[&name, &patterns.join("\n")],
            )
            .await
            .map_err(PgError::query("store an issuer scope"))?;
        }
        let added = if known.is_some() {
            false
        } else {
            tx.execute(
                "INSERT INTO trusted_issuers (key_id, public_key, name, added_at)
                 VALUES ($1, $2, $3, $4) ON CONFLICT (key_id) DO NOTHING",
                &[&key_id, &&key.to_bytes()[..], &name, &to_db(now)],
            )
            .await
            .map_err(PgError::query("trust an issuer"))?
                == 1
        };
        announce(&tx).await?;
        tx.commit()
            .await
            .map_err(PgError::query("commit trusting an issuer"))?;
        Ok(added)
    }

    /// The trusted issuers, each with its issuer's scope.
    pub async fn trusted(&self) -> Result<Vec<TrustedIssuer>, PgError> {
        let client = self.client().await?;
        let scopes = scopes(&client).await?;
        let rows = client
            .query(
                "SELECT key_id, name, added_at FROM trusted_issuers ORDER BY added_at, key_id",
                &[],
            )
            .await
            .map_err(PgError::query("list trusted issuers"))?;
        Ok(rows
            .iter()
            .map(|r| {
                let name: String = r.get(1);
                TrustedIssuer {
                    key_id: r.get(0),
                    scope: scopes.patterns(&name),
                    name: Some(name),
                    added_at: from_db(r.get(2)),
                }
            })
            .collect())
    }

    /// Verifies license text and records its grant, as
    /// `State::install_text` does: installing it twice adds nothing, a
    /// grant outside its issuer's scope or of an id another issuer granted
    /// is refused, and a new grant never lifts a revocation.
    pub async fn install_text(&self, text: &str, now: u64) -> Result<Installed, PgError> {
        let mut client = self.client().await?;
        let tx = client
            .transaction()
            .await
            .map_err(PgError::query("begin installing a license"))?;
        lock_grants(&tx).await?;
        let (grant, issued_at) = verified_grant(text, &trusted_keys(&tx).await?, now)?;
        let granted: Vec<(String, String)> = tx
            .query(
                "SELECT license_id, issuer FROM grants WHERE license_id = $1
                 AND grant_id NOT IN (SELECT grant_id FROM grant_revocations)",
                &[&grant.license_id],
            )
            .await
            .map_err(PgError::query("read the grants of a license"))?
            .iter()
            .map(|r| (r.get(0), r.get(1)))
            .collect();
        scopes(&tx)
            .await?
            .check_install(&grant, &granted)
            .map_err(|e: ScopeError| StateError::from(e))?;
        let seats = grant.seats.map(|n| i32::try_from(n).unwrap_or(i32::MAX));
        let n = tx
            .execute(
                "INSERT INTO grants (grant_id, license_id, issuer, seats, not_before, expires_at,
                     plugins, customer, issued_at, installed_at, file)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)
                 ON CONFLICT (grant_id) DO NOTHING",
                &[
                    &grant.grant_id,
                    &grant.license_id,
                    &grant.issuer,
                    &seats,
                    &grant.not_before.map(to_db),
                    &grant.expires_at.map(to_db),
                    &grant.plugins.join("\n"),
                    &grant.customer,
                    &to_db(issued_at),
                    &to_db(now),
                    &text,
                ],
            )
            .await
            .map_err(PgError::query("install a grant"))?;
        let revoked: bool = tx
            .query_one(
                "SELECT EXISTS (SELECT 1 FROM revocations WHERE license_id = $1)",
                &[&grant.license_id],
            )
            .await
            .map_err(PgError::query("read a revocation"))?
            .get(0);
        announce(&tx).await?;
        tx.commit()
            .await
            .map_err(PgError::query("commit installing a license"))?;
        Ok(Installed {
            grant,
            new: n == 1,
            revoked,
        })
    }

    /// Every installed grant, by license id then install time, each checked
    /// against its stored signed text first.
    pub async fn grants(&self) -> Result<Vec<Grant>, PgError> {
        let client = self.client().await?;
        grants(&client).await
    }

    /// Revokes every grant of `license_id`, also grants installed later.
    pub async fn revoke(&self, license_id: &str, now: u64) -> Result<(), PgError> {
        let client = self.client().await?;
        known_license(&client, license_id).await?;
        client
            .execute(
                "INSERT INTO revocations (license_id, revoked_at) VALUES ($1, $2)
                 ON CONFLICT (license_id) DO NOTHING",
                &[&license_id, &to_db(now)],
            )
            .await
            .map_err(PgError::query("revoke a license"))?;
        announce(&client).await
    }

    /// Lifts the revocation of `license_id`; false if it was not revoked.
    pub async fn unrevoke(&self, license_id: &str) -> Result<bool, PgError> {
        let client = self.client().await?;
        known_license(&client, license_id).await?;
        let n = client
            .execute(
                "DELETE FROM revocations WHERE license_id = $1",
                &[&license_id],
            )
            .await
            .map_err(PgError::query("lift a revocation"))?;
        announce(&client).await?;
        Ok(n == 1)
    }

    /// Revokes one grant for good; returns its license id.
    pub async fn revoke_grant(&self, grant_id: &str, now: u64) -> Result<String, PgError> {
        let client = self.client().await?;
        let license: String = client
            .query_opt(
                "SELECT license_id FROM grants WHERE grant_id = $1",
                &[&grant_id],
            )
            .await
            .map_err(PgError::query("read a grant"))?
            .map(|r| r.get(0))
            .ok_or_else(|| StateError::UnknownGrant(grant_id.to_string()))?;
        client
            .execute(
                "INSERT INTO grant_revocations (grant_id, license_id, revoked_at)
                 VALUES ($1, $2, $3) ON CONFLICT (grant_id) DO NOTHING",
                &[&grant_id, &license, &to_db(now)],
            )
            .await
            .map_err(PgError::query("revoke a grant"))?;
        announce(&client).await?;
        Ok(license)
    }

    /// Revoked license ids with the time of revocation.
    pub async fn revocations(&self) -> Result<BTreeMap<String, u64>, PgError> {
        let client = self.client().await?;
        Ok(client
            .query("SELECT license_id, revoked_at FROM revocations", &[])
            .await
            .map_err(PgError::query("read revocations"))?
            .iter()
            .map(|r| (r.get(0), from_db(r.get(1))))
            .collect())
    }

    /// Grants revoked one by one, with the time of revocation.
    pub async fn grant_revocations(&self) -> Result<BTreeMap<String, u64>, PgError> {
        let client = self.client().await?;
        grant_revocations(&client).await
    }

    /// The grants hosts enforce, per license id, as `State::seat_grants`
    /// gives them: grants revoked alone, or left out by the issuers'
    /// scopes, give no seat.
    pub async fn seat_grants(&self) -> Result<BTreeMap<String, Vec<SeatGrant>>, PgError> {
        let client = self.client().await?;
        let revoked: BTreeSet<String> = grant_revocations(&client).await?.into_keys().collect();
        let grants = grants(&client).await?;
        let problems = scopes(&client).await?.problems(&grants, &revoked);
        let left_out: BTreeSet<&str> = problems
            .iter()
            .flat_map(|p| p.grants.iter().map(String::as_str))
            .collect();
        Ok(seat_grants_of(&grants, &revoked, &left_out))
    }
}

impl PgStore {
    /// Gives issuer `name` the id scope `patterns`, replacing its scope;
    /// returns the scope it had. Every host applies it within its grants
    /// period (a grant outside its issuer's scope gives no seats).
    pub async fn set_scope(&self, name: &str, patterns: &[String]) -> Result<Vec<String>, PgError> {
        let patterns = crate::state::clean_scope(patterns).map_err(StateError::from)?;
        let mut client = self.client().await?;
        let tx = client
            .transaction()
            .await
            .map_err(PgError::query("begin setting an issuer scope"))?;
        lock_grants(&tx).await?;
        let known = scopes(&tx).await?;
        if !known.knows(name) {
            return Err(StateError::from(ScopeError::UnknownIssuer(name.to_string())).into());
        }
        tx.execute(
            "INSERT INTO issuer_scopes (name, patterns) VALUES ($1, $2)
             ON CONFLICT (name) DO UPDATE SET patterns = EXCLUDED.patterns",
            &[&name, &patterns.join("\n")],
        )
        .await
        .map_err(PgError::query("store an issuer scope"))?;
        announce(&tx).await?;
        tx.commit()
            .await
            .map_err(PgError::query("commit an issuer scope"))?;
        Ok(known.patterns(name))
    }

    /// Puts the store's grants, revocations and license rules in force in
    /// `licenses` (a shared host's manager).
    pub async fn apply_to(&self, licenses: &LicenseManager) -> Result<(), PgError> {
        let revoked = self.revocations().await?;
        let grants = self.seat_grants().await?;
        apply_grants(licenses, grants, &revoked)?;
        self.apply_rules_to(licenses).await?;
        licenses.sweep();
        Ok(())
    }

    /// Keeps `licenses` in step with the store until `shutdown` completes:
    /// at once when a change is announced, and every `every` in any case
    /// (announcements are lost while the listening connection is down).
    /// A failed read is logged and tried again.
    pub async fn keep_grants(
        &self,
        licenses: std::sync::Arc<LicenseManager>,
        every: std::time::Duration,
        shutdown: impl std::future::Future<Output = ()>,
    ) {
        let mut shutdown = std::pin::pin!(shutdown);
        let mut listener = None;
        loop {
            if listener.is_none() {
                listener = self.listen(&[CHANNEL]).await.ok();
            }
            if let Err(e) = self.apply_to(&licenses).await {
                tracing::warn!("grants not read from the shared store: {e}");
            }
            tokio::select! {
                () = &mut shutdown => break,
                () = tokio::time::sleep(every) => {}
                heard = super::batches::next_notification(&mut listener) => {
                    if heard.is_none() {
                        listener = None;
                    }
                }
            }
        }
    }
}

/// Tells every listening host to read the grants again (on commit, inside
/// a transaction).
pub(super) async fn announce(client: &impl GenericClient) -> Result<(), PgError> {
    client
        .execute("SELECT pg_notify($1, '')", &[&CHANNEL])
        .await
        .map_err(PgError::query("announce a change of grants"))?;
    Ok(())
}

/// Serializes installs and trust changes across hosts (until commit).
pub(super) async fn lock_grants(client: &impl GenericClient) -> Result<(), PgError> {
    client
        .execute("SELECT pg_advisory_xact_lock($1)", &[&GRANTS_LOCK])
        .await
        .map_err(PgError::query("lock the grants"))?;
    Ok(())
}

async fn trusted_keys(client: &impl GenericClient) -> Result<Vec<IssuerPublicKey>, PgError> {
    client
        .query("SELECT public_key FROM trusted_issuers", &[])
        .await
        .map_err(PgError::query("read trusted issuer keys"))?
        .iter()
        .map(|r| {
            IssuerPublicKey::from_bytes(r.get::<_, &[u8]>(0))
                .map_err(|e| PgError::Refused(StateError::from(e)))
        })
        .collect()
}

async fn scopes(client: &impl GenericClient) -> Result<Scopes, PgError> {
    let by_name: Vec<(String, String)> = client
        .query("SELECT name, patterns FROM issuer_scopes", &[])
        .await
        .map_err(PgError::query("read issuer scopes"))?
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    let names: Vec<(String, String)> = client
        .query("SELECT key_id, name FROM trusted_issuers", &[])
        .await
        .map_err(PgError::query("read issuer names"))?
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    Ok(Scopes::from_rows(by_name, names))
}

async fn grants(client: &impl GenericClient) -> Result<Vec<Grant>, PgError> {
    let trusted = trusted_keys(client).await?;
    let rows = client
        .query(
            "SELECT grant_id, license_id, issuer, seats, not_before, expires_at, plugins, customer,
                    installed_at, issued_at, file
             FROM grants ORDER BY license_id, installed_at, grant_id",
            &[],
        )
        .await
        .map_err(PgError::query("read grants"))?;
    rows.iter()
        .map(|r| {
            let plugins: String = r.get(6);
            let grant = Grant {
                grant_id: r.get(0),
                license_id: r.get(1),
                issuer: r.get(2),
                seats: r
                    .get::<_, Option<i32>>(3)
                    .map(|n| u32::try_from(n).unwrap_or(0)),
                not_before: r.get::<_, Option<i64>>(4).map(from_db),
                expires_at: r.get::<_, Option<i64>>(5).map(from_db),
                plugins: plugins.lines().map(str::to_string).collect(),
                customer: r.get(7),
                installed_at: from_db(r.get(8)),
            };
            let issued_at = from_db(r.get(9));
            let file: String = r.get(10);
            stored_grant_problem(&grant, issued_at, &file, &trusted).map_err(|reason| {
                PgError::GrantRefused {
                    grant: grant.grant_id.clone(),
                    license: grant.license_id.clone(),
                    reason,
                }
            })?;
            Ok(grant)
        })
        .collect()
}

async fn grant_revocations(client: &impl GenericClient) -> Result<BTreeMap<String, u64>, PgError> {
    Ok(client
        .query("SELECT grant_id, revoked_at FROM grant_revocations", &[])
        .await
        .map_err(PgError::query("read grant revocations"))?
        .iter()
        .map(|r| (r.get(0), from_db(r.get(1))))
        .collect())
}

async fn known_license(client: &impl GenericClient, license_id: &str) -> Result<(), PgError> {
    let known = client
        .query_opt(
            "SELECT 1 FROM grants WHERE license_id = $1 LIMIT 1",
            &[&license_id],
        )
        .await
        .map_err(PgError::query("read a license"))?;
    match known {
        Some(_) => Ok(()),
        None => Err(StateError::UnknownLicense(license_id.to_string()).into()),
    }
}

/// One host's share of a grant, as the shared store sees it.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct HostShare {
    /// The host id.
    pub host: String,
    /// Seats in its batch (0 when it has none or it lapsed).
    pub batch: u32,
    /// Seats its calls hold, from its shipped ledger rows.
    pub in_use: u32,
    /// Its calls waiting for a seat of the license, at its last lease.
    pub waiting: u32,
    /// Seats held per plugin, from its shipped ledger rows.
    pub holders: BTreeMap<String, u32>,
}

/// One grant across every host sharing it.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct SharedGrant {
    /// The license id.
    pub license_id: String,
    /// The grant id.
    pub grant_id: String,
    /// Its seats (`None`: unlimited).
    pub seats: Option<u32>,
    /// Revoked alone or with its license id.
    pub revoked: bool,
    /// Each host with a live batch of it or seats of it in use.
    pub hosts: Vec<HostShare>,
}

impl PgStore {
    /// Every grant with each host's live batch and seats in use (from the
    /// rows shipped so far), by license id then grant.
    pub async fn shared_status(&self) -> Result<Vec<SharedGrant>, PgError> {
        let client = self.client().await?;
        let revoked: BTreeSet<String> = client
            .query(
                "SELECT grant_id FROM grant_revocations
                 UNION SELECT g.grant_id FROM grants g JOIN revocations r USING (license_id)",
                &[],
            )
            .await
            .map_err(PgError::query("read revocations"))?
            .iter()
            .map(|r| r.get(0))
            .collect();
        let mut hosts: BTreeMap<(String, String), HostShare> = BTreeMap::new();
        let count = |n: i64| u32::try_from(n.max(0)).unwrap_or(u32::MAX);
        for r in client
            .query(
                "SELECT grant_id, host_id, seats, waiting FROM seat_batches
                 WHERE expires_at > clock_timestamp()",
                &[],
            )
            .await
            .map_err(PgError::query("read seat batches"))?
        {
            let (grant, host): (String, String) = (r.get(0), r.get(1));
            hosts.insert(
                (grant, host.clone()),
                HostShare {
                    host,
                    batch: count(i64::from(r.get::<_, i32>(2))),
                    in_use: 0,
                    waiting: count(i64::from(r.get::<_, i32>(3))),
                    holders: BTreeMap::new(),
                },
            );
        }
        for r in client
            .query(
                "SELECT grant_id, host_id, plugin,
                        sum(CASE kind WHEN 'checkout' THEN 1 WHEN 'return' THEN -1 ELSE 0 END)::bigint
                 FROM ledger WHERE grant_id IS NOT NULL GROUP BY grant_id, host_id, plugin",
                &[],
            )
            .await
            .map_err(PgError::query("read seats in use"))?
        {
            let (grant, host, plugin, in_use): (String, String, String, i64) =
                (r.get(0), r.get(1), r.get(2), r.get(3));
            if in_use > 0 {
                let share = hosts
                    .entry((grant, host.clone()))
                    .or_insert(HostShare {
                        host,
                        batch: 0,
                        in_use: 0,
                        waiting: 0,
                        holders: BTreeMap::new(),
                    });
                share.in_use = share.in_use.saturating_add(count(in_use));
                share.holders.insert(plugin, count(in_use));
            }
        }
        let grants = client
            .query(
                "SELECT license_id, grant_id, seats FROM grants ORDER BY license_id, installed_at, grant_id",
                &[],
            )
            .await
            .map_err(PgError::query("read grants"))?;
        Ok(grants
            .iter()
            .map(|r| {
                let grant_id: String = r.get(1);
                SharedGrant {
                    license_id: r.get(0),
                    revoked: revoked.contains(&grant_id),
                    seats: r.get::<_, Option<i32>>(2).map(|n| count(i64::from(n))),
                    hosts: hosts
                        .range((grant_id.clone(), String::new())..)
                        .take_while(|((g, _), _)| *g == grant_id)
                        .map(|(_, share)| share.clone())
                        .collect(),
                    grant_id,
                }
            })
            .collect())
    }
}
