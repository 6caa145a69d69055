//! placeholder for the sidecar runners
