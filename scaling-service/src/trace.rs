//! Demand traces: arrivals with their session durations, in a CSV format an
//! operator can export from their own region (`scaling-service trace
//! export`) and replay, and seeded generators for the shipped scenarios.
//!
//! The CSV: a header `arrived_at,duration_s`, then one line per arrival, an
//! RFC 3339 instant (second precision) and the session's length in whole
//! seconds. Lines starting with `#` are comments, except `# window START
//! END [SCORE_FROM]`, which says what span the trace covers (arrivals are
//! recorded from START; the replay scores from SCORE_FROM, default the last
//! day, everything before being history the forecast learns from).

use std::fmt::Write as _;

use chrono::{DateTime, TimeZone, Timelike, Utc};

/// One user asking for a session.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Arrival {
    /// Unix seconds.
    pub at: i64,
    pub duration_s: i64,
}

/// A span of demand: arrivals in `[start, end)`, sorted by time; the replay
/// runs `[score_from, end)` and learns from what came before.
#[derive(Clone, Debug, PartialEq)]
pub struct Trace {
    pub name: String,
    pub start: i64,
    pub end: i64,
    pub score_from: i64,
    pub arrivals: Vec<Arrival>,
}

#[derive(Debug, thiserror::Error)]
pub enum TraceError {
    #[error("line {line}: {message}; expected `arrived_at,duration_s` such as `2024-01-12T09:00:05Z,1800`")]
    Line { line: usize, message: String },
    #[error("the trace has no arrival and no `# window` line: nothing to replay")]
    Empty,
}

const DAY: i64 = 86_400;

fn rfc3339(t: i64) -> String {
    match Utc.timestamp_opt(t, 0).single() {
        Some(t) => t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        None => t.to_string(),
    }
}

impl Trace {
    /// The trace in its CSV form.
    pub fn to_csv(&self) -> String {
        let mut out = format!(
            "# berth demand trace: {}\n# window {} {} {}\narrived_at,duration_s\n",
            self.name,
            rfc3339(self.start),
            rfc3339(self.end),
            rfc3339(self.score_from)
        );
        for a in &self.arrivals {
            let _ = writeln!(out, "{},{}", rfc3339(a.at), a.duration_s);
        }
        out
    }

    /// Reads the CSV form. Without a `# window` line the trace spans its
    /// first arrival to an hour after its last and scores its last day.
    pub fn from_csv(name: &str, text: &str) -> Result<Self, TraceError> {
        let parse_time = |line: usize, s: &str| {
            DateTime::parse_from_rfc3339(s.trim())
                .map(|t| t.timestamp())
                .map_err(|e| TraceError::Line {
                    line,
                    message: format!("{s:?} is not an RFC 3339 instant: {e}"),
                })
        };
        let mut window = None;
        let mut arrivals = vec![];
        let mut header = false;
        for (i, raw) in text.lines().enumerate() {
            let line = i + 1;
            let raw = raw.trim();
            if raw.is_empty() {
                continue;
            }
            if let Some(comment) = raw.strip_prefix('#') {
                let words: Vec<&str> = comment.split_whitespace().collect();
                if words.first() == Some(&"window") && words.len() >= 3 {
                    let start = parse_time(line, words[1])?;
                    let end = parse_time(line, words[2])?;
                    let score = match words.get(3) {
                        Some(s) => Some(parse_time(line, s)?),
                        None => None,
                    };
                    window = Some((start, end, score));
                }
                continue;
            }
            if !header {
                if raw.replace(' ', "") != "arrived_at,duration_s" {
                    return Err(TraceError::Line {
                        line,
                        message: format!("the header is {raw:?}"),
                    });
                }
                header = true;
                continue;
            }
            let Some((at, duration)) = raw.split_once(',') else {
                return Err(TraceError::Line {
                    line,
                    message: "no comma".into(),
                });
            };
            let at = parse_time(line, at)?;
            let duration_s = duration
                .trim()
                .parse::<i64>()
                .ok()
                .filter(|d| *d > 0)
                .ok_or_else(|| TraceError::Line {
                    line,
                    message: format!("{duration:?} is not a positive number of seconds"),
                })?;
            arrivals.push(Arrival { at, duration_s });
        }
        arrivals.sort_by_key(|a| a.at);
        let (start, end, score) = match window {
            Some(w) => w,
            None => {
                let first = arrivals.first().ok_or(TraceError::Empty)?.at;
                let last = arrivals.last().map_or(first, |a| a.at);
                (first, last + 3600, None)
            }
        };
        arrivals.retain(|a| a.at >= start && a.at < end);
        Ok(Self {
            name: name.to_owned(),
            start,
            end,
            score_from: score.unwrap_or((end - DAY).max(start)),
            arrivals,
        })
    }

