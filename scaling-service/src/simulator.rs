//! Replays a demand trace through a region policy in virtual time, to price
//! a policy before a region switches to it (`scripts/bench economics`).
//!
//! Every second of the scored span: hosts whose boot finished register
//! (ACTIVE, every slot free), sessions that ended free their slot, users
//! waiting for a slot take the ones that appeared, the second's arrivals take
//! a free slot on the fullest host (the assign's bin-packing) or wait, and
//! then the policy decides once, through [`Policy::decide`] on a
//! [`RegionView`] exactly as the region controller calls it, with the
//! demand counted from the trace in the forecast's windows. A launch is a
//! PRE_CONNECTION host at once whose registration follows after a boot delay
//! drawn uniformly from `boot_delay_s`; a drained host (only an empty one)
//! stops at once. Instances are billed per second from launch to stop, at
//! least 60 s each. Idle slot-hours are billed slot-hours minus session
//! hours; idle instance-hours are those over the capacity per host.
//!
//! The fleet starts empty at the scored span's start; the history before it
//! counts only as the forecast's memory (the region ran on before).
//!
//! Two references price what no policy can beat: [`oracle`], which knows
//! every arrival, and [`rate_oracle`], which knows only the true rate they
//! were drawn at.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, VecDeque};
use std::time::Duration;

use berth_common::HostStatus;
use chrono::{DateTime, Utc};

use crate::forecast::{Demand, DemandQuery, ForecastSettings};
use crate::policy::{Action, HostView, Policy, RegionView};
use crate::trace::{Arrival, Group, Intensity, Rng, Trace};

/// The part of the world the policy does not choose.
#[derive(Clone, Debug)]
pub struct Fleet {
    pub capacity_per_host: i32,
    /// Launch to registered, uniform in `min..=max` seconds.
    pub boot_delay_s: (i64, i64),
    pub max_hosts: i32,
    /// Price of one instance-hour.
    pub price_per_hour: f64,
    pub seed: u64,
}

impl Default for Fleet {
    fn default() -> Self {
        Self {
            capacity_per_host: 4,
            boot_delay_s: (60, 120),
            max_hosts: 100,
            price_per_hour: 0.1664,
            seed: 1,
        }
    }
}

/// What the region row says.
#[derive(Clone, Debug, Default)]
pub struct RegionSettings {
    pub target_free_slots: i32,
    pub scale_down_grace_s: u64,
    /// `Some` puts the region on the forecast policy (the view carries demand).
    pub forecast: Option<ForecastSettings>,
}

/// What a replay cost and how users fared.
#[derive(Clone, Debug, Default, PartialEq, serde::Serialize)]
pub struct Outcome {
    pub arrivals: usize,
    pub warm: usize,
    pub warm_hit_rate: f64,
    /// Of the arrivals that waited (0 when none did).
    pub wait_p50_s: f64,
    pub wait_p99_s: f64,
    pub instance_hours: f64,
    pub idle_slot_hours: f64,
    pub idle_instance_hours: f64,
    pub cost: f64,
    pub launches: usize,
    pub max_hosts_seen: i32,
    /// When each arrival that waited arrived (unix seconds), to see where
    /// a policy falls short.
    #[serde(skip)]
    pub cold_arrivals: Vec<i64>,
}

const IMAGE: &str = "sim-image";
const MIN_BILLED_S: i64 = 60;

fn at(t: i64) -> DateTime<Utc> {
    DateTime::from_timestamp(t, 0).unwrap_or_default()
}

/// What a replay counted, before it is turned into hours and rates.
#[derive(Default)]
struct Tally {
    cold_arrivals: Vec<i64>,
    waits: Vec<i64>,
    instance_s: i64,
    busy_slot_s: i64,
    launches: usize,
    max_hosts_seen: i32,
}

fn outcome(fleet: &Fleet, arrivals: usize, tally: Tally) -> Outcome {
    let Tally {
        cold_arrivals,
        mut waits,
        instance_s,
        busy_slot_s,
        launches,
        max_hosts_seen,
    } = tally;
    waits.sort_unstable();
    let pct = |p: f64| {
        if waits.is_empty() {
            0.0
        } else {
            waits[((waits.len() - 1) as f64 * p).round() as usize] as f64
        }
    };
    let instance_hours = instance_s as f64 / 3600.0;
    let idle_slot_hours =
        (i64::from(fleet.capacity_per_host) * instance_s - busy_slot_s) as f64 / 3600.0;
    let warm = arrivals - waits.len();
    Outcome {
        arrivals,
        warm,
        warm_hit_rate: if arrivals == 0 {
            1.0
        } else {
            warm as f64 / arrivals as f64
        },
        wait_p50_s: pct(0.5),
        wait_p99_s: pct(0.99),
        instance_hours,
        idle_slot_hours,
        idle_instance_hours: idle_slot_hours / f64::from(fleet.capacity_per_host.max(1)),
        cost: instance_hours * fleet.price_per_hour,
        launches,
        max_hosts_seen,
        cold_arrivals,
    }
}

