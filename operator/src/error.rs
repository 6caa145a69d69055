//! The crate's error type.

use lts_worker_sdk::ClientError;

/// Everything a reconcile can fail with. A failed reconcile is retried with backoff
/// ([`crate::backoff::Backoff`]); problems the user must fix (an invalid spec, a missing
/// cluster) are not errors but Conditions.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A Kubernetes API call failed.
    #[error("kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    /// The finalizer machinery failed (adding or removing it, or the wrapped reconcile).
    #[error("finalizer: {0}")]
    Finalizer(#[source] Box<kube::runtime::finalizer::Error<Error>>),
    /// No tracker of the cluster could be reached.
    #[error("tracker unavailable: {0}")]
    TrackerUnavailable(String),
    /// A tracker answered with an error.
    #[error("tracker: {0}")]
    Tracker(ClientError),
    /// Serialising an object failed.
    #[error("serialize: {0}")]
    Serialize(#[from] serde_json::Error),
    /// The object lacks a field the API server always sets (namespace, uid).
    #[error("object is missing {0}")]
    MissingField(&'static str),
    /// Making, reading or storing a certificate failed.
    #[error("certificates: {0}")]
    Pki(String),
    /// The CustomResourceDefinitions are not installed in the cluster.
    #[error("{0}")]
    CrdsNotInstalled(String),
}

impl Error {
    /// A short, bounded label for metrics.
    pub fn metric_label(&self) -> &'static str {
        match self {
            Error::Kube(_) => "kube",
            Error::Finalizer(_) => "finalizer",
            Error::TrackerUnavailable(_) => "tracker_unavailable",
            Error::Tracker(_) => "tracker",
            Error::Serialize(_) => "serialize",
            Error::MissingField(_) => "missing_field",
            Error::CrdsNotInstalled(_) => "crds_not_installed",
            Error::Pki(_) => "pki",
        }
    }
}

impl From<ClientError> for Error {
    fn from(e: ClientError) -> Self {
        if e.is_retryable() {
            Error::TrackerUnavailable(e.to_string())
        } else {
            Error::Tracker(e)
        }
    }
}

impl From<kube::runtime::finalizer::Error<Error>> for Error {
    fn from(e: kube::runtime::finalizer::Error<Error>) -> Self {
        match e {
            kube::runtime::finalizer::Error::ApplyFailed(e)
            | kube::runtime::finalizer::Error::CleanupFailed(e) => e,
            other => Error::Finalizer(Box::new(other)),
        }
    }
}

/// Result with the crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;
