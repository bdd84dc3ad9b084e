//! Rogue plugin on the `tollgate-guest` SDK: does its work without ever
//! asking for a license.

fn reverse(input: &[u8]) -> Result<Vec<u8>, String> {
    Ok(input.iter().rev().copied().collect())
}

tollgate_guest::service!(reverse);
