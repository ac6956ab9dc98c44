//! Small constructors for the fixed responses, so handlers never go through the fallible
//! `Response::builder()`.

use hyper::header::{HeaderValue, ALLOW, CONTENT_TYPE};
use hyper::{Response, StatusCode};

use crate::body::{self, ResponseBody};
use crate::query::BadRequest;

pub fn with_type(
    status: StatusCode,
    content_type: &'static str,
    body: impl Into<bytes::Bytes>,
) -> Response<ResponseBody> {
    let mut response = Response::new(body::full(body));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    response
}

pub fn text(status: StatusCode, msg: impl Into<String>) -> Response<ResponseBody> {
    with_type(status, "text/plain; charset=utf-8", msg.into())
}

pub fn json(value: &serde_json::Value) -> Response<ResponseBody> {
    let mut body = value.to_string();
    body.push('\n');
    with_type(StatusCode::OK, "application/json", body)
}

pub fn bad_request(err: BadRequest) -> Response<ResponseBody> {
    text(StatusCode::BAD_REQUEST, format!("bad request: {}\n", err.0))
}

pub fn not_found(path: &str) -> Response<ResponseBody> {
    text(
        StatusCode::NOT_FOUND,
        format!("not found: {path} (GET / lists the routes)\n"),
    )
}

pub fn method_not_allowed(allow: &'static str) -> Response<ResponseBody> {
    let mut response = text(
        StatusCode::METHOD_NOT_ALLOWED,
        format!("method not allowed; use {allow}\n"),
    );
    response
        .headers_mut()
        .insert(ALLOW, HeaderValue::from_static(allow));
    response
}
