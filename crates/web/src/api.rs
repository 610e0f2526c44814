//! The routes: pages, `/healthz`, `/metrics` and the JSON API under `/api/v1/`.
//!
//! Every id and table name in a path is looked up in the database (or the list of managers)
//! before it is used; none is ever joined into a path or spliced into SQL as given.

use std::collections::HashMap;
use std::sync::Arc;

use axum::Json;
use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::middleware::from_fn_with_state;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use n0m1_core::schema::{AUTORUN_COMPONENTS, COMPONENT_RESOURCE_LOG};
use n0m1_core::state::unix_now;
use n0m1_core::text::printable;
use n0m1_core::{Config, Home, components, resources};
use n0m1_ctl::metrics::Metric;
use serde_json::json;

use crate::{
    ApiError, App, MAX_BODY_BYTES, assets, blocking, model_loop, prometheus, security, streams,
};

type AppState = State<Arc<App>>;
type Params = Result<Query<HashMap<String, String>>, QueryRejection>;

pub fn router(app: Arc<App>) -> Router {
    Router::new()
        .route("/", get(assets::index))
        .route("/components/{id}", get(assets::index))
        .route("/assets/{name}", get(assets::asset))
        .route("/healthz", get(healthz))
        .route("/metrics", get(metrics))
        .route("/api/v1/status", get(status))
        .route("/api/v1/components", get(component_list))
        .route("/api/v1/components/{id}", get(component))
        .route("/api/v1/components/{id}/{action}", post(act))
        .route("/api/v1/events", get(events))
        .route("/api/v1/events/stream", get(events_stream))
        .route("/api/v1/logs/{id}", get(logs))
        .route("/api/v1/logs/{id}/stream", get(logs_stream))
        .route("/api/v1/metrics", get(metric_summaries))
        .route("/api/v1/stack", get(stack_export))
        .route("/api/v1/stack/{verb}", post(stack_change))
        .route("/api/v1/metrics/{name}", get(metric_series))
        .route("/api/v1/resources/{id}", get(resource_series))
        .route("/api/v1/outputs/{table}", get(outputs))
        .route("/api/v1/incidents", get(incident_list))
        .route("/api/v1/incidents/{id}", get(incident))
        .route("/api/v1/proposals", get(proposal_list))
        .route("/api/v1/proposals/{id}/{decision}", post(decide_proposal))
        .route(
            "/api/v1/notifications",
            get(notifications).post(new_notification),
        )
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(from_fn_with_state(app.clone(), security::guard))
        .with_state(app)
}

async fn not_found() -> ApiError {
    ApiError::not_found(
        "no such page or endpoint: the API is under /api/v1/ (components, events, logs, metrics, resources, outputs, notifications, incidents, proposals)",
    )
}

async fn method_not_allowed() -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "this endpoint does not take that method: reads are GET, changes are POST",
    )
}

fn segment(path: Result<Path<String>, PathRejection>) -> Result<String, ApiError> {
    path.map(|Path(value)| value)
        .map_err(|rejection| ApiError::bad_request(format!("bad path: {rejection}")))
}

fn params(query: Params) -> Result<HashMap<String, String>, ApiError> {
    query
        .map(|Query(map)| map)
        .map_err(|rejection| ApiError::bad_request(format!("bad query string: {rejection}")))
}

/// A numeric query parameter, with its default and bounds.
fn number<T: std::str::FromStr + PartialOrd + Copy + std::fmt::Display>(
    params: &HashMap<String, String>,
    name: &str,
    default: T,
    min: T,
    max: T,
) -> Result<T, ApiError> {
    let Some(text) = params.get(name) else {
        return Ok(default);
    };
    match text.parse::<T>() {
        Ok(value) if value >= min && value <= max => Ok(value),
        _ => Err(ApiError::bad_request(format!(
            "?{name}={}: expected a number from {min} to {max}",
            printable(text)
        ))),
    }
}

fn open(home: &Home) -> Result<rusqlite::Connection, ApiError> {
    n0m1_ctl::open_database(home).map_err(|e| ApiError::database("the database", e))
}

/// The row of a component named in a path, or 404.
fn known_component(
    conn: &rusqlite::Connection,
    id: &str,
) -> Result<components::ComponentRow, ApiError> {
    components::find(conn, id)
        .map_err(|e| ApiError::database(AUTORUN_COMPONENTS, e))?
        .ok_or_else(|| {
            ApiError::not_found(format!(
                "no component '{}' in {AUTORUN_COMPONENTS}: GET /api/v1/components lists them",
                printable(id)
            ))
        })
}

