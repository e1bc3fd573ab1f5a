//! The analysts' dashboard, its JSON API, and the operations endpoints `/metrics` and
//! `/readyz`.
//!
//! Owns the routes below, who may use them ([`auth`]), the validation of their query
//! parameters, and the embedded pages (HTML, CSS, JavaScript and an icon, all served from the
//! binary: no CDN, no external asset). Hands on read-only views of the [`Store`]; nothing here
//! writes to it. Never puts stored data into HTML on the server (pages are fixed; the
//! script fetches JSON and writes it into the page as text, never as markup), never answers
//! with another device's data than the one whose full id was asked for, and never shows a
//! feature value, a token or a whole webhook URL.
//!
//! Identity assurance only, never productivity: no answer carries how much a person typed or
//! when (no record or window counts, no per-window times). A timeline gives each window's
//! score, trust and alert marker in order, and only the first and last window's time for the
//! chart's axis.
//!
//! | request | who | answer |
//! |---|---|---|
//! | `GET /readyz` | anyone | 200 when the database answers within [`READY_TIMEOUT`] (the keys are loaded before serving starts); 503 otherwise |
//! | `GET /metrics` | `Authorization: Bearer` admin or metrics token | Prometheus text ([`crate::metrics`]); 401 otherwise |
//! | `GET /dashboard/login`, `POST /dashboard/login` (form field `token`) | anyone | the sign-in page; a good admin token sets the session cookie and redirects (303) to `/dashboard/`; a wrong one is 401 |
//! | `POST /dashboard/logout` | anyone | clears the cookie, 303 to the sign-in page |
//! | `GET /dashboard/`, `/dashboard/alerts`, `/dashboard/consent`, `/dashboard/user` | session cookie or bearer admin token | the page; 401 with the sign-in page otherwise |
//! | `GET /dashboard/assets/…` | anyone | the fixed CSS, script and icon |
//! | `GET /dashboard/api/devices` | as pages | every device, its last reported state and its status (`silent` when nothing arrived for `[devices] silent_after_secs`, as `cadence-verifier devices` shows it) |
//! | `GET /dashboard/api/users` | as pages | per device (a baseline is per user and device): user, host, state, status, trust, last score, alerts |
//! | `GET /dashboard/api/timeline?device=ID[&limit=N]` | as pages | the device; its last N windows (default 500) in order, each only with score, trust and alert; the first and last shown window's time |
//! | `GET /dashboard/api/alerts[?device=ID][&limit=N]` | as pages | alerts, newest first, with evidence |
//! | `GET /dashboard/api/consent[?device=ID][&limit=N]` | as pages | consent decisions, newest first |
//!
//! API errors are [`ErrorBody`] JSON: 400 for an unknown, repeated or malformed query
//! parameter (`device` is 32 hex digits, `limit` 1 to [`MAX_LIMIT`]), 401 without a valid
//! session or token (with `WWW-Authenticate: Bearer`), 404 for a well-formed id no device has.
//! There is one organization per verifier: an admin sees every device of it.
//!
//! Every page carries a `Content-Security-Policy` that allows only this origin's own script,
//! style and fetches ([`CSP`]), and nothing may frame it.

pub mod auth;

use std::collections::HashMap;
use std::sync::Arc;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, RawQuery, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use cadence_wire::DeviceId;
use cadence_wire::records::ErrorBody;
use serde::Serialize;

use crate::Error;
use crate::api::now_ms;
use crate::cli::{AlertJson, device_status};
use crate::metrics::Metrics;
use crate::store::{DeviceSummary, Store, TimelineEntry};
use auth::{AdminAuth, COOKIE, SESSION_MS, bearer, cookie};

/// What pages and scripts may load: this origin's own script, style, images and fetches;
/// forms post only here; nothing may frame the pages.
pub const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; \
     img-src 'self'; connect-src 'self'; form-action 'self'; frame-ancestors 'none'; \
     base-uri 'none'";
