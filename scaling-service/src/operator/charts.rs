//! The dashboard's charts, drawn as SVG on the server from the fleet's
//! sampled history: free slots and sessions as lines, assigns as bars. No
//! script and no inline style (the page's CSP allows neither): colours are
//! presentation attributes and classes of the dashboard's stylesheet.

use std::fmt::Write as _;

use chrono::{DateTime, Utc};

use super::fleet::Sample;
use super::html::esc;

const WIDTH: f64 = 640.0;
const HEIGHT: f64 = 180.0;
const LEFT: f64 = 40.0;
const RIGHT: f64 = 10.0;
const TOP: f64 = 24.0;
const BOTTOM: f64 = 22.0;

/// One region's chart over `[from, to]`.
pub(crate) fn region_chart(
    region: &str,
    samples: &[&Sample],
    from: DateTime<Utc>,
    to: DateTime<Utc>,
) -> String {
    let span = (to - from).num_milliseconds().max(1) as f64;
    let plot_w = WIDTH - LEFT - RIGHT;
    let plot_h = HEIGHT - TOP - BOTTOM;
    let x = |at: DateTime<Utc>| LEFT + plot_w * ((at - from).num_milliseconds() as f64 / span);
    let peak = samples
        .iter()
        .flat_map(|s| [s.free_slots, s.sessions, s.assigns])
        .max()
        .unwrap_or(0)
        .max(1) as f64;
    let y = |v: i32| TOP + plot_h - plot_h * (v as f64 / peak);
    let assigns: i64 = samples.iter().map(|s| s.assigns as i64).sum();
    let mut svg = String::new();
    let _ = write!(
        svg,
        r#"<svg class="chart" xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {WIDTH} {HEIGHT}" role="img" data-region="{region}" data-assigns="{assigns}" data-samples="{count}"><title>{region}: free slots, sessions and assigns</title>"#,
        region = esc(region),
        count = samples.len(),
    );
    // Frame and scale.
    let _ = write!(
        svg,
        r##"<rect x="{LEFT}" y="{TOP}" width="{plot_w}" height="{plot_h}" fill="none" stroke="#ccc"/><text x="{tx}" y="{ty}" class="axis" text-anchor="end">{peak}</text><text x="{tx}" y="{by}" class="axis" text-anchor="end">0</text>"##,
        tx = LEFT - 4.0,
        ty = TOP + 8.0,
        by = TOP + plot_h,
        peak = peak as i64,
    );
    let _ = write!(
        svg,
        r#"<text x="{LEFT}" y="{ly}" class="axis">{from}</text><text x="{rx}" y="{ly}" class="axis" text-anchor="end">{to}</text>"#,
        ly = HEIGHT - 6.0,
        rx = WIDTH - RIGHT,
        from = from.format("%H:%M"),
        to = to.format("%H:%M UTC"),
    );
    // Assigns: one bar per sample.
    let bar = (plot_w / (samples.len().max(1) as f64)).clamp(1.0, 12.0);
    for s in samples.iter().filter(|s| s.assigns > 0) {
        let top = y(s.assigns);
        let _ = write!(
            svg,
            r##"<rect class="assigns" x="{:.1}" y="{top:.1}" width="{bar:.1}" height="{:.1}" fill="#9ecae1"><title>{} assigns at {}</title></rect>"##,
            x(s.at) - bar / 2.0,
            TOP + plot_h - top,
            s.assigns,
            s.at.format("%H:%M:%S"),
        );
    }
    for (class, colour, value) in [
        (
            "free",
            "#2ca02c",
            (|s: &Sample| s.free_slots) as fn(&Sample) -> i32,
        ),
        ("sessions", "#d62728", |s: &Sample| s.sessions),
    ] {
        let points: Vec<String> = samples
            .iter()
            .map(|s| format!("{:.1},{:.1}", x(s.at), y(value(s))))
            .collect();
        if !points.is_empty() {
            let _ = write!(
                svg,
                r#"<polyline class="{class}" fill="none" stroke="{colour}" stroke-width="2" points="{}"/>"#,
                points.join(" ")
            );
        }
    }
    let last = samples.last();
    let _ = write!(
        svg,
        r##"<text x="{LEFT}" y="14" class="legend"><tspan fill="#2ca02c">free slots {}</tspan> · <tspan fill="#d62728">sessions {}</tspan> · <tspan fill="#3182bd">assigns {assigns}</tspan></text></svg>"##,
        last.map_or(0, |s| s.free_slots),
        last.map_or(0, |s| s.sessions),
    );
    svg
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(minute: i64, free: i32, sessions: i32, assigns: i32) -> Sample {
        Sample {
            region: "r".into(),
            at: DateTime::from_timestamp(minute * 60, 0).unwrap(),
            hosts: 1,
            capacity: 4,
            free_slots: free,
            sessions,
            assigns,
        }
    }

    #[test]
    fn the_chart_counts_assigns_and_draws_both_lines() {
        let samples = [sample(0, 4, 0, 0), sample(1, 2, 2, 2), sample(2, 1, 3, 1)];
        let refs: Vec<&Sample> = samples.iter().collect();
        let svg = region_chart("eu<1>", &refs, samples[0].at, samples[2].at);
        assert!(svg.contains(r#"data-assigns="3""#), "{svg}");
        assert!(svg.contains(r#"data-region="eu&lt;1&gt;""#));
        assert_eq!(svg.matches("<polyline").count(), 2);
        assert_eq!(svg.matches(r#"class="assigns""#).count(), 2);
        assert!(!svg.contains("style="));
    }

    #[test]
    fn an_empty_history_draws_a_frame_and_zeroes() {
        let now = Utc::now();
        let svg = region_chart("r", &[], now - chrono::Duration::hours(1), now);
        assert!(svg.contains(r#"data-assigns="0""#));
        assert!(!svg.contains("<polyline"));
    }
}
