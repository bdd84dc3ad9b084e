//! The license rules every host on the shared store runs with.
//!
//! One row holds them all, as JSON. The first host to start sets them from
//! its config; a host whose config says otherwise refuses to start and
//! names each difference. `tollgate license rules --store` sets them from a
//! config file, and every running host puts them in force within its
//! grants period, as it does grants.

use super::grants::{announce, lock_grants};
use super::{PgError, PgStore, to_db};
use std::collections::BTreeMap;
use tollgate_license::{LicenseManager, Rules};

/// Rules per license id.
pub type RuleSet = BTreeMap<String, Rules>;

/// `rules` with each list sorted and without repeats, so that two configs
/// that list the same plugins in another order agree.
fn canonical(rules: &RuleSet) -> RuleSet {
    rules
        .iter()
        .map(|(id, r)| {
            let mut r = r.clone();
            for list in [&mut r.include, &mut r.exclude] {
                list.sort();
                list.dedup();
            }
            (id.clone(), r)
        })
        .collect()
}

/// Each way `here` differs from `shared`, as `[license.ID] key: here …,
/// shared …`; empty when they agree.
pub fn differences(here: &RuleSet, shared: &RuleSet) -> Vec<String> {
    let (here, shared) = (canonical(here), canonical(shared));
    let none = Rules::default();
    let ids: std::collections::BTreeSet<&String> = here.keys().chain(shared.keys()).collect();
    let mut found = Vec::new();
    for id in ids {
        let (h, s) = (
            here.get(id).unwrap_or(&none),
            shared.get(id).unwrap_or(&none),
        );
        let mut field = |key: &str, h: String, s: String| {
            if h != s {
                found.push(format!("[license.{id:?}] {key}: here {h}, shared {s}"));
            }
        };
        field(
            "include",
            format!("{:?}", h.include),
            format!("{:?}", s.include),
        );
        field(
            "exclude",
            format!("{:?}", h.exclude),
            format!("{:?}", s.exclude),
        );
        field(
            "reserve",
            format!("{:?}", h.reserve),
            format!("{:?}", s.reserve),
        );
        let max = |m: Option<u32>| m.map_or_else(|| "none".to_string(), |n| n.to_string());
        field(
            "max_per_plugin",
            max(h.max_per_plugin),
            max(s.max_per_plugin),
        );
        let pool = |exact: bool| if exact { "\"exact\"" } else { "\"batch\"" }.to_string();
        field("pool", pool(h.exact), pool(s.exact));
    }
    found
}

impl PgStore {
    /// The shared rules; `None` when no host or operator has set them yet.
    pub async fn shared_rules(&self) -> Result<Option<RuleSet>, PgError> {
        stored(&self.client().await?).await
    }

    /// Checks a starting host's rules against the shared ones: sets them
    /// when none are set yet, refuses with every difference when they
    /// differ.
    pub async fn agree_rules(&self, here: &RuleSet, host: &str, now: u64) -> Result<(), PgError> {
        let mut client = self.client().await?;
        let tx = client
            .transaction()
            .await
            .map_err(PgError::query("begin checking the license rules"))?;
        lock_grants(&tx).await?;
        match stored(&tx).await? {
            Some(shared) => {
                let found = differences(here, &shared);
                if !found.is_empty() {
                    return Err(PgError::RulesDiffer(found));
                }
            }
            None => write(&tx, here, host, now).await?,
        }
        tx.commit()
            .await
            .map_err(PgError::query("commit the license rules"))
    }

    /// Sets the shared rules (every host puts them in force within its
    /// grants period); each difference from the rules they replace.
    pub async fn set_rules(
        &self,
        rules: &RuleSet,
        by: &str,
        now: u64,
    ) -> Result<Vec<String>, PgError> {
        let mut client = self.client().await?;
        let tx = client
            .transaction()
            .await
            .map_err(PgError::query("begin setting the license rules"))?;
        lock_grants(&tx).await?;
        let before = stored(&tx).await?.unwrap_or_default();
        write(&tx, rules, by, now).await?;
        announce(&tx).await?;
        tx.commit()
            .await
            .map_err(PgError::query("commit the license rules"))?;
        Ok(differences(rules, &before))
    }

    /// Puts the shared rules in force in `licenses`: each installed id gets
    /// its shared rules, or none.
    pub(crate) async fn apply_rules_to(&self, licenses: &LicenseManager) -> Result<(), PgError> {
        let Some(rules) = self.shared_rules().await? else {
            return Ok(());
        };
        for id in licenses.ids() {
            let r = rules.get(&id).cloned().unwrap_or_default();
            // An id removed meanwhile has nothing to put rules on.
            let _ = licenses.set_rules(&id, r);
        }
        Ok(())
    }
}

/// The stored rules; `None` when none are set.
async fn stored(
    client: &impl deadpool_postgres::GenericClient,
) -> Result<Option<RuleSet>, PgError> {
    let row = client
        .query_opt("SELECT rules FROM license_rules", &[])
        .await
        .map_err(PgError::query("read the license rules"))?;
    row.map(|r| {
        serde_json::from_str(&r.get::<_, String>(0))
            .map_err(|e| PgError::RulesUnreadable(e.to_string()))
    })
    .transpose()
}

/// Stores `rules` as the shared ones.
async fn write(
    client: &impl deadpool_postgres::GenericClient,
    rules: &RuleSet,
    by: &str,
    now: u64,
) -> Result<(), PgError> {
    let text = serde_json::to_string(&canonical(rules))
        .map_err(|e| PgError::RulesUnreadable(e.to_string()))?;
    client
        .execute(
            "INSERT INTO license_rules (one, rules, set_at, set_by) VALUES (true, $1, $2, $3)
             ON CONFLICT (one) DO UPDATE
                 SET rules = EXCLUDED.rules, set_at = EXCLUDED.set_at, set_by = EXCLUDED.set_by",
            &[&text, &to_db(now), &by],
        )
        .await
        .map_err(PgError::query("store the license rules"))?;
    Ok(())
}