/// Largest `limit` a list accepts.
pub const MAX_LIMIT: u32 = 5000;
/// Windows a timeline shows when no `limit` is given.
pub const DEFAULT_TIMELINE_LIMIT: u32 = 500;
/// Alerts and consent records a list shows when no `limit` is given.
pub const DEFAULT_LIST_LIMIT: u32 = 200;
/// Largest sign-in form body.
const MAX_LOGIN_BYTES: usize = 4096;
/// How long `/readyz` waits for the database before answering 503: a load balancer polling
/// it must learn of a dead database quickly, not after the pool's acquire timeout.
pub const READY_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(1);

const PAGE_HTML: &str = include_str!("assets/page.html");
const LOGIN_HTML: &str = include_str!("assets/login.html");
const APP_JS: &str = include_str!("assets/app.js");
const STYLE_CSS: &str = include_str!("assets/style.css");
const ICON_SVG: &str = include_str!("assets/icon.svg");

/// The state extractor of every handler here.
type Shared = State<Arc<DashboardState>>;

/// What the dashboard's handlers share.
#[derive(Debug)]
pub struct DashboardState {
    /// Read-only use of the store.
    pub store: Store,
    /// The process's counters, for `/metrics`.
    pub metrics: Arc<Metrics>,
    /// The configured admin and metrics tokens.
    pub auth: AdminAuth,
    /// The trust lockout, drawn as a line on the chart.
    pub lockout: f64,
    /// `[devices] silent_after_secs`: a device that sent nothing for this long shows as
    /// `silent` ([`device_status`]).
    pub silent_after_secs: u64,
}

/// The dashboard's, `/metrics`' and `/readyz`'s routes over `state`, to merge with the API's.
pub fn router(state: Arc<DashboardState>) -> Router {
    Router::new()
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .route("/dashboard", get(|| async { redirect("/dashboard/") }))
        .route(
            "/dashboard/",
            get(|s: Shared, h: HeaderMap| page(s, h, "overview")),
        )
        .route(
            "/dashboard/alerts",
            get(|s: Shared, h: HeaderMap| page(s, h, "alerts")),
        )
        .route(
            "/dashboard/consent",
            get(|s: Shared, h: HeaderMap| page(s, h, "consent")),
        )
        .route(
            "/dashboard/user",
            get(|s: Shared, h: HeaderMap| page(s, h, "user")),
        )
        .route(
            "/dashboard/login",
            get(login_page)
                .post(login)
                .layer(DefaultBodyLimit::max(MAX_LOGIN_BYTES)),
        )
        .route("/dashboard/logout", post(logout))
        .route(
            "/dashboard/assets/app.js",
            get(|| async { asset("text/javascript; charset=utf-8", APP_JS) }),
        )
        .route(
            "/dashboard/assets/style.css",
            get(|| async { asset("text/css; charset=utf-8", STYLE_CSS) }),
        )
        .route(
            "/dashboard/assets/icon.svg",
            get(|| async { asset("image/svg+xml", ICON_SVG) }),
        )
        .route("/dashboard/api/devices", get(api_devices))
        .route("/dashboard/api/users", get(api_users))
        .route("/dashboard/api/timeline", get(api_timeline))
        .route("/dashboard/api/alerts", get(api_alerts))
        .route("/dashboard/api/consent", get(api_consent))
        .with_state(state)
}

