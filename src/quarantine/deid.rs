//! De-identification of a flagged DICOM input before it is written to the quarantine disk.
//!
//! [`deidentify`] applies the Basic Application Level Confidentiality Profile of DICOM
//! PS3.15 Annex E to a Part 10 file, in the main data set and in every sequence item at
//! any depth:
//! * the 459 attributes of Table E.1-1 ([`profile_tags`]): X removed, Z emptied, D given a
//!   dummy of the same VR (`ANONYMIZED`, `19000101`, `000000`, ...; a sequence gets one
//!   empty item), U replaced by a new UID; compound codes (X/Z/D, ...) take the alternative
//!   that keeps any IOD conformant, see `deid_table.rs`;
//! * UIDs become `2.25.<decimal of the first 16 bytes of SHA-256(salt || UID)>`, the
//!   same for every instance under one salt, so that the quarantined instances of one
//!   study stay linked; the salt is the store's secret (see `store.rs`), so a replaced UID
//!   cannot be recomputed from a guessed original by anyone without it;
//! * every private attribute (odd group), curve (50xx) and overlay (60xx) group, and the
//!   retired group lengths (stale once a group is edited) are removed;
//! * Patient Identity Removed = YES, De-identification Method and its code (DCM 113100)
//!   are added; the file meta group and preamble are rewritten for medsentry, with Media
//!   Storage SOP Instance UID = the new SOP Instance UID.
//!
//! The transfer syntax and the Pixel Data element (native, or encapsulated fragments) are
//! kept as they are: the quarantined copy decodes to the pixels that were screened.
//!
//! What it does not do:
//! * clean pixels: text burned into the image stays. Burned In Annotation = YES is
//!   reported as [`Deidentified::burned_in_annotation`] for the caller to act on;
//! * the profile's options (retain dates or device identity, clean descriptors or
//!   structured content, ...), nor free text in attributes Table E.1-1 does not list;
//! * protect the mapping from whoever can read the salt: the salt file is as sensitive as
//!   a key (PS3.15 E.1.1 warns about unkeyed hashes).
//!
//! Deflated data sets are handled too, without the bounds pre-scan the other transfer
//! syntaxes get (decode::dicom_guard cannot walk compressed bytes).

use std::panic::{catch_unwind, AssertUnwindSafe};

use dicom_core::value::{DataSetSequence, Value, C};
use dicom_core::{DataElement, PrimitiveValue, Tag, VR};
use dicom_dictionary_std::tags;
use dicom_object::file::ReadPreamble;
use dicom_object::mem::{InMemElement, InMemFragment};
use dicom_object::{DefaultDicomObject, FileMetaTable, FileMetaTableBuilder, InMemDicomObject, OpenFileOptions};
use sha2::{Digest, Sha256};

use crate::decode::dicom_guard;

#[path = "deid_table.rs"]
mod table;
use table::Effect;

/// medsentry's implementation class UID (a 2.25 UUID-derived root made once for it): the
/// rewritten file meta group names the de-identifying application, as PS3.15 E.1.1 asks.
const IMPLEMENTATION_CLASS_UID: &str = "2.25.56662040567508633377649441143653992562";
const IMPLEMENTATION_VERSION_NAME: &str = "MEDSENTRY_DEID";
/// 64 characters: the maximum of an LO value.
const METHOD: &str = "DICOM PS3.15 E.1 Basic Application Level Confidentiality Profile";

// Dummy values of action D. Dates and times are valid DA / TM / DT values (rather than
// "00000000"), so that strict readers still parse them.
const DUMMY_TEXT: &str = "ANONYMIZED";
const DUMMY_DATE: &str = "19000101";
const DUMMY_TIME: &str = "000000";
const DUMMY_DATETIME: &str = "19000101000000";

/// A de-identified DICOM Part 10 file.
#[derive(Debug, Clone)]
pub struct Deidentified {
    /// The file: 128-byte preamble, "DICM", new meta group, de-identified data set.
    pub bytes: Vec<u8>,
    /// Attributes removed (profile X, private, curve / overlay groups, group lengths),
    /// nested ones included.
    pub removed: usize,
    /// Attributes whose value was emptied or replaced (profile Z, D, U), nested ones included.
    pub replaced: usize,
    /// Burned In Annotation (0028,0301) is YES: identifying text may be in the pixels,
    /// which are kept as they are.
    pub burned_in_annotation: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum DeidError {
    /// The input could not be read as DICOM Part 10.
    #[error("cannot de-identify: the input is not readable DICOM: {0}")]
    Parse(String),
    /// The de-identified object could not be encoded (e.g. a transfer syntax dicom-rs
    /// cannot write).
    #[error("cannot write the de-identified DICOM file: {0}")]
    Write(String),
}

/// The (group, element, keyword) of every attribute the profile removes or replaces, for tests and docs.
///
/// Sorted by tag. The repeating groups Curve Data (50xx) and Overlay Data / Comments (60xx)
/// appear once with xx = 00; private attributes (odd groups), removed by rule, are not listed.
pub fn profile_tags() -> &'static [(u16, u16, &'static str)] {
    table::TAGS
}

