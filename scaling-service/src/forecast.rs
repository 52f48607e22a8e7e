//! The demand-aware warm buffer: how many free slots a region needs now,
//! from its own history of assigns. Arrivals over the next `horizon_s` (the
//! boot-to-registered delay: slots launched now are ready only then) are
//! forecast from two terms, and the larger wins:
//!
//! * **time of day**: the arrivals in the same window of each of the last
//!   `history_periods` periods (days; a weekday counts only weekdays, a
//!   weekend day only weekend days), averaged, both exactly (a class that
//!   starts at 9:00 every weekday) and smoothed over `bucket_s` (the diurnal
//!   rate, with less noise; a stretch the past periods saw empty is a low
//!   rate, not none);
//! * **recent surprise**: the arrival rate of the last `recent_s` (its last
//!   fifth weighted as much) above the rate the same past windows saw then,
//!   carried over the horizon: a crowd nobody forecast is followed within a
//!   minute or two, while a burst the history knows (a class that started a
//!   minute ago) is not mistaken for a rate that goes on. Without history the
//!   whole recent rate is the surprise.
//!
//! (Each term counts only beyond its own Poisson noise: past exact windows
//! two standard deviations above the smooth rate, a recent rate one above
//! the past's.) The target is the fewest free slots that serve that many
//! Poisson arrivals at `hit_rate` (expected arrivals finding no slot ≤
//! (1 − hit_rate) × mean), on average over the 0 to capacity − 1 slots a
//! launch of whole hosts leaves above it.
//! Scale-down keeps the larger of that and the next horizon's need, after the
//! region's idle grace: hysteresis, so a host is not drained just before a
//! burst the history knows about. The policy never launches above
//! `max_hosts` (the buffer policy's arithmetic does the launching).
//!
//! The counting windows are computed here ([`DemandQuery`]) and counted by
//! whoever holds the arrivals: the database for the region controller, the
//! trace for the replay simulator, so both feed the same decision.

use chrono::{DateTime, Datelike, Duration, Utc, Weekday};

use crate::policy::{buffer_decide, Action, Policy, RegionView};

/// A region's forecast parameters (its row's `forecast_*` columns).
#[derive(Clone, Debug, PartialEq)]
pub struct ForecastSettings {
    pub hit_rate: f64,
    pub horizon_s: i64,
    pub period_s: i64,
    pub history_periods: i32,
    pub bucket_s: i64,
    pub recent_s: i64,
}

impl Default for ForecastSettings {
    fn default() -> Self {
        Self {
            hit_rate: 0.995,
            horizon_s: 150,
            period_s: 86_400,
            history_periods: 7,
            bucket_s: 900,
            recent_s: 300,
        }
    }
}

/// A region's demand as the forecast needs it: arrival counts in windows.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct DemandView {
    /// Arrivals in the last `recent_s`.
    pub recent: u32,
    /// Arrivals in the last fifth of `recent_s`.
    pub recent_short: u32,
    /// One per past period of the same kind that the history covers.
    pub past: Vec<PastWindows>,
}

/// Arrivals around the same time of one past period.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct PastWindows {
    /// `[t, t + horizon)` back then.
    pub now: u32,
    /// `[t + horizon, t + 2 horizon)` back then: what scale-down must keep for.
    pub next: u32,
    /// `[t − bucket/2, t + horizon + bucket/2)` back then.
    pub smooth: u32,
    /// `[t − 4 bucket, t + horizon + 4 bucket)` back then: a rate too low to
    /// show in a bucket (a quiet night's odd user) still counts.
    pub wide: u32,
    /// `[t − recent, t)` back then.
    pub recent: u32,
    /// `[t − recent/5, t)` back then.
    pub recent_short: u32,
}

/// What the forecast policy reads from a region besides its hosts.
#[derive(Clone, Debug, PartialEq)]
pub struct Demand {
    pub settings: ForecastSettings,
    pub view: DemandView,
}

