//! `/gen/*`: a response scripted by query parameters (see [`crate::params::GenParams`]).
//!
//! Order matters and mirrors what a test observes: the request is already counted (router),
//! the body is drained, parameters are validated (400 before any delay), preconditions are
//! evaluated, then the delay, then the head and the streamed body.

use hyper::body::Incoming;
use hyper::header::{
    HeaderValue, CACHE_CONTROL, CONTENT_LENGTH, CONTENT_TYPE, ETAG, EXPIRES, LAST_MODIFIED,
    SET_COOKIE, VARY,
};
use hyper::http::request::Parts;
use hyper::{HeaderMap, Method, Request, Response, StatusCode};

use crate::body::{self, Generated, Plan, ResponseBody};
use crate::conditional::{self, Outcome};
use crate::params::GenParams;
use crate::reply;
use crate::router::App;

pub async fn handle(app: &App, req: Request<Incoming>) -> Response<ResponseBody> {
    let (parts, request_body) = req.into_parts();
    body::discard(request_body).await;
    let params = match GenParams::parse(parts.uri.query().unwrap_or("")) {
        Ok(params) => params,
        Err(err) => return reply::bad_request(err),
    };
    let path = parts.uri.path();
    let version = app.state.version(path);
    let unit = describe(&parts, version, params.vary.as_ref());
    let len = params.bytes.unwrap_or(unit.len() as u64);
    if let Err(err) = params.check_length(len) {
        return reply::bad_request(err);
    }

    // RFC 9110 §13.2.1: preconditions only apply when the response would be a 2xx.
    let outcome = if params.status.is_success() {
        conditional::evaluate(
            &parts.method,
            &parts.headers,
            params.etag.as_ref(),
            params.last_modified,
        )
    } else {
        Outcome::Proceed
    };
    if outcome == Outcome::NotModified {
        app.state.record_not_modified(path);
    }

    if !params.delay.is_zero() {
        tokio::time::sleep(params.delay).await;
    }

    let mut response = Response::new(body::empty());
    set_headers(&params, version, response.headers_mut());
    match outcome {
        Outcome::Proceed => *response.status_mut() = params.status,
        Outcome::NotModified => {
            // The 200's headers minus our default Content-Type: RFC 9110 §15.4.5 asks a 304
            // not to carry representation metadata beyond the validators and caching fields.
            if !params.headers.iter().any(|(name, _)| name == CONTENT_TYPE) {
                response.headers_mut().remove(CONTENT_TYPE);
            }
            *response.status_mut() = StatusCode::NOT_MODIFIED;
            return response;
        }
        Outcome::PreconditionFailed => {
            return reply::text(
                StatusCode::PRECONDITION_FAILED,
                "precondition failed: If-None-Match matched\n",
            );
        }
    }
    if matches!(
        params.status,
        StatusCode::NO_CONTENT | StatusCode::NOT_MODIFIED
    ) {
        return response;
    }

    let declared = (!params.chunked).then(|| params.lie_length.unwrap_or(len));
    if parts.method == Method::HEAD {
        // hyper keeps an explicit Content-Length on a body-less HEAD response, so HEAD
        // announces exactly what GET would.
        if let Some(declared) = declared {
            response
                .headers_mut()
                .insert(CONTENT_LENGTH, HeaderValue::from(declared));
        }
        return response;
    }
    let plan = Plan {
        declared,
        send: params.abort_after.unwrap_or(len),
        cut: params.abort_after.is_some() || params.lie_length.is_some(),
        chunk: params.chunk_bytes,
        pace: params.stream_delay,
    };
    *response.body_mut() = Generated::new(&unit, plan).boxed();
    response
}

/// The repeating unit of the body: `path=<path?query> version=N\n`, plus, with `vary`, a line
/// echoing the request headers Vary names, so a test can tell cached variants apart.
fn describe(parts: &Parts, version: u64, vary: Option<&HeaderValue>) -> Vec<u8> {
    let target = parts
        .uri
        .path_and_query()
        .map_or(parts.uri.path(), |pq| pq.as_str());
    let mut unit = format!("path={target} version={version}\n");
    if let Some(vary) = vary {
        let names = String::from_utf8_lossy(vary.as_bytes());
        let echoed: Vec<String> = names
            .split(',')
            .map(|name| name.trim().to_ascii_lowercase())
            .filter(|name| !name.is_empty())
            .map(|name| {
                if name == "*" {
                    return name;
                }
                let value = request_header(&parts.headers, &name);
                format!("{name}={value}")
            })
            .collect();
        unit.push_str("vary: ");
        unit.push_str(&echoed.join("; "));
        unit.push('\n');
    }
    unit.into_bytes()
}

/// All values of a request header joined with ", ", or `(none)` when absent (distinct from
/// an empty value).
fn request_header(headers: &HeaderMap, name: &str) -> String {
    let values: Vec<_> = headers
        .get_all(name)
        .iter()
        .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
        .collect();
    if values.is_empty() {
        "(none)".to_owned()
    } else {
        values.join(", ")
    }
}

fn set_headers(params: &GenParams, version: u64, headers: &mut HeaderMap) {
    // A scripted Content-Type replaces the default rather than adding a second one.
    if !params.headers.iter().any(|(name, _)| name == CONTENT_TYPE) {
        headers.insert(
            CONTENT_TYPE,
            HeaderValue::from_static("text/plain; charset=utf-8"),
        );
    }
    headers.insert("x-origin-version", HeaderValue::from(version));
    let optional = [
        (CACHE_CONTROL, params.cache_control.clone()),
        (ETAG, params.etag.clone()),
        (VARY, params.vary.clone()),
        (EXPIRES, params.expires.clone()),
        (
            LAST_MODIFIED,
            params
                .last_modified
                .and_then(|t| HeaderValue::from_str(&httpdate::fmt_http_date(t)).ok()),
        ),
    ];
    for (name, value) in optional {
        if let Some(value) = value {
            headers.insert(name, value);
        }
    }
    for cookie in &params.set_cookies {
        headers.append(SET_COOKIE, cookie.clone());
    }
    for (name, value) in &params.headers {
        headers.append(name.clone(), value.clone());
    }
}
