//! store: the on-disk quarantine. Each flagged input is one content-addressed object
//! (`objects/<sha256>.<ext>`, the bytes as stored: DICOM already de-identified) and one
//! record (`records/<unix ms>-<sha256>.json`: verdict, detector scores, model version,
//! time). Object and record are each written to a temporary file, fsynced, renamed and the
//! folder fsynced before `put` returns, so an answer never goes out for an input that a
//! crash could still lose. A record is written last: an object without one (a crash in
//! between) is removed at the next start. The store keeps under `max_bytes` by evicting
//! the oldest entries; an input that cannot fit even in an empty store is refused.

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use thiserror::Error;

use crate::metrics;

/// What is kept about one quarantined input besides its bytes.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Record {
    /// sha256 of the stored bytes (the object's name).
    pub id: String,
    /// Object path relative to the store folder.
    pub object: String,
    /// Object + record bytes, counted against the cap.
    pub bytes: u64,
    pub received_unix_ms: u64,
    /// dicom | image | tensor
    pub input_kind: String,
    pub deidentified: bool,
    /// The DICOM says its pixels carry burned-in text, which de-identification does not remove.
    pub burned_in_annotation: bool,
    pub model: String,
    pub model_version: String,
    pub classifier_sha256: String,
    pub verdict: String,
    pub fused_score: f32,
    pub detectors: Vec<RecordedScore>,
    pub campaign_alarm: bool,
    /// What the policy did with the request: annotate, reject (or shadow_*).
    pub policy: String,
    /// sha256 of the caller's request id: links logs to entries without storing the id,
    /// which PACS integrations often fill with a SOP Instance UID.
    pub request_id_sha256: String,
    /// Who sent it: the caller's name from the policy's `[access]` (empty in records
    /// written before callers were recorded).
    #[serde(default)]
    pub caller: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct RecordedScore {
    pub name: String,
    pub score: f32,
    pub threshold: f32,
    pub fired: bool,
}

#[derive(Debug, Error)]
pub enum QuarantineError {
    #[error("quarantine {path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("input of {bytes} bytes cannot fit in the quarantine cap of {cap} bytes")]
    TooLarge { bytes: u64, cap: u64 },
    #[error("record {path}: {message}")]
    BadRecord { path: PathBuf, message: String },
    #[error("DICOM de-identification failed: {0}")]
    Deidentify(String),
    #[error("quarantine UID salt {path}: {message}")]
    Salt { path: PathBuf, message: String },
    #[error("the flagged image could not be re-encoded for the quarantine: {0}")]
    Reencode(String),
}

impl QuarantineError {
    /// Metric label.
    pub fn reason(&self) -> &'static str {
        match self {
            QuarantineError::Io { .. } => "io",
            QuarantineError::TooLarge { .. } => "too_large",
            QuarantineError::BadRecord { .. } => "bad_record",
            QuarantineError::Deidentify(_) => "deidentify",
            QuarantineError::Salt { .. } => "salt",
            QuarantineError::Reencode(_) => "reencode",
        }
    }
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> QuarantineError + '_ {
    move |source| QuarantineError::Io { path: path.to_path_buf(), source }
}

pub struct QuarantineStore {
    dir: PathBuf,
    max_bytes: u64,
    /// Keys the UID replacement of de-identified DICOM (see `salt.rs`).
    uid_salt: Vec<u8>,
    /// Entries by (time, id), oldest first: the eviction order. Writers hold the lock for
    /// the whole put, so size accounting and eviction never race.
    index: Mutex<BTreeMap<(u64, String), u64>>,
}

/// Outcome of one `put`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stored {
    pub id: String,
    /// The same bytes were already quarantined; nothing new was written.
    pub duplicate: bool,
    pub evicted: usize,
}

