//! Host ports for a session's container ports: all-or-none, never two
//! sessions on one port, and each candidate checked free on the host (some
//! other process may hold it) before it is handed out.

use std::collections::HashSet;
use std::net::{Ipv4Addr, TcpListener, UdpSocket};
use std::ops::RangeInclusive;

use rand::Rng;
use serde::{Deserialize, Serialize};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    Tcp,
    Udp,
}

impl Protocol {
    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Tcp => "tcp",
            Protocol::Udp => "udp",
        }
    }
}

/// Who reaches a runtime's port.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Exposure {
    /// Published on a host port, for clients that connect directly (the
    /// streaming case).
    #[default]
    Public,
    /// Not published at all: reachable only through the authenticated proxy.
    Proxy,
}

impl Exposure {
    fn is_public(&self) -> bool {
        *self == Exposure::Public
    }
}

/// A container port a runtime exposes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContainerPort {
    pub container_port: u16,
    #[serde(default = "tcp")]
    pub protocol: Protocol,
    #[serde(default)]
    pub exposure: Exposure,
}

fn tcp() -> Protocol {
    Protocol::Tcp
}

/// One of a session's ports, as in the wire contract and the `berth.ports`
/// label: a public port with its host port, or a proxy-only port with none
/// (`"host_port": null, "exposure": "proxy"`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PortMapping {
    pub container_port: u16,
    pub protocol: Protocol,
    pub host_port: Option<u16>,
    #[serde(default, skip_serializing_if = "Exposure::is_public")]
    pub exposure: Exposure,
}

#[derive(Debug)]
pub struct PortAllocator {
    range: RangeInclusive<u16>,
    in_use: HashSet<u16>,
    /// Off in unit tests, which must not depend on what the machine runs.
    probe_host: bool,
}

impl PortAllocator {
    pub fn new(range: RangeInclusive<u16>) -> Self {
        Self {
            range,
            in_use: HashSet::new(),
            probe_host: true,
        }
    }

    #[cfg(test)]
    fn without_host_probe(range: RangeInclusive<u16>) -> Self {
        Self {
            range,
            in_use: HashSet::new(),
            probe_host: false,
        }
    }

    /// Host ports for all public ports of `wanted` (proxy-only ones get none),
    /// or `None` (and nothing taken) when the range cannot supply them all.
    pub fn allocate(&mut self, wanted: &[ContainerPort]) -> Option<Vec<PortMapping>> {
        let (low, high) = (*self.range.start(), *self.range.end());
        let span = u32::from(high - low) + 1;
        // Start at a random point and walk the range once: uniform enough, and
        // bounded even when the range is nearly full.
        let start = rand::thread_rng().gen_range(0..span);
        let mut chosen: Vec<PortMapping> = Vec::with_capacity(wanted.len());
        let mut offset = 0;
        for want in wanted {
            if want.exposure == Exposure::Proxy {
                chosen.push(PortMapping {
                    container_port: want.container_port,
                    protocol: want.protocol,
                    host_port: None,
                    exposure: Exposure::Proxy,
                });
                continue;
            }
            let host_port = loop {
                if offset >= span {
                    return None;
                }
                let candidate = low + ((start + offset) % span) as u16;
                offset += 1;
                let free = !self.in_use.contains(&candidate)
                    && !chosen.iter().any(|m| m.host_port == Some(candidate))
                    && (!self.probe_host || free_on_host(candidate, want.protocol));
                if free {
                    break candidate;
                }
            };
            chosen.push(PortMapping {
                container_port: want.container_port,
                protocol: want.protocol,
                host_port: Some(host_port),
                exposure: Exposure::Public,
            });
        }
        self.in_use
            .extend(chosen.iter().filter_map(|m| m.host_port));
        Some(chosen)
    }

    /// Marks ports taken (adopting a running session); false, with nothing
    /// taken, if any is outside the range or already taken.
    pub fn reserve(&mut self, mappings: &[PortMapping]) -> bool {
        let published: Vec<u16> = mappings.iter().filter_map(|m| m.host_port).collect();
        let ok = published
            .iter()
            .all(|p| self.range.contains(p) && !self.in_use.contains(p));
        if ok {
            self.in_use.extend(published);
        }
        ok
    }

    pub fn release(&mut self, mappings: &[PortMapping]) {
        for port in mappings.iter().filter_map(|m| m.host_port) {
            self.in_use.remove(&port);
        }
    }

