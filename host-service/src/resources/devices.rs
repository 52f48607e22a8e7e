//! Device mappings for a session container: its TTY and its uinput event
//! nodes. The same construction serves the real Docker engine and the tests
//! that check containers see the devices.

use std::path::Path;

use bollard::models::DeviceMapping;

/// Linux input devices are character major 13; the cgroup rule lets the
/// container open the event nodes it is given (udev inside does not run).
pub const INPUT_CGROUP_RULE: &str = "c 13:* rwm";

/// Devices a session gets.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct SessionDevices<'a> {
    pub tty: Option<u8>,
    pub input_event_nodes: Vec<&'a Path>,
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
    for node in &devices.input_event_nodes {
        mappings.push(map(node.display().to_string()));
    }
    let rules = if devices.input_event_nodes.is_empty() {
        vec![]
    } else {
        vec![INPUT_CGROUP_RULE.to_owned()]
    };
    (mappings, rules)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tty_and_event_nodes_map_to_the_same_paths_inside() {
        let nodes = [
            Path::new("/dev/input/event7"),
            Path::new("/dev/input/event8"),
        ];
        let (mappings, rules) = device_mappings(&SessionDevices {
            tty: Some(12),
            input_event_nodes: nodes.to_vec(),
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
        assert_eq!(rules, vec!["c 13:* rwm".to_owned()]);
    }

    #[test]
    fn no_devices_means_no_rules() {
        let (mappings, rules) = device_mappings(&SessionDevices::default());
        assert!(mappings.is_empty() && rules.is_empty());
    }
}