/// One simulated host beside its [`HostView`].
struct SimHost {
    key: u64,
    launched_at: i64,
    ready_at: i64,
}

/// Replays `trace`'s scored span through `policy`.
pub fn replay(
    trace: &Trace,
    policy: &dyn Policy,
    region: &RegionSettings,
    fleet: &Fleet,
) -> Outcome {
    let mut rng = Rng::new(fleet.seed);
    let times: Vec<i64> = trace.arrivals.iter().map(|a| a.at).collect();
    let mut next = times.partition_point(|&t| t < trace.score_from);
    let scored = times.partition_point(|&t| t < trace.end) - next;
    let mut view = RegionView {
        target_free_slots: region.target_free_slots,
        max_hosts: fleet.max_hosts,
        scale_down_grace: Duration::from_secs(region.scale_down_grace_s),
        capacity_per_host: fleet.capacity_per_host,
        current_image: Some(IMAGE.to_owned()),
        protected_images: vec![],
        hosts: vec![],
        in_flight: vec![],
        now: at(trace.score_from),
        demand: None,
    };
    let mut sim: Vec<SimHost> = vec![];
    let mut ends: BinaryHeap<Reverse<(i64, u64)>> = BinaryHeap::new();
    let mut queue: VecDeque<usize> = VecDeque::new();
    let (mut waits, mut instance_s, mut busy_s) = (vec![], 0i64, 0i64);
    let mut cold = vec![];
    let (mut launches, mut max_seen, mut keys) = (0usize, 0i32, 0u64);

    // The fullest ACTIVE host with a free slot, ties by id: the assign's
    // `ORDER BY h.free_slots, h.id`.
    let pick = |hosts: &[HostView]| {
        hosts
            .iter()
            .enumerate()
            .filter(|(_, h)| h.status == HostStatus::Active && h.free_slots > 0)
            .min_by_key(|(_, h)| (h.free_slots, &h.id))
            .map(|(i, _)| i)
    };
    let take = |view: &mut RegionView,
                sim: &[SimHost],
                ends: &mut BinaryHeap<Reverse<(i64, u64)>>,
                i: usize,
                t: i64,
                duration: i64|
     -> i64 {
        let host = &mut view.hosts[i];
        host.free_slots -= 1;
        host.empty_since = None;
        ends.push(Reverse((t + duration, sim[i].key)));
        (t + duration).min(trace.end) - t
    };

    for t in trace.score_from..trace.end {
        let now = at(t);
        for (host, s) in view.hosts.iter_mut().zip(&sim) {
            if host.status == HostStatus::PreConnection && s.ready_at <= t {
                host.status = HostStatus::Active;
            }
        }
        while let Some(&Reverse((end, key))) = ends.peek() {
            if end > t {
                break;
            }
            ends.pop();
            if let Some(i) = sim.iter().position(|s| s.key == key) {
                let host = &mut view.hosts[i];
                host.free_slots += 1;
                if host.free_slots == host.capacity {
                    host.empty_since = Some(now);
                }
            }
        }
        while let Some(&waiting) = queue.front() {
            let Some(i) = pick(&view.hosts) else { break };
            queue.pop_front();
            let a = trace.arrivals[waiting];
            waits.push(t - a.at);
            busy_s += take(&mut view, &sim, &mut ends, i, t, a.duration_s);
        }
        while next < times.len() && times[next] <= t {
            // (times[next] < end: the loop ends there.)
            let a = trace.arrivals[next];
            match pick(&view.hosts) {
                Some(i) if queue.is_empty() => {
                    busy_s += take(&mut view, &sim, &mut ends, i, t, a.duration_s)
                }
                _ => {
                    cold.push(a.at);
                    queue.push_back(next)
                }
            }
            next += 1;
        }

        view.now = now;
        if let Some(settings) = &region.forecast {
            let query = DemandQuery::new(settings, now, Some(at(trace.start)));
            let count = |(s, e): &(DateTime<Utc>, DateTime<Utc>)| {
                // Only what has happened: the database knows no more.
                let (s, e) = (s.timestamp(), e.timestamp().min(t));
                let n = times.partition_point(|&x| x < e) - times.partition_point(|&x| x < s);
                u32::try_from(n).unwrap_or(u32::MAX)
            };
            let counts: Vec<u32> = query.windows.iter().map(count).collect();
            view.demand = Some(Demand {
                settings: settings.clone(),
                view: query.view(&counts),
            });
        }
        for action in policy.decide(&view) {
            match action {
                Action::Launch { count, .. } => {
                    for _ in 0..count {
                        keys += 1;
                        launches += 1;
                        view.hosts.push(HostView {
                            id: format!("i-{keys}"),
                            status: HostStatus::PreConnection,
                            image_id: IMAGE.to_owned(),
                            capacity: fleet.capacity_per_host,
                            free_slots: fleet.capacity_per_host,
                            // The row's trigger: empty from its insert.
                            empty_since: Some(now),
                        });
                        sim.push(SimHost {
                            key: keys,
                            launched_at: t,
                            ready_at: t + rng.between(fleet.boot_delay_s.0, fleet.boot_delay_s.1),
                        });
                    }
                }
                Action::Drain { host_id, .. } => {
                    // The controller drains only a host still ACTIVE and empty.
                    let Some(i) = view.hosts.iter().position(|h| {
                        h.id == host_id
                            && h.status == HostStatus::Active
                            && h.free_slots == h.capacity
                    }) else {
                        continue;
                    };
                    view.hosts.swap_remove(i);
                    let gone = sim.swap_remove(i);
                    instance_s += (t - gone.launched_at).max(MIN_BILLED_S);
                }
            }
        }
        max_seen = max_seen.max(view.hosts.len() as i32);
    }
    for s in &sim {
        instance_s += (trace.end - s.launched_at).max(MIN_BILLED_S);
    }
    // Still waiting at the end: they waited the whole rest of the span.
    waits.extend(queue.iter().map(|&i| trace.end - trace.arrivals[i].at));
    let tally = Tally {
        cold_arrivals: cold,
        waits,
        instance_s,
        busy_slot_s: busy_s,
        launches,
        max_hosts_seen: max_seen,
    };
    outcome(fleet, scored, tally)
}