async fn healthz() -> Json<serde_json::Value> {
    Json(json!({ "status": "ok" }))
}

async fn status(State(app): AppState) -> Result<Response, ApiError> {
    let view =
        blocking(move || n0m1_ctl::status::collect(&app.home, true).map_err(ApiError::refused))
            .await?;
    Ok(Json(view).into_response())
}

async fn component_list(State(app): AppState) -> Result<Response, ApiError> {
    let view =
        blocking(move || n0m1_ctl::status::collect(&app.home, true).map_err(ApiError::refused))
            .await?;
    Ok(Json(view.components).into_response())
}

async fn component(
    State(app): AppState,
    id: Result<Path<String>, PathRejection>,
) -> Result<Response, ApiError> {
    let id = segment(id)?;
    let detail = blocking(move || {
        known_component(&open(&app.home)?, &id)?;
        n0m1_ctl::status::detail(&app.home, &id).map_err(ApiError::refused)
    })
    .await?;
    Ok(Json(detail).into_response())
}

async fn act(
    State(app): AppState,
    path: Result<Path<(String, String)>, PathRejection>,
) -> Result<Response, ApiError> {
    let Path((id, action)) =
        path.map_err(|rejection| ApiError::bad_request(format!("bad path: {rejection}")))?;
    let message = blocking(move || {
        known_component(&open(&app.home)?, &id)?;
        let home = &app.home;
        match action.as_str() {
            "enable" => n0m1_ctl::components::set_desired(home, &id, true),
            "disable" => n0m1_ctl::components::set_desired(home, &id, false),
            "restart" => n0m1_ctl::components::restart(home, &id),
            other => {
                return Err(ApiError::not_found(format!(
                    "no action '{}': POST components/{{id}}/enable, disable or restart",
                    printable(other)
                )));
            }
        }
        .map_err(ApiError::refused)
    })
    .await?;
    tracing::info!("{message}");
    Ok(Json(json!({ "message": message })).into_response())
}

async fn events(State(app): AppState, query: Params) -> Result<Response, ApiError> {
    let params = params(query)?;
    let after = number(&params, "after", 0i64, i64::MIN, i64::MAX)?;
    let limit = number(&params, "limit", 100usize, 1, n0m1_ctl::events::MAX_PAGE)?;
    let tail = params
        .contains_key("tail")
        .then(|| number(&params, "tail", 20usize, 1, n0m1_ctl::events::MAX_PAGE))
        .transpose()?;
    let component = params.get("component").cloned();
    let events = blocking(move || {
        let conn = open(&app.home)?;
        if let Some(id) = &component {
            known_component(&conn, id)
                .map(|_| ())
                .or_else(|e| known_process(&app.home, id).map(|_| ()).ok_or(e))?;
        }
        let (limit, newest) = tail.map_or((limit, false), |n| (n, true));
        n0m1_ctl::events::page(&conn, after, component.as_deref(), limit, newest)
            .map_err(|e| ApiError::database("the lifecycle log", e))
    })
    .await?;
    Ok(Json(events).into_response())
}

/// Boot, the log writer and the managers: names with logs and events but no row.
fn known_process(home: &Home, id: &str) -> Option<String> {
    let config = Config::load(&home.config_path()).unwrap_or_default();
    let mut names = n0m1_ctl::components::known_managers(&config);
    names.extend(
        ["boot", "boot_system", n0m1_core::home::LOGD_STEM]
            .iter()
            .map(|s| s.to_string()),
    );
    names.into_iter().find(|name| name == id)
}

async fn events_stream(
    State(app): AppState,
    headers: HeaderMap,
    query: Params,
) -> Result<Response, ApiError> {
    let params = params(query)?;
    // A reconnecting EventSource sends the last id it saw; that wins over ?after.
    let resume = headers
        .get("last-event-id")
        .and_then(|v| v.to_str().ok())
        .map(|v| {
            v.trim().parse::<i64>().map_err(|_| {
                ApiError::bad_request("Last-Event-ID must be a lifecycle row id (a number)")
            })
        })
        .transpose()?;
    let after = match resume {
        Some(id) => Some(id),
        None => params
            .contains_key("after")
            .then(|| number(&params, "after", 0i64, -1, i64::MAX))
            .transpose()?,
    };
    let component = params.get("component").cloned();
    let (home, checked) = (app.home.clone(), component.clone());
    let after = blocking(move || {
        let conn = open(&home)?;
        if let Some(id) = &checked {
            known_component(&conn, id)
                .map(|_| ())
                .or_else(|e| known_process(&home, id).map(|_| ()).ok_or(e))?;
        }
        match after {
            Some(after) => Ok(after.max(0)),
            // A new stream starts with what happens from now on.
            None => n0m1_core::lifecycle::last_id(&conn)
                .map_err(|e| ApiError::database("the lifecycle log", e)),
        }
    })
    .await?;
    Ok(streams::lifecycle(app, after, component).into_response())
}