    /// Arrivals the replay scores.
    pub fn scored(&self) -> impl Iterator<Item = &Arrival> {
        self.arrivals
            .iter()
            .filter(|a| a.at >= self.score_from && a.at < self.end)
    }
}

/// What a shipped trace's generator knows and a replay does not: the
/// intensity its arrivals were drawn from (not the arrivals themselves).
#[derive(Clone, Debug)]
pub struct Intensity {
    /// Poisson arrivals per minute at each instant (unix seconds).
    pub per_minute: fn(i64) -> f64,
    /// Scheduled groups on top of it.
    pub groups: Vec<Group>,
}

/// Exactly `count` arrivals, each at a second uniform in `[start, start + len_s)`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Group {
    pub start: i64,
    pub len_s: i64,
    pub count: u32,
}

/// SplitMix64: small, seeded, the same on every platform and version.
#[derive(Clone, Debug)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Self(seed)
    }
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    /// Uniform in [0, 1).
    pub fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
    /// Uniform in `lo..=hi`.
    pub fn between(&mut self, lo: i64, hi: i64) -> i64 {
        if hi <= lo {
            return lo;
        }
        lo + (self.next_u64() % (hi - lo + 1) as u64) as i64
    }
    fn normal(&mut self) -> f64 {
        let u = self.unit().max(f64::MIN_POSITIVE);
        (-2.0 * u.ln()).sqrt() * (2.0 * std::f64::consts::PI * self.unit()).cos()
    }
    /// Log-normal with this median, clamped.
    fn lognormal(&mut self, median: f64, sigma: f64, lo: i64, hi: i64) -> i64 {
        ((median * (sigma * self.normal()).exp()) as i64).clamp(lo, hi)
    }
    /// Poisson(`mean`) by counting exponential gaps (means here are small).
    fn poisson(&mut self, mean: f64) -> u32 {
        let limit = (-mean).exp();
        let mut product = self.unit();
        let mut n = 0;
        while product > limit {
            product *= self.unit();
            n += 1;
        }
        n
    }
}

/// Friday 2024-01-05 00:00 UTC: 7 days of history (Friday to Thursday),
/// then the scored Friday and Saturday.
const TRACE_START: i64 = 1_704_412_800;
const HISTORY_DAYS: i64 = 7;
const SCORED_DAYS: i64 = 2;

fn hour_of(t: i64) -> f64 {
    let at = Utc.timestamp_opt(t, 0).single().unwrap_or_default();
    f64::from(at.num_seconds_from_midnight()) / 3600.0
}

fn weekend(t: i64) -> bool {
    use chrono::Datelike;
    let at = Utc.timestamp_opt(t, 0).single().unwrap_or_default();
    matches!(at.weekday(), chrono::Weekday::Sat | chrono::Weekday::Sun)
}

/// Business hours: 0 before 7:00 and after 21:00, a smooth hump peaking at 14:00.
fn office_hump(hour: f64) -> f64 {
    if !(7.0..21.0).contains(&hour) {
        return 0.0;
    }
    (std::f64::consts::PI * (hour - 7.0) / 14.0).sin().powi(2)
}

/// Arrivals of a Poisson process of `per_minute(t)`, second by second.
fn poisson_arrivals(
    rng: &mut Rng,
    start: i64,
    end: i64,
    per_minute: impl Fn(i64) -> f64,
    duration: impl Fn(&mut Rng) -> i64,
    out: &mut Vec<Arrival>,
) {
    for t in start..end {
        let rate = per_minute(t) / 60.0;
        if rate <= 0.0 {
            continue;
        }
        for _ in 0..rng.poisson(rate) {
            let duration_s = duration(rng);
            out.push(Arrival { at: t, duration_s });
        }
    }
}

