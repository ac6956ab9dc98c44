//! `/_origin/*`: the control plane tests use to script and observe the origin. These requests
//! are not themselves counted in the stats.

use hyper::body::Incoming;
use hyper::{Method, Request, Response};
use serde_json::json;

use crate::body::{self, ResponseBody};
use crate::query::{self, BadRequest};
use crate::reply;
use crate::router::App;

pub async fn handle(app: &App, req: Request<Incoming>) -> Response<ResponseBody> {
    let (parts, request_body) = req.into_parts();
    body::discard(request_body).await;
    let method = &parts.method;
    match parts.uri.path() {
        "/_origin/stats" if method == Method::GET || method == Method::HEAD => {
            reply::json(&app.state.stats_json())
        }
        "/_origin/stats" => reply::method_not_allowed("GET, HEAD"),
        "/_origin/bump" if method == Method::POST => match bump_target(parts.uri.query()) {
            Ok(path) => {
                let version = app.state.bump(&path);
                reply::json(&json!({ "path": path, "version": version }))
            }
            Err(err) => reply::bad_request(err),
        },
        "/_origin/bump" => reply::method_not_allowed("POST"),
        "/_origin/reset" if method == Method::POST => {
            app.state.reset();
            reply::json(&json!({ "reset": true }))
        }
        "/_origin/reset" => reply::method_not_allowed("POST"),
        other => reply::not_found(other),
    }
}

/// The `path` parameter of a bump, without any query part (versions are per path).
fn bump_target(raw_query: Option<&str>) -> Result<String, BadRequest> {
    let pairs = query::parse(raw_query.unwrap_or(""))?;
    let path = pairs
        .into_iter()
        .find_map(|(name, value)| (name == "path").then_some(value))
        .ok_or_else(|| BadRequest::new("path: required, e.g. /_origin/bump?path=/gen/a"))?;
    if !path.starts_with('/') {
        return Err(BadRequest::new(format!(
            "path: must start with '/', got {path:?}"
        )));
    }
    let path = path.split_once('?').map_or(path.as_str(), |(p, _)| p);
    Ok(path.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bump_target_strips_the_query() {
        assert_eq!(bump_target(Some("path=/gen/a")).unwrap(), "/gen/a");
        assert_eq!(bump_target(Some("path=/gen/a%3Fx%3D1")).unwrap(), "/gen/a");
        assert!(bump_target(None).is_err());
        assert!(bump_target(Some("path=gen/a")).is_err());
    }
}
