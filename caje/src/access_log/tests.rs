use super::*;
use std::time::Duration;

const FLUSH: Duration = Duration::from_millis(100);

fn line(path: &str) -> Line<'_> {
    Line {
        time: SystemTime::now(),
        client: "127.0.0.1:1".parse().unwrap(),
        method: "GET",
        host: "h",
        path,
        status: 200,
        bytes: 1,
        duration: Duration::from_micros(100),
        origin: None,
        cache: "hit",
        cache_status: None,
        origin_addr: None,
    }
}

fn json_lines(text: &str) -> Vec<serde_json::Value> {
    text.lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect()
}

#[test]
fn targets() {
    assert_eq!(Target::parse("off"), None);
    assert_eq!(Target::parse(""), None);
    assert_eq!(Target::parse("stdout"), Some(Target::Stdout));
    assert_eq!(
        Target::parse("/var/log/caje.log"),
        Some(Target::File("/var/log/caje.log".into()))
    );
}

#[test]
fn lines_are_written_and_reopened() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("access.log");
    let log = AccessLog::start(Target::File(path.clone()), 16, FLUSH).unwrap();
    log.log(&line("/one"));
    let wait = |n| {
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while log.written() < n && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
    };
    // No flush asked: the writer's timer writes it.
    wait(1);
    assert_eq!(log.written(), 1);
    std::fs::rename(&path, dir.path().join("access.log.1")).unwrap();
    log.reopen();
    log.log(&line("/two"));
    wait(2);
    let old = std::fs::read_to_string(dir.path().join("access.log.1")).unwrap();
    let new = std::fs::read_to_string(&path).unwrap();
    assert!(old.contains("\"/one\"") && !old.contains("/two"), "{old}");
    let v: serde_json::Value = serde_json::from_str(new.trim()).unwrap();
    assert_eq!(v["path"], "/two");
    assert_eq!(log.dropped(), 0);
}

/// Threads logging at once, far more than a batch: after `flush`, every line is in the file
/// exactly once, whole.
#[test]
fn flush_writes_every_line_of_every_thread() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("access.log");
    let log = AccessLog::start(Target::File(path.clone()), 1 << 20, FLUSH).unwrap();
    let threads: Vec<_> = (0..4)
        .map(|t| {
            let log = log.clone();
            std::thread::spawn(move || {
                for i in 0..5000 {
                    log.log(&line(&format!("/t{t}/{i}")));
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    assert!(log.flush(Duration::from_secs(20)), "flush timed out");
    assert_eq!(log.written(), 20_000);
    assert_eq!(log.dropped(), 0);
    let all = json_lines(&std::fs::read_to_string(&path).unwrap());
    assert_eq!(all.len(), 20_000);
    let mut paths: Vec<String> = all
        .iter()
        .map(|v| v["path"].as_str().unwrap().to_owned())
        .collect();
    paths.sort();
    paths.dedup();
    assert_eq!(paths.len(), 20_000);
}

/// A writer that cannot write (a pipe nobody reads) never makes `log` wait: lines beyond the
/// queue are dropped and counted, and every line is either written or counted as dropped.
#[test]
fn a_stuck_writer_drops_and_counts_never_blocks() {
    use std::io::Read;
    use std::os::unix::fs::OpenOptionsExt;

    let dir = tempfile::tempdir().unwrap();
    let fifo = dir.path().join("fifo");
    let c = std::ffi::CString::new(fifo.as_os_str().as_encoded_bytes()).unwrap();
    // SAFETY: mkfifo on a NUL-terminated path in our own temp dir.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
    // The read end first (non-blocking), so that the writer's open does not wait for a
    // reader; nothing is read until the logging is done.
    let mut reader = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(&fifo)
        .unwrap();
    let log = AccessLog::start(Target::File(fifo.clone()), 1000, FLUSH).unwrap();
    const N: u64 = 20_000;
    let (done_tx, done) = mpsc::channel();
    let logger = log.clone();
    std::thread::spawn(move || {
        for i in 0..N {
            logger.log(&line(&format!("/{i:0>200}")));
        }
        let _ = done_tx.send(());
    });
    // If `log` waited for the writer, it would wait forever: nobody reads the pipe yet.
    done.recv_timeout(Duration::from_secs(60))
        .expect("log() blocked on a stuck writer");
    assert!(log.dropped() > 0, "nothing dropped");
    assert!(log.written() < N);

    // Now read the pipe while the writer finishes.
    let flusher = {
        let log = log.clone();
        std::thread::spawn(move || log.flush(Duration::from_secs(60)))
    };
    let mut got = Vec::new();
    let mut chunk = vec![0; 1 << 16];
    while !flusher.is_finished() {
        match reader.read(&mut chunk) {
            Ok(n) => got.extend_from_slice(&chunk[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                std::thread::sleep(Duration::from_millis(1))
            }
            Err(e) => panic!("{e}"),
        }
    }
    assert!(flusher.join().unwrap(), "flush timed out");
    while let Ok(n) = reader.read(&mut chunk) {
        if n == 0 {
            break;
        }
        got.extend_from_slice(&chunk[..n]);
    }
    let lines = json_lines(std::str::from_utf8(&got).unwrap());
    assert_eq!(lines.len() as u64, log.written());
    assert_eq!(log.written() + log.dropped(), N);
}
