//! Hostile json_transport bodies: arbitrary bytes and near-miss JSON never
//! panic, and whatever is accepted is exactly what the contract allows.
//! PROPTEST_CASES bounds the run (CI uses the default).

use host_service::api::parse_json_transport;
use proptest::prelude::*;

fn json_value() -> impl Strategy<Value = serde_json::Value> {
    let leaf = prop_oneof![
        Just(serde_json::Value::Null),
        any::<bool>().prop_map(serde_json::Value::from),
        any::<i64>().prop_map(serde_json::Value::from),
        ".{0,20}".prop_map(serde_json::Value::from),
    ];
    leaf.prop_recursive(3, 24, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(serde_json::Value::from),
            prop::collection::btree_map(".{0,8}", inner, 0..4)
                .prop_map(|m| serde_json::Value::Object(m.into_iter().collect())),
        ]
    })
}

proptest! {
    #[test]
    fn arbitrary_bytes_never_panic_and_only_valid_bodies_pass(body in prop::collection::vec(any::<u8>(), 0..512)) {
        if let Ok((id, json_data)) = parse_json_transport(&body) {
            prop_assert_eq!(id.to_string().len(), 36);
            let parsed: serde_json::Value = serde_json::from_str(&json_data).unwrap();
            prop_assert!(parsed.is_object());
        }
    }

    #[test]
    fn structured_bodies_are_accepted_exactly_when_json_data_is_an_object(
        id in prop_oneof![Just(uuid::Uuid::new_v4().to_string()), "[a-f0-9-]{0,40}", Just("../../etc/passwd".to_owned())],
        data in json_value(),
        as_text in any::<bool>(),
    ) {
        // json_data as a string holding JSON (the contract) or as raw JSON (a client bug).
        let json_data = if as_text { serde_json::Value::String(data.to_string()) } else { data.clone() };
        let body = serde_json::json!({"session_id": id, "json_data": json_data}).to_string();
        let result = parse_json_transport(body.as_bytes());
        let id_ok = id.parse::<berth_common::SessionId>().is_ok();
        let should_pass = id_ok && as_text && data.is_object();
        prop_assert_eq!(result.is_ok(), should_pass, "body {}", body);
        if let Ok((_, kept)) = result {
            // Byte for byte what the client sent inside the string.
            prop_assert_eq!(kept, data.to_string());
        }
    }
}