/// An answer with the headers every dashboard answer carries.
fn secured(status: StatusCode, content_type: &'static str, body: impl Into<Body>) -> Response {
    let mut response = Response::new(body.into());
    *response.status_mut() = status;
    let h = response.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

fn asset(content_type: &'static str, body: &'static str) -> Response {
    let mut r = secured(StatusCode::OK, content_type, body);
    // Fixed content, but served with the binary: a new build may change it.
    r.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    r
}

fn redirect(to: &'static str) -> Response {
    let mut r = secured(StatusCode::SEE_OTHER, "text/plain; charset=utf-8", "");
    r.headers_mut()
        .insert(header::LOCATION, HeaderValue::from_static(to));
    r
}

/// A JSON error answer.
fn api_error(status: StatusCode, message: impl Into<String>) -> Response {
    let body = serde_json::to_string(&ErrorBody {
        error: message.into(),
    })
    .unwrap_or_else(|_| "{\"error\":\"error\"}".to_owned());
    let mut r = secured(status, "application/json", body);
    if status == StatusCode::UNAUTHORIZED {
        r.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            HeaderValue::from_static("Bearer realm=\"cadence\""),
        );
    }
    r
}

/// An API call refused: the status and message of its [`ErrorBody`] answer.
#[derive(Debug)]
struct Refused {
    status: StatusCode,
    message: String,
}

impl Refused {
    fn new(status: StatusCode, message: impl Into<String>) -> Refused {
        Refused {
            status,
            message: message.into(),
        }
    }

    /// The answer for a failed read: 503 (retry) when busy, 500 otherwise.
    fn store(e: Error) -> Refused {
        match e {
            Error::Busy => Refused::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "verifier busy, retry later",
            ),
            other => {
                tracing::error!(error = %other, "dashboard read failed");
                Refused::new(StatusCode::INTERNAL_SERVER_ERROR, "internal storage error")
            }
        }
    }
}

impl IntoResponse for Refused {
    fn into_response(self) -> Response {
        let mut r = api_error(self.status, self.message);
        if self.status == StatusCode::SERVICE_UNAVAILABLE {
            r.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("2"));
        }
        r
    }
}

/// The result of an API handler.
type Answer = Result<Response, Refused>;

fn json<T: Serialize>(value: &T) -> Response {
    match serde_json::to_string(value) {
        Ok(body) => secured(StatusCode::OK, "application/json", body),
        Err(e) => {
            tracing::error!(error = %e, "dashboard answer not serializable");
            api_error(StatusCode::INTERNAL_SERVER_ERROR, "internal error")
        }
    }
}

/// Whether the request carries an admin bearer token or a valid session cookie.
fn signed_in(state: &DashboardState, headers: &HeaderMap) -> bool {
    if let Some(token) = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(bearer)
    {
        return state.auth.is_admin(token);
    }
    let now = now_ms();
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .filter_map(|v| cookie(v, COOKIE))
        .any(|c| state.auth.session_valid(c, now))
}

/// 401 for the API when not signed in.
fn require_admin(state: &DashboardState, headers: &HeaderMap) -> Result<(), Refused> {
    if signed_in(state, headers) {
        Ok(())
    } else if !state.auth.dashboard_open() {
        Err(Refused::new(
            StatusCode::UNAUTHORIZED,
            "the dashboard is closed: no admin_tokens are configured",
        ))
    } else {
        Err(Refused::new(
            StatusCode::UNAUTHORIZED,
            "sign in, or send an admin token as Authorization: Bearer",
        ))
    }
}

/// The sign-in page with one of the fixed messages (never anything from the request).
fn login_html(status: StatusCode, message: &'static str) -> Response {
    secured(
        status,
        "text/html; charset=utf-8",
        LOGIN_HTML.replace("{{message}}", message),
    )
}

async fn readyz(State(state): State<Arc<DashboardState>>) -> Response {
    let answered = tokio::time::timeout(READY_TIMEOUT, state.store.ping())
        .await
        .unwrap_or_else(|_| Err(Error::Busy));
    match answered {
        Ok(()) => json(&serde_json::json!({"database": "ok", "keys": "ok"})),
        Err(e) => {
            tracing::warn!(error = %e, "not ready: the database does not answer");
            let mut r = json(&serde_json::json!({"database": "unreachable", "keys": "ok"}));
            *r.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
            r
        }
    }
}