/// The log files of a component, manager or boot, after looking the name up.
fn log_files(home: &Home, id: &str) -> Result<Vec<std::path::PathBuf>, ApiError> {
    let conn = open(home)?;
    let found = known_component(&conn, id).map(|_| id.to_owned());
    let name = found.or_else(|e| known_process(home, id).ok_or(e))?;
    Ok(n0m1_ctl::logs::files_of(home, &name))
}

async fn logs(
    State(app): AppState,
    id: Result<Path<String>, PathRejection>,
    query: Params,
) -> Result<Response, ApiError> {
    let id = segment(id)?;
    let lines = number(&params(query)?, "lines", 20usize, 1, 10_000)?;
    let tails = blocking(move || {
        if log_files(&app.home, &id)?.is_empty() {
            return Ok(Vec::new());
        }
        n0m1_ctl::logs::tail(&app.home, &id, lines).map_err(ApiError::refused)
    })
    .await?;
    Ok(Json(tails).into_response())
}

async fn logs_stream(
    State(app): AppState,
    id: Result<Path<String>, PathRejection>,
) -> Result<Response, ApiError> {
    let id = segment(id)?;
    let home = app.home.clone();
    let files = blocking(move || {
        let files = log_files(&home, &id)?;
        if files.is_empty() {
            // Nothing written yet: follow where its output will go.
            let (log, err) = home.component_logs(&id);
            return Ok(vec![log, err]);
        }
        Ok(files)
    })
    .await?;
    Ok(streams::log_lines(app, files).into_response())
}

/// What `n0m1ctl metrics` prints: each metric's last value, average, min, max and
/// sparkline over the last `limit` samples (default 10).
async fn metric_summaries(State(app): AppState, query: Params) -> Result<Response, ApiError> {
    let params = params(query)?;
    let limit = number(&params, "limit", 10u64, 1, 100_000)?;
    let summaries =
        blocking(move || n0m1_ctl::metrics::collect(&app.home, limit).map_err(ApiError::refused))
            .await?;
    Ok(Json(summaries).into_response())
}

async fn metric_series(
    State(app): AppState,
    name: Result<Path<String>, PathRejection>,
    query: Params,
) -> Result<Response, ApiError> {
    let name = segment(name)?;
    let Some(metric) = Metric::parse(&name) else {
        return Err(ApiError::not_found(format!(
            "no metric '{}': cpu_usage, memory or cpu_temperature",
            printable(&name)
        )));
    };
    let params = params(query)?;
    let since = number(&params, "since", unix_now() - 3600.0, 0.0, f64::MAX)?;
    let limit = number(&params, "limit", 2000u32, 1, 20_000)?;
    let points = blocking(move || {
        let conn = open(&app.home)?;
        n0m1_ctl::metrics::series(&conn, metric, since, limit)
            .map_err(|e| ApiError::database(metric.name(), e))
    })
    .await?;
    let missing = points.is_empty().then_some("no samples in this window");
    Ok(Json(json!({
        "metric": metric.name(),
        "points": points,
        "missing": missing,
    }))
    .into_response())
}

async fn resource_series(
    State(app): AppState,
    id: Result<Path<String>, PathRejection>,
    query: Params,
) -> Result<Response, ApiError> {
    let id = segment(id)?;
    let params = params(query)?;
    let since = number(&params, "since", unix_now() - 3600.0, 0.0, f64::MAX)?;
    let limit = number(&params, "limit", 2000u32, 1, 20_000)?;
    let samples = blocking(move || {
        let conn = open(&app.home)?;
        known_component(&conn, &id)?;
        resources::since(&conn, &id, since, limit)
            .map_err(|e| ApiError::database(COMPONENT_RESOURCE_LOG, e))
    })
    .await?;
    Ok(Json(samples).into_response())
}

async fn outputs(
    State(app): AppState,
    table: Result<Path<String>, PathRejection>,
    query: Params,
) -> Result<Response, ApiError> {
    let table = segment(table)?;
    let limit = number(&params(query)?, "limit", 20u32, 1, 1000)?;
    let rows = blocking(move || model_loop::outputs(&open(&app.home)?, &table, limit)).await?;
    Ok(Json(rows).into_response())
}

