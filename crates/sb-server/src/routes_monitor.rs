//! Prometheus- and Influx-compatible endpoints: remote_write at `/api/v1/write`, line protocol at
//! `/api/v2/write` and `/write`, and the Prometheus HTTP query API under `/api/v1/`. These speak
//! their ecosystems' formats (Prometheus' `{"status":"error","errorType",…}` JSON, plain-text
//! write errors), so Grafana, Prometheus, Telegraf and scripts work unchanged. They are not in
//! `/v1/openapi.json`, which documents the native API.

use crate::AppState;
use crate::extract::{Caller, ClientOrigin, check_console_request, session_cookie};
use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use sb_auth::{AuthError, Origin};
use sb_core::ErrorCode;
use sb_monitor::promql::{Series, Value, fmt_float};
use sb_monitor::time::{parse_duration, parse_time};
use sb_monitor::{Monitor, MonitorError, line_protocol, remote_write};
use serde_json::{Map, json};
use std::sync::Arc;

type St = State<Arc<AppState>>;

pub fn router(state: Arc<AppState>) -> Router<Arc<AppState>> {
    let body_max = state.config.monitoring.write_body_bytes_max;
    Router::new()
        .route("/api/v1/write", post(remote_write_handler))
        .route("/api/v2/write", post(influx_v2_write))
        .route("/write", post(influx_v1_write))
        .layer(axum::extract::DefaultBodyLimit::max(body_max))
        .route("/api/v1/query", get(query).post(query))
        .route("/api/v1/query_range", get(query_range).post(query_range))
        .route("/api/v1/series", get(series).post(series))
        .route("/api/v1/labels", get(labels).post(labels))
        .route("/api/v1/label/{name}/values", get(label_values))
        .route("/api/v1/rules", get(rules))
        .route("/api/v1/alerts", get(alerts))
        .route("/api/v1/status/buildinfo", get(buildinfo))
        .route("/api/v1/metadata", get(empty_object))
        .route("/api/v1/query_exemplars", get(empty_list).post(empty_list))
}

/// Who is calling: `Authorization: Bearer <token>` or Influx's `Token <token>`.
async fn caller(
    st: &AppState,
    headers: &HeaderMap,
    origin: Origin,
) -> Result<Caller, MonitorError> {
    let token = match headers.get(header::AUTHORIZATION) {
        // The console: its cookie, with the CSRF checks of a write (these routes are read
        // with POST as well as GET, and our pages always send the token).
        None => {
            let token = session_cookie(headers).ok_or(AuthError::Unauthenticated)?;
            check_console_request(&axum::http::Method::POST, headers, token)
                .map_err(|_| AuthError::Forbidden)?;
            token
        }
        // Prometheus' `Bearer`, or Influx clients' `Token`.
        Some(value) => {
            let value = value.to_str().map_err(|_| AuthError::Unauthenticated)?;
            let (scheme, token) = value.split_once(' ').unwrap_or((value, ""));
            let ok = scheme.eq_ignore_ascii_case("bearer") || scheme.eq_ignore_ascii_case("token");
            if !ok || token.trim().is_empty() {
                return Err(AuthError::Unauthenticated.into());
            }
            token.trim()
        }
    };
    let now = crate::now();
    let subject = st.auth.authenticate(token, origin.ip, now).await?;
    Ok(Caller {
        subject,
        origin,
        now,
    })
}

fn monitor(st: &AppState) -> &Monitor {
    &st.monitor
}

/// Status and Prometheus `errorType` for an error.
fn classify(e: &MonitorError) -> (StatusCode, &'static str) {
    match e {
        MonitorError::Auth(a) => {
            let status = crate::error::status_of(a.code());
            let kind = if status == StatusCode::UNAUTHORIZED {
                "unauthorized"
            } else if a.code() == ErrorCode::RateLimited {
                "too_many_requests"
            } else {
                "forbidden"
            };
            (status, kind)
        }
        MonitorError::BadData(_)
        | MonitorError::Query(sb_monitor::promql::QueryError::Parse(_)) => {
            (StatusCode::BAD_REQUEST, "bad_data")
        }
        MonitorError::Query(_) => (StatusCode::UNPROCESSABLE_ENTITY, "execution"),
        MonitorError::RateLimited { .. } => (StatusCode::TOO_MANY_REQUESTS, "too_many_requests"),
        MonitorError::Timeout => (StatusCode::SERVICE_UNAVAILABLE, "timeout"),
        MonitorError::Storage(_) | MonitorError::Internal(_) => {
            (StatusCode::INTERNAL_SERVER_ERROR, "internal")
        }
    }
}

