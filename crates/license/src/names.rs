//! The names tollgate checks where they come in: [`PluginName`] and
//! [`LicenseId`]. Each rule is written here once; every parser (config file,
//! admin API, command line, license files, the runtime) goes through it.

use std::borrow::Borrow;
use std::fmt;
use std::ops::Deref;
use std::str::FromStr;

/// The plugin name rule, as messages state it.
pub const PLUGIN_NAME_RULE: &str =
    "use 1-64 characters from a-z, 0-9, '-' and '_', starting with a letter or digit";

/// The license id rule, as messages state it.
pub const LICENSE_ID_RULE: &str = "use 1-128 characters from A-Z, a-z, 0-9, '.', '_', ':' and '-'";

/// Longest part of a rejected text quoted in a message.
const MAX_QUOTED: usize = 64;

/// What is wrong with a rejected name.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Flaw {
    /// It has no characters.
    Empty,
    /// It holds a character outside the allowed set.
    Contains(char),
    /// It starts with a character allowed only further in.
    StartsWith(char),
    /// It is longer than the most allowed (all its characters are ASCII).
    TooLong(usize),
}

impl fmt::Display for Flaw {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Flaw::Empty => f.write_str("it is empty"),
            Flaw::Contains(c) => write!(f, "it contains {c:?}"),
            Flaw::StartsWith(c) => write!(f, "it starts with {c:?}"),
            Flaw::TooLong(n) => write!(f, "it is {n} characters long"),
        }
    }
}

/// Checks `text` against a rule: `max` characters, each `allowed`, the first
/// also `first`.
fn check(
    text: &str,
    max: usize,
    allowed: fn(char) -> bool,
    first: fn(char) -> bool,
) -> Result<(), Flaw> {
    let Some(head) = text.chars().next() else {
        return Err(Flaw::Empty);
    };
    if let Some(c) = text.chars().find(|&c| !allowed(c)) {
        return Err(Flaw::Contains(c));
    }
    if !first(head) {
        return Err(Flaw::StartsWith(head));
    }
    // Every character is ASCII by now: bytes and characters agree.
    if text.len() > max {
        return Err(Flaw::TooLong(text.len()));
    }
    Ok(())
}

/// `text` quoted, cut to [`MAX_QUOTED`] characters.
fn quoted(text: &str) -> String {
    match text.char_indices().nth(MAX_QUOTED) {
        Some((cut, _)) => format!("{:?}…", &text[..cut]),
        None => format!("{text:?}"),
    }
}

