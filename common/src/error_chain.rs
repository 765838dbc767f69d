//! An error with every cause behind it on one line, for messages where the
//! top error alone says nothing (`error sending request`, `dispatch failure`).

/// `err: its cause: that cause's cause ...`.
pub fn error_chain(err: &dyn std::error::Error) -> String {
    let mut out = err.to_string();
    let mut cur = err.source();
    while let Some(e) = cur {
        out.push_str(": ");
        out.push_str(&e.to_string());
        cur = e.source();
    }
    out
}
