//! Values inside the config: sizes, durations, addresses, names, and
//! did-you-mean suggestions. Each check returns what is wrong and what to write.

use super::LogFormat;
use std::net::SocketAddr;
use std::time::Duration;

/// Parses a socket address such as `127.0.0.1:7878` or `[::1]:7878`.
pub(super) fn socket_addr(text: &str) -> Result<SocketAddr, String> {
    text.trim().parse().map_err(|_| {
        format!(
            "{text:?} is not an IP address with a port; write it like \"127.0.0.1:7878\", \"0.0.0.0:7878\" or \"[::1]:7878\""
        )
    })
}

/// Parses `"human"` or `"json"`.
pub(super) fn log_format(text: &str) -> Result<LogFormat, String> {
    match text {
        "human" => Ok(LogFormat::Human),
        "json" => Ok(LogFormat::Json),
        other => Err(format!(
            "unknown log format {other:?}; use \"human\" or \"json\"{}",
            did_you_mean(other, ["human", "json"])
        )),
    }
}

/// Units accepted in size strings, with their multipliers.
const SIZE_UNITS: [(&str, u64); 7] = [
    ("B", 1),
    ("KiB", 1 << 10),
    ("MiB", 1 << 20),
    ("GiB", 1 << 30),
    ("KB", 1_000),
    ("MB", 1_000_000),
    ("GB", 1_000_000_000),
];

/// Parses a size such as `"64MiB"`, `"512 KiB"` or `"1GB"` into bytes.
pub(super) fn size(text: &str) -> Result<u64, String> {
    let trimmed = text.trim();
    let digits_end = trimmed
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(trimmed.len());
    let (number, unit) = trimmed.split_at(digits_end);
    let unit = unit.trim_start();
    let units = "B, KiB, MiB, GiB (powers of 1024) or KB, MB, GB (powers of 1000)";
    if number.is_empty() {
        return Err(format!(
            "{text:?} is not a size; write a whole number and a unit, like \"64MiB\" ({units})"
        ));
    }
    if unit.is_empty() {
        return Err(format!(
            "{text:?} has no unit; write it like \"{number}B\" or \"{number}MiB\" ({units})"
        ));
    }
    let Some(&(_, multiplier)) = SIZE_UNITS
        .iter()
        .find(|(name, _)| name.eq_ignore_ascii_case(unit))
    else {
        let hint = if unit.starts_with(['.', ',']) {
            "; fractions are not accepted, use a smaller unit".to_string()
        } else if let Some(binary) = ["KiB", "MiB", "GiB"]
            .into_iter()
            .find(|u| unit.len() == 1 && u[..1].eq_ignore_ascii_case(unit))
        {
            format!("; did you mean `{binary}`?")
        } else {
            did_you_mean(unit, SIZE_UNITS.iter().map(|(name, _)| *name))
        };
        return Err(format!(
            "{text:?} has an unknown unit {unit:?}; use {units}{hint}"
        ));
    };
    number
        .parse::<u64>()
        .ok()
        .and_then(|n| n.checked_mul(multiplier))
        .ok_or_else(|| format!("{text:?} is too large"))
}

/// Writes `bytes` in the largest binary unit that divides it.
pub(super) fn show_size(bytes: u64) -> String {
    for (name, multiplier) in [("GiB", 1u64 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)] {
        if bytes >= multiplier && bytes.is_multiple_of(multiplier) {
            return format!("{}{name}", bytes / multiplier);
        }
    }
    format!("{bytes}B")
}

/// Parses a duration such as `"10s"`, `"500ms"` or `"1m 30s"`.
pub(super) fn duration(text: &str) -> Result<Duration, String> {
    humantime::parse_duration(text.trim()).map_err(|e| {
        format!("{text:?} is not a duration ({e}); write it like \"10s\", \"500ms\" or \"1m 30s\"")
    })
}

/// Checks an environment variable name: `[A-Za-z_][A-Za-z0-9_]*`.
pub(super) fn env_name(name: &str) -> Result<(), String> {
    let rule = "use letters, digits and '_', not starting with a digit";
    let mut chars = name.chars();
    match chars.next() {
        None => return Err(format!("the variable name is empty; {rule}")),
        Some(first) if !(first.is_ascii_alphabetic() || first == '_') => {
            return Err(format!(
                "variable name {name:?} starts with {first:?}; {rule}"
            ));
        }
        Some(_) => {}
    }
    if let Some(bad) = chars.find(|c| !(c.is_ascii_alphanumeric() || *c == '_')) {
        return Err(format!("variable name {name:?} contains {bad:?}; {rule}"));
    }
    Ok(())
}

/// `"; did you mean `x`?"` for the closest candidate within edit distance 2, else `""`.
pub(super) fn did_you_mean<'a>(
    word: &str,
    candidates: impl IntoIterator<Item = &'a str>,
) -> String {
    closest(word, candidates)
        .map(|c| format!("; did you mean `{c}`?"))
        .unwrap_or_default()
}

/// The candidate closest to `word` within edit distance 2 (first one on ties).
///
/// The distance counts insertions, deletions, substitutions and swaps of
/// neighbours (optimal string alignment), without regard to ASCII case.
pub(super) fn closest<'a>(
    word: &str,
    candidates: impl IntoIterator<Item = &'a str>,
) -> Option<&'a str> {
    let mut best: Option<(usize, &str)> = None;
    let length = word.chars().count();
    let lower = word.to_ascii_lowercase();
    for candidate in candidates {
        // The distance is at least the difference in length: skip far ones
        // without building a table as large as `word`.
        if length.abs_diff(candidate.chars().count()) > 2 {
            continue;
        }
        let distance = strsim::osa_distance(&lower, &candidate.to_ascii_lowercase());
        if distance <= 2 && distance < length.max(1) && best.is_none_or(|(d, _)| distance < d) {
            best = Some((distance, candidate));
        }
    }
    best.map(|(_, c)| c)
}
