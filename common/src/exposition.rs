//! The text formats `/metrics` is served in, chosen by the request's `Accept`.
//!
//! prometheus-client writes OpenMetrics 1.0 text. Prometheus' classic text
//! format (version 0.0.4) — what `promtool check metrics`, older scrapers and
//! a plain `curl` get — is derived from it; for the metric types Berth uses
//! (counter, gauge, histogram) the two differ only in:
//!
//! * a counter's family: OpenMetrics names it without the `_total` of its
//!   sample (`# TYPE x counter` over `x_total 3`); classic names it exactly
//!   like the sample (`# TYPE x_total counter`), or the sample has no HELP
//!   and no TYPE;
//! * `# EOF`, `# UNIT`, `_created` samples and exemplars exist only in
//!   OpenMetrics; `unknown` is called `untyped` in classic.
//!
//! Scrapers that prefer OpenMetrics (Prometheus asks for it first) get it
//! unchanged; everyone else, including requests without `Accept`, gets classic.

use std::collections::HashMap;

use http::{header, Request, StatusCode};

use crate::http::{text, HttpResponse};

/// A text exposition format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exposition {
    /// Prometheus text format 0.0.4.
    Classic,
    /// OpenMetrics 1.0.0 text.
    OpenMetrics,
}

impl Exposition {
    pub const CLASSIC_CONTENT_TYPE: &'static str = "text/plain; version=0.0.4; charset=utf-8";
    pub const OPENMETRICS_CONTENT_TYPE: &'static str =
        "application/openmetrics-text; version=1.0.0; charset=utf-8";

    /// The format an `Accept` header asks for: the acceptable media range with
    /// the highest q (the first of equals) that names one of the two; classic
    /// when there is no header or it names neither.
    pub fn negotiate(accept: Option<&str>) -> Self {
        let mut best: Option<(f32, Self)> = None;
        for range in accept.unwrap_or("").split(',') {
            let mut parts = range.split(';').map(str::trim);
            let media = parts.next().unwrap_or("").to_ascii_lowercase();
            let mut q = 1.0_f32;
            let mut version = None;
            for param in parts {
                let (key, value) = param.split_once('=').unwrap_or((param, ""));
                let value = value.trim().trim_matches('"');
                match key.trim().to_ascii_lowercase().as_str() {
                    "q" => q = value.parse().unwrap_or(0.0),
                    "version" => version = Some(value.to_owned()),
                    _ => {}
                }
            }
            let format = match (media.as_str(), version.as_deref()) {
                ("application/openmetrics-text", None | Some("1.0.0" | "0.0.1")) => {
                    Self::OpenMetrics
                }
                // Any text/plain version: 0.0.4 is also valid 1.0.0 for these names.
                ("text/plain" | "text/*" | "*/*", _) => Self::Classic,
                _ => continue,
            };
            if q > 0.0 && best.is_none_or(|(b, _)| q > b) {
                best = Some((q, format));
            }
        }
        best.map_or(Self::Classic, |(_, format)| format)
    }

    pub fn content_type(self) -> &'static str {
        match self {
            Self::Classic => Self::CLASSIC_CONTENT_TYPE,
            Self::OpenMetrics => Self::OPENMETRICS_CONTENT_TYPE,
        }
    }

    /// `openmetrics` (prometheus-client's output) in this format.
    pub fn render(self, openmetrics: &str) -> String {
        match self {
            Self::OpenMetrics => openmetrics.to_owned(),
            Self::Classic => classic_from_openmetrics(openmetrics),
        }
    }
}

/// The `/metrics` answer to `req`: `openmetrics` in the format it asked for.
pub fn metrics_response<B>(req: &Request<B>, openmetrics: &str) -> HttpResponse {
    let accept = req
        .headers()
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok());
    let format = Exposition::negotiate(accept);
    text(
        StatusCode::OK,
        format.content_type(),
        format.render(openmetrics),
    )
}

/// A sample line's metric name: up to `{` or the first space.
pub fn sample_name(line: &str) -> &str {
    let end = line.find(['{', ' ']).unwrap_or(line.len());
    &line[..end]
}

/// A sample line without its exemplar (` # {…} value`), which follows the
/// label set (whose quoted values may contain anything) and the value.
fn without_exemplar(line: &str) -> &str {
    let mut in_quotes = false;
    let mut escaped = false;
    let mut after_labels = 0;
    for (i, c) in line.char_indices() {
        match c {
            _ if escaped => escaped = false,
            '\\' if in_quotes => escaped = true,
            '"' => in_quotes = !in_quotes,
            '}' if !in_quotes => {
                after_labels = i + 1;
                break;
            }
            ' ' if !in_quotes && !line[..i].contains('{') => {
                after_labels = i;
                break;
            }
            _ => {}
        }
    }
    match line[after_labels..].find(" # ") {
        Some(at) => &line[..after_labels + at],
        None => line,
    }
}

