//! Prometheus metrics served at `/metrics`.

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    pub assigns: Counter,
    pub assign_failures: Counter,
    pub assign_seconds: Histogram,
    pub launches: Counter,
    pub launch_failures: Counter,
    pub terminations: Counter,
    pub passes: Counter,
    /// Allocations sent straight to a host stream this replica holds.
    pub direct_host_events: Counter,
    /// Hints the database queued and this replica published as NOTIFYs.
    pub hints_published: Counter,
    /// One region controller pass, start to end.
    pub pass_seconds: Histogram,
    /// Instance listings (DescribeInstances) made by controller passes.
    pub cloud_listings: Counter,
    /// Per region: hosts silent past the heartbeat grace right now.
    pub silent_hosts: Family<Vec<(String, String)>, Gauge>,
    /// Per region: 1 while so many hosts are silent together that none is
    /// terminated for silence.
    pub mass_silence: Family<Vec<(String, String)>, Gauge>,
    /// Host watch streams this replica holds (set when rendered).
    pub host_streams: Gauge,
    /// Browser gateway: requests addressed to a session.
    pub gateway_requests: Counter,
    /// Browser gateway: WebSocket (and other) upgrades tunnelled to a host.
    pub gateway_upgrades: Counter,
    /// Browser gateway: body and tunnel bytes, `direction` up (to the app) or down.
    gateway_bytes: Family<Vec<(String, String)>, Counter>,
    /// Its two series, made once rather than looked up on every request.
    pub gateway_bytes_up: Counter,
    pub gateway_bytes_down: Counter,
    /// Browser gateway: requests refused, by `reason` (the error code).
    pub gateway_refusals: Family<Vec<(String, String)>, Counter>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("berth_scaler");
        let m = Self {
            assigns: Counter::default(),
            assign_failures: Counter::default(),
            assign_seconds: Histogram::new(exponential_buckets(0.0005, 2.0, 16)),
            launches: Counter::default(),
            launch_failures: Counter::default(),
            terminations: Counter::default(),
            passes: Counter::default(),
            direct_host_events: Counter::default(),
            hints_published: Counter::default(),
            pass_seconds: Histogram::new(exponential_buckets(0.001, 2.0, 14)),
            cloud_listings: Counter::default(),
            silent_hosts: Family::default(),
            mass_silence: Family::default(),
            host_streams: Gauge::default(),
            gateway_requests: Counter::default(),
            gateway_upgrades: Counter::default(),
            gateway_bytes: Family::default(),
            gateway_bytes_up: Counter::default(),
            gateway_bytes_down: Counter::default(),
            gateway_refusals: Family::default(),
            registry: Registry::default(),
        };
        registry.register("assigns", "Sessions assigned", m.assigns.clone());
        registry.register(
            "assign_failures",
            "Assigns answered with an error",
            m.assign_failures.clone(),
        );
        registry.register("assign_seconds", "Assign latency", m.assign_seconds.clone());
        registry.register("launches", "Instances launched", m.launches.clone());
        registry.register(
            "launch_failures",
            "Launches that failed",
            m.launch_failures.clone(),
        );
        registry.register(
            "terminations",
            "Instances terminated",
            m.terminations.clone(),
        );
        registry.register(
            "controller_passes",
            "Region controller passes",
            m.passes.clone(),
        );
        registry.register(
            "direct_host_events",
            "Allocations sent straight to a host stream this replica holds (others go through NOTIFY)",
            m.direct_host_events.clone(),
        );
        registry.register(
            "hints_published",
            "Session hints the database queued (allocations, ends, freed slots) that this replica published as NOTIFYs, in batches",
            m.hints_published.clone(),
        );
        registry.register(
            "controller_pass_seconds",
            "Duration of one region controller pass",
            m.pass_seconds.clone(),
        );
        registry.register(
            "cloud_listings",
            "Instance listings (DescribeInstances) made by region controller passes",
            m.cloud_listings.clone(),
        );
        registry.register(
            "silent_hosts",
            "Hosts silent past the heartbeat grace, per region",
            m.silent_hosts.clone(),
        );
        registry.register(
            "mass_silence_suspected",
            "1 while a region has too many silent hosts at once to terminate any for silence",
            m.mass_silence.clone(),
        );
        registry.register(
            "host_streams",
            "Host watch streams this replica holds",
            m.host_streams.clone(),
        );
        registry.register(
            "gateway_requests",
            "Browser gateway requests addressed to a session",
            m.gateway_requests.clone(),
        );
        registry.register(
            "gateway_upgrades",
            "Browser gateway upgrades (WebSockets) tunnelled to a host",
            m.gateway_upgrades.clone(),
        );
        registry.register(
            "gateway_bytes",
            "Browser gateway body and tunnel bytes by direction (up: to the app)",
            m.gateway_bytes.clone(),
        );
        registry.register(
            "gateway_refusals",
            "Browser gateway requests refused, by reason",
            m.gateway_refusals.clone(),
        );
        let direction = |d: &str| {
            m.gateway_bytes
                .get_or_create(&vec![("direction".to_owned(), d.to_owned())])
                .clone()
        };
        let (gateway_bytes_up, gateway_bytes_down) = (direction("up"), direction("down"));
        Self {
            registry,
            gateway_bytes_up,
            gateway_bytes_down,
            ..m
        }
    }

    /// The registry as OpenMetrics text. `/metrics` answers with it through
    /// `berth_common::exposition`, which derives the classic 0.0.4 format from it.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let _ = encode(&mut out, &self.registry);
        out
    }
}