async fn metrics(State(state): State<Arc<DashboardState>>, headers: HeaderMap) -> Answer {
    let allowed = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(bearer)
        .is_some_and(|t| state.auth.may_scrape(t));
    if !allowed {
        return Err(Refused::new(
            StatusCode::UNAUTHORIZED,
            "send a metrics or admin token as Authorization: Bearer",
        ));
    }
    let devices = state
        .store
        .device_state_counts()
        .await
        .map_err(Refused::store)?;
    Ok(secured(
        StatusCode::OK,
        "text/plain; version=0.0.4; charset=utf-8",
        state.metrics.render(&devices),
    ))
}

async fn page(
    State(state): State<Arc<DashboardState>>,
    headers: HeaderMap,
    name: &'static str,
) -> Response {
    if !signed_in(&state, &headers) {
        return login_html(StatusCode::UNAUTHORIZED, sign_in_message(&state));
    }
    let title = match name {
        "alerts" => "Alerts",
        "consent" => "Consent records",
        "user" => "User",
        _ => "Devices and users",
    };
    secured(
        StatusCode::OK,
        "text/html; charset=utf-8",
        PAGE_HTML
            .replace("{{page}}", name)
            .replace("{{title}}", title),
    )
}

fn sign_in_message(state: &DashboardState) -> &'static str {
    if state.auth.dashboard_open() {
        "Sign in with an admin token."
    } else {
        "The dashboard is closed: no admin_tokens are configured on this verifier."
    }
}

async fn login_page(State(state): State<Arc<DashboardState>>) -> Response {
    login_html(StatusCode::OK, sign_in_message(&state))
}

async fn login(
    State(state): State<Arc<DashboardState>>,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let token = body
        .ok()
        .and_then(|b| form_field(&b, "token"))
        .unwrap_or_default();
    match state.auth.sign_in(&token, now_ms()) {
        Some(session) => {
            tracing::info!("dashboard sign-in");
            let mut r = redirect("/dashboard/");
            let cookie = format!(
                "{COOKIE}={session}; Path=/dashboard; Max-Age={}; HttpOnly; Secure; SameSite=Strict",
                SESSION_MS / 1000
            );
            if let Ok(v) = HeaderValue::from_str(&cookie) {
                r.headers_mut().insert(header::SET_COOKIE, v);
            }
            r
        }
        None => {
            tracing::warn!("dashboard sign-in refused: not an admin token");
            login_html(StatusCode::UNAUTHORIZED, "That token was not accepted.")
        }
    }
}

async fn logout() -> Response {
    let mut r = redirect("/dashboard/login");
    r.headers_mut().insert(
        header::SET_COOKIE,
        HeaderValue::from_static(
            "cadence_session=; Path=/dashboard; Max-Age=0; HttpOnly; Secure; SameSite=Strict",
        ),
    );
    r
}

/// The value of `name` in an `application/x-www-form-urlencoded` body.
fn form_field(body: &[u8], name: &str) -> Option<String> {
    let text = std::str::from_utf8(body).ok()?;
    text.split('&').find_map(|pair| {
        let (k, v) = pair.split_once('=')?;
        (percent_decode(k)? == name)
            .then(|| percent_decode(v))
            .flatten()
    })
}

/// Form decoding: `+` is a space, `%XX` a byte; the result must be UTF-8.
fn percent_decode(s: &str) -> Option<String> {
    let mut out = Vec::with_capacity(s.len());
    let mut bytes = s.bytes();
    while let Some(b) = bytes.next() {
        match b {
            b'+' => out.push(b' '),
            b'%' => {
                let hi = char::from(bytes.next()?).to_digit(16)?;
                let lo = char::from(bytes.next()?).to_digit(16)?;
                out.push(u8::try_from(hi * 16 + lo).ok()?);
            }
            b => out.push(b),
        }
    }
    String::from_utf8(out).ok()
}