/// De-identify one DICOM Part 10 file (with the 128-byte preamble, or starting at "DICM",
/// or at the file meta group), keeping its transfer syntax and pixel data.
/// `uid_salt` keys the UID replacement (at least 16 secret bytes).
pub fn deidentify(dicom_part10: &[u8], uid_salt: &[u8]) -> Result<Deidentified, DeidError> {
    let file = guarded(|| open(dicom_part10)).map_err(DeidError::Parse)?;
    let meta = file.meta().clone();
    let burned_in_annotation = file.get(tags::BURNED_IN_ANNOTATION).and_then(|e| e.to_str().ok()).is_some_and(|v| trim(&v) == "YES");

    let mut n = Pass { removed: 0, replaced: 0, salt: uid_salt };
    let mut obj = clean(file.into_inner(), &mut n);
    let s = |tag, vr, v: &str| -> InMemElement { DataElement::new(tag, vr, PrimitiveValue::from(v)) };
    obj.put(s(tags::PATIENT_IDENTITY_REMOVED, VR::CS, "YES"));
    obj.put(s(tags::DEIDENTIFICATION_METHOD, VR::LO, METHOD));
    let code = InMemDicomObject::from_element_iter([
        s(tags::CODE_VALUE, VR::SH, "113100"),
        s(tags::CODING_SCHEME_DESIGNATOR, VR::SH, "DCM"),
        s(tags::CODE_MEANING, VR::LO, "Basic Application Confidentiality Profile"),
    ]);
    obj.put(DataElement::new(tags::DEIDENTIFICATION_METHOD_CODE_SEQUENCE, VR::SQ, DataSetSequence::from(vec![code])));

    // The new SOP Instance UID, or, for a data set without one, the meta group's mapped
    // the same way: either way Media Storage SOP Instance UID matches the data set.
    let sop_uid = obj
        .get(tags::SOP_INSTANCE_UID)
        .and_then(|e| e.to_str().ok())
        .map(|u| trim(&u).to_string())
        .filter(|u| !u.is_empty())
        .unwrap_or_else(|| new_uid(meta.media_storage_sop_instance_uid(), uid_salt));
    let new_meta = FileMetaTableBuilder::new()
        .transfer_syntax(meta.transfer_syntax())
        .media_storage_sop_class_uid(meta.media_storage_sop_class_uid())
        .media_storage_sop_instance_uid(sop_uid)
        .implementation_class_uid(IMPLEMENTATION_CLASS_UID)
        .implementation_version_name(IMPLEMENTATION_VERSION_NAME)
        .build()
        .map_err(|e| DeidError::Write(format!("file meta group: {}", describe(&e))))?;
    let file = obj.with_exact_meta(new_meta);

    let mut bytes = Vec::with_capacity(dicom_part10.len() + 1024);
    guarded(|| file.write_all(&mut bytes).map_err(|e| describe(&e))).map_err(DeidError::Write)?;
    Ok(Deidentified { bytes, removed: n.removed, replaced: n.replaced, burned_in_annotation })
}

/// dicom-rs can panic on hostile input (see decode/dicom.rs): a panic becomes an error
/// instead of taking the server down. (Needs panic = "unwind".)
fn guarded<T>(f: impl FnOnce() -> Result<T, String>) -> Result<T, String> {
    catch_unwind(AssertUnwindSafe(f)).unwrap_or_else(|_| Err("dicom-rs panicked on this input".into()))
}

/// Opens the bytes the way decode::dicom does, with the same bounds pre-scan first: dicom-rs
/// allocates whatever length an element header declares.
fn open(bytes: &[u8]) -> Result<DefaultDicomObject, String> {
    let with_magic: Vec<u8>;
    let body = match bytes {
        b if b.len() >= 132 && &b[128..132] == b"DICM" => &b[128..],
        b if b.starts_with(b"DICM") => b,
        // A bare meta group, starting with (0002,0000) UL: dicom-rs wants the magic code first.
        b if b.starts_with(&[0x02, 0x00, 0x00, 0x00, b'U', b'L']) => {
            with_magic = [b"DICM".as_slice(), b].concat();
            &with_magic
        }
        _ => return Err("no DICM marker at offset 128 or 0, nor a file meta group at 0".into()),
    };
    let data_set_start = dicom_guard::check_meta(body)?;
    let meta = FileMetaTable::from_reader(body).map_err(|e| format!("file meta group: {}", describe(&e)))?;
    dicom_guard::check_data_set(body, data_set_start, meta.transfer_syntax())?;
    OpenFileOptions::new().read_preamble(ReadPreamble::Never).from_reader(body).map_err(|e| format!("data set: {}", describe(&e)))
}

