//! Scaling decisions as pure functions of a region's state, so they are
//! unit-tested without a database or a cloud. The default, [`BufferPolicy`],
//! keeps a warm buffer: it launches hosts of the region's current image until
//! the free slots to expect (ACTIVE hosts' free slots, registering hosts'
//! capacity, launches in flight) reach `target_free_slots`, never taking the
//! region above `max_hosts` live instances; it drains empty hosts of retired
//! images at once, and current-image hosts empty for longer than
//! `scale_down_grace_s` while the buffer stays at target without them. The
//! demand-aware policy ([`crate::forecast`]) sizes the same buffer from the
//! region's demand instead.

use std::time::Duration;

use berth_common::HostStatus;
use chrono::{DateTime, Utc};

use crate::forecast::Demand;

/// One host as the policy sees it.
#[derive(Clone, Debug, PartialEq)]
pub struct HostView {
    pub id: String,
    pub status: HostStatus,
    pub image_id: String,
    pub capacity: i32,
    pub free_slots: i32,
    pub empty_since: Option<DateTime<Utc>>,
}

/// A region's state at one instant.
#[derive(Clone, Debug)]
pub struct RegionView {
    pub target_free_slots: i32,
    pub max_hosts: i32,
    pub scale_down_grace: Duration,
    /// Slots of one new host of the preferred instance type.
    pub capacity_per_host: i32,
    pub current_image: Option<String>,
    /// Images whose hosts must not be scaled down (a deploy's candidate buffer).
    pub protected_images: Vec<String>,
    pub hosts: Vec<HostView>,
    /// Launches written but not resolved: (image, hosts, slots).
    pub in_flight: Vec<InFlight>,
    pub now: DateTime<Utc>,
    /// The region's demand history, read only for regions on the forecast
    /// policy (the buffer policy neither needs nor pays for it).
    pub demand: Option<Demand>,
}

#[derive(Clone, Debug, PartialEq)]
pub struct InFlight {
    pub image_id: String,
    pub hosts: i32,
    pub slots: i32,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    Launch { image_id: String, count: i32 },
    Drain { host_id: String, reason: String },
}

pub trait Policy: Send + Sync + std::fmt::Debug {
    fn decide(&self, region: &RegionView) -> Vec<Action>;
}

/// Instances that cost money and count against `max_hosts`. A TERMINATING
/// host is live until the cloud says it is gone (its row is deleted then):
/// while TerminateInstances fails, it still runs and still costs.
pub fn live_instances(region: &RegionView) -> i32 {
    let hosts = region
        .hosts
        .iter()
        .filter(|h| h.status != HostStatus::Terminated)
        .count() as i32;
    hosts + region.in_flight.iter().map(|f| f.hosts).sum::<i32>()
}

/// Free slots the region will have on `image` once everything in flight
/// registers: ACTIVE free slots + PRE_CONNECTION capacity + launches.
pub fn expected_free(region: &RegionView, image: &str) -> i32 {
    let hosts: i32 = region
        .hosts
        .iter()
        .filter(|h| h.image_id == image)
        .map(|h| match h.status {
            HostStatus::Active => h.free_slots,
            HostStatus::Launching | HostStatus::PreConnection => h.capacity,
            _ => 0,
        })
        .sum();
    hosts
        + region
            .in_flight
            .iter()
            .filter(|f| f.image_id == image)
            .map(|f| f.slots)
            .sum::<i32>()
}

/// Free slots on `image` that an assign can take now.
pub fn ready_free(region: &RegionView, image: &str) -> i32 {
    region
        .hosts
        .iter()
        .filter(|h| h.image_id == image && h.status == HostStatus::Active)
        .map(|h| h.free_slots)
        .sum()
}

/// How many hosts to launch for `image` to reach `target` free slots,
/// never taking the region above `max_hosts`.
pub fn launches_needed(region: &RegionView, image: &str, target: i32) -> i32 {
    let deficit = target - expected_free(region, image);
    if deficit <= 0 || region.capacity_per_host <= 0 {
        return 0;
    }
    let wanted = (deficit + region.capacity_per_host - 1) / region.capacity_per_host;
    wanted.min(region.max_hosts - live_instances(region)).max(0)
}