/// Defines a checked name: a `String` newtype whose only constructors check
/// `$check`, with its error type and the usual conversions.
macro_rules! checked_name {
    (
        $(#[$meta:meta])*
        $name:ident, $error:ident, $what:literal, $rule:ident, $check:expr
    ) => {
        $(#[$meta])*
        #[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
        #[derive(serde::Serialize, serde::Deserialize)]
        #[serde(try_from = "String", into = "String")]
        pub struct $name(String);

        #[doc = concat!("Why a text is not a valid ", $what, ".")]
        #[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
        #[error("invalid {} {}: {flaw}; {}", $what, quoted(.given), $rule)]
        pub struct $error {
            given: String,
            flaw: Flaw,
        }

        impl $error {
            /// The text that was refused.
            pub fn given(&self) -> &str {
                &self.given
            }
        }

        impl $name {
            /// The name as a string slice.
            pub fn as_str(&self) -> &str {
                &self.0
            }

            /// The name as an owned string.
            pub fn into_string(self) -> String {
                self.0
            }
        }

        impl TryFrom<String> for $name {
            type Error = $error;

            fn try_from(given: String) -> Result<Self, $error> {
                match ($check)(given.as_str()) {
                    Ok(()) => Ok(Self(given)),
                    Err(flaw) => Err($error { given, flaw }),
                }
            }
        }

        impl TryFrom<&str> for $name {
            type Error = $error;

            fn try_from(given: &str) -> Result<Self, $error> {
                given.parse()
            }
        }

        impl FromStr for $name {
            type Err = $error;

            fn from_str(given: &str) -> Result<Self, $error> {
                match ($check)(given) {
                    Ok(()) => Ok(Self(given.to_string())),
                    Err(flaw) => Err($error {
                        given: given.to_string(),
                        flaw,
                    }),
                }
            }
        }

        impl From<$name> for String {
            fn from(name: $name) -> String {
                name.0
            }
        }

        /// Quoted, like the string it is.
        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                fmt::Debug::fmt(&self.0, f)
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl Deref for $name {
            type Target = str;

            fn deref(&self) -> &str {
                &self.0
            }
        }

        impl AsRef<str> for $name {
            fn as_ref(&self) -> &str {
                &self.0
            }
        }

        impl Borrow<str> for $name {
            fn borrow(&self) -> &str {
                &self.0
            }
        }

        impl PartialEq<str> for $name {
            fn eq(&self, other: &str) -> bool {
                self.0 == other
            }
        }

        impl PartialEq<&str> for $name {
            fn eq(&self, other: &&str) -> bool {
                self.0 == *other
            }
        }
    };
}

checked_name! {
    /// A plugin's name: 1-64 characters from `a-z`, `0-9`, `-` and `_`,
    /// starting with a letter or digit. It names the plugin in URLs, logs,
    /// license rules and the ledger.
    PluginName, InvalidPluginName, "plugin name", PLUGIN_NAME_RULE,
    |text| check(
        text,
        64,
        |c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_',
        |c| c.is_ascii_lowercase() || c.is_ascii_digit(),
    )
}

checked_name! {
    /// A license id: 1-128 characters from `A-Z`, `a-z`, `0-9`, `.`, `_`,
    /// `:` and `-`. Plugins ask for seats by it; grants and rules name it.
    LicenseId, InvalidLicenseId, "license id", LICENSE_ID_RULE,
    |text| check(
        text,
        128,
        |c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | ':' | '-'),
        |_| true,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plugin_names_follow_the_rule() {
        let too_long = "a".repeat(65);
        for ok in [
            "a",
            "9lives",
            "0-a_b",
            "hello-licensed",
            "x_1",
            &"a".repeat(64),
        ] {
            let name: PluginName = ok.parse().expect(ok);
            assert_eq!(name.as_str(), ok);
        }
        for (bad, flaw) in [
            ("", "it is empty"),
            ("-a", "it starts with '-'"),
            ("_a", "it starts with '_'"),
            ("A", "it contains 'A'"),
            ("a/b", "it contains '/'"),
            ("../x", "it contains '.'"),
            ("a b", "it contains ' '"),
            ("héllo", "it contains 'é'"),
            (too_long.as_str(), "it is 65 characters long"),
        ] {
            let err = bad.parse::<PluginName>().expect_err(bad);
            assert_eq!(err.given(), bad);
            let message = err.to_string();
            assert!(message.starts_with("invalid plugin name "), "{message}");
            assert!(message.contains(flaw), "{bad:?}: {message}");
            assert!(message.ends_with(PLUGIN_NAME_RULE), "{message}");
        }
    }

    #[test]
    fn license_ids_follow_the_rule() {
        let too_long = "a".repeat(129);
        for ok in [
            "demo",
            "acme:pro.v1_2-x",
            "extra.v1",
            "A-1_b",
            "-x",
            &"A".repeat(128),
        ] {
            let id: LicenseId = ok.parse().expect(ok);
            assert_eq!(id, ok);
        }
        for (bad, flaw) in [
            ("", "it is empty"),
            ("bad id", "it contains ' '"),
            ("a/b", "it contains '/'"),
            ("a*", "it contains '*'"),
            (too_long.as_str(), "it is 129 characters long"),
        ] {
            let message = bad.parse::<LicenseId>().expect_err(bad).to_string();
            assert!(message.starts_with("invalid license id "), "{message}");
            assert!(message.contains(flaw), "{bad:?}: {message}");
            assert!(message.ends_with(LICENSE_ID_RULE), "{message}");
        }
    }

    #[test]
    fn long_names_are_quoted_cut_short() {
        let long = "x".repeat(10_000);
        let message = long
            .parse::<PluginName>()
            .expect_err("too long")
            .to_string();
        assert!(message.len() < 300, "{message}");
        assert!(
            message.contains(&format!("{:?}…", "x".repeat(64))),
            "{message}"
        );
    }

    #[test]
    fn every_conversion_checks() {
        assert!(PluginName::try_from("Bad".to_string()).is_err());
        assert!(PluginName::try_from("bad!").is_err());
        let name = PluginName::try_from("good".to_string()).expect("valid");
        assert_eq!(&*name, "good");
        assert_eq!(name.to_string(), "good");
        assert_eq!(format!("{name:?}"), "\"good\"");
        assert_eq!(String::from(name), "good");
        assert!(LicenseId::try_from("no way".to_string()).is_err());
    }

    #[test]
    fn serde_checks_what_it_reads_and_writes_plain_strings() {
        let name: PluginName = serde_json::from_str("\"hello\"").expect("valid");
        assert_eq!(serde_json::to_string(&name).expect("json"), "\"hello\"");
        let err = serde_json::from_str::<PluginName>("\"Hello\"").expect_err("invalid");
        assert!(
            err.to_string().contains("invalid plugin name \"Hello\""),
            "{err}"
        );
        let ids: Vec<LicenseId> = serde_json::from_str(r#"["demo", "acme:pro"]"#).expect("ids");
        assert_eq!(ids, ["demo", "acme:pro"]);
        assert!(serde_json::from_str::<LicenseId>("\"a b\"").is_err());
    }
}
