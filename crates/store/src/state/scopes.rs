//! Issuer id scopes: which license ids each trusted issuer may grant.
//!
//! A scope belongs to the issuer's name (`trust add --name`), not to a key,
//! so a rotated key added under the same name keeps it; a key trusted
//! without a name is named by its key id. A scope is a list of glob
//! patterns over license ids (`*`: any run of characters, `?`: one). The
//! pattern `*` alone is the default scope and is weak: it covers only ids
//! that no other issuer's scope names explicitly (by any other pattern), so
//! it never lets one issuer take another's ids. An id granted by one
//! issuer cannot be granted by another unless both scopes name it
//! explicitly.

use super::{Grant, State, StateError};
use rusqlite::{OptionalExtension, params};
use serde::Serialize;
use std::collections::{BTreeMap, BTreeSet};

/// The default scope's only pattern: ids no other issuer names explicitly.
pub const DEFAULT_PATTERN: &str = "*";

/// The table of scopes, one row per issuer name; `patterns` one a line.
pub(super) const TABLE: &str = "CREATE TABLE IF NOT EXISTS issuer_scopes (
    name TEXT PRIMARY KEY, patterns TEXT NOT NULL)";

/// Longest pattern accepted (license ids are at most 128 bytes).
const MAX_PATTERN: usize = 128;

/// A scope could not be set, or a grant falls outside the scopes.
#[derive(Debug, thiserror::Error)]
pub enum ScopeError {
    /// A pattern is malformed.
    #[error(
        "{pattern:?} is not a license id pattern: {why}; use letters, digits and `._:-`, with `*` for any run of characters and `?` for one"
    )]
    BadPattern {
        /// The pattern.
        pattern: String,
        /// What is wrong with it.
        why: &'static str,
    },
    /// No trusted issuer has this name.
    #[error(
        "no trusted issuer is named {0:?}; `tollgate trust list` shows each issuer's name (a key trusted without --name is named by its key id)"
    )]
    UnknownIssuer(String),
    /// `trust add --ids` for a name that already has another scope.
    #[error(
        "issuer {name:?} already has the id scope {current}, and a key added under its name keeps it; to change it run `tollgate trust scope {name} --ids PATTERN...`"
    )]
    ScopeDiffers {
        /// The issuer name.
        name: String,
        /// Its scope now.
        current: String,
    },
    /// The grant's license id is outside its issuer's scope.
    #[error(
        "license {license} is refused: issuer {issuer:?} (key {key}) may grant only ids in its scope {scope}, and {license} is not one{claimed}. If {issuer:?} should grant {license}, add it to its scope: `tollgate trust scope {issuer} --ids {license} ...` (list its current patterns too)"
    )]
    OutOfScope {
        /// The license id.
        license: String,
        /// The issuer's name.
        issuer: String,
        /// The key that signed it.
        key: String,
        /// The issuer's scope, as shown to people.
        scope: String,
        /// Why the default `*` does not cover it, if that is why.
        claimed: String,
    },
    /// Another issuer already granted this license id.
    #[error(
        "grant {grant} of license {license} is refused: {license} is already granted by issuer {other:?}, and issuer {issuer:?} may grant it too only if the operator names {license} explicitly in both scopes (a pattern other than the default `*`). To share it, run `tollgate trust scope {issuer} --ids {license} ...` and `tollgate trust scope {other} --ids {license} ...` (keeping their other patterns); otherwise {license} stays with {other:?}"
    )]
    Taken {
        /// The grant id.
        grant: String,
        /// The license id.
        license: String,
        /// The issuer's name.
        issuer: String,
        /// The issuer that granted it before.
        other: String,
    },
}