#[derive(Debug, Default)]
pub struct BufferPolicy;

impl Policy for BufferPolicy {
    fn decide(&self, region: &RegionView) -> Vec<Action> {
        buffer_decide(
            region,
            region.target_free_slots,
            region.target_free_slots,
            false,
        )
    }
}

/// The buffer's arithmetic for any target: launch the current image up to
/// `target` free slots; drain retired-image hosts once empty, and
/// current-image hosts idle past the grace while `keep` (≥ `target`, the
/// scale-down hysteresis) free slots stay without them — counting, when
/// `keep_ready`, only slots that serve now (ACTIVE), not those still booting,
/// so a ready host is never given up for one that registers too late.
pub(crate) fn buffer_decide(
    region: &RegionView,
    target: i32,
    keep: i32,
    keep_ready: bool,
) -> Vec<Action> {
    let mut actions = vec![];
    let Some(current) = region.current_image.as_deref() else {
        return actions;
    };
    let count = launches_needed(region, current, target);
    if count > 0 {
        actions.push(Action::Launch {
            image_id: current.to_owned(),
            count,
        });
    }
    let empty = |h: &&HostView| h.status == HostStatus::Active && h.free_slots == h.capacity;
    let protected = |h: &&HostView| region.protected_images.contains(&h.image_id);

    // Old-image hosts go as soon as nobody uses them.
    for host in region
        .hosts
        .iter()
        .filter(empty)
        .filter(|h| h.image_id != current && !protected(h))
    {
        actions.push(Action::Drain {
            host_id: host.id.clone(),
            reason: "runs a retired image and is empty".into(),
        });
    }

    // Current-image hosts idle past the grace, while the buffer stays
    // at or above target without them. Oldest-idle first.
    let grace = chrono::Duration::from_std(region.scale_down_grace).unwrap_or_default();
    let mut idle: Vec<&HostView> = region
        .hosts
        .iter()
        .filter(empty)
        .filter(|h| h.image_id == current)
        .filter(|h| h.empty_since.is_some_and(|t| region.now - t >= grace))
        .collect();
    idle.sort_by_key(|h| h.empty_since);
    let mut free = if keep_ready {
        ready_free(region, current)
    } else {
        expected_free(region, current)
    };
    let keep = keep.max(target);
    for host in idle {
        if free - host.capacity < keep {
            break;
        }
        free -= host.capacity;
        actions.push(Action::Drain {
            host_id: host.id.clone(),
            reason: "idle beyond the grace and not needed for the buffer".into(),
        });
    }
    actions
}

#[cfg(test)]
mod tests {
    use super::*;

    fn host(
        id: &str,
        status: HostStatus,
        image: &str,
        cap: i32,
        free: i32,
        idle_min: Option<i64>,
        now: DateTime<Utc>,
    ) -> HostView {
        HostView {
            id: id.into(),
            status,
            image_id: image.into(),
            capacity: cap,
            free_slots: free,
            empty_since: idle_min.map(|m| now - chrono::Duration::minutes(m)),
        }
    }

    fn region(
        target: i32,
        max: i32,
        hosts: Vec<HostView>,
        in_flight: Vec<InFlight>,
        now: DateTime<Utc>,
    ) -> RegionView {
        RegionView {
            target_free_slots: target,
            max_hosts: max,
            scale_down_grace: Duration::from_secs(600),
            capacity_per_host: 4,
            current_image: Some("ami-new".into()),
            protected_images: vec![],
            hosts,
            in_flight,
            now,
            demand: None,
        }
    }

    #[test]
    fn an_empty_region_launches_ceil_of_deficit_over_capacity() {
        let now = Utc::now();
        let r = region(10, 100, vec![], vec![], now);
        assert_eq!(
            BufferPolicy.decide(&r),
            vec![Action::Launch {
                image_id: "ami-new".into(),
                count: 3
            }]
        );
    }