/// The oracle: the fewest instance-seconds that serve every scored arrival
/// warm, computed offline from the whole trace, as a lower bound exact for
/// its model. The model: slots are interchangeable across hosts at every
/// instant (as if sessions could move, so any policy that cannot move them
/// pays at least this much), so second `t` needs `n(t) = ⌈busy(t) ÷
/// capacity⌉` registered hosts; every host boots for the shortest boot
/// delay `b` (billed) before it registers and is billed at least 60 s.
///
/// The algorithm: a fleet following `n` is a stack of levels, and level `k`
/// must be up whenever `n(t) ≥ k`. Across each gap of `g` seconds in level
/// `k`, a host either stays (costs `g`) or stops and a new one boots ahead of
/// the next need (costs `b`): keep it when `g ≤ b`. Each resulting run `[s,
/// e)` is one instance billed `max(60, b + e − s)`. Levels are independent
/// and the kept gaps of level `k + 1` contain those of level `k` (its gaps
/// are unions of level `k`'s), so the stack is consistent and, with `b ≥ 60`
/// (the default 60–120 s), optimal for the model.
pub fn oracle(trace: &Trace, fleet: &Fleet) -> Outcome {
    let (from, to) = (trace.score_from, trace.end);
    let span = (to - from).max(0) as usize;
    let capacity = i64::from(fleet.capacity_per_host.max(1));
    let boot = fleet.boot_delay_s.0.max(0);
    let mut delta = vec![0i64; span + 1];
    let mut busy_s = 0i64;
    let mut arrivals = 0;
    for a in trace.scored() {
        let s = (a.at - from) as usize;
        let e = ((a.at + a.duration_s).min(to) - from) as usize;
        delta[s] += 1;
        delta[e] -= 1;
        busy_s += (e - s) as i64;
        arrivals += 1;
    }
    let mut busy = 0i64;
    let needed: Vec<i64> = delta[..span]
        .iter()
        .map(|d| {
            busy += d;
            (busy + capacity - 1) / capacity
        })
        .collect();
    let top = needed.iter().copied().max().unwrap_or(0);
    let (mut instance_s, mut launches) = (0i64, 0usize);
    for level in 1..=top {
        let mut run: Option<(i64, i64)> = None; // [start, end) of the current run
        for (t, n) in needed.iter().enumerate() {
            let t = t as i64;
            if *n < level {
                continue;
            }
            run = match run {
                Some((s, e)) if t - e <= boot => Some((s, t + 1)),
                Some((s, e)) => {
                    instance_s += (boot + e - s).max(MIN_BILLED_S);
                    launches += 1;
                    Some((t, t + 1))
                }
                None => Some((t, t + 1)),
            };
        }
        if let Some((s, e)) = run {
            instance_s += (boot + e - s).max(MIN_BILLED_S);
            launches += 1;
        }
    }
    let tally = Tally {
        instance_s,
        busy_slot_s: busy_s,
        launches,
        max_hosts_seen: top as i32,
        ..Tally::default()
    };
    outcome(fleet, arrivals, tally)
}

