//! A durable local FIFO (one SQLite file) for work that could not be delivered yet: the
//! retrying JobClient spools submits here while no tracker accepts them.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use rusqlite::{Connection, params};

/// Errors of the spool.
#[derive(Debug, thiserror::Error)]
#[error("spool {path}: {message}")]
pub struct SpoolError {
    path: String,
    message: String,
}

/// A durable FIFO of opaque text entries.
#[derive(Debug, Clone)]
pub struct Spool {
    path: PathBuf,
    conn: Arc<Mutex<Connection>>,
}

impl Spool {
    /// Opens (or creates) the spool file.
    pub fn open(path: impl AsRef<Path>) -> Result<Spool, SpoolError> {
        let path = path.as_ref().to_path_buf();
        let err = |e: &dyn std::fmt::Display| SpoolError {
            path: path.display().to_string(),
            message: e.to_string(),
        };
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|e| err(&e))?;
        }
        let conn = Connection::open(&path).map_err(|e| err(&e))?;
        conn.pragma_update(None, "journal_mode", "WAL")
            .and_then(|_| conn.pragma_update(None, "synchronous", "FULL"))
            .and_then(|_| {
                conn.execute_batch(
                    "CREATE TABLE IF NOT EXISTS spool (id INTEGER PRIMARY KEY AUTOINCREMENT, body TEXT NOT NULL)",
                )
            })
            .map_err(|e| err(&e))?;
        Ok(Spool {
            path,
            conn: Arc::new(Mutex::new(conn)),
        })
    }

    fn err(&self, e: impl std::fmt::Display) -> SpoolError {
        SpoolError {
            path: self.path.display().to_string(),
            message: e.to_string(),
        }
    }

    async fn with<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Connection) -> rusqlite::Result<T> + Send + 'static,
    ) -> Result<T, SpoolError> {
        let conn = self.conn.clone();
        let r = tokio::task::spawn_blocking(move || {
            let mut c = conn.lock().unwrap_or_else(|e| e.into_inner());
            f(&mut c)
        })
        .await
        .map_err(|e| self.err(e))?;
        r.map_err(|e| self.err(e))
    }

    /// Appends entries durably (one transaction), in order.
    pub async fn push(&self, bodies: Vec<String>) -> Result<(), SpoolError> {
        self.with(move |c| {
            let tx = c.transaction()?;
            {
                let mut stmt = tx.prepare_cached("INSERT INTO spool (body) VALUES (?1)")?;
                for b in &bodies {
                    stmt.execute([b])?;
                }
            }
            tx.commit()
        })
        .await
    }

    /// Appends entries durably (one transaction), in order; their ids.
    pub async fn push_returning_ids(&self, bodies: Vec<String>) -> Result<Vec<i64>, SpoolError> {
        self.with(move |c| {
            let tx = c.transaction()?;
            let mut ids = Vec::with_capacity(bodies.len());
            {
                let mut stmt = tx.prepare_cached("INSERT INTO spool (body) VALUES (?1)")?;
                for b in &bodies {
                    stmt.execute([b])?;
                    ids.push(tx.last_insert_rowid());
                }
            }
            tx.commit()?;
            Ok(ids)
        })
        .await
    }

    /// The oldest `n` entries with their ids.
    pub async fn peek(&self, n: usize) -> Result<Vec<(i64, String)>, SpoolError> {
        self.with(move |c| {
            let mut stmt = c.prepare_cached("SELECT id, body FROM spool ORDER BY id LIMIT ?1")?;
            let rows = stmt
                .query_map([n as i64], |r| Ok((r.get(0)?, r.get(1)?)))?
                .collect::<rusqlite::Result<Vec<_>>>()?;
            Ok(rows)
        })
        .await
    }

    /// Removes entries by id.
    pub async fn remove(&self, ids: Vec<i64>) -> Result<(), SpoolError> {
        self.with(move |c| {
            let tx = c.transaction()?;
            {
                let mut stmt = tx.prepare_cached("DELETE FROM spool WHERE id = ?1")?;
                for id in &ids {
                    stmt.execute(params![id])?;
                }
            }
            tx.commit()
        })
        .await
    }

    /// Where entries that cannot be delivered are kept: `<spool file>.quarantine.jsonl`.
    pub fn quarantine_path(&self) -> PathBuf {
        let mut name = self.path.as_os_str().to_owned();
        name.push(".quarantine.jsonl");
        PathBuf::from(name)
    }

    /// Moves entries that can never be delivered (unreadable, or refused for good) out of the
    /// way: each is appended, with why, as one JSON line to [`Spool::quarantine_path`]
    /// (fsynced), then removed from the spool — nothing behind them waits, and nothing is
    /// dropped unseen.
    pub async fn quarantine(&self, entries: Vec<(i64, String, String)>) -> Result<(), SpoolError> {
        if entries.is_empty() {
            return Ok(());
        }
        let path = self.quarantine_path();
        let lines: String = entries
            .iter()
            .map(|(id, body, reason)| {
                let line = serde_json::json!({
                    "id": id,
                    "at_ms": lts_core::now_ms(),
                    "reason": reason,
                    "body": body,
                });
                format!("{line}\n")
            })
            .collect();
        let written = tokio::task::spawn_blocking(move || -> std::io::Result<()> {
            use std::io::Write;
            let mut f = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&path)?;
            f.write_all(lines.as_bytes())?;
            f.sync_all()
        })
        .await
        .map_err(|e| self.err(e))?;
        written.map_err(|e| self.err(format!("quarantine file: {e}")))?;
        tracing::error!(
            n = entries.len(),
            file = %self.quarantine_path().display(),
            "spool entries that cannot be delivered moved to the quarantine file"
        );
        self.remove(entries.into_iter().map(|(id, _, _)| id).collect())
            .await
    }

    /// How many entries wait.
    pub async fn len(&self) -> Result<u64, SpoolError> {
        self.with(|c| c.query_row("SELECT COUNT(*) FROM spool", [], |r| r.get::<_, i64>(0)))
            .await
            .map(|n| n as u64)
    }

    /// Whether nothing waits.
    pub async fn is_empty(&self) -> Result<bool, SpoolError> {
        Ok(self.len().await? == 0)
    }
}
