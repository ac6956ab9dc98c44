//! 1xx interim responses (`103 Early Hints`) from the origin are forwarded to the client
//! before the final response, and never cached: the next request is a hit on the final
//! response alone, without the interim response or its headers.

mod support;

use std::time::Duration;

use support::{within, Caje, CajeConfig};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// An origin that answers every request with a 103 and then a cacheable 200.
async fn early_hints_origin() -> (String, tokio::task::JoinHandle<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let task = tokio::spawn(async move {
        while let Ok((mut sock, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut tmp = [0u8; 2048];
                while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
                    match sock.read(&mut tmp).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => buf.extend_from_slice(&tmp[..n]),
                    }
                }
                let _ = sock
                    .write_all(
                        b"HTTP/1.1 103 Early Hints\r\nLink: </style.css>; rel=preload\r\nX-My-Header: interim\r\n\r\n",
                    )
                    .await;
                let _ = sock
                    .write_all(b"HTTP/1.1 200 OK\r\nCache-Control: max-age=600\r\nContent-Length: 6\r\nConnection: close\r\n\r\nfinal\n")
                    .await;
                let _ = sock.shutdown().await;
            });
        }
    });
    (base, task)
}

/// Everything caje sends for one `Connection: close` request.
async fn exchange(caje: &Caje, path: &str) -> String {
    let mut s = TcpStream::connect(caje.addr()).await.unwrap();
    let req = format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    s.write_all(req.as_bytes()).await.unwrap();
    let mut out = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut out))
        .await
        .expect("caje closed the connection")
        .unwrap();
    String::from_utf8_lossy(&out).into_owned()
}

#[tokio::test]
async fn early_hints_are_forwarded_and_not_cached() {
    within(30, async {
        let (base, task) = early_hints_origin().await;
        let caje = Caje::start_with(CajeConfig::for_origin(&base, ""));
        let first = exchange(&caje, "/page").await;
        assert!(
            first.starts_with("HTTP/1.1 103 Early Hints\r\n"),
            "no 103 first: {first:?}"
        );
        let final_at = first.find("HTTP/1.1 200").expect("final response");
        let (interim, last) = first.split_at(final_at);
        assert!(interim
            .to_ascii_lowercase()
            .contains("link: </style.css>; rel=preload"));
        assert!(
            !last.to_ascii_lowercase().contains("x-my-header"),
            "{last:?}"
        );
        assert!(last.ends_with("final\n"), "{last:?}");
        caje.settle("/page").await;

        let second = exchange(&caje, "/page").await;
        assert!(second.starts_with("HTTP/1.1 200 OK\r\n"), "{second:?}");
        assert!(second.contains("caje; hit"), "not a hit: {second:?}");
        assert!(!second.contains("103") && !second.to_ascii_lowercase().contains("x-my-header"));
        task.abort();
    })
    .await
}

#[tokio::test]
async fn http_1_0_clients_get_no_interim_response() {
    within(30, async {
        let (base, task) = early_hints_origin().await;
        let caje = Caje::start_with(CajeConfig::for_origin(&base, ""));
        let mut s = TcpStream::connect(caje.addr()).await.unwrap();
        s.write_all(b"GET /old HTTP/1.0\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        let mut out = Vec::new();
        tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut out))
            .await
            .expect("caje closed the connection")
            .unwrap();
        let out = String::from_utf8_lossy(&out);
        assert!(out.starts_with("HTTP/1.0 200 OK\r\n"), "{out:?}");
        task.abort();
    })
    .await
}
