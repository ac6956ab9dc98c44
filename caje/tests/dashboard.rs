//! The dashboard at `/_caje/`: who may load it, and, in headless Chromium (through
//! chromedriver's WebDriver API), that its figures appear and move with traffic and that its
//! purge form purges. The browser test prints SKIPPED when chromium or chromedriver is
//! missing (Debian packages `chromium`, `chromium-driver`). With `CAJE_DASHBOARD_SCREENSHOT=path`
//! it saves a screenshot there (docs/dashboard.png is made this way).

mod support;

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use support::{gen, get, request, within, Caje, CajeConfig, Origin};

#[tokio::test]
async fn the_page_is_admin_only_and_basic_unlocks_nothing_else() {
    within(30, async {
        let origin = Origin::start();
        let open = Caje::start(&origin, "");
        let page = get(&open.url("/_caje/"), &[]).await;
        assert_eq!(page.status, 200);
        assert_eq!(
            page.header("content-type"),
            Some("text/html; charset=utf-8")
        );
        assert!(page
            .header("content-security-policy")
            .unwrap()
            .contains("frame-ancestors 'none'"));
        assert!(page.text().contains("<title>caje dashboard</title>"));
        assert_eq!(get(&open.url("/_caje"), &[]).await.status, 200);

        let token = "s3cret-token";
        let locked =
            Caje::start_with(CajeConfig::for_origin(&origin.base(), "").with_admin_token(token));
        let denied = get(&locked.url("/_caje/"), &[]).await;
        assert_eq!(denied.status, 401);
        assert!(denied
            .header("www-authenticate")
            .unwrap()
            .starts_with("Basic "));
        // "user:s3cret-token" and "user:wrong" in base64.
        let good = [("authorization", "Basic dXNlcjpzM2NyZXQtdG9rZW4=")];
        let bad = [("authorization", "Basic dXNlcjp3cm9uZw==")];
        assert_eq!(get(&locked.url("/_caje/"), &good).await.status, 200);
        assert_eq!(get(&locked.url("/_caje/"), &bad).await.status, 401);
        // The browser keeps sending Basic to the origin: it must open nothing else.
        assert_eq!(get(&locked.url("/_caje/stats"), &good).await.status, 401);
        let purge = request("POST", &locked.url("/_caje/purge?tag=x"), &good, b"").await;
        assert_eq!(purge.status, 401);
        let bearer = format!("Bearer {token}");
        let stats = get(&locked.url("/_caje/stats"), &[("authorization", &bearer)]).await;
        assert_eq!(stats.status, 200);
    })
    .await;
}

#[tokio::test]
async fn same_origin_fetches_from_the_page_pass_the_csrf_check_cross_site_ones_do_not() {
    within(30, async {
        let origin = Origin::start();
        let caje = Caje::start(&origin, "");
        let own = format!("http://{}", caje.addr());
        let url = caje.url("/_caje/purge?tag=t1");
        let same = [("origin", own.as_str()), ("sec-fetch-site", "same-origin")];
        assert_eq!(request("POST", &url, &same, b"").await.status, 200);
        let cross = [
            ("origin", "http://evil.example"),
            ("sec-fetch-site", "cross-site"),
        ];
        assert_eq!(request("POST", &url, &cross, b"").await.status, 403);
    })
    .await;
}