/// Checked query parameters of an API call.
#[derive(Debug, Default, PartialEq, Eq)]
struct Query {
    device: Option<DeviceId>,
    limit: Option<u32>,
}

/// Parses `raw` allowing only the parameters in `allowed`, each at most once.
fn parse_query(raw: Option<&str>, allowed: &[&str]) -> Result<Query, String> {
    let mut seen: HashMap<&str, &str> = HashMap::new();
    for pair in raw.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        if !allowed.contains(&key) {
            let shown: String = key.chars().take(40).collect();
            return Err(format!(
                "unknown query parameter {shown:?}; this endpoint takes: {}",
                if allowed.is_empty() {
                    "none".to_owned()
                } else {
                    allowed.join(", ")
                }
            ));
        }
        if seen.insert(key, value).is_some() {
            return Err(format!("query parameter {key:?} is given more than once"));
        }
    }
    let mut q = Query::default();
    if let Some(d) = seen.get("device") {
        q.device = Some(d.parse::<DeviceId>().map_err(|_| {
            "device: not a device id (32 hex digits, as the devices list shows it)".to_owned()
        })?);
    }
    if let Some(l) = seen.get("limit") {
        q.limit = Some(
            l.parse::<u32>()
                .ok()
                .filter(|n| (1..=MAX_LIMIT).contains(n))
                .ok_or_else(|| format!("limit: must be a whole number from 1 to {MAX_LIMIT}"))?,
        );
    }
    Ok(q)
}

/// Checks sign-in and the query.
fn admin_query(
    state: &DashboardState,
    headers: &HeaderMap,
    raw: Option<&str>,
    allowed: &[&str],
) -> Result<Query, Refused> {
    require_admin(state, headers)?;
    parse_query(raw, allowed).map_err(|why| Refused::new(StatusCode::BAD_REQUEST, why))
}

/// The device asked for (one key lookup), or 404 when no device has that id.
async fn known_device(store: &Store, device: DeviceId) -> Result<DeviceSummary, Refused> {
    store
        .device(device)
        .await
        .map_err(Refused::store)?
        .ok_or_else(|| Refused::new(StatusCode::NOT_FOUND, "no such device"))
}

/// 404 when no device has that id (one key lookup, for the lists that need no summary).
async fn device_exists(store: &Store, device: DeviceId) -> Result<(), Refused> {
    if store.device_exists(device).await.map_err(Refused::store)? {
        Ok(())
    } else {
        Err(Refused::new(StatusCode::NOT_FOUND, "no such device"))
    }
}

/// A device as the dashboard shows it: who and where, its monitoring state and status.
/// Deliberately not [`DeviceSummary`]: no record count, nothing that measures activity.
#[derive(Debug, Serialize)]
struct DeviceJson {
    device_id: DeviceId,
    os_user: String,
    hostname: String,
    enrolled_ms: u64,
    /// When an envelope (a heartbeat is enough) last arrived: liveness, not activity.
    last_seen_ms: Option<u64>,
    /// The monitoring state the agent last reported.
    state: Option<String>,
    /// What `cadence-verifier devices` shows: that state, or `silent` ([`device_status`]).
    status: &'static str,
}

impl DeviceJson {
    fn new(d: DeviceSummary, now_ms: u64, silent_after_secs: u64) -> DeviceJson {
        DeviceJson {
            status: device_status(&d, now_ms, silent_after_secs),
            device_id: d.device_id,
            os_user: d.os_user,
            hostname: d.hostname,
            enrolled_ms: d.enrolled_ms,
            last_seen_ms: d.last_seen_ms,
            state: d.state,
        }
    }
}

