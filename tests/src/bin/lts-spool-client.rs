//! A JobClient process with a durable spool, for the fault suite: it submits `--jobs` jobs
//! one at a time through a `RetryingJobClient` (spooling them while no tracker answers), says
//! `spooled N` or `submitted N` after each, then waits until its spool is delivered and exits
//! 0. Killed meanwhile, it leaves its spool behind; started again with the same `--spool`, it
//! delivers what is there.
//!
//! `lts-spool-client --tracker ADDR[,ADDR] --spool PATH --group G --prefix P --jobs N`

use std::time::Duration;

use lts_worker_sdk::{JobClient, JobSpec, RetryingAnswer, RetryingJobClient};

fn arg(name: &str) -> Option<String> {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1).cloned())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let trackers: Vec<String> = arg("--tracker")
        .unwrap_or_default()
        .split(',')
        .map(str::to_string)
        .collect();
    let spool = arg("--spool").ok_or_else(|| anyhow::anyhow!("--spool is required"))?;
    let group = arg("--group").unwrap_or_else(|| "spool".into());
    let prefix = arg("--prefix").unwrap_or_else(|| "sp".into());
    let jobs: usize = arg("--jobs").and_then(|n| n.parse().ok()).unwrap_or(0);
    let client = RetryingJobClient::open(
        JobClient::new(&trackers)?.with_call_timeout(Duration::from_millis(500)),
        &spool,
    )?;
    for i in 0..jobs {
        let spec = JobSpec::new(format!("{prefix}-{i}"), group.clone());
        match client.submit(vec![spec]).await? {
            RetryingAnswer::Spooled => println!("spooled {i}"),
            RetryingAnswer::Submitted(_) => println!("submitted {i}"),
        }
    }
    while !client.flush(Duration::from_secs(3600)).await? {}
    println!("delivered");
    Ok(())
}
