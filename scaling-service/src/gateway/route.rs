//! Where a session is: its host's address and pinned certificate, its owner's
//! token hash (what login cookies bind) and the TCP ports its runtime declares.
//! Read from the database and kept for a moment, so a page's many requests
//! cost one read; the host still checks each forwarded request itself.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use berth_common::SessionId;
use sqlx::PgPool;

/// How long a looked-up route is used before it is read again.
const FRESH_FOR: Duration = Duration::from_secs(2);
/// Cached routes beyond this many are dropped (expired ones first).
const MAX_CACHED: usize = 20_000;

#[derive(Clone, Debug)]
pub struct Route {
    pub host_id: String,
    pub host_live: bool,
    /// `None` when the host has no address or certificate (it never registered).
    pub host: Option<HostTarget>,
    pub session_live: bool,
    pub token_sha256: Option<String>,
    /// The session's owner (for the audit trail of logins).
    pub user_id: Option<String>,
    /// The runtime's TCP ports in declared order; the first is the default.
    pub ports: Vec<u16>,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct HostTarget {
    pub addr: SocketAddr,
    pub cert_sha256: String,
}

#[derive(Debug, sqlx::FromRow)]
struct RouteRow {
    session_status: String,
    token_sha256: Option<String>,
    user_id: Option<String>,
    host_id: String,
    host_status: String,
    ip: Option<String>,
    api_port: Option<i32>,
    cert_sha256: Option<String>,
    ports: Option<serde_json::Value>,
}

impl From<RouteRow> for Route {
    fn from(row: RouteRow) -> Self {
        let addr = row
            .ip
            .as_deref()
            .and_then(|ip| ip.parse::<IpAddr>().ok())
            .zip(row.api_port.and_then(|p| u16::try_from(p).ok()))
            .map(|(ip, port)| SocketAddr::new(ip, port));
        Route {
            host: addr
                .zip(row.cert_sha256)
                .map(|(addr, cert_sha256)| HostTarget { addr, cert_sha256 }),
            host_live: matches!(
                row.host_status.as_str(),
                "ACTIVE" | "DRAINING" | "UNREACHABLE"
            ),
            host_id: row.host_id,
            session_live: matches!(
                row.session_status.as_str(),
                "ALLOCATED" | "CONNECTING" | "RUNNING"
            ),
            token_sha256: row.token_sha256,
            user_id: row.user_id,
            ports: row.ports.map(|p| tcp_ports(&p)).unwrap_or_default(),
        }
    }
}

/// The TCP container ports of a runtime's `ports` array, in order.
fn tcp_ports(ports: &serde_json::Value) -> Vec<u16> {
    ports
        .as_array()
        .into_iter()
        .flatten()
        .filter(|p| p["protocol"].as_str().unwrap_or("tcp") == "tcp")
        .filter_map(|p| p["container_port"].as_u64())
        .filter_map(|p| u16::try_from(p).ok())
        .collect()
}

impl Route {
    /// The container port `asked` names (the default web port for `None`),
    /// if the runtime declares it.
    pub fn port(&self, asked: Option<u16>) -> Option<u16> {
        match asked {
            None => self.ports.first().copied(),
            Some(port) => self.ports.contains(&port).then_some(port),
        }
    }
}

#[derive(Debug, Default)]
pub struct Routes {
    cached: Mutex<HashMap<SessionId, (Instant, Route)>>,
}

impl Routes {
    /// The session's route; `Ok(None)` when no such session exists.
    pub async fn get(&self, db: &PgPool, id: SessionId) -> Result<Option<Route>, sqlx::Error> {
        if let Some(route) = self.fresh(id) {
            return Ok(Some(route));
        }
        let row: Option<RouteRow> = sqlx::query_as(
            "SELECT s.status::text AS session_status, s.token_sha256, s.user_id, h.id AS host_id, \
                    h.status::text AS host_status, host(COALESCE(h.private_ip, h.public_ip)) AS ip, \
                    h.api_port, h.cert_sha256, r.ports \
             FROM sessions s JOIN hosts h ON h.id = s.host_id \
             LEFT JOIN runtimes r ON r.name = s.runtime \
             WHERE s.id = $1",
        )
        .bind(id.0)
        .fetch_optional(db)
        .await?;
        let Some(route) = row.map(Route::from) else {
            self.forget(id);
            return Ok(None);
        };
        self.keep(id, route.clone());
        Ok(Some(route))
    }

    fn fresh(&self, id: SessionId) -> Option<Route> {
        let cached = self.cached.lock().unwrap_or_else(|p| p.into_inner());
        cached
            .get(&id)
            .filter(|(at, _)| at.elapsed() < FRESH_FOR)
            .map(|(_, route)| route.clone())
    }

    fn keep(&self, id: SessionId, route: Route) {
        let mut cached = self.cached.lock().unwrap_or_else(|p| p.into_inner());
        if cached.len() >= MAX_CACHED {
            cached.retain(|_, (at, _)| at.elapsed() < FRESH_FOR);
            if cached.len() >= MAX_CACHED {
                cached.clear();
            }
        }
        cached.insert(id, (Instant::now(), route));
    }

    pub fn forget(&self, id: SessionId) {
        self.cached
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn the_first_tcp_port_is_the_default_and_only_declared_ones_are_reachable() {
        let route = Route {
            host_id: "h".into(),
            host_live: true,
            host: None,
            session_live: true,
            token_sha256: None,
            user_id: None,
            ports: tcp_ports(&json!([
                {"container_port": 5000, "protocol": "udp"},
                {"container_port": 8081, "protocol": "tcp", "exposure": "proxy"},
                {"container_port": 8080}
            ])),
        };
        assert_eq!(route.port(None), Some(8081));
        assert_eq!(route.port(Some(8080)), Some(8080));
        assert_eq!(route.port(Some(5000)), None, "UDP is not proxied");
        assert_eq!(route.port(Some(9999)), None);
    }
}