    #[test]
    fn in_flight_launches_and_pre_connection_hosts_count_as_free() {
        let now = Utc::now();
        let hosts = vec![host(
            "a",
            HostStatus::PreConnection,
            "ami-new",
            4,
            4,
            None,
            now,
        )];
        let in_flight = vec![InFlight {
            image_id: "ami-new".into(),
            hosts: 1,
            slots: 4,
        }];
        let r = region(8, 100, hosts, in_flight, now);
        assert!(
            BufferPolicy.decide(&r).is_empty(),
            "8 slots are already on their way"
        );
    }

    #[test]
    fn never_launches_above_max_hosts_counting_draining_and_in_flight() {
        let now = Utc::now();
        let hosts = vec![
            host("a", HostStatus::Active, "ami-new", 4, 0, None, now),
            host("b", HostStatus::Draining, "ami-old", 4, 0, None, now),
        ];
        let in_flight = vec![InFlight {
            image_id: "ami-new".into(),
            hosts: 1,
            slots: 4,
        }];
        let r = region(40, 4, hosts, in_flight, now);
        assert_eq!(
            launches_needed(&r, "ami-new", 40),
            1,
            "3 of 4 instances exist or are coming"
        );
        let full = region(40, 3, r.hosts.clone(), r.in_flight.clone(), now);
        assert_eq!(launches_needed(&full, "ami-new", 40), 0);
        let over = region(40, 1, r.hosts.clone(), r.in_flight.clone(), now);
        assert_eq!(
            launches_needed(&over, "ami-new", 40),
            0,
            "already above the cap: launch nothing, never negative"
        );
    }

    #[test]
    fn scales_down_idle_hosts_only_while_the_buffer_holds() {
        let now = Utc::now();
        let hosts = vec![
            host("busy", HostStatus::Active, "ami-new", 4, 2, None, now),
            host(
                "idle-old",
                HostStatus::Active,
                "ami-new",
                4,
                4,
                Some(60),
                now,
            ),
            host(
                "idle-new",
                HostStatus::Active,
                "ami-new",
                4,
                4,
                Some(20),
                now,
            ),
            host(
                "just-emptied",
                HostStatus::Active,
                "ami-new",
                4,
                4,
                Some(1),
                now,
            ),
        ];
        // free = 2 + 4 + 4 + 4 = 14, target 6: may drop 2 idle hosts (14 → 6).
        let r = region(6, 100, hosts, vec![], now);
        let drained: Vec<_> = BufferPolicy
            .decide(&r)
            .into_iter()
            .filter_map(|a| match a {
                Action::Drain { host_id, .. } => Some(host_id),
                _ => None,
            })
            .collect();
        assert_eq!(drained, vec!["idle-old".to_owned(), "idle-new".to_owned()]);
    }

    #[test]
    fn old_image_hosts_drain_once_empty_but_protected_ones_stay() {
        let now = Utc::now();
        let hosts = vec![
            host(
                "old-empty",
                HostStatus::Active,
                "ami-old",
                4,
                4,
                Some(0),
                now,
            ),
            host("old-busy", HostStatus::Active, "ami-old", 4, 3, None, now),
            host(
                "candidate",
                HostStatus::Active,
                "ami-next",
                4,
                4,
                Some(90),
                now,
            ),
        ];
        let mut r = region(0, 100, hosts, vec![], now);
        r.protected_images = vec!["ami-next".into()];
        let actions = BufferPolicy.decide(&r);
        assert_eq!(actions.len(), 1);
        assert!(matches!(&actions[0], Action::Drain { host_id, .. } if host_id == "old-empty"));
    }

    #[test]
    fn no_current_image_means_no_action() {
        let now = Utc::now();
        let mut r = region(10, 10, vec![], vec![], now);
        r.current_image = None;
        assert!(BufferPolicy.decide(&r).is_empty());
    }
}
