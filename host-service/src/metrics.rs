//! Prometheus metrics served at `/metrics`.

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    pub allocations: Counter,
    pub teardowns: Counter,
    pub spawn_failures: Counter,
    pub json_transport_refused: Counter,
    pub proxy_requests: Counter,
    pub proxy_refused: Counter,
    pub idle_reaped: Counter,
    pub warm_sessions: Gauge,
    pub sessions: Gauge,
    /// 1 while the control plane's watch stream is open.
    pub control_connected: Gauge,
    /// config.json written → app ready → RUNNING.
    pub ready_seconds: Histogram,
    /// Warm container: resources → started container → WAITING row.
    pub spawn_seconds: Histogram,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("berth_host");
        let m = Self {
            allocations: Counter::default(),
            teardowns: Counter::default(),
            spawn_failures: Counter::default(),
            json_transport_refused: Counter::default(),
            proxy_requests: Counter::default(),
            proxy_refused: Counter::default(),
            idle_reaped: Counter::default(),
            warm_sessions: Gauge::default(),
            sessions: Gauge::default(),
            control_connected: Gauge::default(),
            ready_seconds: Histogram::new(exponential_buckets(0.001, 2.0, 16)),
            spawn_seconds: Histogram::new(exponential_buckets(0.01, 2.0, 14)),
            registry: Registry::default(),
        };
        registry.register(
            "allocations",
            "Sessions claimed for a user",
            m.allocations.clone(),
        );
        registry.register("teardowns", "Sessions torn down", m.teardowns.clone());
        registry.register(
            "spawn_failures",
            "Warm sessions that failed to start",
            m.spawn_failures.clone(),
        );
        registry.register(
            "json_transport_refused",
            "json_transport requests refused",
            m.json_transport_refused.clone(),
        );
        registry.register(
            "proxy_requests",
            "Requests and WebSocket upgrades forwarded to session containers",
            m.proxy_requests.clone(),
        );
        registry.register(
            "proxy_refused",
            "Proxy and login requests refused",
            m.proxy_refused.clone(),
        );
        registry.register(
            "control_connected",
            "1 while the control plane's watch stream is open, else 0",
            m.control_connected.clone(),
        );
        registry.register(
            "idle_reaped",
            "Sessions torn down for being idle",
            m.idle_reaped.clone(),
        );
        registry.register(
            "warm_sessions",
            "Sessions waiting for a user",
            m.warm_sessions.clone(),
        );
        registry.register("sessions", "Sessions on this host", m.sessions.clone());
        registry.register(
            "ready_seconds",
            "config.json to RUNNING",
            m.ready_seconds.clone(),
        );
        registry.register(
            "spawn_seconds",
            "Warm session creation",
            m.spawn_seconds.clone(),
        );
        Self { registry, ..m }
    }

    /// The registry as OpenMetrics text. `/metrics` answers with it through
    /// `berth_common::exposition`, which derives the classic 0.0.4 format from it.
    pub fn render(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = encode(&mut out, &self.registry);
        out
    }
}