/// The causal bound ("rate oracle"): the least idle, at `hit_rate`, of a
/// policy told the demand's true rate but not its arrival times, under the
/// oracle's own relaxations (sessions movable between hosts, every boot the
/// shortest `b`, the same billing), so the two differ only in what they know.
///
/// It gets the generator's [`Intensity`] (λ(t) and the scheduled groups),
/// and, generously, when running sessions will end and how many of a group
/// have come. Every second it keeps registered plus booting slots ≥ busy −
/// ending + q, q being what the next `b` seconds' arrivals exceed with
/// probability ≤ `tail` (base stock: nothing launched later serves them),
/// and stops a host as soon as none of the next `b` seconds needs it.
/// `tail` is chosen in hindsight: the cheapest of a grid reaching
/// `hit_rate`.
///
/// The scope of the bound: it is the best of this base-stock family (the
/// newsvendor optimum for a known rate and lead time), not a theorem over
/// every causal policy; one could still trade the day's misses between
/// hours more cleverly than one uniform `tail`. Where it exceeds the
/// oracle by far more than the 0.5 % miss budget could buy back, a target
/// of a small multiple of the oracle is out of a causal policy's reach.
pub fn rate_oracle(
    trace: &Trace,
    intensity: &Intensity,
    fleet: &Fleet,
    hit_rate: f64,
) -> (Outcome, f64) {
    const TAILS: [f64; 19] = [
        0.5, 0.3, 0.2, 0.1, 0.05, 0.03, 0.02, 0.01, 5e-3, 3e-3, 2e-3, 1e-3, 5e-4, 2e-4, 1e-4, 5e-5,
        2e-5, 1e-5, 1e-6,
    ];
    let demand = RateDemand::new(trace, intensity, fleet.boot_delay_s.0.max(1));
    let runs: Vec<(Outcome, f64)> = TAILS
        .iter()
        .map(|&tail| (rate_replay(trace, &demand, fleet, tail), tail))
        .collect();
    let cheapest = runs
        .iter()
        .filter(|(o, _)| o.warm_hit_rate >= hit_rate)
        .min_by(|a, b| a.0.idle_instance_hours.total_cmp(&b.0.idle_instance_hours));
    let warmest = || {
        runs.iter()
            .max_by(|a, b| a.0.warm_hit_rate.total_cmp(&b.0.warm_hit_rate))
    };
    cheapest.or_else(warmest).cloned().unwrap_or_default()
}

/// What the rate oracle knows of the demand, precomputed over its span.
struct RateDemand<'a> {
    /// The first second it decides at: a boot before the scored span.
    from: i64,
    /// The span's end: nobody arrives from then on.
    end: i64,
    boot: i64,
    /// `expected[i]`: Poisson arrivals expected in the seconds before `from + i`.
    expected: Vec<f64>,
    groups: &'a [Group],
    /// Every arrival's second, to count a group's arrivals so far.
    times: Vec<i64>,
}

impl<'a> RateDemand<'a> {
    fn new(trace: &Trace, intensity: &'a Intensity, boot: i64) -> Self {
        let from = trace.score_from - boot;
        let mut expected = vec![0.0];
        let mut sum = 0.0;
        // Nothing arrives after the span: the bound plans for no one then.
        for t in from..trace.end + boot {
            if t >= trace.score_from && t < trace.end {
                sum += (intensity.per_minute)(t).max(0.0) / 60.0;
            }
            expected.push(sum);
        }
        Self {
            from,
            end: trace.end,
            boot,
            expected,
            groups: &intensity.groups,
            times: trace.arrivals.iter().map(|a| a.at).collect(),
        }
    }