async fn api_devices(State(state): Shared, headers: HeaderMap, RawQuery(raw): RawQuery) -> Answer {
    admin_query(&state, &headers, raw.as_deref(), &[])?;
    let devices = state.store.devices().await.map_err(Refused::store)?;
    let now = now_ms();
    let devices: Vec<DeviceJson> = devices
        .into_iter()
        .map(|d| DeviceJson::new(d, now, state.silent_after_secs))
        .collect();
    Ok(json(&serde_json::json!({ "devices": devices })))
}

/// One scoring user (a user on one device) as the users list shows it.
#[derive(Debug, Serialize)]
struct UserJson {
    device_id: DeviceId,
    os_user: String,
    hostname: String,
    state: Option<String>,
    /// As [`DeviceJson::status`].
    status: &'static str,
    last_seen_ms: Option<u64>,
    /// Trust after the newest window that moved it; `None` before any did.
    trust: Option<f64>,
    /// That window's time and score (not its sequence number: a count of what was sent).
    trust_ms: Option<u64>,
    score: Option<f64>,
    alerts: usize,
}

async fn api_users(State(state): Shared, headers: HeaderMap, RawQuery(raw): RawQuery) -> Answer {
    admin_query(&state, &headers, raw.as_deref(), &[])?;
    let store = &state.store;
    let devices = store.devices().await.map_err(Refused::store)?;
    let trust = store.trust_levels().await.map_err(Refused::store)?;
    let alerts = store.alerts(None).await.map_err(Refused::store)?;
    let now = now_ms();
    let users: Vec<UserJson> = devices
        .into_iter()
        .map(|d| {
            let t = trust.iter().find(|t| t.device_id == d.device_id);
            UserJson {
                status: device_status(&d, now, state.silent_after_secs),
                alerts: alerts.iter().filter(|a| a.device_id == d.device_id).count(),
                device_id: d.device_id,
                os_user: d.os_user,
                hostname: d.hostname,
                state: d.state,
                last_seen_ms: d.last_seen_ms,
                trust: t.map(|t| t.trust),
                trust_ms: t.map(|t| t.created_ms),
                score: t.and_then(|t| t.score),
            }
        })
        .collect();
    Ok(json(&serde_json::json!({ "users": users })))
}

/// One window on the timeline: only what the chart draws. Its place in the list is its
/// order; no sequence number (a count of what was sent) and no time (when someone worked).
#[derive(Debug, Serialize)]
struct WindowJson {
    score: Option<f64>,
    trust: Option<f64>,
    alert: bool,
}

impl From<&TimelineEntry> for WindowJson {
    fn from(e: &TimelineEntry) -> WindowJson {
        let s = e.score.as_ref();
        WindowJson {
            score: s.and_then(|s| s.score),
            trust: s.and_then(|s| s.trust),
            alert: s.is_some_and(|s| s.alert),
        }
    }
}

async fn api_timeline(State(state): Shared, headers: HeaderMap, RawQuery(raw): RawQuery) -> Answer {
    let q = admin_query(&state, &headers, raw.as_deref(), &["device", "limit"])?;
    let device = q.device.ok_or_else(|| {
        Refused::new(
            StatusCode::BAD_REQUEST,
            "device: required (32 hex digits, as the devices list shows it)",
        )
    })?;
    let summary = known_device(&state.store, device).await?;
    let limit = q.limit.unwrap_or(DEFAULT_TIMELINE_LIMIT);
    let entries = state
        .store
        .timeline_tail(device, limit)
        .await
        .map_err(Refused::store)?;
    let windows: Vec<WindowJson> = entries.iter().map(WindowJson::from).collect();
    Ok(json(&serde_json::json!({
        "device": DeviceJson::new(summary, now_ms(), state.silent_after_secs),
        "lockout": state.lockout,
        // The axis labels: when the first and the last window shown closed (device clock).
        "first_ms": entries.first().map(|e| e.created_ms),
        "last_ms": entries.last().map(|e| e.created_ms),
        "windows": windows,
    })))
}