/// Checks a pattern: the license id characters plus `*` and `?`.
pub fn validate_pattern(pattern: &str) -> Result<(), ScopeError> {
    let bad = |why| {
        Err(ScopeError::BadPattern {
            pattern: pattern.to_string(),
            why,
        })
    };
    if pattern.is_empty() {
        return bad("it is empty");
    }
    if pattern.len() > MAX_PATTERN {
        return bad("it is longer than 128 bytes");
    }
    if !pattern
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b"._:-*?".contains(&b))
    {
        return bad("it contains a character outside the allowed set");
    }
    Ok(())
}

/// Whether `id` matches glob `pattern` (`*`: any run, `?`: one character).
pub fn glob_matches(pattern: &str, id: &str) -> bool {
    let (p, s) = (pattern.as_bytes(), id.as_bytes());
    let (mut pi, mut si) = (0, 0);
    // Where the last `*` was, and the id position it matched up to.
    let mut star: Option<(usize, usize)> = None;
    while si < s.len() {
        match p.get(pi) {
            Some(b'*') => {
                star = Some((pi, si));
                pi += 1;
            }
            Some(&c) if c == b'?' || c == s[si] => {
                pi += 1;
                si += 1;
            }
            _ => match star {
                Some((sp, ss)) => {
                    pi = sp + 1;
                    si = ss + 1;
                    star = Some((sp, ss + 1));
                }
                None => return false,
            },
        }
    }
    p[pi.min(p.len())..].iter().all(|&c| c == b'*')
}

/// Every issuer's scope and the name of every trusted key.
#[derive(Clone, Debug, Default)]
pub(crate) struct Scopes {
    /// Patterns per issuer name (a name without a row has the default).
    by_name: BTreeMap<String, Vec<String>>,
    /// The issuer name of each trusted key id.
    names: BTreeMap<String, String>,
}

impl Scopes {
    /// Scopes from stored rows: patterns per issuer name, and the issuer
    /// name of each trusted key id.
    /// (`patterns` are stored one a line).
    pub(crate) fn from_rows(
        by_name: impl IntoIterator<Item = (String, String)>,
        names: impl IntoIterator<Item = (String, String)>,
    ) -> Self {
        Self {
            by_name: by_name
                .into_iter()
                .map(|(name, patterns)| (name, patterns.lines().map(str::to_string).collect()))
                .collect(),
            names: names.into_iter().collect(),
        }
    }

    /// The issuer name of key `key_id` (the key id itself when unknown).
    pub(crate) fn name_of(&self, key_id: &str) -> String {
        self.names
            .get(key_id)
            .cloned()
            .unwrap_or_else(|| key_id.to_string())
    }

    /// The patterns of issuer `name`.
    /// Whether `name` is a trusted issuer's name or has a scope of its own.
    pub(crate) fn knows(&self, name: &str) -> bool {
        self.names.values().any(|n| n == name) || self.by_name.contains_key(name)
    }

    pub(crate) fn patterns(&self, name: &str) -> Vec<String> {
        self.by_name
            .get(name)
            .cloned()
            .unwrap_or_else(|| vec![DEFAULT_PATTERN.to_string()])
    }

    /// Whether `name`'s scope names `id` by a pattern other than the default.
    fn explicit(&self, name: &str, id: &str) -> bool {
        self.patterns(name)
            .iter()
            .any(|p| p != DEFAULT_PATTERN && glob_matches(p, id))
    }

    /// Another issuer whose scope names `id` explicitly, if any.
    fn claimant(&self, name: &str, id: &str) -> Option<String> {
        self.by_name
            .keys()
            .find(|other| *other != name && self.explicit(other, id))
            .cloned()
    }

    /// Whether `id` is in `name`'s scope: named explicitly, or covered by
    /// the default `*` and named explicitly by no other issuer.
    fn covers(&self, name: &str, id: &str) -> bool {
        self.explicit(name, id)
            || (self.patterns(name).iter().any(|p| p == DEFAULT_PATTERN)
                && self.claimant(name, id).is_none())
    }

    /// `name`'s scope as shown to people: `[acme-*, *]`.
    fn show(&self, name: &str) -> String {
        format!("[{}]", self.patterns(name).join(", "))
    }

