//! Example plugin on the `tollgate-guest` SDK: lists the license ids it may
//! use, describes each, and takes a seat of each to show the count move.

use tollgate_guest::LicenseInfo;

fn seats(info: &LicenseInfo) -> String {
    info.seats.map_or_else(|| "unlimited".to_string(), |n| n.to_string())
}

fn list(_input: &[u8]) -> Result<Vec<u8>, String> {
    let mut out = String::new();
    let mut leases = Vec::new();
    for id in tollgate_guest::license_ids() {
        let before = tollgate_guest::describe(&id).map_err(|e| e.to_string())?;
        let lease = tollgate_guest::acquire(&id).map_err(|e| e.to_string())?;
        let after = tollgate_guest::describe(&id).map_err(|e| e.to_string())?;
        let expiry = before.expires_at.map_or_else(|| "never".to_string(), |t| t.to_string());
        out.push_str(&format!(
            "{id}: seats={} in-use={}->{} expires={expiry}\n",
            seats(&before),
            before.in_use,
            after.in_use
        ));
        leases.push(lease);
    }
    Ok(out.into_bytes())
}

tollgate_guest::service!(list);