fn finish(name: &str, mut arrivals: Vec<Arrival>) -> Trace {
    arrivals.sort_by_key(|a| a.at);
    Trace {
        name: name.to_owned(),
        start: TRACE_START,
        end: TRACE_START + (HISTORY_DAYS + SCORED_DAYS) * DAY,
        score_from: TRACE_START + HISTORY_DAYS * DAY,
        arrivals,
    }
}

fn working_sessions(rng: &mut Rng) -> i64 {
    rng.lognormal(1800.0, 0.8, 60, 6 * 3600)
}

/// Weekday office demand: 0.1 arrivals a minute at night, rising to 3 at
/// 14:00; weekends at 30 %. Sessions log-normal, median 30 min.
fn diurnal_rate(t: i64) -> f64 {
    let weekday = 0.1 + 2.9 * office_hump(hour_of(t));
    if weekend(t) {
        0.3 * weekday
    } else {
        weekday
    }
}

pub fn diurnal(seed: u64) -> Trace {
    let mut rng = Rng::new(seed);
    let mut arrivals = vec![];
    let end = TRACE_START + (HISTORY_DAYS + SCORED_DAYS) * DAY;
    poisson_arrivals(
        &mut rng,
        TRACE_START,
        end,
        diurnal_rate,
        working_sessions,
        &mut arrivals,
    );
    finish("diurnal", arrivals)
}

fn class_background_rate(t: i64) -> f64 {
    0.25 * diurnal_rate(t)
}

/// On weekdays at 9, 10, 11, 13, 14 and 15 o'clock, 30 students within the minute.
fn classes() -> Vec<Group> {
    let end = TRACE_START + (HISTORY_DAYS + SCORED_DAYS) * DAY;
    let mut groups = vec![];
    let mut day = TRACE_START;
    while day < end {
        if !weekend(day) {
            for hour in [9, 10, 11, 13, 14, 15] {
                groups.push(Group {
                    start: day + hour * 3600,
                    len_s: 60,
                    count: 30,
                });
            }
        }
        day += DAY;
    }
    groups
}

/// A quarter of the diurnal demand, plus classes: on weekdays at 9, 10, 11,
/// 13, 14 and 15 o'clock, 30 students arrive within the minute and stay
/// 45–55 minutes.
pub fn class_bursts(seed: u64) -> Trace {
    let mut rng = Rng::new(seed);
    let mut arrivals = vec![];
    let end = TRACE_START + (HISTORY_DAYS + SCORED_DAYS) * DAY;
    poisson_arrivals(
        &mut rng,
        TRACE_START,
        end,
        class_background_rate,
        working_sessions,
        &mut arrivals,
    );
    for class in classes() {
        for _ in 0..class.count {
            arrivals.push(Arrival {
                at: class.start + rng.between(0, class.len_s - 1),
                duration_s: rng.between(45 * 60, 55 * 60),
            });
        }
    }
    finish("class-bursts", arrivals)
}

/// The flash crowd starts on the scored Friday at 14:20.
const CROWD_FROM: i64 = TRACE_START + HISTORY_DAYS * DAY + 14 * 3600 + 20 * 60;

/// The crowd's extra arrivals a minute.
fn crowd_rate(t: i64) -> f64 {
    let m = (t - CROWD_FROM) as f64 / 60.0;
    if m < 0.0 {
        0.0
    } else if m < 5.0 {
        12.0 * m / 5.0
    } else if m < 20.0 {
        12.0
    } else if m < 30.0 {
        12.0 * (30.0 - m) / 10.0
    } else {
        0.0
    }
}

fn flash_crowd_rate(t: i64) -> f64 {
    diurnal_rate(t) + crowd_rate(t)
}

/// The diurnal demand, and on the scored Friday a crowd nobody forecast: from
/// 14:20 extra arrivals ramp up to 12 a minute over 5 minutes, hold for 15
/// and fade over 10 (about 270 users, sessions median 15 min).
pub fn flash_crowd(seed: u64) -> Trace {
    let mut trace = diurnal(seed);
    let mut rng = Rng::new(seed ^ 0xF1A5);
    let from = CROWD_FROM;
    poisson_arrivals(
        &mut rng,
        from,
        from + 30 * 60,
        crowd_rate,
        |rng| rng.lognormal(900.0, 0.7, 60, 3 * 3600),
        &mut trace.arrivals,
    );
    let mut trace = finish("flash-crowd", trace.arrivals);
    trace.name = "flash-crowd".into();
    trace
}