    /// Refuses a grant signed by key `key` for `license` that is outside
    /// the key's issuer scope, or that another issuer already granted
    /// (`granted`: license id and issuer key of every grant counted).
    pub(crate) fn check_install(
        &self,
        grant: &Grant,
        granted: &[(String, String)],
    ) -> Result<(), ScopeError> {
        let name = self.name_of(&grant.issuer);
        let id = &grant.license_id;
        if !self.covers(&name, id) {
            let claimed = match self.claimant(&name, id) {
                Some(other) if self.patterns(&name).iter().any(|p| p == DEFAULT_PATTERN) => {
                    format!(
                        " (the scope of issuer {other:?} names it explicitly, and the default `*` covers only ids no other issuer names)"
                    )
                }
                _ => String::new(),
            };
            return Err(ScopeError::OutOfScope {
                license: id.clone(),
                scope: self.show(&name),
                issuer: name,
                key: grant.issuer.clone(),
                claimed,
            });
        }
        let others: BTreeSet<String> = granted
            .iter()
            .filter(|(license, _)| license == id)
            .map(|(_, key)| self.name_of(key))
            .filter(|other| *other != name)
            .collect();
        for other in others {
            if !(self.explicit(&name, id) && self.explicit(&other, id)) {
                return Err(ScopeError::Taken {
                    grant: grant.grant_id.clone(),
                    license: id.clone(),
                    issuer: name,
                    other,
                });
            }
        }
        Ok(())
    }

    /// The grants among `grants` that must give no seat, and why: grants
    /// outside their issuer's scope, and every grant of an id granted by
    /// several issuers that do not all name it explicitly. Grants revoked
    /// for good (`revoked`) give no seat anyway and are not counted.
    pub(crate) fn problems(
        &self,
        grants: &[Grant],
        revoked: &BTreeSet<String>,
    ) -> Vec<ScopeProblem> {
        let mut out = Vec::new();
        let mut by_id: BTreeMap<&str, Vec<(&Grant, String)>> = BTreeMap::new();
        for g in grants.iter().filter(|g| !revoked.contains(&g.grant_id)) {
            let name = self.name_of(&g.issuer);
            if self.covers(&name, &g.license_id) {
                by_id.entry(&g.license_id).or_default().push((g, name));
                continue;
            }
            out.push(ScopeProblem {
                license_id: g.license_id.clone(),
                kind: ProblemKind::OutsideScope,
                grants: vec![g.grant_id.clone()],
                issuers: vec![name.clone()],
                decide: format!(
                    "grant {} of license {} from issuer {name:?} is outside its scope {}{} and gives no seat; to let {name:?} grant {}, run `tollgate trust scope {name} --ids {} ...`; otherwise revoke it with `tollgate license revoke --grant {}`",
                    g.grant_id,
                    g.license_id,
                    self.show(&name),
                    self.claimant(&name, &g.license_id)
                        .map(|o| format!(" (issuer {o:?} names {} explicitly)", g.license_id))
                        .unwrap_or_default(),
                    g.license_id,
                    g.license_id,
                    g.grant_id
                ),
            });
        }
        for (id, list) in by_id {
            let names: BTreeSet<&str> = list.iter().map(|(_, n)| n.as_str()).collect();
            if names.len() < 2 || names.iter().all(|n| self.explicit(n, id)) {
                continue;
            }
            let issuers: Vec<String> = names.iter().map(|n| n.to_string()).collect();
            let grants: Vec<String> = list.iter().map(|(g, _)| g.grant_id.clone()).collect();
            let scope_cmds: Vec<String> = issuers
                .iter()
                .map(|n| format!("`tollgate trust scope {n} --ids {id} ...`"))
                .collect();
            out.push(ScopeProblem {
                license_id: id.to_string(),
                kind: ProblemKind::Conflict,
                decide: format!(
                    "license {id} is granted by several issuers ({}) whose scopes do not all name it explicitly, so none of its grants ({}) gives a seat until you decide: share it by naming it in every one of their scopes ({}), or keep one issuer's grants and revoke the others' with `tollgate license revoke --grant GRANT`",
                    issuers.join(", "),
                    grants.join(", "),
                    scope_cmds.join(" and ")
                ),
                grants,
                issuers,
            });
        }
        out
    }
}

