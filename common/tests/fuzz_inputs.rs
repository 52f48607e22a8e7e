//! Inputs that end up in paths, labels, notification payloads and the host's
//! identity: ids from requests and values from instance metadata.

use std::net::SocketAddr;

use berth_common::imds::server::{instance_values, ImdsServer};
use berth_common::imds::ImdsClient;
use berth_common::{HostId, SessionId};
use proptest::prelude::*;

proptest! {
    #[test]
    fn accepted_ids_cannot_escape_a_directory(s in prop_oneof![".{0,60}", "[./a-z0-9_-]{0,6}", "[0-9a-fA-F-]{36}"]) {
        if let Ok(id) = s.parse::<SessionId>() {
            prop_assert_eq!(id.to_string(), s.to_lowercase());
            prop_assert!(!s.contains('/') && !s.contains(".."));
        }
        if let Ok(id) = HostId::parse(s.clone()) {
            let text = id.as_str();
            prop_assert!(!text.contains('/') && !text.contains('\0') && text != "." && text != "..");
            prop_assert!(text.len() <= 48, "fits labels and paths");
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]
    #[test]
    fn any_metadata_answer_gives_a_valid_identity_or_a_typed_error(
        instance_id in ".{0,64}",
        ip in prop_oneof![".{0,20}", Just("10.0.0.7".to_owned()), Just("::1".to_owned())],
        region in ".{0,40}",
    ) {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        runtime.block_on(async {
            let values = instance_values(&instance_id, "t3.large", &region, "ami-1", &ip);
            let imds = ImdsServer::start(SocketAddr::from(([127, 0, 0, 1], 0)), values).await.unwrap();
            let client = ImdsClient::new(&imds.endpoint()).unwrap();
            if let Ok(identity) = client.identity().await {
                assert!(HostId::parse(identity.instance_id.as_str()).is_ok());
                assert!(!identity.region.is_empty() && identity.region.len() <= 128);
                assert!(identity.region.bytes().all(|b| b.is_ascii_graphic()));
            }
        });
    }
}