/// The windows to count arrivals in, for one decision at `now`.
#[derive(Clone, Debug)]
pub struct DemandQuery {
    /// `[start, end)`, in the order [`DemandQuery::view`] reads them.
    pub windows: Vec<(DateTime<Utc>, DateTime<Utc>)>,
}

const RECENT_SHORT_DIVISOR: i64 = 5;
/// Windows counted per past period (the fields of [`PastWindows`]).
const PER_PERIOD: usize = 6;
/// The wide window reaches this many buckets each side.
const WIDE_BUCKETS: i64 = 4;
/// The pseudo-arrival added to the wide windows' count (see [`plan`]).
const UNSEEN_ARRIVALS: f64 = 0.5;
/// A recent rate this many standard deviations above the past's is a
/// surprise; within them it is the past's rate's own noise.
const SURPRISE_SDS: f64 = 1.0;
/// Past exact windows this many standard deviations above the smooth rate
/// are a burst the history knows; within them, noise.
const EXACT_SDS: f64 = 2.0;

fn is_weekend(t: DateTime<Utc>) -> bool {
    matches!(t.weekday(), Weekday::Sat | Weekday::Sun)
}

impl DemandQuery {
    /// `history_since`: the region's first recorded arrival; periods before
    /// it are not zero demand, they are unknown, and are left out.
    pub fn new(
        settings: &ForecastSettings,
        now: DateTime<Utc>,
        history_since: Option<DateTime<Utc>>,
    ) -> Self {
        let s = Duration::seconds;
        let recent = settings.recent_s.max(1);
        let short = (recent / RECENT_SHORT_DIVISOR).max(1);
        let mut windows = vec![(now - s(recent), now), (now - s(short), now)];
        let daily = settings.period_s == 86_400;
        let horizon = settings.horizon_s.max(1);
        let half_bucket = settings.bucket_s.max(0) / 2;
        let wide = WIDE_BUCKETS * settings.bucket_s.max(0);
        for k in 1..=i64::from(settings.history_periods.max(0)) {
            let then = now - s(k * settings.period_s);
            if daily && is_weekend(then) != is_weekend(now) {
                continue;
            }
            // A period whose window ended before anything was recorded is
            // unknown, not quiet.
            match history_since {
                Some(since) if then + s(horizon) > since => {}
                _ => continue,
            }
            windows.push((then, then + s(horizon)));
            windows.push((then + s(horizon), then + s(2 * horizon)));
            windows.push((then - s(half_bucket), then + s(horizon + half_bucket)));
            windows.push((then - s(wide), then + s(horizon + wide)));
            windows.push((then - s(recent), then));
            windows.push((then - s(short), then));
        }
        Self { windows }
    }

    /// The view from one count per window, in `windows` order.
    pub fn view(&self, counts: &[u32]) -> DemandView {
        let at = |i: usize| counts.get(i).copied().unwrap_or(0);
        DemandView {
            recent: at(0),
            recent_short: at(1),
            past: (2..self.windows.len())
                .step_by(PER_PERIOD)
                .map(|i| PastWindows {
                    now: at(i),
                    next: at(i + 1),
                    smooth: at(i + 2),
                    wide: at(i + 3),
                    recent: at(i + 4),
                    recent_short: at(i + 5),
                })
                .collect(),
        }
    }
}

/// Why the forecast policy wants the free slots it wants.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct Plan {
    /// Arrivals expected over the horizon: the larger of the two terms.
    pub expected_arrivals: f64,
    /// The time-of-day term (`None` without a past period to learn from).
    pub time_of_day: Option<f64>,
    /// The recent-surprise term: arrivals over the horizon at the recent
    /// rate's excess over what the past saw at this time.
    pub recent: f64,
    /// Arrivals expected over the horizon after this one.
    pub next_horizon: f64,
    pub horizon_s: i64,
    pub hit_rate: f64,
    pub past_periods: usize,
    /// Free slots to launch up to.
    pub target_free_slots: i32,
    /// Free slots scale-down keeps.
    pub keep_free_slots: i32,
    pub reason: String,
}

