//! The command line: `--help` documents every flag; a bad config file is reported with its
//! path and line and a non-zero exit.

mod support;

use std::process::Command;
use std::time::Duration;

use support::caje_bin;

fn run(args: &[&str]) -> std::process::Output {
    let mut child = Command::new(caje_bin())
        .args(args)
        .env_remove("CAJE_ADMIN_TOKEN")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawning caje");
    // Bounded: a caje that starts serving instead of failing must not hang the test.
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    while child.try_wait().unwrap().is_none() {
        if std::time::Instant::now() > deadline {
            child.kill().ok();
            let out = child.wait_with_output().unwrap();
            panic!(
                "caje {args:?} did not exit within 15 s; stdout {:?} stderr {:?}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    child.wait_with_output().unwrap()
}

#[test]
fn help_mentions_every_flag() {
    let out = run(&["--help"]);
    assert!(out.status.success(), "--help exit {}", out.status);
    let help = String::from_utf8_lossy(&out.stdout);
    for flag in [
        "--config",
        "--listen",
        "--origin",
        "--cache-dir",
        "--db",
        "--admin-token",
    ] {
        assert!(
            help.contains(flag),
            "--help does not mention {flag}:\n{help}"
        );
    }
    assert!(
        help.contains("CAJE_ADMIN_TOKEN"),
        "--help does not mention CAJE_ADMIN_TOKEN:\n{help}"
    );
}

#[test]
fn bad_config_value_names_file_and_line() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("broken.toml");
    std::fs::write(
        &path,
        "[[origins]]\nhost = \"*\"\nurl = \"http://127.0.0.1:1\"\n\n[cache]\nmax_object_bytes = \"big\"\n",
    )
    .unwrap();
    let out = run(&[
        "--config",
        path.to_str().unwrap(),
        "--listen",
        "127.0.0.1:0",
    ]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        out.status.code(),
        Some(2),
        "exit {}; stderr {stderr}",
        out.status
    );
    assert!(
        stderr.contains("broken.toml"),
        "stderr does not name the file: {stderr}"
    );
    assert!(
        stderr.contains("line 6"),
        "stderr does not name line 6: {stderr}"
    );
    // "What is wrong": the key or the offending value.
    assert!(
        stderr.contains("max_object_bytes") || stderr.contains("\"big\""),
        "stderr does not say what is wrong: {stderr}"
    );
    assert!(out.stdout.is_empty() || !String::from_utf8_lossy(&out.stdout).contains("listening"));
}

#[test]
fn unknown_config_key_names_file_and_line() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("typo.toml");
    std::fs::write(&path, "[[origins]]\nhost = \"*\"\nurl = \"http://127.0.0.1:1\"\n\n[cache]\nmax_objekt_bytes = 5\n").unwrap();
    let out = run(&[
        "--config",
        path.to_str().unwrap(),
        "--listen",
        "127.0.0.1:0",
    ]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        out.status.code(),
        Some(2),
        "exit {}; stderr {stderr}",
        out.status
    );
    assert!(
        stderr.contains("typo.toml") && stderr.contains("line 6"),
        "{stderr}"
    );
}

#[test]
fn missing_config_file_fails() {
    let out = run(&[
        "--config",
        "/nonexistent/caje-test.toml",
        "--listen",
        "127.0.0.1:0",
    ]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("/nonexistent/caje-test.toml"), "{stderr}");
}

#[test]
fn no_origin_fails() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("empty.toml");
    std::fs::write(&path, "").unwrap();
    let out = run(&[
        "--config",
        path.to_str().unwrap(),
        "--listen",
        "127.0.0.1:0",
    ]);
    assert!(!out.status.success(), "caje started without an origin");
    assert!(!out.stderr.is_empty(), "no error message");
}