fn which(bin: &str) -> Option<String> {
    let out = Command::new("sh")
        .args(["-c", &format!("command -v {bin}")])
        .output()
        .ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

/// A chromedriver child, killed on drop.
struct Driver {
    child: Child,
    base: String,
    session: String,
}

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Driver {
    async fn start(chromium: &str, chromedriver: &str) -> Driver {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let child = Command::new(chromedriver)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("starting chromedriver");
        let mut d = Driver {
            child,
            base: format!("http://127.0.0.1:{port}"),
            session: String::new(),
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok(r) =
                support::http::try_request("GET", &format!("{}/status", d.base), &[], b"").await
            {
                if r.json()["value"]["ready"] == true {
                    break;
                }
            }
            assert!(Instant::now() < deadline, "chromedriver did not start");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let caps = json!({"capabilities": {"alwaysMatch": {"goog:chromeOptions": {
            "binary": chromium,
            "args": ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                     "--window-size=1280,1000", "--no-first-run", "--no-default-browser-check"]
        }}}});
        let v = d.call("POST", "/session", caps).await;
        d.session = v["sessionId"].as_str().expect("a session id").to_owned();
        d
    }

    async fn call(&self, method: &str, path: &str, body: Value) -> Value {
        let url = if path == "/session" {
            format!("{}{path}", self.base)
        } else {
            format!("{}/session/{}{path}", self.base, self.session)
        };
        // GET and DELETE carry no body; chromedriver refuses one.
        let text = if body.is_null() {
            String::new()
        } else {
            body.to_string()
        };
        let headers: &[(&str, &str)] = if body.is_null() {
            &[]
        } else {
            &[("content-type", "application/json")]
        };
        let r = request(method, &url, headers, text.as_bytes()).await;
        let v = r.json();
        assert_eq!(r.status, 200, "WebDriver {method} {path}: {v}");
        v["value"].clone()
    }

    async fn element(&self, css: &str) -> String {
        let v = self
            .call(
                "POST",
                "/element",
                json!({"using": "css selector", "value": css}),
            )
            .await;
        v.as_object()
            .and_then(|o| o.values().next())
            .and_then(Value::as_str)
            .unwrap()
            .to_owned()
    }

    async fn text(&self, css: &str) -> String {
        let id = self.element(css).await;
        self.call("GET", &format!("/element/{id}/text"), Value::Null)
            .await
            .as_str()
            .unwrap_or("")
            .to_owned()
    }

    /// Polls `css`'s text until `ok` accepts it.
    async fn wait_text(&self, css: &str, what: &str, ok: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let t = self.text(css).await;
            if ok(&t) {
                return t;
            }
            assert!(Instant::now() < deadline, "{what}: {css} shows {t:?}");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

fn number_in(text: &str) -> u64 {
    text.split_whitespace()
        .next()
        .unwrap_or("")
        .replace(',', "")
        .parse()
        .unwrap_or(0)
}

fn base64_decode(s: &str) -> Vec<u8> {
    let val = |c: u8| match c {
        b'A'..=b'Z' => c - b'A',
        b'a'..=b'z' => c - b'a' + 26,
        b'0'..=b'9' => c - b'0' + 52,
        b'+' => 62,
        _ => 63,
    };
    let s: Vec<u8> = s
        .bytes()
        .filter(|c| !c.is_ascii_whitespace() && *c != b'=')
        .collect();
    let mut out = Vec::with_capacity(s.len() * 3 / 4);
    for chunk in s.chunks(4) {
        let n = chunk
            .iter()
            .fold(0u32, |acc, &c| acc << 6 | u32::from(val(c)))
            << (6 * (4 - chunk.len()));
        out.extend_from_slice(&n.to_be_bytes()[1..chunk.len()]);
    }
    out
}

#[tokio::test]
async fn dashboard_in_headless_chromium_shows_live_figures_and_purges() {
    let (Some(chromium), Some(chromedriver)) = (
        which("chromium").or_else(|| which("chromium-browser")),
        which("chromedriver"),
    ) else {
        eprintln!("SKIPPED: dashboard browser test (needs chromium and chromedriver: apt-get install chromium chromium-driver)");
        return;
    };
    within(120, async {
        let origin = Origin::start();
        let caje = Caje::start(&origin, "");
        let driver = Driver::start(&chromium, &chromedriver).await;
        driver
            .call("POST", "/url", json!({"url": caje.url("/_caje/")}))
            .await;
        let shown = driver
            .wait_text("#requests-total", "the first poll", |t| {
                t.contains("since start")
            })
            .await;
        let before = number_in(&shown);

        // Traffic: 8 pages, each fetched once and then hit a few times.
        for round in 0..4 {
            for i in 0..8 {
                let r = caje
                    .get(&gen(
                        &format!("d{i}"),
                        &format!("cc=max-age%3D300&bytes={}", 1024 * (i + 1)),
                    ))
                    .await;
                assert_eq!(r.status, 200);
                if round == 0 && i == 0 {
                    caje.settle(&gen("d0", "cc=max-age%3D300&bytes=1024")).await;
                }
            }
        }
        let after = driver
            .wait_text("#requests-total", "the request count moves", |t| {
                number_in(t) >= before + 32
            })
            .await;
        assert_eq!(number_in(&after), 32, "{after}");
        driver
            .wait_text("#hit-ratio-all", "a hit ratio", |t| {
                t.contains('%') && !t.starts_with("0.0")
            })
            .await;
        driver
            .wait_text("#hot", "hot URLs", |t| t.contains("/gen/d"))
            .await;
        driver
            .wait_text("#served-total", "bytes served", |t| t.contains("KiB"))
            .await;
        driver
            .wait_text("#p99-all", "latency", |t| t.contains("ms"))
            .await;
        driver
            .wait_text("#manifest", "the manifest role", |t| {
                t.contains("standalone")
            })
            .await;

        // Purge one page from the form.
        let target = gen("d3", "cc=max-age%3D300&bytes=4096");
        let input = driver.element("#purge-value").await;
        driver
            .call(
                "POST",
                &format!("/element/{input}/value"),
                json!({"text": target}),
            )
            .await;
        let submit = driver.element("#purge-submit").await;
        driver
            .call("POST", &format!("/element/{submit}/click"), json!({}))
            .await;
        let said = driver
            .wait_text("#action-result", "the purge result", |t| !t.is_empty())
            .await;
        assert!(said.starts_with("purged"), "{said}");
        assert!(said.contains("1 local entries"), "{said}");
        driver
            .wait_text("#purges", "the purge in the recent list", |t| {
                t.contains("/gen/d3")
            })
            .await;
        caje.get(&target)
            .await
            .cache_status()
            .assert_fwd("uri-miss", 200, true);

        // A few more requests so the live figures (rate, interval percentiles) are not empty.
        for _ in 0..3 {
            for i in 0..8 {
                caje.get(&gen(
                    &format!("d{i}"),
                    &format!("cc=max-age%3D300&bytes={}", 1024 * (i + 1)),
                ))
                .await;
            }
            tokio::time::sleep(Duration::from_millis(600)).await;
        }
        driver
            .wait_text("#rps", "a request rate", |t| t != "–")
            .await;
        if let Ok(path) = std::env::var("CAJE_DASHBOARD_SCREENSHOT") {
            let png = driver.call("GET", "/screenshot", Value::Null).await;
            std::fs::write(&path, base64_decode(png.as_str().unwrap())).unwrap();
            eprintln!("dashboard screenshot saved to {path}");
        }
        driver.call("DELETE", "", Value::Null).await;
    })
    .await;
}