/// One de-identification pass: what it did, and the salt of its new UIDs.
struct Pass<'a> {
    removed: usize,
    replaced: usize,
    salt: &'a [u8],
}

/// A de-identified copy of one data set (the main one or a sequence item). Rebuilt rather
/// than edited in place, so that every recorded sequence and item length is recomputed
/// on writing.
fn clean(obj: InMemDicomObject, n: &mut Pass) -> InMemDicomObject {
    let elements: Vec<InMemElement> = obj.into_iter().filter_map(|e| clean_element(e, n)).collect();
    InMemDicomObject::from_element_iter(elements)
}

fn clean_element(elem: InMemElement, n: &mut Pass) -> Option<InMemElement> {
    let header = *elem.header();
    let (tag, vr) = (header.tag, header.vr);
    let group = tag.group();
    // Private attributes (the profile removes them all, sequences and their contents
    // included), curve and overlay groups (an overlay plane without its data, which the
    // profile removes, would be malformed: the whole group goes), group lengths.
    if group % 2 == 1 || matches!(group & 0xFF00, 0x5000 | 0x6000) || tag.element() == 0x0000 {
        n.removed += 1;
        return None;
    }
    match (table::action((group, tag.element())).map(|a| a.effect()), elem.into_value()) {
        (Some(Effect::Remove), _) => {
            n.removed += 1;
            None
        }
        // Kept: a sequence is still walked, an identifying attribute may sit in any item.
        (None | Some(Effect::CleanItems), Value::Sequence(seq)) => {
            let items: Vec<InMemDicomObject> = seq.into_items().into_iter().map(|item| clean(item, n)).collect();
            Some(DataElement::new(tag, VR::SQ, DataSetSequence::from(items)))
        }
        (None, value) => Some(DataElement::new_with_len(tag, vr, header.len, value)),
        // Also an X/Z/U* sequence that arrived as opaque bytes (UN): its UIDs cannot be
        // reached, so it is emptied.
        (Some(effect), value) => {
            n.replaced += 1;
            Some(replacement(tag, vr, effect, &value, n.salt))
        }
    }
}

/// The element that takes the place of an emptied (Z), dummy (D) or new-UID (U) attribute.
fn replacement(tag: Tag, vr: VR, effect: Effect, value: &Value<InMemDicomObject, InMemFragment>, salt: &[u8]) -> InMemElement {
    if matches!(value, Value::Sequence(_)) {
        // A sequence has no dummy value of its own: D gives it one empty item, anything
        // else zero items.
        let items = if effect == Effect::Dummy { vec![InMemDicomObject::new_empty()] } else { Vec::new() };
        return DataElement::new(tag, VR::SQ, DataSetSequence::from(items));
    }
    let value = match effect {
        Effect::Dummy => dummy(vr),
        Effect::NewUid => match value.to_multi_str() {
            Ok(uids) => PrimitiveValue::Strs(uids.iter().map(|u| new_uid(u, salt)).collect()),
            Err(_) => PrimitiveValue::Empty,
        },
        _ => PrimitiveValue::Empty,
    };
    DataElement::new(tag, vr, value)
}

/// Dummy value (action D) of a VR.
fn dummy(vr: VR) -> PrimitiveValue {
    match vr {
        VR::DA => DUMMY_DATE.into(),
        VR::TM => DUMMY_TIME.into(),
        VR::DT => DUMMY_DATETIME.into(),
        VR::AE | VR::CS | VR::LO | VR::LT | VR::PN | VR::SH | VR::ST | VR::UC | VR::UT => DUMMY_TEXT.into(),
        // Binary identifiers (Flow Identifier, Source Identifier, Frame Origin Timestamp).
        VR::OB | VR::UN => PrimitiveValue::U8(C::from_slice(&[0, 0])),
        // No D row of Table E.1-1 has another VR; zero length is the next best thing.
        _ => PrimitiveValue::Empty,
    }
}

/// `2.25.<first 16 bytes of SHA-256(salt || uid) as a decimal integer>`: at most 44
/// characters, within the 64 of a UID. Padding is ignored; an empty UID stays empty.
fn new_uid(uid: &str, salt: &[u8]) -> String {
    let uid = trim(uid);
    if uid.is_empty() {
        return String::new();
    }
    let digest = Sha256::new().chain_update(salt).chain_update(uid.as_bytes()).finalize();
    let mut first = [0u8; 16];
    first.copy_from_slice(&digest[..16]);
    format!("2.25.{}", u128::from_be_bytes(first))
}

/// A value without its DICOM padding (trailing NUL or space) or surrounding spaces.
fn trim(s: &str) -> &str {
    s.trim_matches(|c: char| c == '\0' || c.is_whitespace())
}

/// An error with its chain of causes: dicom-rs errors nest the useful part.
fn describe(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        out.push_str(&format!(": {c}"));
        cause = c.source();
    }
    out
}

#[cfg(test)]
mod tests;
