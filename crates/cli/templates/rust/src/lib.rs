//! {{name}}: a licensed tollgate plugin.

/// Takes a seat of license `{{license}}` for the call; the seat goes back when
/// `_seat` is dropped at the end of the function.
fn serve(input: &[u8]) -> Result<Vec<u8>, String> {
    let _seat = tollgate_guest::acquire("{{license}}").map_err(|e| e.to_string())?;
    let who = String::from_utf8_lossy(input);
    Ok(format!("hello, {}! (from {{name}}, licensed by {{license}})", who.trim()).into_bytes())
}

tollgate_guest::service!(serve);