async fn api_alerts(State(state): Shared, headers: HeaderMap, RawQuery(raw): RawQuery) -> Answer {
    let q = admin_query(&state, &headers, raw.as_deref(), &["device", "limit"])?;
    if let Some(device) = q.device {
        device_exists(&state.store, device).await?;
    }
    let alerts = state.store.alerts(q.device).await.map_err(Refused::store)?;
    let limit = q.limit.unwrap_or(DEFAULT_LIST_LIMIT) as usize;
    let newest: Vec<AlertJson<'_>> = alerts
        .iter()
        .rev()
        .take(limit)
        .map(AlertJson::from)
        .collect();
    Ok(json(&serde_json::json!({ "alerts": newest })))
}

async fn api_consent(State(state): Shared, headers: HeaderMap, RawQuery(raw): RawQuery) -> Answer {
    let q = admin_query(&state, &headers, raw.as_deref(), &["device", "limit"])?;
    if let Some(device) = q.device {
        device_exists(&state.store, device).await?;
    }
    let limit = q.limit.unwrap_or(DEFAULT_LIST_LIMIT);
    let events = state
        .store
        .consent_events(q.device, limit)
        .await
        .map_err(Refused::store)?;
    Ok(json(&serde_json::json!({ "consent": events })))
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID: &str = "0123456789abcdef0123456789abcdef";

    #[test]
    fn queries_are_checked_strictly() {
        let both = &["device", "limit"];
        assert_eq!(parse_query(None, both), Ok(Query::default()));
        let q = parse_query(Some(&format!("device={ID}&limit=5")), both).unwrap();
        assert_eq!(q.device, Some(ID.parse().unwrap()));
        assert_eq!(q.limit, Some(5));
        for (raw, says) in [
            ("device=xyz", "device: not a device id"),
            (&format!("device={}", &ID[1..]), "device: not a device id"),
            ("limit=0", "limit: must be"),
            ("limit=5001", "limit: must be"),
            ("limit=-1", "limit: must be"),
            ("limit=ten", "limit: must be"),
            ("limit=1&limit=2", "more than once"),
            ("user=alice", "unknown query parameter \"user\""),
            ("device%3D1", "unknown query parameter"),
        ] {
            let e = parse_query(Some(raw), both).unwrap_err();
            assert!(e.contains(says), "{raw}: {e}");
        }
        let e = parse_query(Some("limit=1"), &[]).unwrap_err();
        assert!(e.contains("takes: none"), "{e}");
    }

    #[test]
    fn form_fields_are_decoded() {
        assert_eq!(
            form_field(b"a=1&token=ab%2Bc+d%21", "token").as_deref(),
            Some("ab+c d!")
        );
        assert_eq!(form_field(b"token=%zz", "token"), None);
        assert_eq!(form_field(b"other=1", "token"), None);
        assert_eq!(form_field(&[0xff, b'='], "token"), None);
    }

    #[test]
    fn pages_hold_no_external_reference_and_assets_exist() {
        for (name, text) in [
            ("page.html", PAGE_HTML),
            ("login.html", LOGIN_HTML),
            ("app.js", APP_JS),
            ("style.css", STYLE_CSS),
        ] {
            for bad in [
                "http://",
                "https://",
                "//cdn",
                "innerHTML",
                "outerHTML",
                "eval(",
            ] {
                // The SVG namespace is an identifier, not something fetched.
                let hits = text
                    .match_indices(bad)
                    .filter(|(i, _)| !text[*i..].starts_with("http://www.w3.org/2000/svg"))
                    .count();
                assert_eq!(hits, 0, "{name} contains {bad}");
            }
        }
        for asset in ["assets/app.js", "assets/style.css", "assets/icon.svg"] {
            assert!(PAGE_HTML.contains(asset), "page.html does not use {asset}");
        }
        assert!(!PAGE_HTML.contains("<script>"), "no inline script");
        assert!(!PAGE_HTML.contains("style="), "no inline style");
    }
}
