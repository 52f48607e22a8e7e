//! The operator's JSON API under `/v1/operator/`: fleet views, actions and
//! the audit trail. Every route needs an operator (see `identity`).

use std::collections::HashMap;

use berth_common::http::{json, read_body, ApiError, HttpResponse};
use http::{Method, Request, StatusCode};
use hyper::body::Incoming;
use serde_json::json;

use super::actions::{self, Done};
use super::fleet;
use super::identity::Operator;
use crate::audit;
use crate::scaler::Scaler;

const BODY_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(15);
/// Most audit records one page holds.
pub(crate) const AUDIT_PAGE_MAX: i64 = 1000;
/// Hours of history a chart may ask for (the retention bounds it anyway).
const HISTORY_HOURS_MAX: u32 = 24 * 90;

pub(crate) async fn handle(
    scaler: &Scaler,
    operator: &Operator,
    req: Request<Incoming>,
    path: &[&str],
) -> Result<HttpResponse, ApiError> {
    let query = Query::parse(req.uri().query())?;
    let method = req.method().clone();
    match (&method, path) {
        (&Method::GET, ["regions"]) => {
            query.allow(&[])?;
            let regions = fleet::regions(&scaler.db).await.map_err(internal)?;
            Ok(json(StatusCode::OK, &json!({"regions": regions})))
        }
        (&Method::GET, ["hosts"]) => {
            query.allow(&["region", "status"])?;
            let filter = fleet::HostFilter {
                region: query.get("region"),
                status: query.get("status").map(|s| s.to_ascii_uppercase()),
            };
            let hosts = fleet::hosts(&scaler.db, &filter).await.map_err(internal)?;
            Ok(json(StatusCode::OK, &json!({"hosts": hosts})))
        }
        (&Method::GET, ["sessions"]) => {
            query.allow(&["region", "user", "runtime", "status", "host", "warm"])?;
            let filter = fleet::SessionFilter {
                region: query.get("region"),
                user: query.get("user"),
                runtime: query.get("runtime"),
                status: query.get("status").map(|s| s.to_ascii_uppercase()),
                host: query.get("host"),
                include_warm: query.flag("warm")?,
            };
            let sessions = fleet::sessions(&scaler.db, &filter)
                .await
                .map_err(internal)?;
            Ok(json(StatusCode::OK, &json!({"sessions": sessions})))
        }
        (&Method::GET, ["endings"]) => {
            query.allow(&["limit"])?;
            let limit = query.number("limit", 100, 1, fleet::LIST_LIMIT)?;
            let endings = fleet::endings(&scaler.db, limit).await.map_err(internal)?;
            Ok(json(StatusCode::OK, &json!({"endings": endings})))
        }
        (&Method::GET, ["launches"]) => {
            query.allow(&["limit"])?;
            let limit = query.number("limit", 50, 1, fleet::LIST_LIMIT)?;
            let launches = fleet::launches(&scaler.db, limit).await.map_err(internal)?;
            Ok(json(StatusCode::OK, &json!({"launches": launches})))
        }
        (&Method::GET, ["history"]) => {
            query.allow(&["region", "hours"])?;
            let hours = query.number("hours", 6, 1, HISTORY_HOURS_MAX.into())? as u32;
            let region = query.get("region");
            let samples = fleet::history(&scaler.db, region.as_deref(), hours)
                .await
                .map_err(internal)?;
            Ok(json(
                StatusCode::OK,
                &json!({"interval_s": scaler.config.history_sample_secs, "samples": samples}),
            ))
        }
        (&Method::GET, ["audit"]) => {
            let filter = audit_filter(&query)?;
            let records = audit::query(&scaler.db, &filter).await.map_err(internal)?;
            let next_before = (records.len() as i64 == filter.limit)
                .then(|| records.last().map(|r| r.id))
                .flatten();
            Ok(json(
                StatusCode::OK,
                &json!({"records": records, "next_before": next_before}),
            ))
        }
        (&Method::POST, ["hosts", id, "drain"]) => {
            done(actions::drain_host(scaler, operator, id).await)
        }
        (&Method::POST, ["sessions", id, "end"]) => {
            done(actions::end_session(scaler, operator, id).await)
        }
        (&Method::PATCH, ["regions", name]) => {
            let name = name.to_string();
            let body = read_body(req, scaler.config.max_body_bytes, BODY_TIMEOUT).await?;
            let change: actions::RegionChange = parse_json(&body)?;
            done(actions::change_region(scaler, operator, &name, &change).await)
        }
        (&Method::POST, ["regions", name, "deploy"]) => {
            let name = name.to_string();
            let body = read_body(req, scaler.config.max_body_bytes, BODY_TIMEOUT).await?;
            let request: actions::DeployRequest = parse_json(&body)?;
            done(actions::start_deploy(scaler, operator, &name, &request).await)
        }
        (&Method::POST, ["regions", name, "deploy", "release"]) => {
            done(actions::release_deploy(scaler, operator, name).await)
        }
        (&Method::POST, ["regions", name, "deploy", "abort"]) => {
            done(actions::abort_deploy(scaler, operator, name).await)
        }
        (_, ["regions" | "hosts" | "sessions" | "endings" | "launches" | "history" | "audit"]) => {
            Err(ApiError::method_not_allowed("GET"))
        }
        (_, ["regions", _]) => Err(ApiError::method_not_allowed("PATCH")),
        (_, ["hosts", _, "drain"] | ["sessions", _, "end"] | ["regions", _, "deploy", ..]) => {
            Err(ApiError::method_not_allowed("POST"))
        }
        _ => Err(ApiError::not_found()),
    }
}

