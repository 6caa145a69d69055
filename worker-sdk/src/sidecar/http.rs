//! `--http`: one POST per job to a program listening on (usually) localhost. See the module
//! docs of [`super`] for the contract.

use std::time::Duration;

use async_trait::async_trait;
use lts_core::{LogLevel, Outcome};
use serde::Deserialize;

use super::{JobPayload, map_items, truncate};
use crate::runner::{JobContext, JobRunner, RunResult};

/// The largest answer body read by default (8 MiB); see [`HttpRunner::max_answer_bytes`].
pub const DEFAULT_MAX_ANSWER_BYTES: usize = 8 << 20;

/// POSTs each job to a URL.
#[derive(Debug, Clone)]
pub struct HttpRunner {
    url: String,
    timeout: Duration,
    client: reqwest::Client,
    max_answer_bytes: usize,
}

impl HttpRunner {
    /// A runner posting to `url`, giving each job `timeout`.
    pub fn new(url: String, timeout: Duration) -> anyhow::Result<HttpRunner> {
        let parsed = reqwest::Url::parse(&url)
            .map_err(|e| anyhow::anyhow!("--http: {url:?} is not a URL: {e}"))?;
        if !matches!(parsed.scheme(), "http" | "https") {
            anyhow::bail!("--http: {url:?} must be an http:// or https:// URL");
        }
        let client = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(2))
            .timeout(timeout)
            .tcp_nodelay(true)
            .build()
            .map_err(|e| anyhow::anyhow!("--http: cannot build the HTTP client: {e}"))?;
        Ok(HttpRunner {
            url,
            timeout,
            client,
            max_answer_bytes: DEFAULT_MAX_ANSWER_BYTES,
        })
    }

    /// The largest answer body read (default [`DEFAULT_MAX_ANSWER_BYTES`]). A successful answer
    /// with a larger body ends the run `FAILED` (the program broke the contract, and what it
    /// meant cannot be known from part of its JSON); an error answer's body is only quoted
    /// from its start anyway.
    pub fn max_answer_bytes(mut self, bytes: usize) -> HttpRunner {
        self.max_answer_bytes = bytes;
        self
    }
}