    /// The fewest slots that the arrivals in the seconds `(t, u]` exceed
    /// with probability at most `tail`.
    fn quantile(&self, t: i64, u: i64, tail: f64) -> i64 {
        let at = |s: i64| {
            self.expected[((s + 1 - self.from).max(0) as usize).min(self.expected.len() - 1)]
        };
        let mean = at(u) - at(t);
        let first = self.groups.partition_point(|g| g.start + g.len_s <= t + 1);
        let mut binomials = vec![];
        for g in self.groups[first..]
            .iter()
            .take_while(|g| g.start <= u && g.start < self.end)
        {
            let end = g.start + g.len_s;
            let rest_from = g.start.max(t + 1);
            let seen = self.times.partition_point(|&x| x < rest_from)
                - self.times.partition_point(|&x| x < g.start);
            let left = i64::from(g.count) - seen as i64;
            let overlap = (u + 1).min(end) - rest_from;
            if left > 0 && overlap > 0 {
                binomials.push((left as u32, overlap as f64 / (end - rest_from) as f64));
            }
        }
        tail_quantile(mean, &binomials, tail)
    }
}

/// The fewest `k` with P(N > k) ≤ `tail`, N Poisson(`mean`) plus independent
/// binomials `(n, p)`.
fn tail_quantile(mean: f64, binomials: &[(u32, f64)], tail: f64) -> i64 {
    let poisson = poisson_pmf(mean.max(0.0));
    let mut pmf = poisson;
    for &(n, p) in binomials {
        let binomial = binomial_pmf(n, p.clamp(0.0, 1.0));
        let mut sum = vec![0.0; pmf.len() + binomial.len() - 1];
        for (i, a) in pmf.iter().enumerate() {
            for (j, b) in binomial.iter().enumerate() {
                sum[i + j] += a * b;
            }
        }
        pmf = sum;
    }
    let mut cdf = 0.0;
    for (k, p) in pmf.iter().enumerate() {
        cdf += p;
        if 1.0 - cdf <= tail {
            return k as i64;
        }
    }
    pmf.len() as i64
}

/// Poisson(`mean`) probabilities from 0 until the tail is negligible.
fn poisson_pmf(mean: f64) -> Vec<f64> {
    let upto = (mean + 12.0 * mean.sqrt() + 12.0).ceil() as usize;
    let mut pmf = Vec::with_capacity(upto + 1);
    if mean < 700.0 {
        let mut p = (-mean).exp();
        for n in 0..=upto {
            pmf.push(p);
            p *= mean / (n + 1) as f64;
        }
    } else {
        // In logs: e^−mean underflows long before the mass does.
        let mut ln_p = -mean;
        for n in 0..=upto {
            pmf.push(ln_p.exp());
            ln_p += mean.ln() - ((n + 1) as f64).ln();
        }
    }
    pmf
}

fn binomial_pmf(n: u32, p: f64) -> Vec<f64> {
    let n = n as usize;
    if p >= 1.0 {
        let mut pmf = vec![0.0; n + 1];
        pmf[n] = 1.0;
        return pmf;
    }
    let mut pmf = Vec::with_capacity(n + 1);
    let mut q = (1.0 - p).powi(n as i32);
    for i in 0..=n {
        pmf.push(q);
        q *= (n - i) as f64 / (i + 1) as f64 * p / (1.0 - p);
    }
    pmf
}

/// Counts by second, summed over prefixes: the sessions that end by then.
struct Fenwick(Vec<i64>);

impl Fenwick {
    fn add(&mut self, i: usize, n: i64) {
        let mut i = i + 1;
        while i <= self.0.len() {
            self.0[i - 1] += n;
            i += i & i.wrapping_neg();
        }
    }
    /// The sum over `0..=i`.
    fn prefix(&self, i: usize) -> i64 {
        let mut i = (i + 1).min(self.0.len());
        let mut sum = 0;
        while i > 0 {
            sum += self.0[i - 1];
            i -= i & i.wrapping_neg();
        }
        sum
    }
}

