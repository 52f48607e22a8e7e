//! Device mappings for a session container: its TTY and its uinput event
//! nodes. The same construction serves the real Docker engine and the tests
//! that check containers see the devices.

use std::path::Path;

use berth_uinput::DeviceNumber;
use bollard::models::DeviceMapping;

/// One of a session's input event nodes: its path (the same inside the
/// container) and its device number, read with stat when the device was made.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InputNode<'a> {
    pub path: &'a Path,
    pub number: DeviceNumber,
}

/// Devices a session gets.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct SessionDevices<'a> {
    pub tty: Option<u8>,
    pub input_nodes: Vec<InputNode<'a>>,
}

/// The device cgroup rules of a session's input nodes: `c MAJOR:MINOR rwm`
/// for each of its own event nodes and nothing else. Code in the container is
/// hostile: a rule for all of major 13 (`c 13:* rwm`) would let it open any
/// input device of the host it can get a node for (mknod, should a runtime
/// add CAP_MKNOD): another session's keyboard, to read its keys.
pub fn input_cgroup_rules(nodes: &[InputNode<'_>]) -> Vec<String> {
    nodes
        .iter()
        .map(|node| format!("c {} rwm", node.number))
        .collect()
}

/// Docker device mappings and cgroup rules for `devices`.
pub fn device_mappings(devices: &SessionDevices<'_>) -> (Vec<DeviceMapping>, Vec<String>) {
    let map = |path: String| DeviceMapping {
        path_on_host: Some(path.clone()),
        path_in_container: Some(path),
        cgroup_permissions: Some("rwm".to_owned()),
    };
    let mut mappings = Vec::new();
    if let Some(tty) = devices.tty {
        mappings.push(map(super::ttys::device_path(tty)));
    }
    for node in &devices.input_nodes {
        mappings.push(map(node.path.display().to_string()));
    }
    (mappings, input_cgroup_rules(&devices.input_nodes))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(path: &str, major: u32, minor: u32) -> InputNode<'_> {
        InputNode {
            path: Path::new(path),
            number: DeviceNumber { major, minor },
        }
    }

    #[test]
    fn tty_and_event_nodes_map_to_the_same_paths_inside() {
        let nodes = [
            node("/dev/input/event7", 13, 71),
            node("/dev/input/event8", 13, 72),
        ];
        let (mappings, rules) = device_mappings(&SessionDevices {
            tty: Some(12),
            input_nodes: nodes.to_vec(),
        });
        let pairs: Vec<_> = mappings
            .iter()
            .map(|m| {
                (
                    m.path_on_host.clone().unwrap(),
                    m.path_in_container.clone().unwrap(),
                )
            })
            .collect();
        assert_eq!(
            pairs,
            vec![
                ("/dev/tty12".into(), "/dev/tty12".into()),
                ("/dev/input/event7".into(), "/dev/input/event7".into()),
                ("/dev/input/event8".into(), "/dev/input/event8".into()),
            ]
        );
        assert!(mappings
            .iter()
            .all(|m| m.cgroup_permissions.as_deref() == Some("rwm")));
        assert_eq!(rules, ["c 13:71 rwm", "c 13:72 rwm"]);
    }

    #[test]
    fn cgroup_rules_name_only_the_sessions_own_nodes() {
        let nodes = [
            node("/dev/input/event64", 13, 1024),
            node("/dev/input/event3", 13, 67),
            node("/dev/input/event5", 13, 69),
        ];
        let rules = input_cgroup_rules(&nodes);
        assert_eq!(rules, ["c 13:1024 rwm", "c 13:67 rwm", "c 13:69 rwm"]);
        // No wildcard, no block devices, no other major.
        assert!(rules
            .iter()
            .all(|rule| rule.starts_with("c 13:") && !rule.contains('*')));
        assert!(input_cgroup_rules(&[]).is_empty());
    }

    #[test]
    fn no_devices_means_no_rules() {
        let (mappings, rules) = device_mappings(&SessionDevices::default());
        assert!(mappings.is_empty() && rules.is_empty());
    }
}
