//! Secrets stay out of logs and error messages: a tracker given a MongoDB URL with a password
//! and secret query parameters never prints them, whether the URL fails to parse or its
//! server cannot be reached.

use std::time::Duration;

use lts_tests::{Proc, free_port};

const PASSWORD: &str = "hunter2-pw";
const PEM_PASSWORD: &str = "pem-secret-9";

fn tracker(dir: &std::path::Path, name: &str, store: &str) -> Proc {
    let mut cmd = std::process::Command::new(lts_tests::bin("lts-tracker"));
    cmd.args(["--listen", &format!("127.0.0.1:{}", free_port())])
        .args(["--insecure", "--no-auth"])
        .env("LTS_STORE", store)
        .env("LTS_LOG", "debug");
    Proc::spawn(cmd, dir.join(format!("{name}.log"))).unwrap()
}

#[test]
fn a_store_url_s_secrets_never_reach_the_log() {
    let dir = tempfile::tempdir().unwrap();
    let secret_query = format!("authSource=admin&tlsCertificateKeyFilePassword={PEM_PASSWORD}");
    // An option the driver refuses: the parse error is printed, the secrets are not.
    let bad = format!("mongodb://app:{PASSWORD}@127.0.0.1:1/lts?{secret_query}&maxPoolSize=lots");
    // A server that is not there: the connect errors are logged while the tracker retries.
    let down = format!(
        "mongodb://app:{PASSWORD}@127.0.0.1:1/lts?{secret_query}&serverSelectionTimeoutMS=200"
    );
    let mut procs = vec![
        tracker(dir.path(), "bad", &bad),
        tracker(dir.path(), "down", &down),
    ];
    std::thread::sleep(Duration::from_secs(3));
    for p in &mut procs {
        p.kill9();
        let out = p.output();
        assert!(!out.is_empty(), "the tracker said something");
        assert!(!out.contains(PASSWORD), "password in the log:\n{out}");
        assert!(
            !out.contains(PEM_PASSWORD),
            "a secret parameter in the log:\n{out}"
        );
    }
    let bad_out = procs[0].output();
    assert!(
        bad_out.contains("mongodb://app:***@127.0.0.1:1/lts"),
        "{bad_out}"
    );
}

#[test]
fn a_store_password_is_refused_in_a_flag_and_read_from_a_file() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("mongodb://app:{PASSWORD}@127.0.0.1:1/lts?serverSelectionTimeoutMS=200");
    let out = std::process::Command::new(lts_tests::bin("lts-tracker"))
        .args(["--insecure", "--no-auth", "--store", &url])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("--store-file"), "{stderr}");
    assert!(!stderr.contains(PASSWORD), "{stderr}");

    // From a file (a mounted Secret): used, and still never logged.
    let file = dir.path().join("store-url");
    std::fs::write(&file, format!("{url}\n")).unwrap();
    let mut cmd = std::process::Command::new(lts_tests::bin("lts-tracker"));
    cmd.args(["--listen", &format!("127.0.0.1:{}", free_port())])
        .args([
            "--insecure",
            "--no-auth",
            "--store-file",
            file.to_str().unwrap(),
        ])
        .env_remove("LTS_STORE")
        .env("LTS_LOG", "debug");
    let mut p = Proc::spawn(cmd, dir.path().join("file.log")).unwrap();
    std::thread::sleep(Duration::from_secs(3));
    p.kill9();
    let out = p.output();
    // It is connecting to the file's store (database `lts` on 127.0.0.1:1).
    assert!(
        out.contains("127.0.0.1:1") && out.contains("database=lts"),
        "{out}"
    );
    assert!(!out.contains(PASSWORD), "{out}");
}
