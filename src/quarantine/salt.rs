//! salt: the secret that keys the UID replacement of de-identified DICOM (see `deid`).
//!
//! With a public salt anyone could hash a candidate original UID and confirm it against a
//! quarantined file. The salt is read from the file the policy names (`[quarantine]
//! uid_salt_file`), or else from `uid-salt` in the store folder, generated from the
//! system's random source on first start and kept (0600) so that instances of one study
//! quarantined across restarts stay linked.

use std::fs::{self, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use super::QuarantineError;

/// Fewer bytes than this is not a secret worth the name.
const MIN_BYTES: usize = 16;
/// What a generated salt holds.
const GENERATED_BYTES: usize = 32;
/// Name of the generated salt in the store folder.
pub const FILE_NAME: &str = "uid-salt";

/// The salt from `configured`, or the store's own (made on first use).
pub fn load_or_create(store_dir: &Path, configured: Option<&Path>) -> Result<Vec<u8>, QuarantineError> {
    let bad = |path: &Path, message: String| QuarantineError::Salt { path: path.to_path_buf(), message };
    if let Some(path) = configured {
        let salt = fs::read(path).map_err(|e| bad(path, e.to_string()))?;
        if salt.len() < MIN_BYTES {
            return Err(bad(path, format!("holds {} bytes; a UID salt needs at least {MIN_BYTES} secret bytes", salt.len())));
        }
        return Ok(salt);
    }
    let path = store_dir.join(FILE_NAME);
    match fs::read(&path) {
        Ok(salt) if salt.len() >= MIN_BYTES => return Ok(salt),
        Ok(salt) => {
            return Err(bad(&path, format!("holds {} bytes; remove it to have a new one made, or put at least {MIN_BYTES} secret bytes in it", salt.len())))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(bad(&path, e.to_string())),
    }
    let mut salt = vec![0u8; GENERATED_BYTES];
    fs::File::open("/dev/urandom").and_then(|mut r| r.read_exact(&mut salt)).map_err(|e| bad(Path::new("/dev/urandom"), e.to_string()))?;
    let mut f = OpenOptions::new().write(true).create_new(true).mode(0o600).open(&path).map_err(|e| bad(&path, e.to_string()))?;
    f.write_all(&salt).and_then(|_| f.sync_all()).map_err(|e| bad(&path, e.to_string()))?;
    tracing::info!(path = %path.display(), "generated the quarantine's UID salt (keep it secret; back it up with the store)");
    Ok(salt)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn a_salt_is_made_once_private_and_kept() {
        let dir = tempfile::tempdir().unwrap();
        let first = load_or_create(dir.path(), None).unwrap();
        assert_eq!(first.len(), GENERATED_BYTES);
        assert_eq!(fs::metadata(dir.path().join(FILE_NAME)).unwrap().permissions().mode() & 0o777, 0o600);
        assert_eq!(load_or_create(dir.path(), None).unwrap(), first, "kept across restarts");
        let other = tempfile::tempdir().unwrap();
        assert_ne!(load_or_create(other.path(), None).unwrap(), first, "random per store");
    }

    #[test]
    fn a_configured_salt_wins_and_a_short_one_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("salt");
        fs::write(&file, b"0123456789abcdefXYZ").unwrap();
        assert_eq!(load_or_create(dir.path(), Some(&file)).unwrap(), b"0123456789abcdefXYZ");
        assert!(!dir.path().join(FILE_NAME).exists());
        fs::write(&file, b"short").unwrap();
        assert!(load_or_create(dir.path(), Some(&file)).unwrap_err().to_string().contains("at least 16"));
    }
}
