//! The HTTP interface: the JSON API, thumbnails by row id and the page, behind a bearer-token
//! check (when a token is set) and a per-request time limit. Every error is a JSON object
//! `{"error": message, "status": code}`; nothing a client sends can make a handler panic.
//!
//! Endpoints (see the README for `curl` examples):
//! - `GET /api/health`, `GET /api/collection`, `GET /api/random`
//! - `POST /api/search/image` (multipart field `image`, or the raw image as the body)
//! - `GET /api/search/image/{id}` (an earlier upload, while the server remembers it)
//! - `GET /api/search/row/{row}`, `POST /api/search/vector` (`{"vector": [...], "k", "ef"}`)
//! - `GET /thumbnails/{row}?size=N`, and the page at `/`
//!
//! Searches take `k` and `ef` as query parameters (the vector search also in its body).

use crate::collection::{DEFAULT_EF, DEFAULT_K, MAX_K, SearchResult, ServedCollection};
use crate::page::PAGE_HTML;
use crate::thumbnails::{self, ThumbnailCache, ThumbnailError};
use axum::Router;
use axum::body::Body;
use axum::extract::{DefaultBodyLimit, FromRequest, Multipart, Path, Query, Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use dim_models::preprocess::ImageError;
use serde::Deserialize;
use serde_json::json;
use sha2::{Digest, Sha256};
use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::Semaphore;

/// Uploaded query vectors remembered for `GET /api/search/image/{id}`.
const REMEMBERED_UPLOADS: usize = 256;

/// Server limits and access control.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// When set, every request must carry it as `Authorization: Bearer …` (or `?token=`).
    pub token: Option<String>,
    /// Largest accepted upload body, in bytes.
    pub max_upload_bytes: usize,
    /// Longest a request may take before it is answered with 503.
    pub request_timeout: Duration,
    /// Image searches decoding or embedding at once (further ones get 503 at once).
    pub max_concurrent_embeds: usize,
    /// Thumbnails being made at once (further ones wait).
    pub max_concurrent_thumbnails: usize,
    /// JPEG bytes of thumbnails kept in memory.
    pub thumbnail_cache_bytes: usize,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            token: None,
            max_upload_bytes: 16 << 20,
            request_timeout: Duration::from_secs(30),
            max_concurrent_embeds: 4,
            max_concurrent_thumbnails: 4,
            thumbnail_cache_bytes: 64 << 20,
        }
    }
}

/// What every handler shares.
pub struct AppState {
    collection: ServedCollection,
    config: ServerConfig,
    embed_slots: Arc<Semaphore>,
    thumbnail_slots: Arc<Semaphore>,
    thumbnails: ThumbnailCache,
    uploads: Mutex<RememberedUploads>,
}

#[derive(Default)]
struct RememberedUploads {
    vectors: HashMap<String, Arc<[f32]>>,
    order: VecDeque<String>,
}

impl AppState {
    /// State for serving `collection` under `config`.
    pub fn new(collection: ServedCollection, config: ServerConfig) -> Self {
        AppState {
            collection,
            embed_slots: Arc::new(Semaphore::new(config.max_concurrent_embeds.max(1))),
            thumbnail_slots: Arc::new(Semaphore::new(config.max_concurrent_thumbnails.max(1))),
            thumbnails: ThumbnailCache::new(config.thumbnail_cache_bytes),
            uploads: Mutex::new(RememberedUploads::default()),
            config,
        }
    }

    fn remember_upload(&self, id: &str, vector: Arc<[f32]>) {
        let mut uploads = self.uploads.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        if uploads.vectors.insert(id.to_string(), vector).is_none() {
            uploads.order.push_back(id.to_string());
        }
        while uploads.order.len() > REMEMBERED_UPLOADS {
            let oldest = uploads.order.pop_front().expect("the order is not empty");
            uploads.vectors.remove(&oldest);
        }
    }

    fn remembered_upload(&self, id: &str) -> Option<Arc<[f32]>> {
        let uploads = self.uploads.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        uploads.vectors.get(id).cloned()
    }
}

