//! CLI errors and exit codes: 2 for bad input (one readable line naming the field), 1 for
//! everything else.

use lts_worker_sdk::ClientError;

/// An error that ends the command.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    /// Bad input: exit code 2.
    #[error("{0}")]
    Usage(String),
    /// Anything else: exit code 1.
    #[error("{0}")]
    Failed(String),
}

impl CliError {
    /// The process exit code.
    pub fn exit_code(&self) -> u8 {
        match self {
            CliError::Usage(_) => 2,
            CliError::Failed(_) => 1,
        }
    }
}

impl From<ClientError> for CliError {
    fn from(e: ClientError) -> Self {
        match e {
            ClientError::Invalid(v) => CliError::Usage(v.to_string()),
            ClientError::Config(m) => CliError::Usage(m),
            other => CliError::Failed(other.to_string()),
        }
    }
}

impl From<anyhow::Error> for CliError {
    fn from(e: anyhow::Error) -> Self {
        CliError::Failed(format!("{e:#}"))
    }
}

/// Result of a CLI command.
pub type CliResult<T = ()> = Result<T, CliError>;