/// The free slots a region needs, and why. `floor` is the region's
/// `target_free_slots`, a minimum on this policy.
pub fn plan(demand: &Demand, floor: i32, capacity_per_host: i32) -> Plan {
    let settings = &demand.settings;
    let view = &demand.view;
    let horizon = settings.horizon_s.max(1) as f64;
    let periods = view.past.len();
    let mean = |f: fn(&PastWindows) -> u32| {
        view.past.iter().map(|p| f64::from(f(p))).sum::<f64>() / periods as f64
    };
    let share = |each_side: i64| horizon / (horizon + 2.0 * each_side as f64);
    let (time_of_day, next) = if periods == 0 {
        (None, 0.0)
    } else {
        // Nobody in the wide windows bounds a rate, it does not make it
        // zero: n arrivals there estimate (n + ½) (Jeffreys' posterior
        // mean), so a quiet night whose last few nights happened to see
        // nobody still keeps a slot for the odd user (one in ten hours is
        // 0.6 % of a small site's day). `bucket_s` 0 turns smoothing off:
        // then only the exact windows count.
        let unseen = if settings.bucket_s > 0 {
            UNSEEN_ARRIVALS / periods as f64
        } else {
            0.0
        };
        let smooth = (mean(|p| p.smooth) * share(settings.bucket_s.max(0) / 2))
            .max((mean(|p| p.wide) + unseen) * share(WIDE_BUCKETS * settings.bucket_s.max(0)));
        // The exact windows count where they stand out from the smooth
        // rate beyond its noise (a class at 9:00); within it, averaging a
        // few Poisson counts with their maximum only adds the noise.
        let noise = EXACT_SDS * (smooth / periods as f64).sqrt();
        let exact = |n: f64| if n > smooth + noise { n } else { smooth };
        (Some(exact(mean(|p| p.now))), exact(mean(|p| p.next)))
    };
    let recent_s = settings.recent_s.max(1) as f64;
    let short_s = (settings.recent_s / RECENT_SHORT_DIVISOR).max(1) as f64;
    let rate = |long: f64, short: f64| (long / recent_s + short / short_s) / 2.0;
    let rate_now = rate(f64::from(view.recent), f64::from(view.recent_short));
    let (rate_then, noise) = if periods == 0 {
        (0.0, 0.0)
    } else {
        let (long, short) = (mean(|p| p.recent), mean(|p| p.recent_short));
        // One standard deviation of the recent rate had it gone on at the
        // past's rate (Poisson counts): an excess within it is chance.
        let sd = (long / (recent_s * recent_s) + short / (short_s * short_s)).sqrt() / 2.0;
        (rate(long, short), SURPRISE_SDS * sd)
    };
    let recent = horizon * (rate_now - rate_then - noise).max(0.0);
    let expected = time_of_day.unwrap_or(0.0) + recent;
    let step = capacity_per_host.max(1);
    let target = slots_for_hosts(expected, settings.hit_rate, step).max(floor);
    let keep = slots_for_hosts(expected.max(next), settings.hit_rate, step).max(target);
    let reason = format!(
        "{expected:.1} arrivals expected in the next {h} s ({tod}, plus {recent:.1} from the recent rate above it): \
         {target} free slots serve them at {pct:.1} % warm; scale-down keeps {keep} \
         ({next:.1} expected in the {h} s after){floor_note}",
        h = settings.horizon_s,
        tod = match time_of_day {
            Some(t) => format!("time of day {t:.1} from {periods} past periods"),
            None => "no past period recorded yet".to_owned(),
        },
        pct = settings.hit_rate * 100.0,
        floor_note = if floor > 0 && target == floor {
            format!("; target_free_slots {floor} is the floor")
        } else {
            String::new()
        },
    );
    Plan {
        expected_arrivals: expected,
        time_of_day,
        recent,
        next_horizon: next,
        horizon_s: settings.horizon_s,
        hit_rate: settings.hit_rate,
        past_periods: periods,
        target_free_slots: target,
        keep_free_slots: keep,
        reason,
    }
}