/// An error response: a status and a message a person can act on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    status: StatusCode,
    message: String,
}

impl ApiError {
    fn new(status: StatusCode, message: impl Into<String>) -> Self {
        ApiError { status, message: message.into() }
    }

    fn bad_request(message: impl Into<String>) -> Self {
        ApiError::new(StatusCode::BAD_REQUEST, message)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = json!({ "error": self.message, "status": self.status.as_u16() });
        let mut response = (self.status, axum::Json(body)).into_response();
        if self.status == StatusCode::UNAUTHORIZED {
            response.headers_mut().insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        if self.status == StatusCode::SERVICE_UNAVAILABLE {
            response.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        }
        response
    }
}

/// The router serving `state`.
pub fn router(state: Arc<AppState>) -> Router {
    Router::new()
        .route("/", get(page))
        .route("/index.html", get(page))
        .route("/api/health", get(health))
        .route("/api/collection", get(collection_summary))
        .route("/api/random", get(random))
        .route("/api/search/image", post(search_by_upload))
        .route("/api/search/image/{id}", get(search_by_remembered_upload))
        .route("/api/search/row/{row}", get(search_by_row))
        .route("/api/search/vector", post(search_by_vector))
        .route("/thumbnails/{row}", get(thumbnail))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(DefaultBodyLimit::max(state.config.max_upload_bytes))
        .layer(middleware::from_fn_with_state(state.clone(), require_token))
        .layer(middleware::from_fn_with_state(state.clone(), limit_time))
        .with_state(state)
}

async fn limit_time(State(state): State<Arc<AppState>>, request: Request, next: Next) -> Response {
    let limit = state.config.request_timeout;
    match tokio::time::timeout(limit, next.run(request)).await {
        Ok(response) => response,
        Err(_) => ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("the request took longer than the server's {} s limit; retry later", limit.as_secs_f64()),
        )
        .into_response(),
    }
}

async fn require_token(State(state): State<Arc<AppState>>, request: Request, next: Next) -> Response {
    let Some(expected) = &state.config.token else {
        return next.run(request).await;
    };
    let from_header = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.strip_prefix("Bearer "))
        .map(str::to_string);
    let from_query = Query::<HashMap<String, String>>::try_from_uri(request.uri())
        .ok()
        .and_then(|Query(params)| params.get("token").cloned());
    let given = from_header.or(from_query);
    match given {
        Some(token) if same_secret(&token, expected) => next.run(request).await,
        Some(_) => ApiError::new(StatusCode::UNAUTHORIZED, "wrong token").into_response(),
        None => ApiError::new(
            StatusCode::UNAUTHORIZED,
            "this server needs a token: send `Authorization: Bearer TOKEN` (or add ?token=TOKEN to the page's URL)",
        )
        .into_response(),
    }
}

/// Compares two secrets in time that depends on their lengths only.
fn same_secret(given: &str, expected: &str) -> bool {
    let (given, expected) = (given.as_bytes(), expected.as_bytes());
    given.len() == expected.len() && given.iter().zip(expected).fold(0u8, |acc, (a, b)| acc | (a ^ b)) == 0
}

async fn not_found(method: Method, uri: axum::http::Uri) -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        format!("no such endpoint: {method} {}; the API is under /api (see the README)", uri.path()),
    )
}

async fn method_not_allowed(method: Method, uri: axum::http::Uri) -> ApiError {
    ApiError::new(StatusCode::METHOD_NOT_ALLOWED, format!("{} does not take {method}", uri.path()))
}

async fn page() -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CACHE_CONTROL, "no-cache"),
            (
                header::CONTENT_SECURITY_POLICY,
                "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; \
                 img-src 'self' blob:; connect-src 'self'; base-uri 'none'; form-action 'none'",
            ),
        ],
        PAGE_HTML,
    )
        .into_response()
}

async fn health(State(state): State<Arc<AppState>>) -> axum::Json<serde_json::Value> {
    axum::Json(json!({ "status": "ok", "rows": state.collection.rows() }))
}