fn quiet_night_rate(t: i64) -> f64 {
    let h = hour_of(t);
    let day = if (8.0..18.0).contains(&h) {
        0.5 * (std::f64::consts::PI * (h - 8.0) / 10.0).sin().powi(2)
    } else {
        0.0
    };
    let day = if weekend(t) { 0.15 * day } else { day };
    day + 0.1 / 60.0
}

/// A small site with a long quiet night: 0.5 arrivals a minute at the
/// weekday peak between 8:00 and 18:00 (15 % of that on weekends), and about
/// one arrival in ten hours outside them. Sessions median 40 min.
pub fn quiet_night(seed: u64) -> Trace {
    let mut rng = Rng::new(seed);
    let mut arrivals = vec![];
    let end = TRACE_START + (HISTORY_DAYS + SCORED_DAYS) * DAY;
    poisson_arrivals(
        &mut rng,
        TRACE_START,
        end,
        quiet_night_rate,
        |rng| rng.lognormal(2400.0, 0.7, 60, 6 * 3600),
        &mut arrivals,
    );
    finish("quiet-night", arrivals)
}

/// The shipped scenarios, each from its fixed seed.
pub fn shipped() -> Vec<Trace> {
    shipped_with_intensity()
        .into_iter()
        .map(|(t, _)| t)
        .collect()
}

/// The shipped scenarios with the intensity each was drawn from.
pub fn shipped_with_intensity() -> Vec<(Trace, Intensity)> {
    let poisson = |per_minute| Intensity {
        per_minute,
        groups: vec![],
    };
    vec![
        (diurnal(1), poisson(diurnal_rate)),
        (
            class_bursts(2),
            Intensity {
                per_minute: class_background_rate,
                groups: classes(),
            },
        ),
        (flash_crowd(3), poisson(flash_crowd_rate)),
        (quiet_night(4), poisson(quiet_night_rate)),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_trace_survives_its_csv_form() {
        let trace = class_bursts(7);
        let back = Trace::from_csv("class-bursts", &trace.to_csv()).unwrap();
        assert_eq!(back, trace);
    }

    #[test]
    fn a_bare_csv_scores_its_last_day_and_bad_lines_say_where() {
        let csv =
            "arrived_at,duration_s\n2024-01-12T09:00:05Z,1800\n2024-01-14T10:00:00+01:00,60\n";
        let t = Trace::from_csv("mine", csv).unwrap();
        assert_eq!(t.arrivals.len(), 2);
        assert_eq!(
            t.arrivals[1].at,
            t.arrivals[0].at + 2 * DAY - 5,
            "offsets are honoured"
        );
        assert_eq!(t.end, t.arrivals[1].at + 3600);
        assert_eq!(t.score_from, t.end - DAY);
        let bad = Trace::from_csv("x", "arrived_at,duration_s\n2024-01-12T09:00:05Z,-3\n");
        assert!(
            matches!(bad, Err(TraceError::Line { line: 2, .. })),
            "{bad:?}"
        );
        assert!(matches!(
            Trace::from_csv("x", "when,how_long\n"),
            Err(TraceError::Line { line: 1, .. })
        ));
    }

    #[test]
    fn the_scenarios_have_their_shapes() {
        let d = diurnal(1);
        let day = |t: &Trace, k: i64| {
            t.arrivals
                .iter()
                .filter(|a| a.at >= t.start + k * DAY && a.at < t.start + (k + 1) * DAY)
                .count()
        };
        // Friday vs Saturday of the scored days: weekends are quieter.
        assert!(
            day(&d, 7) > 2 * day(&d, 8),
            "{} vs {}",
            day(&d, 7),
            day(&d, 8)
        );
        let c = class_bursts(2);
        let nine = c.start + 7 * DAY + 9 * 3600;
        let in_class_minute = c
            .arrivals
            .iter()
            .filter(|a| a.at >= nine && a.at < nine + 60)
            .count();
        assert!(in_class_minute >= 30);
        let q = quiet_night(4);
        let night = q
            .arrivals
            .iter()
            .filter(|a| a.at >= q.score_from && hour_of(a.at) < 6.0)
            .count();
        assert!(night <= 3, "{night} arrivals in a quiet night");
        let crowd = flash_crowd(3).arrivals.len() - diurnal(3).arrivals.len();
        assert!((200..350).contains(&crowd), "{crowd} in the crowd");
    }
}
