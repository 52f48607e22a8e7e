//! The fleet dashboard at `/ui/`: server-rendered pages (overview, hosts,
//! sessions, audit) whose live sections the server re-renders and pushes
//! over server-sent events when they change; a little plain script applies
//! them and sends the operator's confirmed actions to `/v1/operator/`. No
//! build step, no external assets, a strict Content-Security-Policy.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::sync::Arc;
use std::time::Duration;

use berth_common::http::{read_body, text, ApiError, BoxError, HttpResponse, StreamingBody};
use bytes::Bytes;
use http::{header, HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};

use super::api::{audit_filter, internal, Query};
use super::charts::region_chart;
use super::fleet::{self, Sample};
use super::html::{action_button, esc, login_page, page, section};
use super::identity::{self, Operator};
use crate::audit::{self, ActorKind, Entry, Outcome};
use crate::scaler::Scaler;

const APP_JS: &str = include_str!("assets/app.js");
const APP_CSS: &str = include_str!("assets/app.css");
/// Every page links it: without an icon Chromium asks for `/favicon.ico`,
/// and its 404 is an error on the console of every page.
const FAVICON: &str = include_str!("assets/favicon.svg");
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'";
/// How often an open page's live sections are rendered again.
const REFRESH: Duration = Duration::from_secs(1);
const KEEP_ALIVE: Duration = Duration::from_secs(15);
/// An event stream ends after this long; the browser reconnects on its own,
/// and the reconnection checks the login again.
const STREAM_LIFETIME: Duration = Duration::from_secs(600);
/// Hours of history the overview's charts show.
const CHART_HOURS: u32 = 6;
const BODY_TIMEOUT: Duration = Duration::from_secs(15);

/// Routes under `/ui/`; `path` is what follows it.
pub(crate) async fn handle(
    scaler: &Arc<Scaler>,
    req: Request<Incoming>,
    path: &[&str],
) -> Response<StreamingBody> {
    let method = req.method().clone();
    let result = match (&method, path) {
        (&Method::GET, ["app.css"]) => Ok(asset(APP_CSS, "text/css; charset=utf-8")),
        (&Method::GET, ["favicon.svg"]) => Ok(asset(FAVICON, "image/svg+xml")),
        (&Method::GET, ["login"]) => Ok(html(StatusCode::OK, login_page(None))),
        (&Method::POST, ["login"]) => Ok(login(scaler, req).await),
        (&Method::POST, ["logout"]) => Ok(logout()),
        (&Method::GET, _) => match super::require(scaler, &req).await {
            Err(refused) => Ok(refused_page(refused)),
            Ok(operator) => {
                if let ["events"] = path {
                    return events(scaler.clone(), &req, operator);
                }
                view(scaler, &req, &operator, path).await
            }
        },
        (_, ["login"]) => Err(ApiError::method_not_allowed("GET, POST")),
        (_, ["logout"]) => Err(ApiError::method_not_allowed("POST")),
        _ => Err(ApiError::method_not_allowed("GET")),
    };
    berth_common::http::streaming(secure_headers(
        result.unwrap_or_else(ApiError::into_response),
    ))
}

