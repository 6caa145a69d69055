//! The container images, built from `docker/Dockerfile` with podman and run the way the
//! operator runs them: non-root, read-only root filesystem, mutual TLS.
//!
//! The binaries are this workspace's (stripped of debug info) and go in through the
//! Dockerfile's `BINARIES=prebuilt` stage; the base images (`debian:bookworm-slim` and a
//! stand-in for distroless `cc-debian12:nonroot`) are bootstrapped from Debian packages by
//! `scripts/setup-test-deps.sh`, which also prints `LTS_TEST_PODMAN`: podman on a storage of
//! the tests' own, with the runc runtime. Needs root (podman's storage, `chown` to the
//! images' user 65532).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use lts_core::pki::{Ca, Leaf};
use lts_core::{JobKey, JobSpec, JobState};
use lts_tests::{bin, eventually, free_port, http_get, wait_final, workspace_root};
use lts_worker_sdk::{Credentials, JobClient, SubmitAnswer};

const T: Duration = Duration::from_secs(60);
/// The user every image runs as.
const NONROOT: u32 = 65532;

fn podman_path() -> PathBuf {
    match std::env::var_os("LTS_TEST_PODMAN") {
        Some(p) => PathBuf::from(p),
        None => panic!(
            "LTS_TEST_PODMAN is not set: run the tests with scripts/test.sh (it installs podman \
             and bootstraps the base images), or `eval \"$(scripts/setup-test-deps.sh)\"` first"
        ),
    }
}

