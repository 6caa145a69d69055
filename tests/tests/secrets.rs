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
