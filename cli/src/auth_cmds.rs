//! `lts auth`: make the credentials a secured tracker asks for — tokens (printed once, with
//! the line for the auth file), a CA, and certificates it signs.

use std::path::{Path, PathBuf};
use std::time::Duration;

use lts_core::pki::Ca;
use lts_tracker::auth;

use crate::error::{CliError, CliResult};

/// `lts auth …`.
#[derive(Debug, clap::Subcommand)]
pub enum AuthCommand {
    /// Make a new random token: prints the token (give it to the caller, e.g. in a Secret)
    /// and the auth-file entry that holds only its hash.
    Token(TokenArgs),
    /// Make a new CA (`ca.pem`, `ca-key.pem`) in a directory.
    Ca(CaArgs),
    /// Make a certificate signed by a CA made with `lts auth ca`: for a tracker (name its DNS
    /// names and IP addresses) or a client (its common name is the principal's certificate
    /// name in the auth file).
    Cert(CertArgs),
}

/// `lts auth token`.
#[derive(Debug, clap::Args)]
pub struct TokenArgs {
    /// The principal's name in the auth file.
    #[arg(long, default_value = "my-client")]
    pub name: String,
    /// The token stops working after this long (e.g. `90d`); default: never.
    #[arg(long, value_parser = humantime::parse_duration)]
    pub expires_in: Option<Duration>,
    /// Write the token to this file (mode 0600) instead of printing it.
    #[arg(long)]
    pub out: Option<PathBuf>,
}

/// `lts auth ca`.
#[derive(Debug, clap::Args)]
pub struct CaArgs {
    /// Directory to write `ca.pem` and `ca-key.pem` to (created; existing files are kept).
    #[arg(long)]
    pub dir: PathBuf,
}

/// `lts auth cert`.
#[derive(Debug, clap::Args)]
pub struct CertArgs {
    /// Directory of the CA (`lts auth ca --dir`); the certificate is written there as
    /// `NAME.pem` and `NAME-key.pem`.
    #[arg(long)]
    pub dir: PathBuf,
    /// Common name: a client principal's certificate name, or the tracker's name.
    #[arg(long)]
    pub name: String,
    /// DNS names and IP addresses the certificate is valid for (a tracker's), repeated or
    /// comma-separated.
    #[arg(long, value_delimiter = ',')]
    pub san: Vec<String>,
    /// How long it is valid.
    #[arg(long, default_value = "90d", value_parser = humantime::parse_duration)]
    pub valid_for: Duration,
}

/// Runs an `lts auth` command.
pub fn run(command: AuthCommand) -> CliResult {
    match command {
        AuthCommand::Token(a) => token(a),
        AuthCommand::Ca(a) => ca(a),
        AuthCommand::Cert(a) => cert(a),
    }
}

fn token(a: TokenArgs) -> CliResult {
    let (token, hash) = auth::new_token();
    let expires = a
        .expires_in
        .map(|d| {
            chrono::Duration::from_std(d)
                .ok()
                .and_then(|d| chrono::Utc::now().checked_add_signed(d))
                .ok_or_else(|| CliError::Usage("--expires-in: too long".into()))
        })
        .transpose()?;
    let mut entry = format!(
        "  - name: {}\n    tokens:\n      - sha256: {hash}\n",
        a.name
    );
    if let Some(e) = expires {
        entry.push_str(&format!(
            "        expires: {}\n",
            e.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
        ));
    }
    entry.push_str("    grants:\n      - role: submitter\n        groups: [CHANGE-ME]\n");
    match &a.out {
        Some(path) => {
            write_private(path, token.as_bytes())?;
            eprintln!("token written to {}", path.display());
        }
        None => println!("token: {token}"),
    }
    println!("\n# the auth file entry (it holds only the token's hash):\nprincipals:\n{entry}");
    Ok(())
}

fn ca(a: CaArgs) -> CliResult {
    let (cert, key) = (a.dir.join("ca.pem"), a.dir.join("ca-key.pem"));
    if cert.exists() || key.exists() {
        return Err(CliError::Usage(format!(
            "--dir: {} already holds a CA; remove it first to make a new one",
            a.dir.display()
        )));
    }
    std::fs::create_dir_all(&a.dir)
        .map_err(|e| CliError::Failed(format!("creating {}: {e}", a.dir.display())))?;
    let ca = Ca::new("LTS CA").map_err(|e| CliError::Failed(format!("making the CA: {e}")))?;
    write_public(&cert, ca.cert_pem().as_bytes())?;
    write_private(&key, ca.key_pem().as_bytes())?;
    println!("CA written to {} (key: {})", cert.display(), key.display());
    Ok(())
}

fn cert(a: CertArgs) -> CliResult {
    let read = |p: &Path| {
        std::fs::read_to_string(p)
            .map_err(|e| CliError::Usage(format!("--dir: reading {}: {e}", p.display())))
    };
    let ca = Ca::load(
        &read(&a.dir.join("ca.pem"))?,
        &read(&a.dir.join("ca-key.pem"))?,
    )
    .map_err(|e| CliError::Usage(format!("--dir: not a CA made by `lts auth ca`: {e}")))?;
    if a.name.is_empty() || a.name.contains(['/', '\\']) {
        return Err(CliError::Usage(
            "--name: must be non-empty and hold no '/'".into(),
        ));
    }
    let sans: Vec<&str> = a.san.iter().map(String::as_str).collect();
    let leaf = ca
        .issue(&a.name, &sans, a.valid_for)
        .map_err(|e| CliError::Usage(format!("--san: {e}")))?;
    let (cert, key) = (
        a.dir.join(format!("{}.pem", a.name)),
        a.dir.join(format!("{}-key.pem", a.name)),
    );
    write_public(&cert, leaf.cert_pem.as_bytes())?;
    write_private(&key, leaf.key_pem.as_bytes())?;
    println!(
        "certificate written to {} (key: {})",
        cert.display(),
        key.display()
    );
    Ok(())
}

fn write_public(path: &Path, bytes: &[u8]) -> CliResult {
    std::fs::write(path, bytes)
        .map_err(|e| CliError::Failed(format!("writing {}: {e}", path.display())))
}

/// Writes a secret readable by its owner only.
fn write_private(path: &Path, bytes: &[u8]) -> CliResult {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .and_then(|mut f| f.write_all(bytes))
        .map_err(|e| CliError::Failed(format!("writing {}: {e}", path.display())))
}