/// What kind of scope problem keeps grants out of force.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum ProblemKind {
    /// A grant's id is outside its issuer's scope.
    OutsideScope,
    /// An id is granted by several issuers not explicitly sharing it.
    Conflict,
}

/// Grants that give no seat until the operator decides, and what to decide.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ScopeProblem {
    /// The license id.
    pub license_id: String,
    /// What is wrong.
    pub kind: ProblemKind,
    /// The grants left out of enforcement.
    pub grants: Vec<String>,
    /// The issuer names involved.
    pub issuers: Vec<String>,
    /// What the operator must decide, with the commands to do it.
    pub decide: String,
}

/// A trusted issuer's name and id scope, as `trust list` shows them.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct IssuerScope {
    /// The issuer name.
    pub name: String,
    /// Its patterns.
    pub patterns: Vec<String>,
}

/// Checks and deduplicates patterns, keeping their order.
pub(crate) fn clean(patterns: &[String]) -> Result<Vec<String>, ScopeError> {
    let mut out: Vec<String> = Vec::new();
    for p in patterns {
        let p = p.trim();
        validate_pattern(p)?;
        if !out.iter().any(|q| q == p) {
            out.push(p.to_string());
        }
    }
    if out.is_empty() {
        return Err(ScopeError::BadPattern {
            pattern: String::new(),
            why: "a scope needs at least one pattern",
        });
    }
    Ok(out)
}

/// The scope to store for a newly trusted key's issuer `name`, whose
/// stored scope is `stored` (patterns, one a line): `ids` when given, else
/// the default; `None` when the name keeps the scope it has. Refused when
/// `ids` differ from a stored scope (a rotated key keeps its issuer's).
pub(crate) fn scope_to_store(
    name: &str,
    stored: Option<&str>,
    ids: Option<&[String]>,
) -> Result<Option<Vec<String>>, ScopeError> {
    let wanted = match ids {
        Some(ids) => clean(ids)?,
        None => vec![DEFAULT_PATTERN.to_string()],
    };
    match stored {
        None => Ok(Some(wanted)),
        Some(current) => {
            let current: Vec<String> = current.lines().map(str::to_string).collect();
            if ids.is_some() && current != wanted {
                return Err(ScopeError::ScopeDiffers {
                    name: name.to_string(),
                    current: format!("[{}]", current.join(", ")),
                });
            }
            Ok(None)
        }
    }
}

/// Gives every trusted key a name (its key id when it has none) and every
/// name without a scope the default scope: how a state directory made
/// before scopes is brought up to date.
pub(super) fn upgrade(conn: &rusqlite::Connection) -> rusqlite::Result<()> {
    conn.execute_batch(TABLE)?;
    conn.execute_batch(
        "UPDATE trusted_issuers SET name = key_id WHERE name IS NULL OR name = '';
         INSERT OR IGNORE INTO issuer_scopes (name, patterns)
           SELECT DISTINCT name, '*' FROM trusted_issuers;",
    )
}

impl State {
    /// Every issuer's scope and every trusted key's issuer name.
    pub(super) fn scopes(&self) -> Result<Scopes, StateError> {
        let by_name: Vec<(String, String)> =
            self.query("SELECT name, patterns FROM issuer_scopes", [], |r| {
                Ok((r.get(0)?, r.get(1)?))
            })?;
        let names: Vec<(String, String)> = self.query(
            "SELECT key_id, coalesce(nullif(name, ''), key_id) FROM trusted_issuers",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )?;
        Ok(Scopes::from_rows(by_name, names))
    }