impl QuarantineStore {
    /// Opens (creating) the store and rebuilds its index from the records on disk. The
    /// folders are made (or made again) 0700 and files are written 0600: they hold
    /// patient images. Temporary files a crash left behind are removed.
    pub fn open(dir: &Path, max_bytes: u64, uid_salt_file: Option<&Path>) -> Result<QuarantineStore, QuarantineError> {
        for sub in ["", "objects", "records"] {
            let d = dir.join(sub);
            fs::DirBuilder::new().recursive(true).mode(0o700).create(&d).map_err(io(&d))?;
            fs::set_permissions(&d, fs::Permissions::from_mode(0o700)).map_err(io(&d))?;
        }
        let uid_salt = super::salt::load_or_create(dir, uid_salt_file)?;
        let records = dir.join("records");
        for entry in fs::read_dir(&records).map_err(io(&records))?.flatten() {
            if entry.path().extension().is_some_and(|x| x == "tmp") {
                tracing::warn!(file = %entry.path().display(), "removing a quarantine record left unfinished by a crash");
                let _ = fs::remove_file(entry.path());
            }
        }
        let mut index = BTreeMap::new();
        let mut live = std::collections::HashSet::new();
        for rec in list_records(dir)? {
            live.insert(rec.object.clone());
            index.insert((rec.received_unix_ms, rec.id.clone()), rec.bytes);
        }
        let objects = dir.join("objects");
        for entry in fs::read_dir(&objects).map_err(io(&objects))? {
            let entry = entry.map_err(io(&objects))?;
            let rel = format!("objects/{}", entry.file_name().to_string_lossy());
            if !live.contains(&rel) {
                // Written before a crash that prevented its record, or a temporary file.
                tracing::warn!(object = %rel, "removing quarantine object without a record");
                let _ = fs::remove_file(entry.path());
            }
        }
        let store = QuarantineStore { dir: dir.to_path_buf(), max_bytes, uid_salt, index: Mutex::new(index) };
        store.export_gauges(&store.index.lock().unwrap_or_else(|p| p.into_inner()));
        Ok(store)
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn uid_salt(&self) -> &[u8] {
        &self.uid_salt
    }

    /// Writes `bytes` and its record durably; `record.id`, `object` and `bytes` are filled in.
    pub fn put(&self, data: &[u8], ext: &str, mut record: Record) -> Result<Stored, QuarantineError> {
        let id = hex::encode(Sha256::digest(data));
        let object_rel = format!("objects/{id}.{ext}");
        let mut index = self.index.lock().unwrap_or_else(|p| p.into_inner());
        if index.keys().any(|(_, k)| *k == id) {
            return Ok(Stored { id, duplicate: true, evicted: 0 });
        }
        record.id = id.clone();
        record.object = object_rel.clone();
        let record_len = serde_json::to_vec_pretty(&record).map(|v| v.len()).unwrap_or(0) as u64 + 32;
        record.bytes = data.len() as u64 + record_len;
        if record.bytes > self.max_bytes {
            return Err(QuarantineError::TooLarge { bytes: record.bytes, cap: self.max_bytes });
        }
        let mut evicted = 0;
        while index.values().sum::<u64>() + record.bytes > self.max_bytes {
            let Some(((time, old), _)) = index.pop_first() else { break };
            self.remove_entry(time, &old);
            evicted += 1;
        }
        write_durably(&self.dir.join(&object_rel), data)?;
        let json = serde_json::to_vec_pretty(&record).map_err(|e| QuarantineError::BadRecord { path: self.dir.clone(), message: e.to_string() })?;
        let record_path = self.dir.join("records").join(format!("{:013}-{id}.json", record.received_unix_ms));
        if let Err(e) = write_durably(&record_path, &json) {
            let _ = fs::remove_file(self.dir.join(&object_rel));
            return Err(e);
        }
        index.insert((record.received_unix_ms, id.clone()), record.bytes);
        metrics::record_quarantine_evictions(evicted);
        self.export_gauges(&index);
        Ok(Stored { id, duplicate: false, evicted })
    }

    fn remove_entry(&self, time: u64, id: &str) {
        let record_path = self.dir.join("records").join(format!("{time:013}-{id}.json"));
        if let Ok(rec) = read_record(&record_path) {
            let _ = fs::remove_file(self.dir.join(rec.object));
        }
        let _ = fs::remove_file(record_path);
    }

    fn export_gauges(&self, index: &BTreeMap<(u64, String), u64>) {
        metrics::set_quarantine_usage(index.values().sum(), index.len(), self.max_bytes);
    }
}

/// Every record in the store, oldest first (for the `quarantine` command and start-up).
pub fn list_records(dir: &Path) -> Result<Vec<Record>, QuarantineError> {
    let records = dir.join("records");
    let mut names: Vec<PathBuf> =
        fs::read_dir(&records).map_err(io(&records))?.filter_map(|e| e.ok().map(|e| e.path())).filter(|p| p.extension().is_some_and(|x| x == "json")).collect();
    names.sort();
    names.iter().map(|p| read_record(p)).collect()
}

fn read_record(path: &Path) -> Result<Record, QuarantineError> {
    let bytes = fs::read(path).map_err(io(path))?;
    serde_json::from_slice(&bytes).map_err(|e| QuarantineError::BadRecord { path: path.to_path_buf(), message: e.to_string() })
}

/// temp file -> write -> fsync -> rename -> fsync the folder.
fn write_durably(path: &Path, data: &[u8]) -> Result<(), QuarantineError> {
    let parent = path.parent().unwrap_or(Path::new("."));
    let tmp = path.with_extension("tmp");
    let result = (|| {
        let mut f = fs::OpenOptions::new().write(true).create(true).truncate(true).mode(0o600).open(&tmp)?;
        f.write_all(data)?;
        f.sync_all()?;
        fs::rename(&tmp, path)?;
        File::open(parent)?.sync_all()
    })();
    result.map_err(|source| {
        let _ = fs::remove_file(&tmp);
        QuarantineError::Io { path: path.to_path_buf(), source }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(ms: u64) -> Record {
        Record {
            id: String::new(),
            object: String::new(),
            bytes: 0,
            received_unix_ms: ms,
            input_kind: "image".into(),
            deidentified: false,
            burned_in_annotation: false,
            model: "m".into(),
            model_version: "1".into(),
            classifier_sha256: "abc".into(),
            verdict: "adversarial".into(),
            fused_score: 1.5,
            detectors: vec![RecordedScore { name: "d".into(), score: 3.0, threshold: 2.0, fired: true }],
            campaign_alarm: false,
            policy: "annotate".into(),
            request_id_sha256: String::new(),
            caller: String::new(),
        }
    }

    #[test]
    fn put_is_content_addressed_and_survives_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let store = QuarantineStore::open(dir.path(), 1 << 20, None).unwrap();
        let a = store.put(b"first input", "png", record(1)).unwrap();
        assert_eq!(a.id, hex::encode(Sha256::digest(b"first input")));
        assert!(store.put(b"first input", "png", record(2)).unwrap().duplicate);
        assert_eq!(fs::read(dir.path().join(format!("objects/{}.png", a.id))).unwrap(), b"first input");
        // An orphan object (crash before its record) is cleaned at the next open.
        fs::write(dir.path().join("objects/orphan.png"), b"x").unwrap();
        let reopened = QuarantineStore::open(dir.path(), 1 << 20, None).unwrap();
        assert!(!dir.path().join("objects/orphan.png").exists());
        let recs = list_records(reopened.dir()).unwrap();
        assert_eq!(recs.len(), 1);
        // Folders 0700, files 0600; an unfinished record (kill -9 mid-write) is cleaned.
        let mode = |p: &Path| fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!((mode(dir.path()), mode(&dir.path().join("objects")), mode(&dir.path().join("records"))), (0o700, 0o700, 0o700));
        assert_eq!(mode(&dir.path().join(format!("objects/{}.png", a.id))), 0o600);
        fs::write(dir.path().join("records/0000000000001-x.tmp"), b"{").unwrap();
        drop(QuarantineStore::open(dir.path(), 1 << 20, None).unwrap());
        assert!(!dir.path().join("records/0000000000001-x.tmp").exists());
        assert_eq!(recs[0].id, a.id);
        assert_eq!(recs[0].detectors[0].score, 3.0);
    }

    #[test]
    fn the_cap_evicts_oldest_first_and_refuses_what_cannot_fit() {
        let dir = tempfile::tempdir().unwrap();
        let store = QuarantineStore::open(dir.path(), 3000, None).unwrap();
        let ids: Vec<String> = (0..3u8).map(|i| store.put(&[i; 900], "bin", record(10 + i as u64)).unwrap().id).collect();
        let recs = list_records(dir.path()).unwrap();
        assert!(recs.len() < 3, "cap of 3000 bytes holds fewer than three 900-byte inputs with records");
        assert_eq!(recs.last().unwrap().id, ids[2], "the newest stays");
        assert!(!recs.iter().any(|r| r.id == ids[0]), "the oldest went first");
        let total: u64 = recs.iter().map(|r| r.bytes).sum();
        assert!(total <= 3000);
        let err = store.put(&[7u8; 5000], "bin", record(20)).unwrap_err();
        assert!(matches!(err, QuarantineError::TooLarge { .. }), "{err}");
    }

    #[test]
    fn an_unwritable_store_gives_an_io_error() {
        let dir = tempfile::tempdir().unwrap();
        let store = QuarantineStore::open(dir.path(), 1 << 20, None).unwrap();
        // Works as root too, where permission bits would not stop the write.
        fs::remove_dir_all(dir.path().join("objects")).unwrap();
        fs::write(dir.path().join("objects"), b"not a folder").unwrap();
        let err = store.put(b"x", "png", record(1)).unwrap_err();
        assert_eq!(err.reason(), "io", "{err}");
    }
}