/// An answer body, read up to `max` bytes, and whether there was more.
async fn read_body(mut response: reqwest::Response, max: usize) -> (String, bool) {
    let mut body = Vec::new();
    let mut too_long = false;
    while let Ok(Some(chunk)) = response.chunk().await {
        if body.len() + chunk.len() > max {
            body.extend_from_slice(&chunk[..max - body.len()]);
            too_long = true;
            break;
        }
        body.extend_from_slice(&chunk);
    }
    (String::from_utf8_lossy(&body).into_owned(), too_long)
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum LogLine {
    Plain(String),
    Leveled {
        #[serde(default)]
        level: Option<String>,
        message: String,
    },
}

/// The JSON a program may answer with.
#[derive(Debug, Deserialize)]
struct Answer {
    #[serde(default)]
    outcome: Option<String>,
    #[serde(default)]
    message: Option<String>,
    #[serde(default)]
    logs: Vec<LogLine>,
}

/// The items a successful answer maps (`{"map": ["item", ...]}`, a map-reduce job's run):
/// none for any other answer.
pub fn answer_map(status: u16, body: &str) -> Vec<String> {
    #[derive(Deserialize)]
    struct Mapped {
        #[serde(default)]
        map: Vec<String>,
    }
    if !(200..300).contains(&status) {
        return Vec::new();
    }
    serde_json::from_str::<Mapped>(body)
        .map(|m| m.map)
        .unwrap_or_default()
}

/// Maps an HTTP answer to an outcome (pure, for tests): status and body.
pub fn outcome_for_answer(status: u16, body: &str, ctx: &JobContext) -> RunResult {
    match status {
        200..=299 => {
            if body.trim().is_empty() {
                return RunResult::success(format!("HTTP {status}"));
            }
            match serde_json::from_str::<Answer>(body) {
                Ok(a) => {
                    for l in a.logs {
                        match l {
                            LogLine::Plain(m) => ctx.logger.info(m),
                            LogLine::Leveled { level, message } => ctx.logger.log(
                                level
                                    .as_deref()
                                    .map(LogLevel::parse_lenient)
                                    .unwrap_or_default(),
                                message,
                            ),
                        }
                    }
                    let message = a.message.unwrap_or_else(|| format!("HTTP {status}"));
                    match a.outcome.as_deref().map(str::parse::<Outcome>) {
                        None => RunResult::success(message),
                        Some(Ok(outcome)) => RunResult { outcome, message },
                        Some(Err(e)) => {
                            ctx.logger.warn(format!("answer ignored: {e}"));
                            RunResult::success(message)
                        }
                    }
                }
                Err(e) => {
                    ctx.logger.warn(format!(
                        "the answer body is not {{outcome, message, logs}} JSON and was ignored ({e})"
                    ));
                    RunResult::success(format!("HTTP {status}"))
                }
            }
        }
        429 | 503 => RunResult::later(format!("HTTP {status}: the program asked to try later")),
        _ => RunResult::failed(format!("HTTP {status}: {}", truncate(body.trim(), 500))),
    }
}

#[async_trait]
impl JobRunner for HttpRunner {
    async fn run(&self, ctx: JobContext) -> RunResult {
        let payload = match JobPayload::for_run(&ctx).await {
            Ok(p) => p,
            Err(result) => return result,
        };
        let request = self
            .client
            .post(&self.url)
            .header("x-lts-job-id", &payload.job_id)
            .header("x-lts-attempt", payload.attempt.to_string())
            .json(&payload)
            .send();
        let response = tokio::select! {
            r = request => r,
            _ = ctx.cancel.cancelled() => return RunResult::exception("cancelled"),
        };
        let response = match response {
            Ok(r) => r,
            Err(e) if e.is_timeout() => {
                return RunResult::exception(format!(
                    "timed out after {} s",
                    self.timeout.as_secs()
                ));
            }
            Err(e) if e.is_connect() => {
                return RunResult::later(format!(
                    "program not reachable at {}: {}",
                    self.url,
                    crate::connect::source_chain(&e)
                ));
            }
            Err(e) => {
                return RunResult::exception(format!(
                    "request failed: {}",
                    crate::connect::source_chain(&e)
                ));
            }
        };
        let status = response.status().as_u16();
        let retry_after = response
            .headers()
            .get(reqwest::header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        let max = self.max_answer_bytes;
        let (body, too_long) = tokio::select! {
            b = read_body(response, max) => b,
            _ = ctx.cancel.cancelled() => return RunResult::exception("cancelled"),
        };
        // An error's body is only quoted from its start: a long one does no harm.
        if too_long && (200..300).contains(&status) {
            return RunResult::failed(format!(
                "HTTP {status}, but the answer body is larger than {max} bytes (--max-answer-bytes); the answer was not read"
            ));
        }
        let mut result = outcome_for_answer(status, &body, &ctx);
        if let (429 | 503, Some(ra)) = (status, retry_after) {
            result.message.push_str(&format!(" (Retry-After: {ra})"));
        }
        let items = answer_map(status, &body);
        if result.outcome == Outcome::Success
            && !items.is_empty()
            && let Err(refused) = map_items(&ctx, items).await
        {
            return refused;
        }
        result
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sidecar::test_support::ctx;
    use std::sync::{Arc, Mutex};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// A one-route HTTP/1.1 server answering `status` with `body` after `delay`; records the
    /// request bodies it got.
    async fn server(
        status: u16,
        body: &'static str,
        delay: Duration,
    ) -> (String, Arc<Mutex<Vec<String>>>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let got = Arc::new(Mutex::new(Vec::new()));
        let g = got.clone();
        tokio::spawn(async move {
            loop {
                let Ok((mut s, _)) = listener.accept().await else {
                    return;
                };
                let g = g.clone();
                tokio::spawn(async move {
                    let mut buf = Vec::new();
                    let mut chunk = [0u8; 4096];
                    // Read head and body (by content-length).
                    loop {
                        let n = s.read(&mut chunk).await.unwrap_or(0);
                        if n == 0 {
                            return;
                        }
                        buf.extend_from_slice(&chunk[..n]);
                        let text = String::from_utf8_lossy(&buf).to_string();
                        if let Some(i) = text.find("\r\n\r\n") {
                            let len = text[..i]
                                .lines()
                                .find_map(|l| {
                                    l.to_ascii_lowercase()
                                        .strip_prefix("content-length:")
                                        .map(|v| v.trim().parse::<usize>().unwrap_or(0))
                                })
                                .unwrap_or(0);
                            if buf.len() >= i + 4 + len {
                                g.lock().unwrap().push(text[i + 4..].to_string());
                                break;
                            }
                        }
                    }
                    tokio::time::sleep(delay).await;
                    let reply = format!(
                        "HTTP/1.1 {status} X\r\ncontent-length: {}\r\nretry-after: 7\r\nconnection: close\r\n\r\n{body}",
                        body.len()
                    );
                    let _ = s.write_all(reply.as_bytes()).await;
                });
            }
        });
        (format!("http://{addr}/run"), got)
    }

    fn runner(url: &str) -> HttpRunner {
        HttpRunner::new(url.into(), Duration::from_secs(5)).unwrap()
    }

    #[tokio::test]
    async fn answers_map_to_outcomes() {
        let (url, got) = server(200, "", Duration::ZERO).await;
        let r = runner(&url).run(ctx("empty", &[("k", "v")])).await;
        assert_eq!(r.outcome, Outcome::Success);
        let sent: JobPayload = serde_json::from_str(&got.lock().unwrap()[0]).unwrap();
        assert_eq!(sent.job_id, "job-empty");
        assert_eq!(sent.params["k"], "v");

        let (url, _) = server(
            200,
            r#"{"outcome":"later","message":"busy","logs":["one",{"level":"ERROR","message":"two"}]}"#,
            Duration::ZERO,
        )
        .await;
        let c = ctx("json", &[]);
        let logger = c.logger.clone();
        let r = runner(&url).run(c).await;
        assert_eq!((r.outcome, r.message.as_str()), (Outcome::Later, "busy"));
        let lines = logger.take();
        assert_eq!(lines.len(), 2);
        assert_eq!(lines[1].level, LogLevel::Error);

        let (url, _) = server(201, "not json", Duration::ZERO).await;
        let c = ctx("garbage", &[]);
        let logger = c.logger.clone();
        let r = runner(&url).run(c).await;
        assert_eq!(r.outcome, Outcome::Success);
        assert_eq!(logger.take()[0].level, LogLevel::Warn);

        let (url, _) = server(429, "", Duration::ZERO).await;
        let r = runner(&url).run(ctx("busy", &[])).await;
        assert_eq!(r.outcome, Outcome::Later);
        assert!(r.message.contains("Retry-After: 7"), "{}", r.message);

        let (url, _) = server(500, "boom", Duration::ZERO).await;
        let r = runner(&url).run(ctx("err", &[])).await;
        assert_eq!(r.outcome, Outcome::Failed);
        assert!(r.message.contains("500") && r.message.contains("boom"));
    }

    #[tokio::test]
    async fn an_unreachable_program_is_later_and_a_slow_one_times_out() {
        let dead = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = dead.local_addr().unwrap().port();
        drop(dead);
        let r = runner(&format!("http://127.0.0.1:{port}/run"))
            .run(ctx("down", &[]))
            .await;
        assert_eq!(r.outcome, Outcome::Later, "{r:?}");

        let (url, _) = server(200, "", Duration::from_secs(10)).await;
        let r = HttpRunner::new(url, Duration::from_millis(300))
            .unwrap()
            .run(ctx("slow", &[]))
            .await;
        assert_eq!(r.outcome, Outcome::Exception);
        assert!(r.message.contains("timed out"), "{}", r.message);
    }

    #[tokio::test]
    async fn a_body_over_the_limit_is_not_read() {
        let big: &'static str =
            Box::leak(format!("{{\"message\":\"{}\"}}", "x".repeat(500)).into_boxed_str());
        let (url, _) = server(200, big, Duration::ZERO).await;
        let r = runner(&url)
            .max_answer_bytes(100)
            .run(ctx("big", &[]))
            .await;
        assert_eq!(r.outcome, Outcome::Failed, "{r:?}");
        assert!(r.message.contains("larger than 100 bytes"), "{}", r.message);

        // An error answer is quoted from its start, whatever its length.
        let (url, _) = server(500, big, Duration::ZERO).await;
        let r = runner(&url)
            .max_answer_bytes(100)
            .run(ctx("big-error", &[]))
            .await;
        assert_eq!(r.outcome, Outcome::Failed, "{r:?}");
        assert!(
            r.message.starts_with("HTTP 500: {\"message\":\"xxx"),
            "{}",
            r.message
        );

        // Within the limit, the answer is taken.
        let (url, _) = server(200, big, Duration::ZERO).await;
        let r = runner(&url).run(ctx("fits", &[])).await;
        assert_eq!((r.outcome, r.message.len()), (Outcome::Success, 500));
    }

    #[test]
    fn a_successful_answer_maps_its_items() {
        assert_eq!(
            answer_map(200, r#"{"message": "split", "map": ["a", "b"]}"#),
            ["a", "b"]
        );
        assert!(answer_map(200, r#"{"message": "no map"}"#).is_empty());
        assert!(answer_map(200, "not json").is_empty());
        assert!(answer_map(500, r#"{"map": ["a"]}"#).is_empty());
    }

    #[tokio::test]
    async fn an_answer_that_maps_for_a_job_that_may_not_fails_the_run() {
        let (url, _) = server(200, r#"{"map": ["a"]}"#, Duration::ZERO).await;
        let r = runner(&url).run(ctx("plain", &[])).await;
        assert_eq!(r.outcome, Outcome::Failed, "{r:?}");
        assert!(r.message.contains("not a map-reduce job"), "{r:?}");
    }

    #[test]
    fn bad_urls_are_refused() {
        assert!(HttpRunner::new("localhost:8080".into(), Duration::from_secs(1)).is_err());
        assert!(HttpRunner::new("ftp://x/".into(), Duration::from_secs(1)).is_err());
    }
}