async fn collection_summary(State(state): State<Arc<AppState>>) -> Response {
    axum::Json(state.collection.summary()).into_response()
}

async fn random(State(state): State<Arc<AppState>>) -> axum::Json<serde_json::Value> {
    axum::Json(json!({ "row": state.collection.random_row() }))
}

/// `k` and `ef` as given in a query string; parsed by [`SearchParams::resolve`] for clear
/// messages.
#[derive(Debug, Default, Deserialize)]
struct SearchParams {
    k: Option<String>,
    ef: Option<String>,
}

impl SearchParams {
    fn from_uri(uri: &axum::http::Uri) -> Result<Self, ApiError> {
        Query::<SearchParams>::try_from_uri(uri).map(|Query(params)| params).map_err(|rejection| {
            ApiError::bad_request(format!("bad query string: {}", rejection.body_text()))
        })
    }

    /// `(k, ef)` checked against the collection.
    fn resolve(&self, collection: &ServedCollection) -> Result<(usize, usize), ApiError> {
        let max_k = MAX_K.min(collection.indexed_count());
        let k = match &self.k {
            None => DEFAULT_K.min(max_k),
            Some(text) => parse_in_range("k", text, 1, max_k)?,
        };
        let ef = match &self.ef {
            None => DEFAULT_EF.max(k),
            Some(text) => parse_in_range("ef", text, 1, 100_000)?.max(k),
        };
        Ok((k, ef))
    }
}

fn parse_in_range(name: &str, text: &str, low: usize, high: usize) -> Result<usize, ApiError> {
    match text.trim().parse::<usize>() {
        Ok(value) if (low..=high).contains(&value) => Ok(value),
        _ => Err(ApiError::bad_request(format!(
            "{name} must be a whole number in {low}..={high}, got {text:?}"
        ))),
    }
}

fn parse_row(text: &str, collection: &ServedCollection) -> Result<usize, ApiError> {
    let row: usize =
        text.parse().map_err(|_| ApiError::bad_request(format!("a row is a whole number, got {text:?}")))?;
    if row >= collection.rows() {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            format!("unknown row {row}: the collection has rows 0..{}", collection.rows()),
        ));
    }
    Ok(row)
}

/// Runs a search and shapes its answer.
fn answer(
    collection: &ServedCollection,
    query: serde_json::Value,
    vector: &[f32],
    (k, ef): (usize, usize),
) -> Result<Response, ApiError> {
    let started = Instant::now();
    let results: Vec<SearchResult> =
        collection.search_vector(vector, k, ef).map_err(|error| ApiError::bad_request(error.to_string()))?;
    let body = json!({
        "query": query,
        "k": k,
        "ef": ef,
        "search_ms": started.elapsed().as_secs_f64() * 1e3,
        "results": results,
    });
    Ok(axum::Json(body).into_response())
}

async fn search_by_row(
    State(state): State<Arc<AppState>>,
    Path(row): Path<String>,
    uri: axum::http::Uri,
) -> Result<Response, ApiError> {
    let collection = &state.collection;
    let params = SearchParams::from_uri(&uri)?.resolve(collection)?;
    let row = parse_row(&row, collection)?;
    let vector = collection.row_vector(row).expect("parse_row checked the row");
    answer(collection, json!({ "kind": "row", "row": row }), vector, params)
}

/// The body of `POST /api/search/vector`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct VectorQuery {
    vector: Vec<f32>,
    k: Option<usize>,
    ef: Option<usize>,
}

