//! The operator surface: who operators are (`identity`), what they see
//! (`fleet`, `history`), what they change (`actions`), and where: the JSON API
//! under `/v1/operator/` and the dashboard under `/ui/`.

pub(crate) mod actions;
pub(crate) mod api;
pub(crate) mod charts;
pub(crate) mod fleet;
pub(crate) mod history;
pub(crate) mod html;
pub(crate) mod identity;
pub(crate) mod ui;

use std::sync::Arc;

use berth_common::http::{ApiError, StreamingBody};
use http::{Request, Response};
use hyper::body::Incoming;

use crate::audit::{ActorKind, Entry, Outcome};
use crate::scaler::Scaler;

/// `/v1/operator/<path>`.
pub(crate) async fn handle_api(
    scaler: &Arc<Scaler>,
    req: Request<Incoming>,
    path: &[&str],
) -> Response<StreamingBody> {
    let result = match require(scaler, &req).await {
        Ok(operator) => api::handle(scaler, &operator, req, path).await,
        Err(refused) => Err(refused),
    };
    berth_common::http::streaming(result.unwrap_or_else(ApiError::into_response))
}

/// `/ui/<path>`.
pub(crate) async fn handle_ui(
    scaler: &Arc<Scaler>,
    req: Request<Incoming>,
    path: &[&str],
) -> Response<StreamingBody> {
    ui::handle(scaler, req, path).await
}

/// The operator behind `req`; a user refused (a valid JWT without the
/// operator claim) is recorded in the audit trail.
pub(crate) async fn require<B>(
    scaler: &Scaler,
    req: &Request<B>,
) -> Result<identity::Operator, ApiError> {
    let refused = match identity::authenticate(scaler, req).await {
        Ok(operator) => return Ok(operator),
        Err(refused) => refused,
    };
    if let Some(subject) = &refused.user {
        scaler.audit.record(
            Entry::new(
                ActorKind::User,
                subject,
                "operator.refused",
                req.uri().path(),
            )
            .address(berth_common::http::peer_address(req))
            .outcome(Outcome::Refused),
        );
    }
    Err(refused.error)
}
