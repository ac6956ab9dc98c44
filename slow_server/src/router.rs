//! Request routing and the fixed pages. Every request outside `/_origin/*` is recorded in the
//! stats before it is answered, so a test can see a request that is still being delayed.

use std::time::Duration;

use hyper::body::Incoming;
use hyper::header::{HeaderValue, CACHE_CONTROL};
use hyper::{Method, Request, Response, StatusCode};

use crate::body::ResponseBody;
use crate::state::State;
use crate::{admin, gen, reply};

/// Built-in latency of `/slow`, before `--delay-scale`.
const SLOW: Duration = Duration::from_secs(5);
/// Built-in latency of `/fast`, before `--delay-scale`.
const FAST: Duration = Duration::from_secs(1);

/// Everything a handler needs; cheap to clone per connection and request.
#[derive(Clone)]
pub struct App {
    pub state: State,
    /// Multiplier for the built-in delays of `/slow` and `/fast` only.
    delay_scale: f64,
}

impl App {
    pub fn new(delay_scale: f64) -> Self {
        Self {
            state: State::default(),
            delay_scale,
        }
    }

    fn scaled(&self, delay: Duration) -> Duration {
        // The CLI bounds the scale, so this only guards against a future caller.
        Duration::try_from_secs_f64(delay.as_secs_f64() * self.delay_scale)
            .unwrap_or(Duration::ZERO)
    }
}

pub async fn handle(app: &App, req: Request<Incoming>) -> Response<ResponseBody> {
    let path = req.uri().path().to_owned();
    if path.starts_with("/_origin/") {
        return admin::handle(app, req).await;
    }
    app.state.record(&path, req.method(), req.headers());
    tracing::debug!(method = %req.method(), uri = %req.uri(), "request");

    if path.starts_with("/gen/") {
        return gen::handle(app, req).await;
    }
    let readable = req.method() == Method::GET || req.method() == Method::HEAD;
    match path.as_str() {
        "/" | "/slow" | "/fast" if !readable => reply::method_not_allowed("GET, HEAD"),
        "/" => reply::with_type(StatusCode::OK, "text/html; charset=utf-8", INDEX),
        "/slow" => timed(app.scaled(SLOW), "slow").await,
        "/fast" => timed(app.scaled(FAST), "fast").await,
        other => reply::not_found(other),
    }
}

/// `/slow` and `/fast`: a small cacheable page after a fixed delay.
async fn timed(delay: Duration, name: &str) -> Response<ResponseBody> {
    tokio::time::sleep(delay).await;
    let html = format!(
        "<!doctype html>\n<title>{name}</title>\n<h1>{name}</h1>\n\
         <p>This page took {} ms to answer and may be cached for 60 s.</p>\n",
        delay.as_millis()
    );
    let mut response = reply::with_type(StatusCode::OK, "text/html; charset=utf-8", html);
    response
        .headers_mut()
        .insert(CACHE_CONTROL, HeaderValue::from_static("max-age=60"));
    response
}

const INDEX: &str = r#"<!doctype html>
<title>slow_server</title>
<h1>slow_server</h1>
<p>A deliberately slow, scriptable HTTP origin for caje's demos, tests and benchmarks.</p>
<h2>Routes</h2>
<ul>
<li><code>GET /</code>: this page, at once, not cacheable.</li>
<li><code>GET /slow</code>: waits 5 s (times <code>--delay-scale</code>), <code>Cache-Control: max-age=60</code>.</li>
<li><code>GET /fast</code>: waits 1 s (times <code>--delay-scale</code>), <code>Cache-Control: max-age=60</code>.</li>
<li><code>ANY /gen/{anything}?params</code>: a response scripted by the parameters below.
  HEAD gets the headers only; other methods are answered like GET.</li>
<li><code>GET /_origin/stats</code>: JSON request counts per path (without query), with the
  headers of the latest request.</li>
<li><code>POST /_origin/bump?path=/gen/a</code>: increments the version of a path.</li>
<li><code>POST /_origin/reset</code>: forgets counts and versions.</li>
</ul>
<h2>/gen parameters (all optional, percent-decoded, <code>+</code> is literal)</h2>
<ul>
<li><code>delay_ms=N</code>: wait N ms before the head (never scaled).</li>
<li><code>cc=V</code>: <code>Cache-Control: V</code>, e.g. <code>cc=max-age%3D60</code>.</li>
<li><code>etag=V</code>: <code>ETag</code> (quoted unless already quoted or <code>W/"..."</code>); If-None-Match gives 304.</li>
<li><code>last_modified=D</code>: HTTP-date or unix seconds; If-Modified-Since gives 304.</li>
<li><code>vary=V</code>: <code>Vary: V</code>; the body echoes the named request headers.</li>
<li><code>status=N</code>: status code 200..=599 (default 200).</li>
<li><code>bytes=N</code>: exact body length, streamed (default: the description line).</li>
<li><code>chunked=1</code>: no Content-Length, chunked transfer encoding.</li>
<li><code>set_cookie=V</code>: <code>Set-Cookie: V</code> (repeatable).</li>
<li><code>expires=V</code>: <code>Expires</code>; <code>+N</code> means now + N s, anything else is sent as given.</li>
<li><code>header=Name:Value</code>: any extra response header (repeatable).</li>
<li><code>stream_delay_ms=N</code>: pause between body chunks; <code>chunk_bytes=N</code> sets their size (default 65536).</li>
<li><code>abort_after=N</code>: send N body bytes, then drop the connection.</li>
<li><code>lie_length=N</code>: declare Content-Length N, send the real body, then drop the connection.</li>
</ul>
<p>Every /gen body starts with <code>path=/gen/..?.. version=N</code> and repeats it to the
requested length; the response carries <code>X-Origin-Version: N</code>.</p>
"#;