/// OpenMetrics text (as prometheus-client writes it) as classic 0.0.4 text.
pub fn classic_from_openmetrics(openmetrics: &str) -> String {
    // HELP precedes TYPE, so learn every family's type first.
    let types: HashMap<&str, &str> = openmetrics
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|rest| rest.split_once(' '))
        .collect();
    let counter = |family: &str| types.get(family) == Some(&"counter");
    let mut out = String::with_capacity(openmetrics.len());
    for line in openmetrics.lines() {
        if let Some(rest) = line.strip_prefix("# HELP ") {
            let (family, help) = rest.split_once(' ').unwrap_or((rest, ""));
            let suffix = if counter(family) { "_total" } else { "" };
            out.push_str(&format!("# HELP {family}{suffix} {help}\n"));
        } else if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (family, kind) = rest.split_once(' ').unwrap_or((rest, "untyped"));
            let (suffix, kind) = match kind {
                "counter" => ("_total", kind),
                "unknown" => ("", "untyped"),
                _ => ("", kind),
            };
            out.push_str(&format!("# TYPE {family}{suffix} {kind}\n"));
        } else if line.starts_with('#') || line.trim().is_empty() {
            // # EOF, # UNIT: OpenMetrics only.
        } else {
            let name = sample_name(line);
            let created = name
                .strip_suffix("_created")
                .is_some_and(|family| types.contains_key(family));
            if !created {
                out.push_str(without_exemplar(line));
                out.push('\n');
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const OPENMETRICS: &str = "# HELP berth_x_assigns Sessions assigned.\n\
        # TYPE berth_x_assigns counter\n\
        berth_x_assigns_total 3\n\
        berth_x_assigns_created 1700000000.0\n\
        # HELP berth_x_sessions Sessions.\n\
        # TYPE berth_x_sessions gauge\n\
        berth_x_sessions{kind=\"a # b}\"} 2 # {trace_id=\"x\"} 1\n\
        # HELP berth_x_seconds Latency.\n\
        # TYPE berth_x_seconds histogram\n\
        # UNIT berth_x_seconds seconds\n\
        berth_x_seconds_sum 0.5\n\
        berth_x_seconds_count 1\n\
        berth_x_seconds_bucket{le=\"0.5\"} 1\n\
        berth_x_seconds_bucket{le=\"+Inf\"} 1\n\
        # HELP berth_x_other Other.\n\
        # TYPE berth_x_other unknown\n\
        berth_x_other 1\n\
        # EOF\n";

    #[test]
    fn classic_text_names_counters_by_their_samples_and_drops_openmetrics_only_parts() {
        let classic = classic_from_openmetrics(OPENMETRICS);
        assert_eq!(
            classic,
            "# HELP berth_x_assigns_total Sessions assigned.\n\
             # TYPE berth_x_assigns_total counter\n\
             berth_x_assigns_total 3\n\
             # HELP berth_x_sessions Sessions.\n\
             # TYPE berth_x_sessions gauge\n\
             berth_x_sessions{kind=\"a # b}\"} 2\n\
             # HELP berth_x_seconds Latency.\n\
             # TYPE berth_x_seconds histogram\n\
             berth_x_seconds_sum 0.5\n\
             berth_x_seconds_count 1\n\
             berth_x_seconds_bucket{le=\"0.5\"} 1\n\
             berth_x_seconds_bucket{le=\"+Inf\"} 1\n\
             # HELP berth_x_other Other.\n\
             # TYPE berth_x_other untyped\n\
             berth_x_other 1\n"
        );
    }

    #[test]
    fn accept_picks_the_format() {
        use Exposition::*;
        for (accept, want) in [
            (None, Classic),
            (Some(""), Classic),
            (Some("*/*"), Classic),
            (Some("text/plain;version=0.0.4"), Classic),
            (Some("text/plain; version=0.0.4; charset=utf-8"), Classic),
            (Some("application/json"), Classic),
            (Some("application/openmetrics-text"), OpenMetrics),
            (Some("Application/OpenMetrics-Text; version=1.0.0"), OpenMetrics),
            // Prometheus' scrape default.
            (Some("application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1"), OpenMetrics),
            (Some("text/plain;version=0.0.4;q=0.9,application/openmetrics-text;q=0.5"), Classic),
            (Some("application/openmetrics-text;q=0,text/plain;q=0.1"), Classic),
            (Some("application/openmetrics-text;version=9.9.9"), Classic),
        ] {
            assert_eq!(Exposition::negotiate(accept), want, "{accept:?}");
        }
    }
}
