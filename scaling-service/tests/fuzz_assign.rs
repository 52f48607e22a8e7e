//! Hostile assign bodies, Berth's and Whist's: never a panic, and what is
//! accepted is within the bounds the transaction relies on.

use proptest::prelude::*;
use scaling_service::api::parse_assign;

proptest! {
    #[test]
    fn arbitrary_bytes_never_panic(body in prop::collection::vec(any::<u8>(), 0..512), whist in any::<bool>()) {
        if let Ok(request) = parse_assign(&body, whist) {
            prop_assert!(request.validate().is_ok());
        }
    }

    #[test]
    fn accepted_requests_are_bounded(
        runtime in ".{0,80}",
        regions in prop::collection::vec(".{0,70}", 0..20),
        commit in ".{0,80}",
        csid in prop::option::of(".{0,140}"),
    ) {
        let body = serde_json::json!({"runtime": runtime, "regions": regions, "client_commit": commit, "client_session_id": csid});
        if let Ok(r) = parse_assign(body.to_string().as_bytes(), false) {
            prop_assert!(!r.runtime.is_empty() && r.runtime.len() <= 63);
            prop_assert!(!r.regions.is_empty() && r.regions.len() <= 16);
            prop_assert!(r.regions.iter().all(|x| !x.is_empty() && x.len() <= 63));
            prop_assert!(r.client_commit.len() <= 64);
            prop_assert!(r.client_session_id.as_ref().is_none_or(|c| !c.is_empty() && c.len() <= 128));
        }
    }
}