/// The fewest free slots `k` such that Poisson(`mean`) arrivals finding no
/// slot, E[(N − k)⁺], are at most (1 − `hit_rate`) of the mean.
pub fn slots_for(mean: f64, hit_rate: f64) -> i32 {
    if mean.is_nan() || mean <= 0.0 {
        return 0;
    }
    let allowed = (1.0 - hit_rate).max(0.0) * mean;
    if mean > 500.0 {
        // Normal approximation: the pmf below underflows.
        let z = normal_shortfall_z(allowed / mean.sqrt());
        return (mean + z * mean.sqrt()).ceil() as i32;
    }
    // E[(N−k)⁺] = mean·P(N ≥ k) − k·P(N ≥ k+1).
    let mut pmf = (-mean).exp();
    let mut cdf_below_k: f64 = 0.0; // P(N ≤ k−1)
    for k in 0..100_000 {
        let at_least_k = (1.0 - cdf_below_k).max(0.0);
        let at_least_next = (1.0 - cdf_below_k - pmf).max(0.0);
        let shortfall = mean * at_least_k - f64::from(k) * at_least_next;
        if shortfall <= allowed {
            return k;
        }
        cdf_below_k += pmf;
        pmf *= mean / f64::from(k + 1);
    }
    100_000
}

/// The fewest free slots `k` that serve Poisson(`mean`) arrivals at
/// `hit_rate` when slots come `step` at a time (whole hosts).
pub fn slots_for_hosts(mean: f64, hit_rate: f64, step: i32) -> i32 {
    if step <= 1 || mean.is_nan() || mean <= 0.0 || mean > 500.0 {
        return slots_for(mean, hit_rate);
    }
    let allowed = (1.0 - hit_rate).max(0.0) * mean;
    // shortfall(k) for k = 0, 1, …: E[(N−k)⁺] = mean·P(N ≥ k) − k·P(N ≥ k+1).
    let mut shortfalls: Vec<f64> = vec![];
    let mut pmf = (-mean).exp();
    let mut cdf_below_k: f64 = 0.0;
    let step = step as usize;
    for k in 0..100_000usize {
        let at_least_k = (1.0 - cdf_below_k).max(0.0);
        let at_least_next = (1.0 - cdf_below_k - pmf).max(0.0);
        shortfalls.push((mean * at_least_k - k as f64 * at_least_next).max(0.0));
        if k + 1 >= step {
            let first = k + 1 - step;
            let average = shortfalls[first..].iter().sum::<f64>() / step as f64;
            if average <= allowed {
                return first as i32;
            }
        }
        cdf_below_k += pmf;
        pmf *= mean / (k + 1) as f64;
    }
    100_000
}

/// The `z` whose standard normal shortfall E[(Z − z)⁺] is `target`.
fn normal_shortfall_z(target: f64) -> f64 {
    let shortfall = |z: f64| {
        let pdf = (-z * z / 2.0).exp() / (2.0 * std::f64::consts::PI).sqrt();
        pdf - z * (1.0 - normal_cdf(z))
    };
    let (mut lo, mut hi) = (-10.0, 10.0);
    for _ in 0..100 {
        let mid = (lo + hi) / 2.0;
        if shortfall(mid) > target {
            lo = mid;
        } else {
            hi = mid;
        }
    }
    hi
}