    pub fn in_use(&self) -> usize {
        self.in_use.len()
    }
}

/// Whether nothing on the host holds `port` right now (bind and let go).
fn free_on_host(port: u16, protocol: Protocol) -> bool {
    let addr = (Ipv4Addr::UNSPECIFIED, port);
    match protocol {
        Protocol::Tcp => TcpListener::bind(addr).is_ok(),
        Protocol::Udp => UdpSocket::bind(addr).is_ok(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ports(ps: &[u16]) -> Vec<ContainerPort> {
        ps.iter()
            .map(|&p| ContainerPort {
                container_port: p,
                protocol: Protocol::Tcp,
                exposure: Exposure::Public,
            })
            .collect()
    }

    #[test]
    fn allocations_never_collide_and_are_all_or_none() {
        let mut alloc = PortAllocator::without_host_probe(100..=109);
        let a = alloc.allocate(&ports(&[80, 443, 8080])).unwrap();
        let b = alloc.allocate(&ports(&[80, 443, 8080])).unwrap();
        let mut all: Vec<u16> = a.iter().chain(&b).filter_map(|m| m.host_port).collect();
        all.sort();
        all.dedup();
        assert_eq!(all.len(), 6);
        assert!(all.iter().all(|p| (100..=109).contains(p)));
        // 4 left, 5 wanted: nothing may be taken.
        assert!(alloc.allocate(&ports(&[1, 2, 3, 4, 5])).is_none());
        assert_eq!(alloc.in_use(), 6);
        alloc.release(&a);
        assert_eq!(alloc.in_use(), 3);
        assert!(alloc.allocate(&ports(&[1, 2, 3, 4, 5, 6, 7])).is_some());
    }

    #[test]
    fn reserve_rejects_overlaps_atomically() {
        let mut alloc = PortAllocator::without_host_probe(100..=200);
        let m = |p| PortMapping {
            container_port: 1,
            protocol: Protocol::Tcp,
            host_port: Some(p),
            exposure: Exposure::Public,
        };
        assert!(alloc.reserve(&[m(150), m(151)]));
        assert!(!alloc.reserve(&[m(152), m(151)]));
        assert!(!alloc.reserve(&[m(300)]));
        assert_eq!(alloc.in_use(), 2);
    }

    #[test]
    fn ports_held_by_other_processes_are_skipped() {
        let held = TcpListener::bind((Ipv4Addr::UNSPECIFIED, 0)).unwrap();
        let port = held.local_addr().unwrap().port();
        let mut alloc = PortAllocator::new(port..=port);
        assert!(
            alloc.allocate(&ports(&[80])).is_none(),
            "a port in use on the host is never handed out"
        );
        drop(held);
        assert_eq!(
            alloc.allocate(&ports(&[80])).unwrap()[0].host_port,
            Some(port)
        );
    }

    #[test]
    fn label_json_matches_the_wire_contract() {
        let m = PortMapping {
            container_port: 8080,
            protocol: Protocol::Tcp,
            host_port: Some(40123),
            exposure: Exposure::Public,
        };
        let public = r#"{"container_port":8080,"protocol":"tcp","host_port":40123}"#;
        assert_eq!(serde_json::to_string(&m).unwrap(), public);
        assert_eq!(serde_json::from_str::<PortMapping>(public).unwrap(), m);
        let hidden = PortMapping {
            host_port: None,
            exposure: Exposure::Proxy,
            ..m
        };
        assert_eq!(
            serde_json::to_string(&hidden).unwrap(),
            r#"{"container_port":8080,"protocol":"tcp","host_port":null,"exposure":"proxy"}"#
        );
        let p: ContainerPort = serde_json::from_str(r#"{"container_port": 9000}"#).unwrap();
        assert_eq!((p.protocol, p.exposure), (Protocol::Tcp, Exposure::Public));
    }

    #[test]
    fn proxy_ports_take_no_host_port() {
        let mut alloc = PortAllocator::without_host_probe(100..=100);
        let mut wanted = ports(&[80, 443]);
        wanted[1].exposure = Exposure::Proxy;
        let got = alloc.allocate(&wanted).unwrap();
        assert_eq!(got[0].host_port, Some(100));
        assert_eq!((got[1].host_port, got[1].exposure), (None, Exposure::Proxy));
        assert_eq!(alloc.in_use(), 1);
        alloc.release(&got);
        assert_eq!(alloc.in_use(), 0);
        assert!(alloc.reserve(&got));
    }
}