fn done(result: Result<Done, ApiError>) -> Result<HttpResponse, ApiError> {
    let done = result?;
    let mut body = done.body;
    body["changed"] = json!(done.changed);
    Ok(json(StatusCode::OK, &body))
}

fn parse_json<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    serde_json::from_slice(body).map_err(|e| ApiError::bad_request(format!("malformed body: {e}")))
}

pub(crate) fn internal(error: sqlx::Error) -> ApiError {
    tracing::error!(%error, "an operator query failed");
    ApiError::new(
        StatusCode::INTERNAL_SERVER_ERROR,
        "INTERNAL",
        "the query failed on the server; retry",
    )
}

pub(crate) fn audit_filter(query: &Query) -> Result<audit::Filter, ApiError> {
    query.allow(&[
        "actor", "action", "target", "region", "outcome", "since", "until", "before", "limit",
    ])?;
    let outcome = query.get("outcome");
    if let Some(o) = &outcome {
        if !["ok", "refused", "failed"].contains(&o.as_str()) {
            return Err(ApiError::bad_request(
                "outcome must be ok, refused or failed",
            ));
        }
    }
    Ok(audit::Filter {
        actor: query.get("actor"),
        action: query.get("action"),
        target: query.get("target"),
        region: query.get("region"),
        outcome,
        since: query.time("since")?,
        until: query.time("until")?,
        before: query
            .get("before")
            .map(|b| {
                b.parse::<i64>()
                    .map_err(|_| ApiError::bad_request("before must be a record id (an integer)"))
            })
            .transpose()?,
        limit: query.number("limit", 100, 1, AUDIT_PAGE_MAX)?,
    })
}

/// A request's query string, strictly: an unknown parameter is a 400, so a
/// misspelt filter never silently returns everything.
#[derive(Debug, Default)]
pub(crate) struct Query(HashMap<String, String>);

impl Query {
    pub(crate) fn parse(query: Option<&str>) -> Result<Self, ApiError> {
        let mut map = HashMap::new();
        for (key, value) in form_urlencoded::parse(query.unwrap_or("").as_bytes()) {
            // Text columns hold no NUL, and no filter needs a control character.
            if value.chars().any(char::is_control) {
                return Err(ApiError::bad_request(format!(
                    "query parameter {key:?} holds a control character"
                )));
            }
            if map.insert(key.to_string(), value.to_string()).is_some() {
                return Err(ApiError::bad_request(format!(
                    "query parameter {key:?} is given twice"
                )));
            }
        }
        Ok(Self(map))
    }

    pub(crate) fn allow(&self, known: &[&str]) -> Result<(), ApiError> {
        match self.0.keys().find(|k| !known.contains(&k.as_str())) {
            Some(unknown) => Err(ApiError::bad_request(format!(
                "unknown query parameter {unknown:?}; this route takes {}",
                if known.is_empty() {
                    "none".to_owned()
                } else {
                    known.join(", ")
                }
            ))),
            None => Ok(()),
        }
    }

    pub(crate) fn remove(&mut self, key: &str) {
        self.0.remove(key);
    }

    /// A non-empty value.
    pub(crate) fn get(&self, key: &str) -> Option<String> {
        self.0.get(key).filter(|v| !v.is_empty()).cloned()
    }

    fn flag(&self, key: &str) -> Result<bool, ApiError> {
        match self.get(key).as_deref() {
            None | Some("false") => Ok(false),
            Some("true") => Ok(true),
            Some(_) => Err(ApiError::bad_request(format!(
                "{key} must be true or false"
            ))),
        }
    }

    pub(crate) fn number(
        &self,
        key: &str,
        default: i64,
        min: i64,
        max: i64,
    ) -> Result<i64, ApiError> {
        match self.get(key) {
            None => Ok(default),
            Some(v) => v
                .parse::<i64>()
                .ok()
                .filter(|n| (min..=max).contains(n))
                .ok_or_else(|| {
                    ApiError::bad_request(format!("{key} must be a number from {min} to {max}"))
                }),
        }
    }

    fn time(&self, key: &str) -> Result<Option<chrono::DateTime<chrono::Utc>>, ApiError> {
        self.get(key)
            .map(|v| {
                chrono::DateTime::parse_from_rfc3339(&v)
                    .map(|t| t.with_timezone(&chrono::Utc))
                    .map_err(|_| {
                        ApiError::bad_request(format!(
                            "{key} must be an RFC 3339 time, e.g. 2026-12-01T10:00:00Z"
                        ))
                    })
            })
            .transpose()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_or_repeated_parameters_and_bad_values_are_refused() {
        let q = Query::parse(Some("region=a&limit=5")).unwrap();
        assert!(q.allow(&["region", "limit"]).is_ok());
        assert!(q.allow(&["region"]).is_err());
        assert_eq!(q.number("limit", 1, 1, 10).unwrap(), 5);
        assert!(q.number("limit", 1, 6, 10).is_err());
        assert!(Query::parse(Some("a=1&a=2")).is_err());
        let bad = Query::parse(Some("outcome=maybe")).unwrap();
        assert!(audit_filter(&bad).is_err());
        let bad = Query::parse(Some("since=yesterday")).unwrap();
        assert!(audit_filter(&bad).is_err());
        let good = Query::parse(Some("since=2026-12-01T10:00:00Z&before=42&limit=1000")).unwrap();
        let filter = audit_filter(&good).unwrap();
        assert_eq!((filter.before, filter.limit), (Some(42), 1000));
    }
}