    /// The scope of issuer `name` (the default when it has none stored).
    pub fn scope_of(&self, name: &str) -> Result<Vec<String>, StateError> {
        Ok(self.scopes()?.patterns(name))
    }

    /// Gives issuer `name` the id scope `patterns`, replacing its scope;
    /// returns the scope it had. Takes effect for installs at once and for
    /// a running host at its next reload of the grants.
    pub fn set_scope(&self, name: &str, patterns: &[String]) -> Result<Vec<String>, StateError> {
        let patterns = clean(patterns)?;
        let scopes = self.scopes()?;
        if !scopes.knows(name) {
            return Err(ScopeError::UnknownIssuer(name.to_string()).into());
        }
        let old = scopes.patterns(name);
        self.conn()
            .execute(
                "INSERT INTO issuer_scopes (name, patterns) VALUES (?1, ?2)
                 ON CONFLICT (name) DO UPDATE SET patterns = excluded.patterns",
                params![name, patterns.join("\n")],
            )
            .map_err(|e| self.err(e))?;
        Ok(old)
    }

    /// Records the scope of a newly trusted key's issuer `name`: `ids` when
    /// given (refused if the name already has another scope), else the
    /// default unless the name has a scope already.
    pub(super) fn scope_for_new_key(
        &self,
        name: &str,
        ids: Option<&[String]>,
    ) -> Result<(), StateError> {
        let stored: Option<String> = self
            .conn()
            .query_row(
                "SELECT patterns FROM issuer_scopes WHERE name = ?1",
                params![name],
                |r| r.get(0),
            )
            .optional()
            .map_err(|e| self.err(e))?;
        if let Some(wanted) = scope_to_store(name, stored.as_deref(), ids)? {
            self.conn()
                .execute(
                    "INSERT INTO issuer_scopes (name, patterns) VALUES (?1, ?2)",
                    params![name, wanted.join("\n")],
                )
                .map_err(|e| self.err(e))?;
        }
        Ok(())
    }

    /// Every issuer name with its scope.
    pub fn issuer_scopes(&self) -> Result<Vec<IssuerScope>, StateError> {
        let scopes = self.scopes()?;
        let names: BTreeSet<&String> = scopes.names.values().chain(scopes.by_name.keys()).collect();
        Ok(names
            .into_iter()
            .map(|n| IssuerScope {
                name: n.clone(),
                patterns: scopes.patterns(n),
            })
            .collect())
    }

    /// Refuses `grant` if it is outside its issuer's scope or its id is
    /// granted by another issuer and not named explicitly in both scopes.
    pub(super) fn check_scope(&self, grant: &Grant) -> Result<(), StateError> {
        let granted: Vec<(String, String)> = self.query(
            "SELECT license_id, issuer FROM grants
             WHERE license_id = ?1 AND grant_id NOT IN (SELECT grant_id FROM grant_revocations)",
            params![grant.license_id],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )?;
        self.scopes()?.check_install(grant, &granted)?;
        Ok(())
    }

