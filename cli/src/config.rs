//! The CLI's config file: named contexts (like kubectl's), each saying where a cluster's
//! trackers are and which credentials to present, so that `lts --context prod jobs list` needs
//! no other flag.
//!
//! ```toml
//! # ~/.config/lts/config.toml (or $XDG_CONFIG_HOME/lts/config.toml, or --config / LTS_CONFIG)
//! current-context = "prod"
//!
//! [contexts.prod]
//! tracker = ["lts-tracker.prod.example:7070"]   # or: registry = "zookeeper://zk:2181/lts"
//! cluster = "prod"
//! tls-ca = "prod/ca.pem"                         # relative to this file's directory
//! token-file = "prod/ops.token"
//!
//! [contexts.dev]
//! tracker = ["127.0.0.1:7070"]
//! ```
//!
//! A flag or an `LTS_*` variable wins over the context; the context wins over the defaults.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::error::{CliError, CliResult};

/// One context of the config file.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct Context {
    /// JobTracker addresses.
    #[serde(default)]
    pub tracker: Vec<String>,
    /// `zookeeper://…` to find the trackers in.
    pub registry: Option<String>,
    /// Cluster name.
    pub cluster: Option<String>,
    /// ZooKeeper credential file.
    pub zk_auth_file: Option<PathBuf>,
    /// CA of the trackers' certificates.
    pub tls_ca: Option<PathBuf>,
    /// Client certificate.
    pub tls_cert: Option<PathBuf>,
    /// Its key.
    pub tls_key: Option<PathBuf>,
    /// Name on the tracker's certificate, when not the address's host.
    pub tls_domain: Option<String>,
    /// Bearer token file.
    pub token_file: Option<PathBuf>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
struct ConfigFile {
    current_context: Option<String>,
    #[serde(default)]
    contexts: BTreeMap<String, Context>,
}

/// `$XDG_CONFIG_HOME/lts/config.toml`, else `~/.config/lts/config.toml`.
pub fn default_path() -> Option<PathBuf> {
    let base = std::env::var_os("XDG_CONFIG_HOME")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".config")))?;
    Some(base.join("lts").join("config.toml"))
}

/// The context to use: `name` (or the file's `current-context`) from the file at `path` (or
/// the default path). `Ok(None)` when no file is given and none exists at the default path, or
/// it names no current context and none is asked for.
pub fn load(path: Option<&Path>, name: Option<&str>) -> CliResult<Option<Context>> {
    let (path, explicit) = match path {
        Some(p) => (p.to_path_buf(), true),
        None => match default_path() {
            Some(p) => (p, false),
            None => return Ok(None),
        },
    };
    let text = match std::fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && !explicit && name.is_none() => {
            return Ok(None);
        }
        Err(e) => {
            return Err(CliError::Usage(format!(
                "--config: reading {}: {e}",
                path.display()
            )));
        }
    };
    let file: ConfigFile = toml::from_str(&text).map_err(|e| {
        // The error is a few lines (where, the line quoted, what): keep where and what.
        let text = e.to_string();
        let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
        let what = match (lines.first(), lines.last()) {
            (Some(f), Some(l)) if f != l => format!("{f}: {l}"),
            (Some(f), _) => f.to_string(),
            _ => "not valid TOML".into(),
        };
        CliError::Usage(format!("--config: {}: {what}", path.display()))
    })?;
    let Some(wanted) = name.map(str::to_string).or(file.current_context) else {
        return Ok(None);
    };
    let mut ctx = file.contexts.get(&wanted).cloned().ok_or_else(|| {
        CliError::Usage(format!(
            "--context: {} has no context {wanted:?} (it has: {})",
            path.display(),
            file.contexts.keys().cloned().collect::<Vec<_>>().join(", ")
        ))
    })?;
    // Relative paths are relative to the config file.
    let dir = path.parent().unwrap_or(Path::new("."));
    for p in [
        &mut ctx.zk_auth_file,
        &mut ctx.tls_ca,
        &mut ctx.tls_cert,
        &mut ctx.tls_key,
        &mut ctx.token_file,
    ]
    .into_iter()
    .flatten()
    {
        if p.is_relative() {
            *p = dir.join(&*p);
        }
    }
    Ok(Some(ctx))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_context_fills_in_with_paths_relative_to_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config.toml");
        std::fs::write(
            &path,
            "current-context = \"prod\"\n[contexts.prod]\ntracker = [\"t:7070\"]\ntls-ca = \"ca.pem\"\ntoken-file = \"/abs/token\"\n[contexts.dev]\ntracker = [\"127.0.0.1:7070\"]\n",
        )
        .unwrap();
        let prod = load(Some(&path), None).unwrap().unwrap();
        assert_eq!(prod.tracker, ["t:7070"]);
        assert_eq!(prod.tls_ca.unwrap(), dir.path().join("ca.pem"));
        assert_eq!(prod.token_file.unwrap(), PathBuf::from("/abs/token"));
        let dev = load(Some(&path), Some("dev")).unwrap().unwrap();
        assert!(dev.tls_ca.is_none());
        let e = load(Some(&path), Some("staging")).unwrap_err().to_string();
        assert!(
            e.contains("no context \"staging\"") && e.contains("dev, prod"),
            "{e}"
        );
        std::fs::write(&path, "[contexts.x]\ntraker = []\n").unwrap();
        let e = load(Some(&path), Some("x")).unwrap_err().to_string();
        assert!(e.contains("traker"), "{e}");
        assert!(load(Some(&dir.path().join("none.toml")), None).is_err());
    }
}
