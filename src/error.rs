//! Helpers for presenting errors: the whole `source()` chain on one line,
//! each cause once (a cause whose text an outer error already shows, as
//! object_store's errors do, is not repeated).

/// Formats an error and its causes as `outer: cause: root cause`.
pub fn chain(err: &dyn std::error::Error) -> String {
    let mut s = err.to_string();
    let mut cur = err.source();
    while let Some(e) = cur {
        let text = e.to_string();
        if !s.contains(&text) {
            s.push_str(": ");
            s.push_str(&text);
        }
        cur = e.source();
    }
    s
}

#[cfg(test)]
mod tests {
    #[derive(Debug, thiserror::Error)]
    #[error("object store request for wal/x failed")]
    struct Outer(#[source] Middle);

    #[derive(Debug, thiserror::Error)]
    #[error("Generic error: PUT failed: 400 Bad Request")]
    struct Middle(#[source] Inner);

    #[derive(Debug, thiserror::Error)]
    #[error("PUT failed: 400 Bad Request")]
    struct Inner;

    #[test]
    fn each_cause_once() {
        let text = super::chain(&Outer(Middle(Inner)));
        assert_eq!(
            text,
            "object store request for wal/x failed: Generic error: PUT failed: 400 Bad Request"
        );
    }
}
