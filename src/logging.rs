//! logging: log fields made from what callers send. Such text may carry patient data (a
//! request id is often a SOP Instance UID) or control characters (a newline inside a DICOM
//! string forged a whole log line), so request ids are logged as a hash and free text is
//! escaped.

use std::fmt;

use sha2::{Digest, Sha256};

/// The first 16 hex digits of SHA-256(request id): links log lines of one request, and a
/// quarantine record (whose `request_id_sha256` starts with it), without the id itself.
pub fn request_ref(request_id: &str) -> String {
    if request_id.is_empty() {
        return String::new();
    }
    hex::encode(&Sha256::digest(request_id.as_bytes())[..8])
}

/// Displays text with control characters (newlines, escape sequences) escaped, so that
/// one log field stays on one line and cannot look like another entry.
pub struct Escaped<'a>(pub &'a str);

impl fmt::Display for Escaped<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for c in self.0.chars() {
            if c.is_control() {
                write!(f, "{}", c.escape_default())?;
            } else {
                write!(f, "{c}")?;
            }
        }
        Ok(())
    }
}

/// [`Escaped`] of any displayable value (an error message quoting a DICOM string).
pub fn escaped(value: &impl fmt::Display) -> String {
    Escaped(&value.to_string()).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_characters_are_escaped_and_ids_hashed() {
        let forged = "MONOCHROME3\n2026-12-01T00:00:00Z  INFO medsentry: all good\x1b[0m";
        let out = escaped(&forged);
        assert!(!out.contains('\n') && !out.contains('\x1b'), "{out}");
        assert!(out.contains("\\n2026-12-01") && out.contains("\\u{1b}"), "{out}");
        assert_eq!(escaped(&"plain text: ok"), "plain text: ok");
        let id = "1.2.840.113619.2.55.3.604688119";
        assert_eq!(request_ref(id).len(), 16);
        assert!(hex::encode(Sha256::digest(id.as_bytes())).starts_with(&request_ref(id)));
        assert_eq!(request_ref(""), "");
    }
}