async fn search_by_vector(
    State(state): State<Arc<AppState>>,
    uri: axum::http::Uri,
    body: axum::body::Bytes,
) -> Result<Response, ApiError> {
    let collection = &state.collection;
    let query: VectorQuery = serde_json::from_slice(&body).map_err(|error| {
        ApiError::bad_request(format!(
            "the body must be JSON {{\"vector\": [numbers], \"k\": n, \"ef\": n}}: {error}"
        ))
    })?;
    let mut params = SearchParams::from_uri(&uri)?;
    if let Some(k) = query.k {
        params.k = Some(k.to_string());
    }
    if let Some(ef) = query.ef {
        params.ef = Some(ef.to_string());
    }
    let params = params.resolve(collection)?;
    if query.vector.len() != collection.dim() {
        return Err(ApiError::bad_request(format!(
            "the vector has {} values; this collection's vectors have {}",
            query.vector.len(),
            collection.dim()
        )));
    }
    answer(collection, json!({ "kind": "vector" }), &query.vector, params)
}

async fn search_by_remembered_upload(
    State(state): State<Arc<AppState>>,
    Path(id): Path<String>,
    uri: axum::http::Uri,
) -> Result<Response, ApiError> {
    let params = SearchParams::from_uri(&uri)?.resolve(&state.collection)?;
    let vector = state.remembered_upload(&id).ok_or_else(|| {
        ApiError::new(
            StatusCode::NOT_FOUND,
            format!("upload {id:?} is not remembered (the server keeps the last {REMEMBERED_UPLOADS}, until it restarts); upload the image again"),
        )
    })?;
    answer(&state.collection, json!({ "kind": "image", "id": id }), &vector, params)
}

async fn search_by_upload(
    State(state): State<Arc<AppState>>,
    request: Request,
) -> Result<Response, ApiError> {
    let params = SearchParams::from_uri(request.uri())?.resolve(&state.collection)?;
    let limit = state.config.max_upload_bytes;
    let too_large = || {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("the upload is larger than this server's {limit}-byte limit"),
        )
    };
    if declared_length(request.headers()).is_some_and(|length| length > limit) {
        return Err(too_large());
    }
    let is_multipart = request
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|value| value.to_str().ok())
        .is_some_and(|value| value.to_ascii_lowercase().starts_with("multipart/form-data"));
    let bytes = if is_multipart {
        let mut multipart = Multipart::from_request(request, &state)
            .await
            .map_err(|rejection| ApiError::bad_request(rejection.body_text()))?;
        let mut found = None;
        loop {
            let field = multipart.next_field().await.map_err(|error| match error.status() {
                StatusCode::PAYLOAD_TOO_LARGE => too_large(),
                _ => ApiError::bad_request(format!("unreadable multipart upload: {}", error.body_text())),
            })?;
            let Some(field) = field else { break };
            if field.name() == Some("image") || (found.is_none() && field.file_name().is_some()) {
                let data = field.bytes().await.map_err(|error| match error.status() {
                    StatusCode::PAYLOAD_TOO_LARGE => too_large(),
                    _ => ApiError::bad_request(format!("unreadable multipart upload: {}", error.body_text())),
                })?;
                found = Some(data);
            }
        }
        found.ok_or_else(|| ApiError::bad_request("the multipart upload has no `image` field"))?
    } else {
        axum::body::to_bytes(request.into_body(), limit).await.map_err(|_| too_large())?
    };
    if bytes.is_empty() {
        return Err(ApiError::bad_request("the upload is empty: send an image file"));
    }
    let permit = state.embed_slots.clone().try_acquire_owned().map_err(|_| {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            format!(
                "the server is already embedding {} uploads; retry in a moment",
                state.config.max_concurrent_embeds
            ),
        )
    })?;
    let id = upload_id(&bytes);
    let worker_state = state.clone();
    let (vector, width, height) = tokio::task::spawn_blocking(move || {
        let _permit = permit;
        let collection = &worker_state.collection;
        let image =
            dim_models::preprocess::decode_bytes(&bytes, collection.max_image_pixels()).map_err(|error| {
                match error {
                    ImageError::TooLarge { .. } => {
                        ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, error.to_string())
                    }
                    _ => ApiError::bad_request(format!(
                        "the upload is not an image this server can read: {error}"
                    )),
                }
            })?;
        let vector = collection.embed(&image).map_err(|error| {
            ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, format!("embedding failed: {error}"))
        })?;
        Ok::<_, ApiError>((vector, image.width(), image.height()))
    })
    .await
    .map_err(|_| {
        ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "the embedding worker stopped unexpectedly")
    })??;
    let vector: Arc<[f32]> = vector.into();
    state.remember_upload(&id, vector.clone());
    let query = json!({ "kind": "image", "id": id, "width": width, "height": height });
    answer(&state.collection, query, &vector, params)
}