/// One run of the rate oracle at one `tail`.
fn rate_replay(trace: &Trace, demand: &RateDemand<'_>, fleet: &Fleet, tail: f64) -> Outcome {
    let capacity = i64::from(fleet.capacity_per_host.max(1));
    let boot = demand.boot;
    let last = trace.end + boot;
    let second = |s: i64| (s.clamp(demand.from, last) - demand.from) as usize;
    // Launch times of registered hosts (oldest first) and of booting ones.
    let mut ready: VecDeque<i64> = VecDeque::new();
    let mut booting: VecDeque<i64> = VecDeque::new();
    let mut busy = 0i64;
    let mut ends: BinaryHeap<Reverse<i64>> = BinaryHeap::new();
    let mut ending = Fenwick(vec![0; second(last) + 1]);
    let mut queue: VecDeque<Arrival> = VecDeque::new();
    let mut tally = Tally::default();
    let mut next = trace.arrivals.partition_point(|a| a.at < trace.score_from);
    let scored = trace.arrivals.partition_point(|a| a.at < trace.end) - next;

    for t in demand.from..trace.end {
        while booting.front().is_some_and(|&l| l + boot <= t) {
            ready.extend(booting.pop_front());
        }
        while ends.peek().is_some_and(|Reverse(e)| *e <= t) {
            ends.pop();
            busy -= 1;
        }
        // Users waiting take the slots that appeared, in order; then the
        // second's arrivals, if nobody is ahead of them.
        while !queue.is_empty() && ready.len() as i64 * capacity > busy {
            if let Some(a) = queue.pop_front() {
                tally.waits.push(t - a.at);
                busy += 1;
                ends.push(Reverse(t + a.duration_s));
                ending.add(second(t + a.duration_s), 1);
                tally.busy_slot_s += (t + a.duration_s).min(trace.end) - t;
            }
        }
        while let Some(&a) = trace.arrivals.get(next).filter(|a| a.at <= t) {
            next += 1;
            if !queue.is_empty() || ready.len() as i64 * capacity <= busy {
                tally.cold_arrivals.push(a.at);
                queue.push_back(a);
                continue;
            }
            busy += 1;
            ends.push(Reverse(t + a.duration_s));
            ending.add(second(t + a.duration_s), 1);
            tally.busy_slot_s += (t + a.duration_s).min(trace.end) - t;
        }

        // Capacity needed at `u`: the sessions still running then, and the
        // arrivals of (t, u] at the tail quantile.
        let ended_by = ending.prefix(second(t));
        let need =
            |u: i64| busy - (ending.prefix(second(u)) - ended_by) + demand.quantile(t, u, tail);
        let coming = (ready.len() + booting.len()) as i64;
        let short = need(t + boot) - coming * capacity;
        if short > 0 {
            let hosts = ((short + capacity - 1) / capacity)
                .min(i64::from(fleet.max_hosts) - coming)
                .max(0);
            for _ in 0..hosts {
                booting.push_back(t);
            }
            tally.launches += hosts as usize;
        } else {
            // Stop a host when none of the next `boot` seconds needs it: up
            // to each booting host's registration, and the horizon's end.
            let mut checks: Vec<(i64, i64)> = booting
                .iter()
                .map(|&l| l + boot - 1)
                .chain([t + 1, t + boot / 2, t + boot])
                .filter(|&u| u > t)
                .map(|u| (u, need(u)))
                .collect();
            checks.sort_unstable();
            while let Some(&launched) = ready.front() {
                let keep = ready.len() as i64 - 1;
                let enough = keep * capacity >= busy
                    && checks.iter().all(|&(u, needed)| {
                        let registered = booting.iter().filter(|&&l| l + boot <= u).count();
                        (keep + registered as i64) * capacity >= needed
                    });
                if !enough {
                    break;
                }
                ready.pop_front();
                tally.instance_s += (t - launched).max(MIN_BILLED_S);
            }
        }
        tally.max_hosts_seen = tally
            .max_hosts_seen
            .max((ready.len() + booting.len()) as i32);
    }
    for launched in ready.iter().chain(&booting) {
        tally.instance_s += (trace.end - launched).max(MIN_BILLED_S);
    }
    tally.waits.extend(queue.iter().map(|a| trace.end - a.at));
    outcome(fleet, scored, tally)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::forecast::ForecastPolicy;
    use crate::policy::BufferPolicy;

    const T0: i64 = 1_704_412_800;

    fn trace(arrivals: &[(i64, i64)], span: i64) -> Trace {
        Trace {
            name: "tiny".into(),
            start: T0,
            end: T0 + span,
            score_from: T0,
            arrivals: arrivals
                .iter()
                .map(|&(at, duration_s)| Arrival {
                    at: T0 + at,
                    duration_s,
                })
                .collect(),
        }
    }

    fn fleet(boot: i64) -> Fleet {
        Fleet {
            capacity_per_host: 4,
            boot_delay_s: (boot, boot),
            max_hosts: 10,
            price_per_hour: 3.6,
            seed: 1,
        }
    }

    fn buffer(target: i32, grace: u64) -> RegionSettings {
        RegionSettings {
            target_free_slots: target,
            scale_down_grace_s: grace,
            forecast: None,
        }
    }

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() < 1e-9
    }

    #[test]
    fn one_arrival_on_a_buffer_of_one_is_warm_and_billed_for_the_whole_span() {
        // Launched at 0, registered at 90, the user at 300 stays 600 s; the
        // host is the whole buffer, so it runs to the end at 1800.
        let t = trace(&[(300, 600)], 1800);
        let out = replay(&t, &BufferPolicy, &buffer(1, 600), &fleet(90));
        assert_eq!((out.arrivals, out.warm, out.launches), (1, 1, 1));
        assert!(close(out.instance_hours, 0.5), "{out:?}");
        assert!(close(out.idle_slot_hours, 4.0 * 0.5 - 600.0 / 3600.0));
        assert!(close(out.idle_instance_hours, 0.5 - 600.0 / 3600.0 / 4.0));
        assert!(close(out.cost, 0.5 * 3.6));
        // The oracle boots one host 90 s ahead of the user and stops it when he leaves.
        let o = oracle(&t, &fleet(90));
        assert_eq!((o.warm, o.launches), (1, 1));
        assert!(close(o.instance_hours, 690.0 / 3600.0), "{o:?}");
        assert!(close(o.idle_instance_hours, (690.0 - 150.0) / 3600.0));
    }

    #[test]
    fn a_burst_larger_than_the_buffer_waits_for_the_boot_it_triggers() {
        // Buffer of 2 (one 4-slot host, registered at 60); 6 users at 100:
        // 4 warm, 2 wait for the host launched when the buffer fell to 0 at
        // 100, which registers at 160: both wait 60 s.
        let t = trace(&[(100, 1000); 6], 1200);
        let out = replay(&t, &BufferPolicy, &buffer(2, 600), &fleet(60));
        assert_eq!((out.arrivals, out.warm), (6, 4), "{out:?}");
        assert!(close(out.warm_hit_rate, 4.0 / 6.0));
        assert_eq!((out.wait_p50_s, out.wait_p99_s), (60.0, 60.0));
        // Host 1: 0–1200; host 2 (at 100): 100–1200, its 2 users from 160;
        // free 2 ≥ target 2 after they sit, so no third launch.
        assert_eq!(out.launches, 2);
        assert!(
            close(out.instance_hours, (1200.0 + 1100.0) / 3600.0),
            "{out:?}"
        );
        let busy = 4.0 * 1000.0 + 2.0 * 1000.0;
        assert!(close(out.idle_slot_hours, (4.0 * 2300.0 - busy) / 3600.0));
        // The oracle: 2 levels from 100 to 1100, each booted 60 s ahead.
        let o = oracle(&t, &fleet(60));
        assert_eq!(o.launches, 2);
        assert!(close(o.instance_hours, 2.0 * 1060.0 / 3600.0), "{o:?}");
    }

    #[test]
    fn the_oracle_serves_a_trace_with_exactly_one_host_bridging_short_gaps() {
        // Capacity 4, never more than 4 users at once; a 50 s gap (< boot
        // 60) is bridged, a 500 s gap is not: two instances.
        let t = trace(
            &[
                (100, 200),
                (100, 200),
                (150, 150),
                (200, 100),
                (350, 100),
                (950, 50),
            ],
            1200,
        );
        let o = oracle(&t, &fleet(60));
        assert_eq!((o.launches, o.max_hosts_seen), (2, 1), "{o:?}");
        // Run 1: [100, 450) + 60 boot = 410 s; run 2: [950, 1000) + 60 = 110 s.
        assert!(close(o.instance_hours, 520.0 / 3600.0), "{o:?}");
        let busy = 200.0 + 200.0 + 150.0 + 100.0 + 100.0 + 50.0;
        assert!(close(o.idle_instance_hours, (520.0 - busy / 4.0) / 3600.0));
        assert_eq!(o.warm_hit_rate, 1.0);
        // The minimum billing: a 10 s user still costs 60 s past a 0 s boot.
        let short = oracle(&trace(&[(100, 10)], 300), &fleet(0));
        assert!(close(short.instance_hours, 60.0 / 3600.0), "{short:?}");
    }

    fn no_rate(_: i64) -> f64 {
        0.0
    }

    fn one_a_minute_per_hundred(_: i64) -> f64 {
        0.01
    }

    #[test]
    fn the_causal_bound_pays_what_the_oracle_pays_for_a_group_it_knows() {
        // Four users, scheduled within the minute from 300, each for 600 s:
        // knowing the schedule, one host launched a boot ahead serves them
        // all and stops when the last leaves at 930, like the oracle's.
        let t = trace(&[(300, 600), (310, 600), (320, 600), (330, 600)], 1800);
        let known = Intensity {
            per_minute: no_rate,
            groups: vec![Group {
                start: T0 + 300,
                len_s: 60,
                count: 4,
            }],
        };
        let (bound, _) = rate_oracle(&t, &known, &fleet(60), 0.995);
        let o = oracle(&t, &fleet(60));
        assert_eq!((bound.warm, bound.launches), (4, 1), "{bound:?}");
        assert!(close(bound.instance_hours, 690.0 / 3600.0), "{bound:?}");
        assert!(close(bound.instance_hours, o.instance_hours), "{o:?}");
    }

    #[test]
    fn the_causal_bound_keeps_a_host_through_a_slow_rate_where_the_oracle_boots_for_the_one_user() {
        // One arrival a hundred minutes: not knowing when, a warm policy
        // keeps a host the whole half hour; the oracle boots one for the user.
        let t = trace(&[(300, 600)], 1800);
        let slow = Intensity {
            per_minute: one_a_minute_per_hundred,
            groups: vec![],
        };
        let (bound, tail) = rate_oracle(&t, &slow, &fleet(60), 0.995);
        assert_eq!((bound.warm, bound.launches), (1, 1), "{bound:?}");
        // P(an arrival within a boot) ≈ 1 %: only a smaller tail keeps a slot.
        assert!(tail < 0.01, "{tail}");
        // A host about the whole span (the cheapest tail trims the edges,
        // where an arrival within the boot is least likely).
        assert!(
            (1790.0..=1860.0).contains(&(bound.instance_hours * 3600.0)),
            "{bound:?}"
        );
        assert!(close(oracle(&t, &fleet(60)).instance_hours, 660.0 / 3600.0));
    }

    #[test]
    fn the_tail_quantile_adds_what_a_group_surely_brings() {
        // Poisson(2): P(N > 4) ≈ 5.3 %, P(N > 5) ≈ 1.7 %.
        assert_eq!(tail_quantile(2.0, &[], 0.05), 5);
        assert_eq!(tail_quantile(2.0, &[(4, 1.0)], 0.05), 9);
        assert_eq!(tail_quantile(0.0, &[], 1e-6), 0);
        // A huge mean does not underflow to nothing.
        let k = tail_quantile(10_000.0, &[], 0.001);
        assert!((10_200..10_400).contains(&k), "{k}");
    }

    #[test]
    fn a_lone_user_in_a_quiet_stretch_the_past_periods_saw_empty_still_finds_a_warm_slot() {
        // Two past 6-hour periods, each with users only at 1:00; in the
        // scored one a lone user at 4:00, where the past periods' windows
        // (±1 h around it) saw nobody. Nobody seen is not a rate of zero: a
        // forecast that reads it as zero has let the fleet drain to nothing
        // and keeps the user waiting for a boot.
        let period = 6 * 3600;
        let mut arrivals = vec![];
        for p in 0..3 {
            arrivals.extend([(p * period + 3600, 600), (p * period + 3600, 600)]);
        }
        arrivals.push((2 * period + 4 * 3600, 600));
        let mut t = trace(&arrivals, 3 * period);
        t.score_from = T0 + 2 * period;
        let region = RegionSettings {
            target_free_slots: 0,
            scale_down_grace_s: 60,
            forecast: Some(ForecastSettings {
                period_s: period,
                history_periods: 2,
                ..ForecastSettings::default()
            }),
        };
        let out = replay(&t, &ForecastPolicy, &region, &fleet(90));
        assert_eq!(out.arrivals, 3);
        assert_eq!(out.warm, 3, "the lone user waited: {out:?}");
        // One host kept through the quiet stretch, not a fleet.
        assert!(out.max_hosts_seen <= 2, "{out:?}");
    }

    #[test]
    fn the_forecast_replays_through_the_same_decide_and_launches_ahead_of_a_known_burst() {
        // Five past days with 12 users at 10:00; the forecast policy with
        // no floor must have slots ready at 10:00 on the sixth.
        let day = 86_400;
        let mut arrivals = vec![];
        for d in 0..6 {
            arrivals.extend((0..12).map(|i| (d * day + 36_000 + i, 600)));
        }
        let mut t = trace(&arrivals, 6 * day);
        let monday = 1_704_672_000;
        for a in &mut t.arrivals {
            a.at += monday - T0;
        }
        // History Monday to Thursday; the scored Friday morning.
        t.start = monday;
        t.end = monday + 4 * day + 43_200;
        t.score_from = monday + 4 * day + 30_000;
        let region = RegionSettings {
            target_free_slots: 0,
            scale_down_grace_s: 60,
            forecast: Some(ForecastSettings::default()),
        };
        let out = replay(&t, &ForecastPolicy, &region, &fleet(90));
        assert_eq!(out.arrivals, 12);
        assert_eq!(out.warm, 12, "{out:?}");
        // The burst's hosts, not a rate that goes on after it.
        let burst_hosts = (crate::forecast::slots_for(13.0, 0.995) + 3) / 4;
        assert!(out.max_hosts_seen <= burst_hosts, "{out:?}");
    }
}