fn normal_cdf(z: f64) -> f64 {
    // Abramowitz–Stegun 7.1.26 through erf; ample for a slot count.
    let x = z / std::f64::consts::SQRT_2;
    let t = 1.0 / (1.0 + 0.327_591_1 * x.abs());
    let poly = t
        * (0.254_829_592
            + t * (-0.284_496_736
                + t * (1.421_413_741 + t * (-1.453_152_027 + t * 1.061_405_429))));
    let erf = 1.0 - poly * (-x * x).exp();
    0.5 * (1.0 + if x >= 0.0 { erf } else { -erf })
}

/// The demand-aware policy. A region without demand (not on `forecast`)
/// gets the fixed buffer's decision.
#[derive(Debug, Default)]
pub struct ForecastPolicy;

impl Policy for ForecastPolicy {
    fn decide(&self, region: &RegionView) -> Vec<Action> {
        match &region.demand {
            None => buffer_decide(
                region,
                region.target_free_slots,
                region.target_free_slots,
                false,
            ),
            Some(demand) => {
                let plan = plan(demand, region.target_free_slots, region.capacity_per_host);
                buffer_decide(region, plan.target_free_slots, plan.keep_free_slots, true)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn shortfall(mean: f64, k: i32) -> f64 {
        // Direct sum, to check the closed form.
        let mut pmf = (-mean).exp();
        let mut total = 0.0;
        for n in 0..1000 {
            if n > k {
                total += f64::from(n - k) * pmf;
            }
            pmf *= mean / f64::from(n + 1);
        }
        total
    }

    #[test]
    fn slots_for_is_the_fewest_that_meet_the_hit_rate() {
        for mean in [0.3, 1.0, 4.2, 12.0, 60.0] {
            let k = slots_for(mean, 0.995);
            assert!(shortfall(mean, k) <= 0.005 * mean + 1e-12, "mean {mean}");
            assert!(
                k == 0 || shortfall(mean, k - 1) > 0.005 * mean,
                "mean {mean}: {k} is not the fewest"
            );
        }
        assert_eq!(slots_for(0.0, 0.995), 0, "no demand, no buffer");
        assert!(slots_for(30.0, 0.995) >= 30, "a known burst is covered");
        let big = slots_for(10_000.0, 0.995);
        // At scale the allowance (0.5 % of the mean) lets the target sit
        // a little below the mean itself.
        assert!((9_900..10_100).contains(&big), "{big}");
    }

    #[test]
    fn whole_hosts_meet_the_hit_rate_on_average_over_their_overshoot() {
        // Launching a host at a time leaves the target plus 0 to 3 free
        // slots, evenly as users take them one by one.
        for mean in [0.3, 1.3, 4.2, 12.0, 60.0] {
            let k = slots_for_hosts(mean, 0.995, 4);
            let average = |k: i32| (k..k + 4).map(|j| shortfall(mean, j)).sum::<f64>() / 4.0;
            assert!(average(k) <= 0.005 * mean + 1e-12, "mean {mean}");
            assert!(k == 0 || average(k - 1) > 0.005 * mean, "mean {mean}: {k}");
            assert!(k <= slots_for(mean, 0.995), "mean {mean}");
            assert_eq!(slots_for_hosts(mean, 0.995, 1), slots_for(mean, 0.995));
        }
        // A small site's peak: one host's worth, not two.
        assert_eq!(slots_for(1.3, 0.995), 5);
        assert_eq!(slots_for_hosts(1.3, 0.995, 4), 4);
        assert_eq!(slots_for_hosts(0.0, 0.995, 4), 0);
    }

    #[test]
    fn a_rate_within_its_own_noise_is_neither_a_surprise_nor_a_known_burst() {
        // Five past days saw 1.3 arrivals per horizon here, 2.6 per recent
        // window: one more user in the last minute, and a past exact window
        // a little above the smooth rate, are chance.
        let past = PastWindows {
            now: 2,
            next: 2,
            smooth: 9,
            wide: 9 * 1_950 / 1_050,
            recent: 3,
            recent_short: 1,
        };
        let demand = |recent, recent_short| Demand {
            settings: ForecastSettings::default(),
            view: DemandView {
                recent,
                recent_short,
                past: vec![past; 5],
            },
        };
        let usual = plan(&demand(3, 2), 0, 4);
        assert_eq!(usual.recent, 0.0, "{usual:?}");
        let smooth = 9.0 * 150.0 / 1_050.0;
        assert!(
            (usual.time_of_day.unwrap_or(0.0) - smooth).abs() < 1e-9,
            "{usual:?}"
        );
        assert!(usual.target_free_slots <= 4, "{usual:?}");
        // Ten in the last minute is a crowd.
        let crowd = plan(&demand(12, 10), 0, 4);
        assert!(crowd.recent > 5.0, "{crowd:?}");
    }

    fn at(day: u32, h: u32, m: u32) -> DateTime<Utc> {
        // 2024-01-01 was a Monday.
        Utc.with_ymd_and_hms(2024, 1, day, h, m, 0).unwrap()
    }

    #[test]
    fn a_weekday_learns_from_weekdays_only_and_only_from_recorded_history() {
        let settings = ForecastSettings::default();
        let monday = at(15, 9, 0);
        let q = DemandQuery::new(&settings, monday, Some(at(1, 0, 0)));
        // The last 7 days before Monday the 15th: Tue–Fri (4) and Mon the 8th.
        assert_eq!(q.windows.len(), 2 + PER_PERIOD * 5);
        let starts: Vec<_> = q.windows[2..]
            .iter()
            .step_by(PER_PERIOD)
            .map(|w| w.0)
            .collect();
        assert!(starts.iter().all(|t| !is_weekend(*t)), "{starts:?}");
        let short = DemandQuery::new(&settings, monday, Some(at(12, 0, 0)));
        assert_eq!(
            short.windows.len(),
            2 + PER_PERIOD,
            "only Friday the 12th is recorded"
        );
        let none = DemandQuery::new(&settings, monday, None);
        assert_eq!(none.windows.len(), 2);
        let saturday = DemandQuery::new(&settings, at(20, 9, 0), Some(at(1, 0, 0)));
        assert_eq!(
            saturday.windows.len(),
            2 + PER_PERIOD * 2,
            "last Saturday and Sunday"
        );
    }

    #[test]
    fn a_burst_the_history_knows_raises_the_target_ahead_of_it() {
        let quiet = PastWindows {
            smooth: 2,
            ..PastWindows::default()
        };
        let burst = PastWindows {
            now: 30,
            smooth: 32,
            ..PastWindows::default()
        };
        let demand = |past: Vec<PastWindows>| Demand {
            settings: ForecastSettings::default(),
            view: DemandView {
                recent: 0,
                recent_short: 0,
                past,
            },
        };
        let before = plan(&demand(vec![quiet; 5]), 0, 1);
        let ahead = plan(&demand(vec![burst; 5]), 0, 1);
        assert!(before.target_free_slots <= 3, "{before:?}");
        assert!(ahead.target_free_slots >= 30, "{ahead:?}");
        assert!(
            ahead.reason.contains("from 5 past periods"),
            "{}",
            ahead.reason
        );
        // Coming in the horizon after this one: launch nothing yet, drain nothing.
        let soon = plan(
            &demand(vec![
                PastWindows {
                    next: 30,
                    smooth: 2,
                    ..PastWindows::default()
                };
                5
            ]),
            0,
            1,
        );
        assert!(
            soon.target_free_slots <= 3 && soon.keep_free_slots >= 30,
            "{soon:?}"
        );
    }

    #[test]
    fn a_burst_the_history_knows_is_no_surprise_but_a_crowd_it_does_not_know_is() {
        let after_class = PastWindows {
            smooth: 30,
            recent: 30,
            recent_short: 30,
            ..PastWindows::default()
        };
        let demand = |past| Demand {
            settings: ForecastSettings::default(),
            view: DemandView {
                recent: 30,
                recent_short: 30,
                past,
            },
        };
        let known = plan(&demand(vec![after_class; 5]), 0, 1);
        assert_eq!(known.recent, 0.0, "{known:?}");
        assert!(known.target_free_slots <= 10, "{known:?}");
        let crowd = plan(&demand(vec![PastWindows::default(); 5]), 0, 1);
        // (30/300 + 30/60)/2 = 0.3/s over 150 s.
        assert!((crowd.recent - 45.0).abs() < 1e-9, "{crowd:?}");
        assert!(crowd.target_free_slots > 45);
    }

    #[test]
    fn scale_down_never_gives_up_a_ready_host_for_one_still_booting() {
        use crate::policy::{BufferPolicy, HostView};
        use berth_common::HostStatus;
        let now = Utc::now();
        let host = |id: &str, status| HostView {
            id: id.into(),
            status,
            image_id: "ami".into(),
            capacity: 4,
            free_slots: 4,
            empty_since: Some(now - Duration::minutes(30)),
        };
        // 3 arrivals expected: 4 free slots are the need, and one host is
        // ready while the other still boots.
        let region = RegionView {
            target_free_slots: 0,
            max_hosts: 10,
            scale_down_grace: std::time::Duration::from_secs(60),
            capacity_per_host: 4,
            current_image: Some("ami".into()),
            protected_images: vec![],
            hosts: vec![
                host("ready", HostStatus::Active),
                host("booting", HostStatus::PreConnection),
            ],
            in_flight: vec![],
            now,
            demand: Some(Demand {
                settings: ForecastSettings::default(),
                view: DemandView {
                    past: vec![
                        PastWindows {
                            now: 1,
                            next: 1,
                            ..PastWindows::default()
                        };
                        5
                    ],
                    ..DemandView::default()
                },
            }),
        };
        assert!(ForecastPolicy.decide(&region).is_empty());
        // The fixed buffer counts the booting host and drains the ready one.
        let fixed = RegionView {
            target_free_slots: 4,
            demand: None,
            ..region
        };
        assert!(matches!(
            BufferPolicy.decide(&fixed).as_slice(),
            [Action::Drain { host_id, .. }] if host_id == "ready"
        ));
    }

    #[test]
    fn a_stretch_the_past_periods_saw_empty_still_keeps_a_slot_unless_smoothing_is_off() {
        let demand = |bucket_s| Demand {
            settings: ForecastSettings {
                bucket_s,
                ..ForecastSettings::default()
            },
            view: DemandView {
                past: vec![PastWindows::default(); 2],
                ..DemandView::default()
            },
        };
        let quiet = plan(&demand(900), 0, 1);
        assert!(quiet.expected_arrivals > 0.0, "{quiet:?}");
        assert_eq!(quiet.target_free_slots, 1, "{quiet:?}");
        assert_eq!(plan(&demand(0), 0, 1).target_free_slots, 0);
    }

    #[test]
    fn the_recent_rate_alone_serves_a_region_without_history_and_the_floor_holds() {
        let demand = Demand {
            settings: ForecastSettings::default(),
            view: DemandView {
                recent: 60,
                recent_short: 20,
                past: vec![],
            },
        };
        let p = plan(&demand, 0, 1);
        // 0.2/s over 300 s and 0.333/s over 60 s: 0.267/s × 150 s = 40.
        assert!((p.recent - 40.0).abs() < 1e-9, "{p:?}");
        assert!(p.target_free_slots > 40);
        assert!(p.reason.contains("no past period"));
        let idle = Demand {
            view: DemandView::default(),
            ..demand
        };
        assert_eq!(plan(&idle, 0, 1).target_free_slots, 0);
        assert_eq!(plan(&idle, 3, 1).target_free_slots, 3);
    }
}