/// `?all` (any value but 0 or false) includes closed incidents and decided proposals.
fn wants_all(params: &HashMap<String, String>) -> bool {
    params
        .get("all")
        .is_some_and(|v| !matches!(v.as_str(), "0" | "false"))
}

fn record_id(path: Result<Path<String>, PathRejection>, what: &str) -> Result<i64, ApiError> {
    let text = segment(path)?;
    text.parse::<i64>().map_err(|_| {
        ApiError::bad_request(format!(
            "'{}' is not {what} id: ids are whole numbers",
            printable(&text)
        ))
    })
}

async fn incident_list(State(app): AppState, query: Params) -> Result<Response, ApiError> {
    let all = wants_all(&params(query)?);
    let list =
        blocking(move || n0m1_ctl::incidents::list(&app.home, all).map_err(ApiError::refused))
            .await?;
    Ok(Json(list).into_response())
}

async fn incident(
    State(app): AppState,
    id: Result<Path<String>, PathRejection>,
) -> Result<Response, ApiError> {
    let id = record_id(id, "an incident")?;
    let found = blocking(move || {
        n0m1_core::incidents::get(&open(&app.home)?, id)
            .map_err(|e| ApiError::database("the incidents", e))
    })
    .await?
    .ok_or_else(|| {
        ApiError::not_found(format!(
            "no incident {id}: GET /api/v1/incidents?all=1 lists them"
        ))
    })?;
    Ok(Json(found).into_response())
}

async fn proposal_list(State(app): AppState, query: Params) -> Result<Response, ApiError> {
    let all = wants_all(&params(query)?);
    let list =
        blocking(move || n0m1_ctl::proposals::list(&app.home, all).map_err(ApiError::refused))
            .await?;
    Ok(Json(list).into_response())
}

/// `POST /api/v1/proposals/{id}/approve` runs the action and answers once its effect is
/// checked; `…/reject` takes an optional JSON body `{"reason": "…"}`.
async fn decide_proposal(
    State(app): AppState,
    path: Result<Path<(String, String)>, PathRejection>,
    body: Body,
) -> Result<Response, ApiError> {
    let Path((id, decision)) =
        path.map_err(|rejection| ApiError::bad_request(format!("bad path: {rejection}")))?;
    let id: i64 = id.parse().map_err(|_| {
        ApiError::bad_request(format!(
            "'{}' is not a proposal id: ids are whole numbers",
            printable(&id)
        ))
    })?;
    let bytes = read_body(body, MAX_BODY_BYTES).await?;
    let reason = if bytes.iter().all(u8::is_ascii_whitespace) {
        None
    } else {
        #[derive(serde::Deserialize)]
        #[serde(deny_unknown_fields)]
        struct Reject {
            reason: Option<String>,
        }
        let body: Reject = serde_json::from_slice(&bytes).map_err(|error| {
            ApiError::bad_request(format!(
                "the body must be empty or JSON like {{\"reason\": \"not now\"}}: {error}"
            ))
        })?;
        body.reason
    };
    let by = "n0m1_web API (token holder)";
    let message = blocking(move || {
        let conn = open(&app.home)?;
        if n0m1_core::actions::get(&conn, id)
            .map_err(|e| ApiError::database("the proposals", e))?
            .is_none()
        {
            return Err(ApiError::not_found(format!(
                "no proposal {id}: GET /api/v1/proposals?all=1 lists them"
            )));
        }
        match decision.as_str() {
            "approve" => n0m1_ctl::proposals::approve(&app.home, id, by),
            "reject" => n0m1_ctl::proposals::reject(&app.home, id, by, reason.as_deref()),
            other => {
                return Err(ApiError::not_found(format!(
                    "no decision '{}': POST proposals/{{id}}/approve or reject",
                    printable(other)
                )));
            }
        }
        .map_err(ApiError::refused)
    })
    .await?;
    tracing::info!("{message}");
    Ok(Json(json!({ "message": message })).into_response())
}

async fn notifications(State(app): AppState, query: Params) -> Result<Response, ApiError> {
    let limit = number(&params(query)?, "limit", 20u32, 1, 1000)?;
    let rows = blocking(move || model_loop::notifications(&open(&app.home)?, limit)).await?;
    Ok(Json(rows).into_response())
}

async fn new_notification(State(app): AppState, body: Body) -> Result<Response, ApiError> {
    let bytes = read_body(body, MAX_BODY_BYTES).await?;
    let new: model_loop::NewNotification = serde_json::from_slice(&bytes).map_err(|error| {
        ApiError::bad_request(format!(
            "the body must be JSON like {{\"llm_id\": \"main_llm_processor\", \"notification_type\": \"RUN\", \"payload\": null}}: {error}"
        ))
    })?;
    let id = blocking(move || model_loop::insert_notification(&open(&app.home)?, &new)).await?;
    Ok((
        StatusCode::CREATED,
        Json(json!({ "id": id, "message": format!("notification {id} queued") })),
    )
        .into_response())
}