fn message(e: &MonitorError) -> String {
    match e {
        MonitorError::Storage(_) | MonitorError::Internal(_) => {
            tracing::error!(error = %e, "monitoring request failed");
            "internal error; the server log has details".into()
        }
        other => other.to_string(),
    }
}

fn retry_after(e: &MonitorError, resp: &mut Response) {
    let secs = match e {
        MonitorError::RateLimited {
            retry_after_secs, ..
        } => Some(*retry_after_secs),
        MonitorError::Auth(a) => a.retry_after().map(|r| r.secs_ceil()),
        _ => None,
    };
    if let Some(secs) = secs {
        resp.headers_mut()
            .insert(header::RETRY_AFTER, header::HeaderValue::from(secs));
    }
}

/// Errors of the query API, in Prometheus' JSON shape.
fn api_error(e: MonitorError) -> Response {
    let (status, kind) = classify(&e);
    let mut resp = (
        status,
        axum::Json(json!({"status": "error", "errorType": kind, "error": message(&e)})),
    )
        .into_response();
    retry_after(&e, &mut resp);
    resp
}

/// Errors of the write endpoints, as plain text (what Prometheus and Telegraf log).
fn write_error(e: MonitorError) -> Response {
    let (status, _) = classify(&e);
    let mut resp = (status, format!("{}\n", message(&e))).into_response();
    retry_after(&e, &mut resp);
    resp
}

fn success(data: serde_json::Value) -> Response {
    axum::Json(json!({"status": "success", "data": data})).into_response()
}

/// What a write stored and refused: 204 when everything was stored, else 400 naming the first
/// refusals (what was valid is stored).
fn write_outcome(st: &AppState, out: sb_tsdb::AppendOutcome) -> Response {
    st.metrics.samples_ingested.inc_by(out.samples as u64);
    st.metrics
        .samples_rejected
        .inc_by(out.rejected.len() as u64);
    if out.rejected.is_empty() {
        return StatusCode::NO_CONTENT.into_response();
    }
    let first: Vec<String> = out
        .rejected
        .iter()
        .take(5)
        .map(ToString::to_string)
        .collect();
    let more = out.rejected.len().saturating_sub(first.len());
    let text = format!(
        "{} sample(s) or series refused ({} stored): {}{}\n",
        out.rejected.len(),
        out.samples,
        first.join("; "),
        if more > 0 {
            format!("; and {more} more")
        } else {
            String::new()
        }
    );
    (StatusCode::BAD_REQUEST, text).into_response()
}

async fn remote_write_handler(
    State(st): St,
    ClientOrigin(origin): ClientOrigin,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let c = match caller(&st, &headers, origin).await {
        Ok(c) => c,
        Err(e) => return write_error(e),
    };
    let limit = st.config.monitoring.write_decompressed_bytes_max;
    // Series the store already has reuse its label sets: no label allocation per request.
    let db = monitor(&st).db();
    let batch = match remote_write::decode_with(&body, limit, &|q| db.resolve(q)) {
        Ok(b) => b,
        Err(e) => return write_error(MonitorError::BadData(e.to_string())),
    };
    match monitor(&st).write(c.cx(), batch).await {
        Ok(out) => write_outcome(&st, out),
        Err(e) => write_error(e),
    }
}

fn params(raw: Option<&str>, body: &[u8]) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = form_urlencoded::parse(raw.unwrap_or("").as_bytes())
        .into_owned()
        .collect();
    out.extend(form_urlencoded::parse(body).into_owned());
    out
}

fn param<'a>(p: &'a [(String, String)], name: &str) -> Option<&'a str> {
    p.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
}

async fn line_write(
    st: &AppState,
    origin: Origin,
    headers: &HeaderMap,
    precision: Option<&str>,
    body: &[u8],
) -> Response {
    let c = match caller(st, headers, origin).await {
        Ok(c) => c,
        Err(e) => return write_error(e),
    };
    let precision = match precision {
        None => line_protocol::Precision::Nanoseconds,
        Some(p) => match line_protocol::Precision::parse(p) {
            Some(p) => p,
            None => {
                return write_error(MonitorError::BadData(format!(
                    "precision {p:?} is not one of ns, us, ms, s"
                )));
            }
        },
    };
    let Ok(text) = std::str::from_utf8(body) else {
        return write_error(MonitorError::BadData("the body is not UTF-8".into()));
    };
    let points = match line_protocol::parse(text, precision, c.now.0) {
        Ok(p) => p,
        Err(e) => return write_error(MonitorError::BadData(e.to_string())),
    };
    // Group by series, keeping each series' points in time order.
    let mut by_series: std::collections::BTreeMap<sb_tsdb::Labels, Vec<(i64, f64)>> =
        std::collections::BTreeMap::new();
    for (labels, p) in points {
        by_series.entry(labels).or_default().push(p);
    }
    let batch: sb_tsdb::Batch = by_series
        .into_iter()
        .map(|(l, mut p)| {
            p.sort_by_key(|x| x.0);
            (l, p)
        })
        .collect();
    match monitor(st).write(c.cx(), batch).await {
        Ok(out) => write_outcome(st, out),
        Err(e) => write_error(e),
    }
}