    /// Grants that give no seat because of the issuers' scopes, and what
    /// the operator must decide about each (see [`ScopeProblem`]).
    pub fn scope_problems(&self) -> Result<Vec<ScopeProblem>, StateError> {
        Ok(self.enforced_grants()?.problems)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs_match_like_shell_patterns() {
        for (p, id, want) in [
            ("*", "", true),
            ("*", "acme", true),
            ("acme", "acme", true),
            ("acme", "acme2", false),
            ("acme-*", "acme-pro", true),
            ("acme-*", "acme", false),
            ("acme-*", "xacme-pro", false),
            ("a?me", "acme", true),
            ("a?me", "ame", false),
            ("*-pro", "acme-pro", true),
            ("*-pro", "acme-pro-x", false),
            ("a*b*c", "a-b-b-c", true),
            ("a*b*c", "a-b-b-d", false),
            ("**", "x", true),
            ("?", "", false),
            ("a*", "a", true),
        ] {
            assert_eq!(glob_matches(p, id), want, "{p:?} vs {id:?}");
        }
    }

    fn grant(id: &str, license: &str, key: &str) -> Grant {
        Grant {
            grant_id: id.into(),
            license_id: license.into(),
            issuer: key.into(),
            seats: Some(1),
            not_before: None,
            expires_at: None,
            plugins: Vec::new(),
            customer: None,
            installed_at: 0,
        }
    }

    fn scopes(rows: &[(&str, &[&str])], keys: &[(&str, &str)]) -> Scopes {
        Scopes {
            by_name: rows
                .iter()
                .map(|(n, ps)| (n.to_string(), ps.iter().map(|p| p.to_string()).collect()))
                .collect(),
            names: keys
                .iter()
                .map(|(k, n)| (k.to_string(), n.to_string()))
                .collect(),
        }
    }

    #[test]
    fn the_default_scope_yields_to_explicit_patterns_and_sharing_needs_both() {
        let s = scopes(
            &[("a", &["acme-*"]), ("b", &["*"]), ("c", &["acme-pro", "*"])],
            &[("ka", "a"), ("kb", "b"), ("kc", "c"), ("ka2", "a")],
        );
        assert!(s.covers("a", "acme-x") && !s.covers("a", "other"));
        assert!(!s.covers("b", "acme-x"), "a names it: b's `*` yields");
        assert!(s.covers("b", "other"));
        assert!(s.covers("c", "acme-pro") && s.covers("c", "other"));
        assert!(s.covers("unknown-name", "other"), "no row: the default");
        // Install: a's id taken by c needs both explicit; a rotated key of a is a.
        let held = [("acme-pro".to_string(), "ka".to_string())];
        assert!(
            s.check_install(&grant("g", "acme-pro", "kc"), &held)
                .is_ok()
        );
        assert!(
            s.check_install(&grant("g", "acme-pro", "ka2"), &held)
                .is_ok()
        );
        let held = [("other".to_string(), "kb".to_string())];
        assert!(matches!(
            s.check_install(&grant("g", "other", "kc"), &held),
            Err(ScopeError::Taken { .. })
        ));
        assert!(matches!(
            s.check_install(&grant("g", "acme-x", "kb"), &[]),
            Err(ScopeError::OutOfScope { .. })
        ));
        // Load: the conflict leaves out every grant of the id; a grant
        // revoked for good no longer counts.
        let grants = [
            grant("g1", "other", "kb"),
            grant("g2", "other", "kc"),
            grant("g3", "acme-x", "kb"),
            grant("g4", "acme-pro", "ka"),
            grant("g5", "acme-pro", "kc"),
        ];
        let problems = s.problems(&grants, &BTreeSet::new());
        let left: Vec<&str> = problems
            .iter()
            .flat_map(|p| p.grants.iter().map(String::as_str))
            .collect();
        assert_eq!(left, ["g3", "g1", "g2"], "{problems:?}");
        assert_eq!(problems[1].kind, ProblemKind::Conflict);
        let revoked: BTreeSet<String> = ["g2".to_string()].into();
        assert_eq!(s.problems(&grants, &revoked).len(), 1);
    }

    #[test]
    fn patterns_are_checked() {
        assert!(validate_pattern("acme-*").is_ok());
        assert!(validate_pattern("").is_err());
        assert!(validate_pattern("a b").is_err());
        assert!(validate_pattern("a\n*").is_err());
        assert!(validate_pattern(&"a".repeat(129)).is_err());
        assert!(clean(&[]).is_err());
        assert_eq!(
            clean(&["a".into(), "a".into(), "*".into()]).expect("clean"),
            vec!["a".to_string(), "*".to_string()]
        );
    }
}