fn secure_headers(mut response: HttpResponse) -> HttpResponse {
    let headers = response.headers_mut();
    headers.insert("content-security-policy", HeaderValue::from_static(CSP));
    headers.insert(
        "x-content-type-options",
        HeaderValue::from_static("nosniff"),
    );
    headers.insert("x-frame-options", HeaderValue::from_static("DENY"));
    headers.insert("referrer-policy", HeaderValue::from_static("no-referrer"));
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

fn html(status: StatusCode, body: String) -> HttpResponse {
    text(status, "text/html; charset=utf-8", body)
}

fn asset(body: &'static str, content_type: &'static str) -> HttpResponse {
    text(StatusCode::OK, content_type, body)
}

/// A refused page says why and links to the login.
fn refused_page(error: ApiError) -> HttpResponse {
    html(
        error.status,
        login_page(Some(&format!("{} ({})", error.message, error.code))),
    )
}

async fn login(scaler: &Scaler, req: Request<Incoming>) -> HttpResponse {
    let address = berth_common::http::peer_address(&req);
    let secure = identity::wants_secure_cookie(req.headers());
    let body = match read_body(req, scaler.config.max_body_bytes, BODY_TIMEOUT).await {
        Ok(body) => body,
        Err(error) => return refused_page(error),
    };
    let token = form_urlencoded::parse(&body)
        .find(|(k, _)| k == "token")
        .map(|(_, v)| v.trim().to_owned())
        .unwrap_or_default();
    let proven = identity::prove_token(scaler, &token).await;
    let entry = |subject: &str, outcome| {
        Entry::new(ActorKind::Operator, subject, "operator.login", "dashboard")
            .address(address.clone())
            .outcome(outcome)
    };
    let proven = match proven {
        Ok(proven) => proven,
        Err(refused) => {
            scaler.audit.record(entry("-", Outcome::Refused));
            return refused_page(refused.error);
        }
    };
    let now = berth_common::grant::unix_now();
    let expiry = (now + scaler.config.operator_login_secs).min(proven.expires.unwrap_or(u64::MAX));
    let cookie = identity::issue_cookie(&scaler.keys.cookies, &proven.subject, expiry);
    scaler.audit.record(entry(&proven.subject, Outcome::Ok));
    Response::builder()
        .status(StatusCode::SEE_OTHER)
        .header(header::LOCATION, "/ui/")
        .header(
            header::SET_COOKIE,
            identity::set_cookie(
                &cookie,
                Duration::from_secs(expiry.saturating_sub(now)),
                secure,
            ),
        )
        .body(Full::new(Bytes::new()))
        .unwrap_or_default()
}

fn logout() -> HttpResponse {
    Response::builder()
        .status(StatusCode::SEE_OTHER)
        .header(header::LOCATION, "/ui/login")
        .header(header::SET_COOKIE, identity::clear_cookie())
        .body(Full::new(Bytes::new()))
        .unwrap_or_default()
}

/// A page's name and its filters, as its URL and its event stream give them.
#[derive(Debug, Clone)]
struct View {
    name: &'static str,
    query: String,
}

impl View {
    fn of(path: &[&str], query: Option<&str>) -> Result<Self, ApiError> {
        let name = match path {
            [] | [""] => "overview",
            ["hosts"] => "hosts",
            ["sessions"] => "sessions",
            ["audit"] => "audit",
            _ => return Err(ApiError::not_found()),
        };
        Ok(Self {
            name,
            query: query.unwrap_or("").to_owned(),
        })
    }

    fn events_url(&self) -> String {
        let mut url = format!("/ui/events?page={}", self.name);
        if !self.query.is_empty() {
            url.push('&');
            url.push_str(&self.query);
        }
        url
    }
}

async fn view(
    scaler: &Scaler,
    req: &Request<Incoming>,
    operator: &Operator,
    path: &[&str],
) -> Result<HttpResponse, ApiError> {
    if let ["app.js"] = path {
        return Ok(asset(APP_JS, "text/javascript; charset=utf-8"));
    }
    let view = View::of(path, req.uri().query())?;
    let query = Query::parse(Some(&view.query))?;
    let sections = render(scaler, &view, &query).await?;
    let live: String = sections
        .iter()
        .map(|(id, inner)| section(id, inner))
        .collect();
    let (title, intro) = match view.name {
        "overview" => ("Fleet", String::new()),
        "hosts" => (
            "Hosts",
            filter_form("/ui/hosts", &query, &["region", "status"]),
        ),
        "sessions" => (
            "Sessions",
            filter_form(
                "/ui/sessions",
                &query,
                &["region", "user", "runtime", "status", "host"],
            ),
        ),
        _ => (
            "Audit trail",
            filter_form(
                "/ui/audit",
                &query,
                &["actor", "action", "target", "region", "outcome"],
            ),
        ),
    };
    let controls = if view.name == "overview" {
        region_controls(scaler).await?
    } else {
        String::new()
    };
    // A page of older audit records is history: it does not change.
    let events = (query.get("before").is_none()).then(|| view.events_url());
    let body = format!("<h1>{title}</h1>{intro}{live}{controls}");
    Ok(html(
        StatusCode::OK,
        page(
            title,
            view.name,
            &operator.subject,
            events.as_deref(),
            &body,
        ),
    ))
}

fn filter_form(action: &str, query: &Query, fields: &[&str]) -> String {
    let mut form = format!(r#"<form class="filters" method="get" action="{action}">"#);
    for field in fields {
        let _ = write!(
            form,
            r#"<label>{field} <input name="{field}" value="{}"></label>"#,
            esc(&query.get(field).unwrap_or_default())
        );
    }
    form.push_str(r#"<button type="submit">filter</button></form>"#);
    form
}

/// The live sections of `view`, rendered now.
async fn render(
    scaler: &Scaler,
    view: &View,
    query: &Query,
) -> Result<Vec<(&'static str, String)>, ApiError> {
    let db = &scaler.db;
    Ok(match view.name {
        "overview" => {
            query.allow(&["page"])?;
            let regions = fleet::regions(db).await.map_err(internal)?;
            let history = fleet::history(db, None, CHART_HOURS)
                .await
                .map_err(internal)?;
            let endings = fleet::endings(db, 20).await.map_err(internal)?;
            let launches = fleet::launches(db, 20).await.map_err(internal)?;
            vec![
                ("live-regions", regions_table(&regions)),
                ("live-charts", charts(&regions, &history)),
                ("live-endings", endings_table(&endings)),
                ("live-launches", launches_table(&launches)),
            ]
        }
        "hosts" => {
            query.allow(&["page", "region", "status"])?;
            let filter = fleet::HostFilter {
                region: query.get("region"),
                status: query.get("status").map(|s| s.to_ascii_uppercase()),
            };
            let hosts = fleet::hosts(db, &filter).await.map_err(internal)?;
            vec![("live-hosts", hosts_table(&hosts))]
        }
        "sessions" => {
            query.allow(&["page", "region", "user", "runtime", "status", "host"])?;
            let filter = fleet::SessionFilter {
                region: query.get("region"),
                user: query.get("user"),
                runtime: query.get("runtime"),
                status: query.get("status").map(|s| s.to_ascii_uppercase()),
                host: query.get("host"),
                include_warm: false,
            };
            let sessions = fleet::sessions(db, &filter).await.map_err(internal)?;
            vec![("live-sessions", sessions_table(&sessions))]
        }
        _ => {
            let mut params = Query::parse(Some(&view.query))?;
            params.remove("page");
            let mut filter = audit_filter(&params)?;
            filter.limit = filter.limit.min(200);
            let records = audit::query(db, &filter).await.map_err(internal)?;
            vec![(
                "live-audit",
                audit_table(&records, &view.query, filter.limit),
            )]
        }
    })
}

fn age(seconds: f64) -> String {
    let s = seconds.max(0.0) as u64;
    match s {
        0..=59 => format!("{s}s"),
        60..=3599 => format!("{}m {}s", s / 60, s % 60),
        _ => format!("{}h {}m", s / 3600, (s % 3600) / 60),
    }
}

fn table(head: &[&str], rows: Vec<String>, empty: &str) -> String {
    if rows.is_empty() {
        return format!(r#"<p class="empty">{empty}</p>"#);
    }
    let mut out = String::from("<table><thead><tr>");
    for h in head {
        let _ = write!(out, "<th>{h}</th>");
    }
    out.push_str("</tr></thead><tbody>");
    for row in rows {
        out.push_str(&row);
    }
    out.push_str("</tbody></table>");
    out
}

fn regions_table(regions: &[fleet::RegionRow]) -> String {
    let rows = regions
        .iter()
        .map(|r| {
            let hosts = r
                .hosts
                .as_object()
                .map(|m| {
                    m.iter()
                        .map(|(k, v)| format!("{} {}", esc(k), v))
                        .collect::<Vec<_>>()
                        .join(", ")
                })
                .unwrap_or_default();
            let deploy = match (&r.deploy_state, &r.deploy_image) {
                (Some(state), Some(image)) => format!(
                    "{} → {}{}",
                    esc(state),
                    esc(image),
                    if r.deploy_released == Some(true) { " (released)" } else { "" }
                ),
                _ => "—".to_owned(),
            };
            format!(
                r#"<tr data-region="{name}"><td>{name}</td><td>{enabled}</td><td>{target}</td><td class="free">{free}</td><td>{capacity}</td><td>{sessions}</td><td>{hosts}</td><td>{launching}</td><td>{max}</td><td>{image}</td><td>{deploy}</td></tr>"#,
                name = esc(&r.name),
                enabled = if r.enabled { "enabled" } else { "disabled" },
                target = r.target_free_slots,
                free = r.free_slots,
                capacity = r.capacity,
                sessions = r.sessions,
                launching = r.launching,
                max = r.max_hosts,
                image = esc(r.current_image.as_deref().unwrap_or("—")),
            )
        })
        .collect();
    table(
        &[
            "region",
            "state",
            "target free",
            "free",
            "capacity",
            "sessions",
            "hosts",
            "launching",
            "max hosts",
            "image",
            "deploy",
        ],
        rows,
        "No regions yet: insert one into the regions table.",
    )
}

fn charts(regions: &[fleet::RegionRow], history: &[Sample]) -> String {
    let to = chrono::Utc::now();
    let from = to - chrono::Duration::hours(CHART_HOURS.into());
    let mut out = String::new();
    for region in regions {
        let samples: Vec<&Sample> = history.iter().filter(|s| s.region == region.name).collect();
        // Start the axis at the first sample when the history is younger
        // than the window, so a new fleet's chart is not a sliver.
        let start = samples.first().map_or(from, |s| s.at.max(from));
        let _ = write!(
            out,
            r#"<figure><figcaption>{}</figcaption>{}</figure>"#,
            esc(&region.name),
            region_chart(
                &region.name,
                &samples,
                start.min(to - chrono::Duration::minutes(1)),
                to
            )
        );
    }
    out
}

fn endings_table(endings: &[fleet::EndingRow]) -> String {
    let rows = endings
        .iter()
        .map(|e| {
            format!(
                "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
                e.ended_at.format("%Y-%m-%d %H:%M:%S"),
                esc(&e.id.to_string()),
                esc(&e.user_id),
                esc(&e.runtime),
                esc(&e.host_id),
                esc(&e.outcome),
                esc(&e.reason)
            )
        })
        .collect();
    format!(
        "<h2>Recent endings</h2>{}",
        table(
            &["ended", "session", "user", "runtime", "host", "outcome", "reason"],
            rows,
            "No session has ended yet."
        )
    )
}

fn launches_table(launches: &[fleet::LaunchRow]) -> String {
    let rows = launches
        .iter()
        .map(|l| {
            format!(
                "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td class=\"error\">{}</td></tr>",
                l.created_at.format("%Y-%m-%d %H:%M:%S"),
                esc(&l.region),
                esc(&l.instance_type),
                l.count,
                esc(&l.state),
                esc(&l.instance_ids.join(" ")),
                esc(l.error.as_deref().unwrap_or(""))
            )
        })
        .collect();
    format!(
        "<h2>Launches and EC2 errors</h2>{}",
        table(
            &[
                "asked",
                "region",
                "type",
                "count",
                "state",
                "instances",
                "error"
            ],
            rows,
            "No launches yet."
        )
    )
}

fn hosts_table(hosts: &[fleet::HostRow]) -> String {
    let rows = hosts
        .iter()
        .map(|h| {
            let drain = if matches!(h.status.as_str(), "ACTIVE" | "UNREACHABLE") {
                action_button(
                    "drain",
                    "POST",
                    &format!("/v1/operator/hosts/{}/drain", h.id),
                    &format!("Drain host {}? It takes no new sessions and ends once empty.", h.id),
                    None,
                )
            } else {
                String::new()
            };
            format!(
                r#"<tr data-host="{id}"><td>{id}</td><td>{region}</td><td class="status">{status}</td><td>{heartbeat}</td><td>{load}</td><td>{sessions}/{capacity}</td><td>{image}</td><td>{version}</td><td>{reason}</td><td>{drain}</td></tr>"#,
                id = esc(&h.id),
                region = esc(&h.region),
                status = esc(&h.status),
                heartbeat = h.heartbeat_age_s.map(age).unwrap_or_else(|| "—".into()),
                load = h.load_average.map(|l| format!("{l:.2}")).unwrap_or_else(|| "—".into()),
                sessions = h.sessions,
                capacity = h.capacity,
                image = esc(&h.image_id),
                version = esc(h.host_version.as_deref().unwrap_or("—")),
                reason = esc(h.status_reason.as_deref().unwrap_or("")),
            )
        })
        .collect();
    table(
        &[
            "host",
            "region",
            "status",
            "heartbeat",
            "load",
            "sessions",
            "image",
            "version",
            "reason",
            "",
        ],
        rows,
        "No hosts match.",
    )
}

fn sessions_table(sessions: &[fleet::SessionRow]) -> String {
    let rows = sessions
        .iter()
        .map(|s| {
            let end = if s.status != "DYING" {
                action_button(
                    "end",
                    "POST",
                    &format!("/v1/operator/sessions/{}/end", s.id),
                    &format!("End session {} of {}?", s.id, s.user_id.as_deref().unwrap_or("nobody")),
                    None,
                )
            } else {
                String::new()
            };
            format!(
                r#"<tr data-session="{id}"><td>{id}</td><td>{user}</td><td>{runtime}</td><td class="status">{status}</td><td>{age}</td><td>{host}</td><td>{region}</td><td>{end}</td></tr>"#,
                id = s.id,
                user = esc(s.user_id.as_deref().unwrap_or("")),
                runtime = esc(&s.runtime),
                status = esc(&s.status),
                age = age(s.age_s),
                host = esc(&s.host_id),
                region = esc(&s.region),
            )
        })
        .collect();
    table(
        &[
            "session", "user", "runtime", "status", "age", "host", "region", "",
        ],
        rows,
        "No sessions match.",
    )
}

fn audit_table(records: &[audit::Record], query: &str, limit: i64) -> String {
    let rows = records
        .iter()
        .map(|r| {
            format!(
                r#"<tr data-audit="{id}"><td>{at}</td><td>{kind}: {actor}</td><td>{action}</td><td>{target}</td><td>{region}</td><td>{address}</td><td class="outcome-{outcome}">{outcome}</td><td><code>{detail}</code></td></tr>"#,
                id = r.id,
                at = r.at.format("%Y-%m-%d %H:%M:%S"),
                kind = esc(&r.actor_kind),
                actor = esc(&r.actor),
                action = esc(&r.action),
                target = esc(&r.target),
                region = esc(r.region.as_deref().unwrap_or("")),
                address = esc(r.address.as_deref().unwrap_or("")),
                outcome = esc(&r.outcome),
                detail = esc(&r.detail.to_string()),
            )
        })
        .collect();
    let mut out = table(
        &[
            "when", "who", "what", "target", "region", "from", "outcome", "detail",
        ],
        rows,
        "No records match.",
    );
    if records.len() as i64 == limit {
        if let Some(last) = records.last() {
            let rest: String = form_urlencoded::parse(query.as_bytes())
                .filter(|(k, _)| k != "before" && k != "page")
                .fold(
                    form_urlencoded::Serializer::new(String::new()),
                    |mut s, (k, v)| {
                        s.append_pair(&k, &v);
                        s
                    },
                )
                .append_pair("before", &last.id.to_string())
                .finish();
            let _ = write!(
                out,
                r#"<p><a class="older" href="/ui/audit?{}">older records</a></p>"#,
                esc(&rest)
            );
        }
    }
    out
}

/// The overview's forms: not live, so what an operator types stays put.
async fn region_controls(scaler: &Scaler) -> Result<String, ApiError> {
    let regions = fleet::regions(&scaler.db).await.map_err(internal)?;
    let mut out = String::from("<h2>Region settings</h2>");
    for r in &regions {
        let name = esc(&r.name);
        let toggle = if r.enabled {
            action_button(
                "disable",
                "PATCH",
                &format!("/v1/operator/regions/{}", r.name),
                &format!(
                    "Disable region {}? No host launches there and assigns stop.",
                    r.name
                ),
                Some(r#"{"enabled":false}"#),
            )
        } else {
            action_button(
                "enable",
                "PATCH",
                &format!("/v1/operator/regions/{}", r.name),
                &format!("Enable region {}?", r.name),
                Some(r#"{"enabled":true}"#),
            )
        };
        let _ = write!(
            out,
            r#"<div class="region-controls" data-region="{name}"><h3>{name}</h3>{toggle}
<form class="action-form" data-method="PATCH" data-url="/v1/operator/regions/{name}" data-confirm="Change the buffer of region {name}?"><label>target free slots <input type="number" min="0" max="10000" name="target_free_slots" value="{target}"></label><label>max hosts <input type="number" min="0" max="10000" name="max_hosts" value="{max}"></label><button type="submit">save</button></form>
<form class="action-form" data-method="POST" data-url="/v1/operator/regions/{name}/deploy" data-confirm="Start a deploy in region {name}?"><label>image <input name="image_id" required></label><label>client sha <input name="client_sha"></label><button type="submit">start deploy</button></form>
{release} {abort}</div>"#,
            target = r.target_free_slots,
            max = r.max_hosts,
            release = action_button(
                "release deploy",
                "POST",
                &format!("/v1/operator/regions/{}/deploy/release", r.name),
                &format!(
                    "Release the deploy of region {}? Its image becomes current.",
                    r.name
                ),
                None
            ),
            abort = action_button(
                "abort deploy",
                "POST",
                &format!("/v1/operator/regions/{}/deploy/abort", r.name),
                &format!("Abort the deploy of region {}? Its buffer drains.", r.name),
                None
            ),
        );
    }
    Ok(out)
}

/// `GET /ui/events?page=…`: the page's live sections whenever they change.
fn events(
    scaler: Arc<Scaler>,
    req: &Request<Incoming>,
    _operator: Operator,
) -> Response<StreamingBody> {
    let query = Query::parse(req.uri().query()).unwrap_or_default();
    let page = query.get("page").unwrap_or_default();
    let path: &[&str] = match page.as_str() {
        "overview" => &[],
        "hosts" => &["hosts"],
        "sessions" => &["sessions"],
        "audit" => &["audit"],
        _ => {
            return berth_common::http::streaming(secure_headers(
                ApiError::bad_request("page must be overview, hosts, sessions or audit")
                    .into_response(),
            ))
        }
    };
    let Ok(view) = View::of(path, req.uri().query()) else {
        return berth_common::http::streaming(secure_headers(
            ApiError::not_found().into_response(),
        ));
    };
    struct State {
        scaler: Arc<Scaler>,
        view: View,
        sent: HashMap<&'static str, String>,
        pending: Vec<Bytes>,
        refresh: tokio::time::Interval,
        keep_alive: tokio::time::Interval,
        ends: tokio::time::Instant,
    }
    let state = State {
        scaler,
        view,
        sent: HashMap::new(),
        pending: vec![],
        refresh: tokio::time::interval(REFRESH),
        keep_alive: tokio::time::interval_at(tokio::time::Instant::now() + KEEP_ALIVE, KEEP_ALIVE),
        ends: tokio::time::Instant::now() + STREAM_LIFETIME,
    };
    let frames = futures_util::stream::unfold(state, |mut s| async move {
        loop {
            if let Some(next) = s.pending.pop() {
                return Some((Ok::<_, BoxError>(Frame::data(next)), s));
            }
            tokio::select! {
                _ = s.scaler.stop.cancelled() => return None,
                _ = tokio::time::sleep_until(s.ends) => return None,
                _ = s.keep_alive.tick() => return Some((Ok(Frame::data(Bytes::from_static(b": keep-alive\n\n"))), s)),
                _ = s.refresh.tick() => {
                    let query = Query::parse(Some(&s.view.query)).unwrap_or_default();
                    let Ok(sections) = render(&s.scaler, &s.view, &query).await else { continue };
                    for (id, inner) in sections {
                        if s.sent.get(id) != Some(&inner) {
                            let data = serde_json::json!({"id": id, "html": inner}).to_string();
                            s.pending.push(Bytes::from(format!("event: section\ndata: {data}\n\n")));
                            s.sent.insert(id, inner);
                        }
                    }
                }
            }
        }
    });
    let mut response = Response::new(BodyExt::boxed_unsync(StreamBody::new(frames)));
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream"),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    headers.insert("content-security-policy", HeaderValue::from_static(CSP));
    headers.insert(
        "x-content-type-options",
        HeaderValue::from_static("nosniff"),
    );
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pages_have_names_and_event_urls_keep_their_filters() {
        let view = View::of(&["hosts"], Some("region=eu")).unwrap();
        assert_eq!(view.events_url(), "/ui/events?page=hosts&region=eu");
        assert_eq!(View::of(&[], None).unwrap().name, "overview");
        assert!(View::of(&["nope"], None).is_err());
    }

    #[test]
    fn ages_read_as_people_say_them() {
        assert_eq!(age(5.2), "5s");
        assert_eq!(age(125.0), "2m 5s");
        assert_eq!(age(7300.0), "2h 1m");
    }
}