async fn influx_v2_write(
    State(st): St,
    ClientOrigin(origin): ClientOrigin,
    RawQuery(raw): RawQuery,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let p = params(raw.as_deref(), b"");
    line_write(&st, origin, &headers, param(&p, "precision"), &body).await
}

async fn influx_v1_write(
    State(st): St,
    ClientOrigin(origin): ClientOrigin,
    RawQuery(raw): RawQuery,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let p = params(raw.as_deref(), b"");
    line_write(&st, origin, &headers, param(&p, "precision"), &body).await
}

fn labels_json(l: &sb_tsdb::Labels) -> serde_json::Value {
    let mut m = Map::new();
    for (n, v) in l.iter() {
        m.insert(n.to_string(), json!(v));
    }
    serde_json::Value::Object(m)
}

fn ts(t: i64) -> serde_json::Value {
    json!(t as f64 / 1000.0)
}

fn value_json(v: Value, t: i64) -> serde_json::Value {
    match v {
        Value::Scalar(x) => json!({"resultType": "scalar", "result": [ts(t), fmt_float(x)]}),
        Value::String(s) => json!({"resultType": "string", "result": [ts(t), s]}),
        Value::Vector(v) => json!({
            "resultType": "vector",
            "result": v.iter().map(|s| json!({"metric": labels_json(&s.labels), "value": [ts(t), fmt_float(s.v)]})).collect::<Vec<_>>(),
        }),
        Value::Matrix(m) => matrix_json(m),
    }
}

fn matrix_json(m: Vec<Series>) -> serde_json::Value {
    json!({
        "resultType": "matrix",
        "result": m.iter().map(|s| json!({
            "metric": labels_json(&s.labels),
            "values": s.points.iter().map(|&(t, v)| json!([ts(t), fmt_float(v)])).collect::<Vec<_>>(),
        })).collect::<Vec<_>>(),
    })
}

/// A query-API answer: `{"status":"success","data":…}`, or the error in Prometheus' shape.
struct Api(Result<serde_json::Value, MonitorError>);

impl IntoResponse for Api {
    fn into_response(self) -> Response {
        match self.0 {
            Ok(data) => success(data),
            Err(e) => api_error(e),
        }
    }
}

/// The `resolution` parameter (Thanos' `max_source_resolution` also works): raw, auto or a
/// rollup tier such as 5m.
fn resolution(p: &[(String, String)]) -> Option<&str> {
    param(p, "resolution").or_else(|| param(p, "max_source_resolution"))
}

fn required<'a>(p: &'a [(String, String)], name: &str) -> Result<&'a str, MonitorError> {
    param(p, name).ok_or_else(|| MonitorError::BadData(format!("missing parameter {name}")))
}

async fn query(
    State(st): St,
    ClientOrigin(origin): ClientOrigin,
    RawQuery(raw): RawQuery,
    headers: HeaderMap,
    body: Bytes,
) -> Api {
    Api(async {
        let c = caller(&st, &headers, origin).await?;
        let p = params(raw.as_deref(), &body);
        let q = required(&p, "query")?;
        let t = param(&p, "time")
            .map(parse_time)
            .transpose()?
            .unwrap_or(c.now.0);
        let v = monitor(&st).query(c.cx(), q, t, resolution(&p)).await?;
        Ok(value_json(v, t))
    }
    .await)
}

async fn query_range(
    State(st): St,
    ClientOrigin(origin): ClientOrigin,
    RawQuery(raw): RawQuery,
    headers: HeaderMap,
    body: Bytes,
) -> Api {
    Api(async {
        let c = caller(&st, &headers, origin).await?;
        let p = params(raw.as_deref(), &body);
        let q = required(&p, "query")?;
        let start = parse_time(required(&p, "start")?)?;
        let end = parse_time(required(&p, "end")?)?;
        let step = parse_duration(required(&p, "step")?)?;
        let m = monitor(&st)
            .query_range(c.cx(), q, (start, end, step), resolution(&p))
            .await?;
        Ok(matrix_json(m))
    }
    .await)
}

