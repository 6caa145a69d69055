//! `lts`: the command-line tool of LTS — run everything locally (`lts dev`), submit and
//! inspect jobs, list nodes, and benchmark (`lts bench`).

mod auth_cmds;
mod bench;
mod bench_compare;
mod bench_raw;
mod client_cmds;
mod client_opts;
mod config;
mod dev;
mod error;
mod output;
mod workflow_cmds;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// LTS — a distributed job scheduler (JobClient / JobTracker / TaskTracker).
#[derive(Debug, Parser)]
#[command(name = "lts", version, about, propagate_version = true)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run a tracker, demo workers and demo jobs in this process, with an embedded store.
    Dev(dev::DevArgs),
    /// Submit one job.
    Submit(Box<client_cmds::SubmitArgs>),
    /// List, inspect and cancel jobs.
    Jobs {
        #[command(subcommand)]
        command: client_cmds::JobsCommand,
    },
    /// Submit and inspect workflows (graphs of jobs).
    Workflow {
        #[command(subcommand)]
        command: workflow_cmds::WorkflowCommand,
    },
    /// List the nodes of the cluster (trackers, TaskTrackers, JobClients) and the master.
    Nodes(client_cmds::NodesArgs),
    /// Measure submit throughput, drain throughput and dispatch latency.
    Bench(bench::BenchArgs),
    /// Make tokens, a CA and certificates for a secured cluster.
    Auth {
        #[command(subcommand)]
        command: auth_cmds::AuthCommand,
    },
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) => {
            // clap prints help/version to stdout with exit 0, usage errors to stderr with 2.
            let _ = e.print();
            return ExitCode::from(if e.use_stderr() { 2 } else { 0 });
        }
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("lts: cannot start the runtime: {e}");
            return ExitCode::from(1);
        }
    };
    let result = runtime.block_on(async move {
        match cli.command {
            Command::Dev(args) => dev::run(args).await,
            Command::Submit(args) => client_cmds::submit(*args).await,
            Command::Jobs { command } => client_cmds::jobs(command).await,
            Command::Workflow { command } => workflow_cmds::run(command).await,
            Command::Nodes(args) => client_cmds::nodes(args).await,
            Command::Bench(args) => bench::run(args).await,
            Command::Auth { command } => auth_cmds::run(command),
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("lts: {e}");
            ExitCode::from(e.exit_code())
        }
    }
}
