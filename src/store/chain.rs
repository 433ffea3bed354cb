//! The hash chain over stored history: each record's hash covers its predecessor's hash.
//!
//! Editing a record changes its hash; deleting one breaks the link of its successor; inserting
//! one out of order breaks both. A chain that was recomputed from the edit onwards is internally
//! consistent, which is why `audit seal` exports the head off the box: an older checkpoint's
//! (record count, hash) no longer matches.

/// The `prev_hash` of the first record.
pub const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// Hash of one record: domain-separated, over the previous hash, the record kind and its body.
pub fn link(prev: &str, kind: &str, body: &str) -> String {
    let mut h = blake3::Hasher::new();
    h.update(b"driftwatch.chain.v1\0");
    h.update(prev.as_bytes());
    h.update(b"\0");
    h.update(kind.as_bytes());
    h.update(b"\0");
    h.update(body.as_bytes());
    h.finalize().to_hex().to_string()
}

/// Canonical body of a record: a JSON array of its fields in a fixed order.
pub fn body(fields: &[serde_json::Value]) -> String {
    serde_json::to_string(fields).expect("JSON values serialize")
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn any_change_changes_the_hash() {
        let b = body(&[json!("web-01"), json!(17), json!(null)]);
        let h = link(GENESIS, "event", &b);
        assert_ne!(h, link(GENESIS, "kpi", &b));
        assert_ne!(h, link(&h, "event", &b));
        assert_ne!(
            h,
            link(
                GENESIS,
                "event",
                &body(&[json!("web-01"), json!(18), json!(null)])
            )
        );
        assert_eq!(h, link(GENESIS, "event", &b));
    }
}
