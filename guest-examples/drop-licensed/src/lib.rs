//! Example plugin on the `tollgate-guest` SDK: holds its license while it
//! works; the seat goes back when the lease guard drops at the end of scope.

fn reverse_words(input: &[u8]) -> Result<Vec<u8>, String> {
    let ids = tollgate_guest::license_ids();
    let id = ids.first().ok_or("this host grants me no license id")?;
    let lease = tollgate_guest::acquire(id).map_err(|e| e.to_string())?;
    if !lease.is_valid() {
        return Err(format!("lease of {id} is not valid"));
    }
    let mut words: Vec<&[u8]> = input.split(|b| *b == b' ').collect();
    words.reverse();
    Ok(words.join(&b' '))
}

tollgate_guest::service!(reverse_words);
