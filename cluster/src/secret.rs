//! The cluster secret: read from a file (so it is not in the environment or `ps`) or given
//! directly, and refused when it is too short to resist guessing.

use std::path::Path;

use anyhow::Context;

/// Shortest cluster secret accepted, in bytes.
pub const MIN_SECRET_BYTES: usize = 16;

/// Checks a cluster secret: at least [`MIN_SECRET_BYTES`] bytes of printable ASCII (it travels
/// in a gRPC header).
pub fn validate(secret: &str) -> anyhow::Result<()> {
    anyhow::ensure!(
        !secret.is_empty(),
        "no cluster secret: set PARTYLINE_CLUSTER_SECRET_FILE (or PARTYLINE_CLUSTER_SECRET) to the same value on every node and gateway"
    );
    anyhow::ensure!(
        secret.len() >= MIN_SECRET_BYTES,
        "the cluster secret is {} bytes; use at least {MIN_SECRET_BYTES} (for example `openssl rand -hex 32`)",
        secret.len()
    );
    anyhow::ensure!(
        secret.bytes().all(|b| b.is_ascii_graphic()),
        "the cluster secret must be printable ASCII without spaces (for example `openssl rand -hex 32`)"
    );
    Ok(())
}

/// Reads a secret file: its content without surrounding whitespace (a trailing newline is
/// common), then validated.
pub fn read_file(path: &Path) -> anyhow::Result<String> {
    let raw = std::fs::read_to_string(path)
        .with_context(|| format!("could not read the cluster secret file {}", path.display()))?;
    let secret = raw.trim().to_string();
    validate(&secret).with_context(|| format!("in {}", path.display()))?;
    Ok(secret)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_empty_and_spaced_secrets_are_refused() {
        assert!(validate("").is_err());
        let short = validate("fifteen-bytes!!").unwrap_err().to_string();
        assert!(short.contains("15 bytes") && short.contains("at least 16"), "{short}");
        assert!(validate("sixteen bytes ok").is_err(), "spaces are refused");
        validate("sixteen-bytes-ok").unwrap();
    }

    #[test]
    fn a_secret_file_is_trimmed_and_checked() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("secret");
        std::fs::write(&path, "0123456789abcdef0123\n").unwrap();
        assert_eq!(read_file(&path).unwrap(), "0123456789abcdef0123");
        std::fs::write(&path, "short\n").unwrap();
        let err = format!("{:#}", read_file(&path).unwrap_err());
        assert!(err.contains("5 bytes") && err.contains(&path.display().to_string()), "{err}");
        assert!(read_file(&dir.path().join("missing")).is_err());
    }
}