fn declared_length(headers: &HeaderMap) -> Option<usize> {
    headers.get(header::CONTENT_LENGTH)?.to_str().ok()?.parse().ok()
}

/// A short stable name for uploaded bytes.
fn upload_id(bytes: &[u8]) -> String {
    Sha256::digest(bytes)[..8].iter().map(|b| format!("{b:02x}")).collect()
}

/// `?size=` of a thumbnail request.
#[derive(Debug, Default, Deserialize)]
struct ThumbnailParams {
    size: Option<String>,
}

async fn thumbnail(
    State(state): State<Arc<AppState>>,
    Path(row): Path<String>,
    uri: axum::http::Uri,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let Query(params) = Query::<ThumbnailParams>::try_from_uri(&uri)
        .map_err(|rejection| ApiError::bad_request(format!("bad query string: {}", rejection.body_text())))?;
    let size = match &params.size {
        None => thumbnails::DEFAULT_SIZE,
        Some(text) => {
            parse_in_range("size", text, thumbnails::MIN_SIZE as usize, thumbnails::MAX_SIZE as usize)? as u32
        }
    };
    let row = parse_row(&row, &state.collection)?;
    let permit = state
        .thumbnail_slots
        .clone()
        .acquire_owned()
        .await
        .map_err(|_| ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "the server is shutting down"))?;
    let worker_state = state.clone();
    let made = tokio::task::spawn_blocking(move || {
        let _permit = permit;
        let collection = &worker_state.collection;
        let path = collection.row_path(row).expect("parse_row checked the row");
        worker_state.thumbnails.get(row, path, size, collection.max_image_pixels())
    })
    .await
    .map_err(|_| {
        ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "the thumbnail worker stopped unexpectedly")
    })?;
    let thumbnail = made.map_err(|error| match error {
        ThumbnailError::Unreadable { .. } => ApiError::new(StatusCode::NOT_FOUND, error.to_string()),
        ThumbnailError::Undecodable { .. } => {
            ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, error.to_string())
        }
    })?;
    let cache_control =
        if state.config.token.is_some() { "private, max-age=3600" } else { "public, max-age=3600" };
    let not_modified = headers
        .get(header::IF_NONE_MATCH)
        .and_then(|value| value.to_str().ok())
        .is_some_and(|tags| tags.split(',').any(|tag| tag.trim() == thumbnail.etag || tag.trim() == "*"));
    let mut response = if not_modified {
        StatusCode::NOT_MODIFIED.into_response()
    } else {
        ([(header::CONTENT_TYPE, "image/jpeg")], Body::from(thumbnail.jpeg.to_vec())).into_response()
    };
    let headers = response.headers_mut();
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static(cache_control));
    headers.insert(header::ETAG, HeaderValue::from_str(&thumbnail.etag).expect("tags are hex in quotes"));
    Ok(response)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_compare_equal_only_when_identical() {
        assert!(same_secret("s3cret", "s3cret"));
        assert!(!same_secret("s3cret", "s3creT"));
        assert!(!same_secret("s3cre", "s3cret"));
        assert!(!same_secret("", "s3cret"));
    }

    #[test]
    fn numbers_out_of_range_or_malformed_are_named_in_the_error() {
        assert_eq!(parse_in_range("k", " 7", 1, 10), Ok(7));
        for bad in ["0", "11", "-1", "abc", "1.5", ""] {
            let error = parse_in_range("k", bad, 1, 10).unwrap_err();
            assert_eq!(error.status, StatusCode::BAD_REQUEST);
            assert!(error.message.contains("k must be a whole number in 1..=10"), "{}", error.message);
        }
    }
}