fn matches(p: &[(String, String)]) -> Vec<String> {
    p.iter()
        .filter(|(k, _)| k == "match[]")
        .map(|(_, v)| v.clone())
        .collect()
}

async fn series(
    State(st): St,
    ClientOrigin(origin): ClientOrigin,
    RawQuery(raw): RawQuery,
    headers: HeaderMap,
    body: Bytes,
) -> Api {
    Api(async {
        let c = caller(&st, &headers, origin).await?;
        let m = matches(&params(raw.as_deref(), &body));
        if m.is_empty() {
            return Err(MonitorError::BadData(
                "no match[] parameter provided".into(),
            ));
        }
        let list = monitor(&st).series(c.cx(), &m).await?;
        Ok(json!(list.iter().map(labels_json).collect::<Vec<_>>()))
    }
    .await)
}

async fn labels(
    State(st): St,
    ClientOrigin(origin): ClientOrigin,
    RawQuery(raw): RawQuery,
    headers: HeaderMap,
    body: Bytes,
) -> Api {
    Api(async {
        let c = caller(&st, &headers, origin).await?;
        let m = matches(&params(raw.as_deref(), &body));
        Ok(json!(monitor(&st).label_names(c.cx(), &m).await?))
    }
    .await)
}

async fn label_values(
    State(st): St,
    ClientOrigin(origin): ClientOrigin,
    Path(name): Path<String>,
    RawQuery(raw): RawQuery,
    headers: HeaderMap,
) -> Api {
    Api(async {
        let c = caller(&st, &headers, origin).await?;
        let m = matches(&params(raw.as_deref(), b""));
        Ok(json!(monitor(&st).label_values(c.cx(), &name, &m).await?))
    }
    .await)
}

async fn rules(State(st): St, ClientOrigin(origin): ClientOrigin, headers: HeaderMap) -> Api {
    Api(async {
        let c = caller(&st, &headers, origin).await?;
        let mut groups: Vec<(String, String, Vec<serde_json::Value>)> = Vec::new();
        for r in monitor(&st).rules(c.cx()).await? {
            let rule = json!({
                "name": r.name,
                "query": r.query,
                "duration": r.for_ms as f64 / 1000.0,
                "labels": r.labels,
                "annotations": r.annotations,
                "alerts": r.alerts.iter().map(prom_alert).collect::<Vec<_>>(),
                "health": "ok",
                "type": r.kind,
            });
            match groups.last_mut() {
                Some(g) if g.0 == r.group && g.1 == r.file => g.2.push(rule),
                _ => groups.push((r.group, r.file, vec![rule])),
            }
        }
        let groups: Vec<_> = groups
            .into_iter()
            .map(|(name, file, rules)| json!({"name": name, "file": file, "rules": rules}))
            .collect();
        Ok(json!({ "groups": groups }))
    }
    .await)
}

fn prom_alert(a: &sb_monitor::alerts::Alert) -> serde_json::Value {
    json!({
        "labels": labels_json(&a.labels),
        "annotations": a.annotations,
        "state": crate::routes_alerts::state_name(a.state),
        "activeAt": sb_monitor::alerts::rfc3339(a.active_at_ms),
        "value": fmt_float(a.value),
    })
}

async fn alerts(State(st): St, ClientOrigin(origin): ClientOrigin, headers: HeaderMap) -> Api {
    Api(async {
        let c = caller(&st, &headers, origin).await?;
        let active: Vec<_> = monitor(&st)
            .alerts(c.cx())
            .await?
            .iter()
            .filter(|(a, _)| a.state != sb_monitor::alerts::AlertState::Resolved)
            .map(|(a, _)| prom_alert(a))
            .collect();
        Ok(json!({ "alerts": active }))
    }
    .await)
}

/// Grafana reads this to learn what it talks to.
async fn buildinfo() -> Response {
    success(json!({
        "version": "2.42.0",
        "revision": concat!("switchboard-", env!("CARGO_PKG_VERSION")),
        "branch": "switchboard",
        "buildUser": "switchboard",
        "buildDate": "",
        "goVersion": "none (Rust)",
    }))
}

async fn empty_object() -> Response {
    success(json!({}))
}

async fn empty_list() -> Response {
    success(json!([]))
}