/// Runs podman with `args`; its stdout, or a panic with everything it said.
fn podman(args: &[&str]) -> String {
    let out = Command::new(podman_path())
        .args(args)
        .output()
        .expect("run podman");
    assert!(
        out.status.success(),
        "podman {args:?} failed ({}):\n{}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Images and containers of this test, removed when it ends (pass or fail).
#[derive(Default)]
struct Cleanup {
    images: Vec<String>,
    containers: Vec<String>,
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        for c in &self.containers {
            let _ = Command::new(podman_path())
                .args(["rm", "--force", "--time", "2", c])
                .output();
        }
        for i in &self.images {
            let _ = Command::new(podman_path())
                .args(["rmi", "--force", i])
                .output();
        }
        // The build stages' layers (each holds a binary) would pile up run after run.
        let _ = Command::new(podman_path())
            .args(["image", "prune", "--force"])
            .output();
    }
}

/// Builds the image of workspace binary `bin_name` on `runtime` (`distroless` or `shell`)
/// from `docker/Dockerfile`, with the binary as the build context's `prebuilt/`.
fn build(context: &Path, bin_name: &str, runtime: &str, cleanup: &mut Cleanup) -> String {
    let prebuilt = context.join("prebuilt");
    std::fs::create_dir_all(&prebuilt).unwrap();
    let target = prebuilt.join(bin_name);
    // Debug builds carry hundreds of MB of debug info; the image needs none of it.
    let stripped = Command::new("objcopy")
        .arg("--strip-debug")
        .arg(bin(bin_name))
        .arg(&target)
        .status()
        .is_ok_and(|s| s.success());
    if !stripped {
        std::fs::copy(bin(bin_name), &target).unwrap();
    }
    let tag = format!("localhost/{bin_name}:test-{}", std::process::id());
    let dockerfile = workspace_root().join("docker/Dockerfile");
    // Every stage-choosing argument is passed: podman 4 resolves `FROM ${ARG}` to a stage only
    // for arguments given on the command line.
    podman(&[
        "build",
        "--file",
        dockerfile.to_str().unwrap(),
        "--build-arg",
        "BINARIES=prebuilt",
        "--build-arg",
        &format!("RUNTIME={runtime}"),
        "--build-arg",
        &format!("BIN={bin_name}"),
        "--tag",
        &tag,
        context.to_str().unwrap(),
    ]);
    cleanup.images.push(tag.clone());
    std::fs::remove_file(&target).unwrap();
    tag
}

/// `podman run` with what every container here gets: the host's network (the tracker
/// listens on loopback), a read-only root filesystem and a
/// writable `/tmp` (an `emptyDir` in the operator's pods).
fn run_detached(name: &str, image: &str, mounts: &[String], args: &[&str], cleanup: &mut Cleanup) {
    let mut a: Vec<String> = [
        "run",
        "--detach",
        "--name",
        name,
        "--network",
        "host",
        "--read-only",
        "--tmpfs",
        "/tmp",
        "--env",
        "LTS_LOG=info",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    for m in mounts {
        a.push("--volume".into());
        a.push(m.clone());
    }
    a.push(image.into());
    a.extend(args.iter().map(|s| s.to_string()));
    let a: Vec<&str> = a.iter().map(String::as_str).collect();
    podman(&a);
    cleanup.containers.push(name.to_string());
}

fn logs(name: &str) -> String {
    let out = Command::new(podman_path())
        .args(["logs", name])
        .output()
        .expect("podman logs");
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// A directory the images' user owns, holding `files`; mounted read-only it is a Secret.
fn secret_dir(dir: &Path, files: &[(&str, &str)]) -> PathBuf {
    std::fs::create_dir_all(dir).unwrap();
    for (name, text) in files {
        let path = dir.join(name);
        std::fs::write(&path, text).unwrap();
        std::os::unix::fs::chown(&path, Some(NONROOT), Some(NONROOT)).unwrap();
    }
    std::os::unix::fs::chown(dir, Some(NONROOT), Some(NONROOT)).unwrap();
    dir.to_path_buf()
}

fn leaf(ca: &Ca, name: &str, sans: &[&str]) -> Leaf {
    ca.issue(name, sans, Duration::from_secs(3600)).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_images_build_and_run_a_job_non_root_on_a_read_only_root() {
    use std::os::unix::fs::MetadataExt;
    let uid = std::fs::metadata("/proc/self")
        .map(|m| m.uid())
        .unwrap_or(0);
    assert_eq!(
        uid, 0,
        "the image tests run podman with a storage of their own and give the images' user          its files: run scripts/test.sh as root"
    );
    let dir = tempfile::tempdir().unwrap();
    let mut cleanup = Cleanup::default();
    let run_id = std::process::id();
    let context = dir.path().join("context");

    let tracker_image = build(&context, "lts-tracker", "distroless", &mut cleanup);
    let worker_image = build(&context, "lts-worker", "shell", &mut cleanup);
    let operator_image = build(&context, "lts-operator", "distroless", &mut cleanup);

    // Every image runs as the unprivileged user, not root.
    for image in [&tracker_image, &worker_image, &operator_image] {
        let user = podman(&["image", "inspect", "--format", "{{.Config.User}}", image]);
        assert_eq!(user.trim(), "65532:65532", "{image} runs as {user:?}");
    }
    // The operator's image starts its binary (it needs an API server to do more).
    let help = podman(&[
        "run",
        "--rm",
        "--network",
        "none",
        "--read-only",
        &operator_image,
        "--help",
    ]);
    assert!(help.contains("LTS Kubernetes operator"), "{help}");
    // The distroless tracker image has no shell to misuse.
    let no_shell = Command::new(podman_path())
        .args([
            "run",
            "--rm",
            "--network",
            "none",
            "--entrypoint",
            "/bin/sh",
        ])
        .arg(&tracker_image)
        .args(["-c", "true"])
        .output()
        .unwrap();
    assert!(!no_shell.status.success(), "the tracker image has a shell");

    // Certificates, as the operator makes them: a CA, the tracker's, the worker's, an admin's.
    let ca = Ca::new("lts images test CA").unwrap();
    let tracker_cert = leaf(&ca, "tracker", &["localhost", "127.0.0.1"]);
    let worker_cert = leaf(&ca, "images-workers", &["images-workers"]);
    let admin_cert = leaf(&ca, "admin", &["admin"]);
    let auth = "principals:\n  - name: admin\n    certificates: [admin]\n    grants: [{role: admin}]\n  \
                - name: images-workers\n    certificates: [images-workers]\n    grants: [{role: worker, groups: [images]}]\n";
    let tracker_secret = secret_dir(
        &dir.path().join("tracker-tls"),
        &[
            ("ca.crt", &ca.cert_pem()),
            ("tls.crt", &tracker_cert.cert_pem),
            ("tls.key", &tracker_cert.key_pem),
            ("auth.yaml", auth),
        ],
    );
    let worker_secret = secret_dir(
        &dir.path().join("worker-tls"),
        &[
            ("ca.crt", &ca.cert_pem()),
            ("tls.crt", &worker_cert.cert_pem),
            ("tls.key", &worker_cert.key_pem),
        ],
    );
    // The embedded store lives on a volume (a PersistentVolumeClaim in Kubernetes).
    let data = secret_dir(&dir.path().join("data"), &[]);

    let port = free_port();
    let metrics_port = free_port();
    let addr = format!("127.0.0.1:{port}");
    let metrics = format!("127.0.0.1:{metrics_port}");
    let tracker = format!("lts-test-{run_id}-tracker");
    // A tracker container as the operator runs one: its certificate, key, CA and auth file
    // from a read-only Secret, client certificates required, the store on the volume.
    let start_tracker = |name: &str, cleanup: &mut Cleanup| {
        run_detached(
            name,
            &tracker_image,
            &[
                format!("{}:/etc/lts/tls:ro", tracker_secret.display()),
                format!("{}:/var/lib/lts", data.display()),
            ],
            &[
                "--listen",
                &addr,
                "--metrics-listen",
                &metrics,
                "--store",
                "sqlite:/var/lib/lts/lts.db",
                "--identity",
                "tracker-in-podman",
                "--tls-cert",
                "/etc/lts/tls/tls.crt",
                "--tls-key",
                "/etc/lts/tls/tls.key",
                "--tls-ca",
                "/etc/lts/tls/ca.crt",
                "--tls-client-auth",
                "required",
                "--auth-file",
                "/etc/lts/tls/auth.yaml",
            ],
            cleanup,
        )
    };
    start_tracker(&tracker, &mut cleanup);
    let admin = Credentials::default()
        .tls_ca_pem(ca.cert_pem())
        .tls_identity_pem(admin_cert.cert_pem.clone(), admin_cert.key_pem.clone());
    let client = JobClient::new(std::slice::from_ref(&addr))
        .unwrap()
        .with_credentials(admin);
    eventually(T, "the tracker container to serve", || async {
        client.stats(None).await.ok()
    })
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", logs(&tracker)));
    let ready = http_get(&metrics, "/readyz").await.unwrap();
    assert!(ready.contains("200"), "{ready}");

    // The lts-worker sidecar image runs each job as a shell command.
    let worker = format!("lts-test-{run_id}-worker");
    let health = format!("127.0.0.1:{}", free_port());
    run_detached(
        &worker,
        &worker_image,
        &[format!("{}:/etc/lts/tls:ro", worker_secret.display())],
        &[
            "--tracker",
            &addr,
            "--node-group",
            "images",
            "--identity",
            "worker-in-podman",
            "--health-listen",
            &health,
            "--tls-ca",
            "/etc/lts/tls/ca.crt",
            "--tls-cert",
            "/etc/lts/tls/tls.crt",
            "--tls-key",
            "/etc/lts/tls/tls.key",
            "--exec",
            "echo \"ran $LTS_TASK_ID as uid $(id -u)\"; \
             if touch /usr/local/bin/x 2>/dev/null; then echo root-writable; else echo root-read-only; fi; \
             touch /tmp/scratch && echo tmp-writable",
        ],
        &mut cleanup,
    );
    eventually(T, "the worker container to connect", || async {
        let nodes = client.nodes().await.ok()?;
        nodes
            .nodes
            .iter()
            .any(|n| n.identity == "worker-in-podman")
            .then_some(())
    })
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", logs(&worker)));

    // A job submitted from the host runs in the worker container and succeeds.
    let job_id = match client
        .submit(JobSpec::new("hello-from-the-host", "images"))
        .await
        .unwrap()
    {
        SubmitAnswer::Accepted { job_id } => job_id,
        other => panic!("{other:?}"),
    };
    let job = wait_final(&client, &job_id, T)
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}\n{}", logs(&tracker), logs(&worker)));
    assert_eq!(job.state, JobState::Succeeded, "{job:?}\n{}", logs(&worker));
    let log: Vec<String> = client
        .log(&job_id, 100)
        .await
        .unwrap()
        .into_iter()
        .map(|l| l.message)
        .collect();
    let text = log.join("\n");
    assert!(
        text.contains("ran hello-from-the-host as uid 65532"),
        "{text}"
    );
    assert!(text.contains("root-read-only"), "{text}");
    assert!(text.contains("tmp-writable"), "{text}");

    // The queue is on the volume: a new tracker container on it still has the job.
    // SIGTERM reaches the tracker as the container's PID 1: it drains (5 s by default) and
    // exits cleanly, well inside Kubernetes' default grace period of 30 s.
    podman(&["stop", "--time", "30", &tracker]);
    let exit = podman(&["inspect", "--format", "{{.State.ExitCode}}", &tracker]);
    assert_eq!(exit.trim(), "0", "{}", logs(&tracker));
    assert!(logs(&tracker).contains("drain"), "{}", logs(&tracker));
    let tracker2 = format!("{tracker}-2");
    start_tracker(&tracker2, &mut cleanup);
    let again = eventually(T, "the new tracker container to answer", || async {
        client.get(JobKey::Id(job_id.clone())).await.ok()
    })
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", logs(&tracker2)));
    assert_eq!(again.state, JobState::Succeeded);
}