/// The body, up to `limit` (a chunked body has no Content-Length for the guard to check).
async fn read_body(body: Body, limit: usize) -> Result<Bytes, ApiError> {
    axum::body::to_bytes(body, limit)
        .await
        .map_err(|_| security::too_large(limit))
}

/// `GET /api/v1/stack`: the stack as `n0m1ctl export` writes it. It holds webhook URLs and
/// accounts: the token is needed even where reads are open.
async fn stack_export(State(app): AppState, headers: HeaderMap) -> Result<Response, ApiError> {
    if !security::token_matches(&headers, &app.token) {
        return Err(ApiError::new(
            StatusCode::UNAUTHORIZED,
            "the stack holds webhook URLs and accounts: send `Authorization: Bearer <token>`",
        ));
    }
    let text =
        blocking(move || n0m1_ctl::stack::export(&open(&app.home)?).map_err(ApiError::refused))
            .await?;
    Ok((
        [(
            axum::http::header::CONTENT_TYPE,
            "application/toml; charset=utf-8",
        )],
        text,
    )
        .into_response())
}

/// `POST /api/v1/stack/plan|apply[?prune=true]` with a stack file as the body: what
/// `n0m1ctl plan|apply` print, as `{"text", "changes"}`.
async fn stack_change(
    State(app): AppState,
    verb: Result<Path<String>, PathRejection>,
    query: Params,
    body: Body,
) -> Result<Response, ApiError> {
    let verb = segment(verb)?;
    let commit = match verb.as_str() {
        "plan" => false,
        "apply" => true,
        other => {
            return Err(ApiError::not_found(format!(
                "no stack action '{}': POST stack/plan or stack/apply",
                printable(other)
            )));
        }
    };
    let params = params(query)?;
    let prune = match params.get("prune").map(String::as_str) {
        None | Some("false") | Some("0") => false,
        Some("true") | Some("1") => true,
        Some(other) => {
            return Err(ApiError::bad_request(format!(
                "prune={:?}: true or false",
                printable(other)
            )));
        }
    };
    let bytes = read_body(body, crate::MAX_STACK_BYTES).await?;
    let text = String::from_utf8(bytes.to_vec())
        .map_err(|_| ApiError::bad_request("the stack file is not UTF-8: it is TOML text"))?;
    let outcome = blocking(move || {
        n0m1_ctl::stack::prepare_text(&app.home, &text, "the stack file", prune, commit)
            .map_err(ApiError::refused)
    })
    .await?;
    if commit && outcome.changes > 0 {
        tracing::info!(
            "stack applied: {}",
            outcome.text.lines().last().unwrap_or("")
        );
    }
    Ok(Json(outcome).into_response())
}

async fn metrics(State(app): AppState) -> Result<Response, ApiError> {
    let text = blocking(move || {
        let conn = open(&app.home)?;
        let view =
            n0m1_ctl::status::collect_from(&conn, &app.home, false).map_err(ApiError::refused)?;
        let config = Config::load(&app.home.config_path()).unwrap_or_default();
        // Samples older than three intervals belong to processes that are gone.
        let fresh_after = unix_now() - 3.0 * config.resources.interval.0;
        let samples = resources::latest(&conn, fresh_after)
            .map_err(|e| ApiError::database(COMPONENT_RESOURCE_LOG, e))?;
        let latest = |metric| n0m1_ctl::metrics::latest(&conn, metric).ok().flatten();
        let oom_kills =
            n0m1_core::lifecycle::count_by_component(&conn, n0m1_core::LifecycleEvent::OomKilled)
                .map_err(|e| ApiError::database(n0m1_core::schema::COMPONENT_LIFECYCLE_LOG, e))?;
        let snapshot = prometheus::Snapshot {
            view: &view,
            resources: &samples,
            oom_kills: &oom_kills,
            metrics: prometheus::LatestMetrics {
                cpu_usage_percent: latest(Metric::CpuUsage),
                memory_usage_percent: latest(Metric::Memory),
                cpu_temperature_celsius: latest(Metric::CpuTemperature),
            },
        };
        Ok(prometheus::render(&snapshot))
    })
    .await?;
    Ok(([(header::CONTENT_TYPE, prometheus::CONTENT_TYPE)], text).into_response())
}
