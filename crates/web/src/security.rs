//! The checks every request passes before a handler sees it: the Host header on loopback
//! (DNS rebinding), the body size, and the bearer token for mutations (and for reads when
//! `web.read_requires_token` is set). Headers that keep browsers from sniffing, framing or
//! leaking are added to every answer.

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use subtle::ConstantTimeEq;

use crate::{ApiError, App, body_limit};

/// Whether an authority (a Host header's value, or an absolute-form request's) is exactly one
/// of this machine's names with an optional port: `localhost`, `127.0.0.1`, `[::1]` or the
/// address it listens on (`127.0.0.2`), then `:` and digits, nothing else (no `user@`, no
/// second host after it).
fn local_authority(value: &str, listening: &str) -> bool {
    let lower = value.to_ascii_lowercase();
    let rest = ["localhost", "127.0.0.1", "[::1]", listening]
        .iter()
        .find_map(|name| lower.strip_prefix(name));
    match rest {
        Some("") => true,
        Some(port) => port.strip_prefix(':').is_some_and(|digits| {
            !digits.is_empty() && digits.len() <= 5 && digits.bytes().all(|b| b.is_ascii_digit())
        }),
        None => false,
    }
}

/// On loopback only names of this machine are accepted: a page on another site whose name
/// was rebound to 127.0.0.1 sends its own name. One Host header exactly, and an absolute-form
/// request's authority must be one of ours too.
pub fn host_allowed(headers: &HeaderMap, uri_authority: Option<&str>, listening: &str) -> bool {
    let mut hosts = headers.get_all(header::HOST).iter();
    let (Some(value), None) = (hosts.next(), hosts.next()) else {
        return false;
    };
    let Ok(value) = value.to_str() else {
        return false;
    };
    local_authority(value, listening)
        && uri_authority.is_none_or(|authority| local_authority(authority, listening))
}

/// The request carries `Authorization: Bearer <token>` with the right token (compared in
/// constant time).
pub fn token_matches(headers: &HeaderMap, token: &str) -> bool {
    let Some(given) = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
    else {
        return false;
    };
    given.trim().as_bytes().ct_eq(token.as_bytes()).into()
}

fn is_read(method: &Method) -> bool {
    matches!(*method, Method::GET | Method::HEAD)
}

pub async fn guard(State(app): State<Arc<App>>, request: Request, next: Next) -> Response {
    let headers = request.headers();
    let authority = request.uri().authority().map(|a| a.as_str());
    let listening = match app.listen.ip() {
        std::net::IpAddr::V6(ip) => format!("[{ip}]"),
        ip => ip.to_string(),
    };
    if app.loopback && !host_allowed(headers, authority, &listening) {
        return ApiError::new(
            StatusCode::FORBIDDEN,
            format!("the Host header (one, naming localhost, 127.0.0.1, [::1] or {listening}, with an optional port) and any authority in the request line must name this machine: n0m1_web on loopback answers only this machine's names"),
        )
        .into_response();
    }
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    let limit = body_limit(request.uri().path());
    if declared.is_some_and(|len| len > limit as u64) {
        return too_large(limit).into_response();
    }
    let needs_token = !is_read(request.method()) || app.read_requires_token;
    // The dashboard itself (and its scripts) loads without the token; it asks for it.
    let page = is_read(request.method()) && is_page(request.uri().path());
    if needs_token && !page && !token_matches(headers, &app.token) {
        let mut response = ApiError::new(
            StatusCode::UNAUTHORIZED,
            format!(
                "this needs the header `Authorization: Bearer <token>` with the token in {}",
                app.home.web_token().display()
            ),
        )
        .into_response();
        response
            .headers_mut()
            .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        return response;
    }
    let mut response = next.run(request).await;
    let headers = response.headers_mut();
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data:; frame-ancestors 'none'",
        ),
    );
    if !headers.contains_key(header::CACHE_CONTROL) {
        headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    }
    response
}

/// The HTML pages and their static assets.
fn is_page(path: &str) -> bool {
    path == "/" || path.starts_with("/components/") || path.starts_with("/assets/")
}

pub fn too_large(limit: usize) -> ApiError {
    ApiError::new(
        StatusCode::PAYLOAD_TOO_LARGE,
        format!("request bodies here are limited to {limit} bytes"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with(name: header::HeaderName, value: &str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(name, HeaderValue::from_str(value).unwrap());
        headers
    }

    #[test]
    fn only_this_machines_names_pass_the_host_check() {
        for ok in [
            "localhost",
            "localhost:8686",
            "127.0.0.1:8686",
            "[::1]:8686",
            "LOCALHOST",
            "127.0.0.2:8686",
        ] {
            assert!(
                host_allowed(&with(header::HOST, ok), None, "127.0.0.2"),
                "{ok}"
            );
        }
        for bad in [
            "evil.example",
            "evil.example:8686",
            "127.0.0.1.evil.example",
            "localhost.evil.example:80",
            "[::2]:8686",
            "127.0.0.3:8686",
            "127.0.0.2.evil.example",
            "",
            "127.0.0.1:18702@evil.com",
            "localhost:80:80",
            "localhost:",
            "localhost:123456",
            "localhost/evil",
        ] {
            assert!(
                !host_allowed(&with(header::HOST, bad), None, "127.0.0.2"),
                "{bad}"
            );
        }
        assert!(!host_allowed(&HeaderMap::new(), None, "127.0.0.2"));
        // Two Host headers: refused, whichever comes first.
        let mut two = with(header::HOST, "localhost");
        two.append(header::HOST, HeaderValue::from_static("evil.example"));
        assert!(!host_allowed(&two, None, "127.0.0.2"));
        // An absolute-form request names its host in the request line too.
        let local = with(header::HOST, "localhost");
        assert!(host_allowed(&local, Some("127.0.0.1:8686"), "127.0.0.2"));
        assert!(!host_allowed(&local, Some("evil.example"), "127.0.0.2"));
    }

    #[test]
    fn the_token_must_match_exactly() {
        let token = "ab".repeat(32);
        let auth = |v: &str| with(header::AUTHORIZATION, v);
        assert!(token_matches(&auth(&format!("Bearer {token}")), &token));
        assert!(!token_matches(
            &auth(&format!("Bearer {}", "cd".repeat(32))),
            &token
        ));
        assert!(!token_matches(
            &auth(&format!("Bearer {}", &token[..63])),
            &token
        ));
        assert!(!token_matches(&auth(&format!("Basic {token}")), &token));
        assert!(!token_matches(&auth("Bearer "), &token));
        assert!(!token_matches(&HeaderMap::new(), &token));
    }
}
