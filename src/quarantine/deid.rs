//! De-identification of a flagged DICOM input before it is written to the quarantine disk.
//!
//! [`deidentify`] applies the Basic Application Level Confidentiality Profile of DICOM
//! PS3.15 Annex E to a Part 10 file, in the main data set and in every sequence item at
//! any depth:
//! * the 459 attributes of Table E.1-1 ([`profile_tags`]): X removed, Z emptied, D given a
//!   dummy of the same VR (`ANONYMIZED`, `19000101`, `000000`, ...; a sequence gets one
//!   empty item), U replaced by a new UID; compound codes (X/Z/D, ...) take the alternative
//!   that keeps any IOD conformant, see `deid_table.rs`;
//! * UIDs become `2.25.<decimal of the first 16 bytes of SHA-256(UID_SALT || UID)>`, the
//!   same for every instance, so that the quarantined instances of one study stay linked;
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
//! * hide a UID from someone who can guess it: the salt is a fixed, public constant, so
//!   hashing a candidate original UID confirms it (PS3.15 E.1.1 warns about unencrypted
//!   hashes). The mapping is for linking instances, not a secret.
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

/// Salt of the UID replacement. A fixed crate constant, on purpose: every medsentry, at any
/// time, maps one original UID to the same new UID, so quarantined instances of one study
/// or series stay linked. It is not a secret (see the module documentation).
pub(crate) const UID_SALT: &[u8] = b"medsentry/quarantine/deid/uid-salt/v1";

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
pub fn deidentify(dicom_part10: &[u8]) -> Result<Deidentified, DeidError> {
    let file = guarded(|| open(dicom_part10)).map_err(DeidError::Parse)?;
    let meta = file.meta().clone();
    let burned_in_annotation = file.get(tags::BURNED_IN_ANNOTATION).and_then(|e| e.to_str().ok()).is_some_and(|v| trim(&v) == "YES");

    let mut n = Counts::default();
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
        .unwrap_or_else(|| new_uid(meta.media_storage_sop_instance_uid()));
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
    OpenFileOptions::new()
        .read_preamble(ReadPreamble::Never)
        .from_reader(body)
        .map_err(|e| format!("data set: {}", describe(&e)))
}

#[derive(Default)]
struct Counts {
    removed: usize,
    replaced: usize,
}

/// A de-identified copy of one data set (the main one or a sequence item). Rebuilt rather
/// than edited in place, so that every recorded sequence and item length is recomputed
/// on writing.
fn clean(obj: InMemDicomObject, n: &mut Counts) -> InMemDicomObject {
    let elements: Vec<InMemElement> = obj.into_iter().filter_map(|e| clean_element(e, n)).collect();
    InMemDicomObject::from_element_iter(elements)
}

fn clean_element(elem: InMemElement, n: &mut Counts) -> Option<InMemElement> {
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
            Some(replacement(tag, vr, effect, &value))
        }
    }
}

/// The element that takes the place of an emptied (Z), dummy (D) or new-UID (U) attribute.
fn replacement(tag: Tag, vr: VR, effect: Effect, value: &Value<InMemDicomObject, InMemFragment>) -> InMemElement {
    if matches!(value, Value::Sequence(_)) {
        // A sequence has no dummy value of its own: D gives it one empty item, anything
        // else zero items.
        let items = if effect == Effect::Dummy { vec![InMemDicomObject::new_empty()] } else { Vec::new() };
        return DataElement::new(tag, VR::SQ, DataSetSequence::from(items));
    }
    let value = match effect {
        Effect::Dummy => dummy(vr),
        Effect::NewUid => match value.to_multi_str() {
            Ok(uids) => PrimitiveValue::Strs(uids.iter().map(|u| new_uid(u)).collect()),
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

/// `2.25.<first 16 bytes of SHA-256(UID_SALT || uid) as a decimal integer>`: at most 44
/// characters, within the 64 of a UID. Padding is ignored; an empty UID stays empty.
fn new_uid(uid: &str) -> String {
    let uid = trim(uid);
    if uid.is_empty() {
        return String::new();
    }
    let digest = Sha256::new().chain_update(UID_SALT).chain_update(uid.as_bytes()).finalize();
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
mod tests {
    use super::table::Action;
    use super::*;
    use crate::decode::{decode_dicom, DecodeLimits};
    use dicom_core::header::Header;
    use std::collections::HashMap;
    use std::path::{Path, PathBuf};

    fn data_dir() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/data/dicom")
    }

    fn dicom_files() -> Vec<PathBuf> {
        let mut files: Vec<PathBuf> = std::fs::read_dir(data_dir())
            .expect("shared DICOM data (../shared/data/dicom)")
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_some_and(|x| x == "dcm"))
            .collect();
        files.sort();
        assert!(!files.is_empty(), "no .dcm file in {}", data_dir().display());
        files
    }

    fn text(obj: &InMemDicomObject, tag: Tag) -> Option<String> {
        obj.get(tag).and_then(|e| e.to_str().ok()).map(|s| trim(&s).to_string()).filter(|s| !s.is_empty())
    }

    fn contains(haystack: &[u8], needle: &[u8]) -> bool {
        haystack.windows(needle.len()).any(|w| w == needle)
    }

    /// Walks a de-identified data set: no private, curve or overlay attribute; every
    /// profile attribute that is present (X ones must not be) is empty, a dummy, a new 2.25
    /// UID, or a sequence whose items are empty or (X/Z/U*) checked the same way.
    fn assert_deidentified(obj: &InMemDicomObject, path: &str) {
        for elem in obj.iter() {
            let tag = elem.tag();
            let at = format!("{path}{tag}");
            assert!(tag.group() % 2 == 0, "private attribute {at} left");
            assert!(!matches!(tag.group() & 0xFF00, 0x5000 | 0x6000), "curve / overlay attribute {at} left");
            let action = table::action((tag.group(), tag.element()));
            assert!(action.map(|a| a.effect()) != Some(Effect::Remove), "{at} should have been removed");
            if let Some(items) = elem.items() {
                for (i, item) in items.iter().enumerate() {
                    assert!(action.is_none() || action == Some(Action::XZU) || item.iter().next().is_none(), "{at} item {i} kept");
                    assert_deidentified(item, &format!("{at}[{i}]."));
                }
                continue;
            }
            let Value::Primitive(v) = elem.value() else { continue };
            if action.is_none() || trim(&v.to_str()).is_empty() {
                continue;
            }
            let ok = match elem.vr() {
                VR::UI => v.to_multi_str().iter().all(|u| u.starts_with("2.25.")),
                VR::OB | VR::UN => v.to_bytes().iter().all(|&b| b == 0),
                _ => v.to_multi_str().iter().all(|s| [DUMMY_TEXT, DUMMY_DATE, DUMMY_TIME, DUMMY_DATETIME].contains(&trim(s))),
            };
            assert!(ok, "{at} holds {:?}", v.to_str());
        }
    }

    /// The original values that must not survive: patient / institution identity and every
    /// UID the profile replaces, at any depth.
    fn identifying_values(file: &DefaultDicomObject) -> Vec<String> {
        fn uids(obj: &InMemDicomObject, out: &mut Vec<String>) {
            for elem in obj.iter() {
                match elem.items() {
                    Some(items) => items.iter().for_each(|item| uids(item, out)),
                    None if table::action((elem.tag().group(), elem.tag().element())) == Some(Action::U) => {
                        out.extend(elem.to_multi_str().unwrap().iter().map(|u| trim(u).to_string()))
                    }
                    None => {}
                }
            }
        }
        let identity = [
            tags::PATIENT_NAME,
            tags::PATIENT_ID,
            tags::PATIENT_BIRTH_DATE,
            tags::INSTITUTION_NAME,
            tags::REFERRING_PHYSICIAN_NAME,
            tags::OPERATORS_NAME,
            tags::STATION_NAME,
            tags::ACCESSION_NUMBER,
        ];
        let mut out: Vec<String> = identity.into_iter().filter_map(|t| text(file, t)).collect();
        uids(file, &mut out);
        out.push(trim(file.meta().media_storage_sop_instance_uid()).to_string());
        out.retain(|v| v.len() >= 4);
        out
    }

    /// Text of the attributes the profile keeps (not listed, not private), at any depth.
    fn kept_values(obj: &InMemDicomObject, out: &mut Vec<(Tag, String)>) {
        for elem in obj.iter().filter(|e| e.tag().group() % 2 == 0) {
            match elem.items() {
                Some(items) => items.iter().for_each(|item| kept_values(item, out)),
                None if table::action((elem.tag().group(), elem.tag().element())).is_none() => {
                    out.extend(elem.to_str().ok().map(|v| (elem.tag(), trim(&v).to_string())))
                }
                None => {}
            }
        }
    }

    /// Keywords of the profile attributes present anywhere in a data set (for the report).
    fn present(obj: &InMemDicomObject, out: &mut Vec<&'static str>) {
        for elem in obj.iter() {
            let (g, e) = (elem.tag().group(), elem.tag().element());
            if let Some(&(_, _, kw)) = profile_tags().iter().find(|&&(pg, pe, _)| (pg, pe) == (g, e)) {
                if !out.contains(&kw) {
                    out.push(kw);
                }
            }
            elem.items().into_iter().flatten().for_each(|item| present(item, out));
        }
    }

    #[test]
    fn shared_dicom_files_are_deidentified() {
        let limits = DecodeLimits { max_pixels: 40_000_000 };
        let mut studies: HashMap<String, String> = HashMap::new();
        for path in dicom_files() {
            let name = path.file_name().unwrap().to_string_lossy().into_owned();
            let input = std::fs::read(&path).unwrap();
            let original = open(&input).unwrap_or_else(|e| panic!("{name}: {e}"));
            let out = deidentify(&input).unwrap_or_else(|e| panic!("{name}: {e}"));
            let result = open(&out.bytes).unwrap_or_else(|e| panic!("{name}: output does not parse: {e}"));

            // (2) tag by tag, at every depth.
            assert_deidentified(&result, &format!("{name}: "));
            assert_eq!(text(&result, tags::PATIENT_IDENTITY_REMOVED).as_deref(), Some("YES"), "{name}");
            // (3) no original identifying value anywhere in the bytes.
            // A value that an attribute outside the profile also holds (MR_small: Institution
            // Name "TOSHIBA" = Manufacturer) legitimately stays; it is reported, not checked.
            let (mut secrets, mut kept) = (identifying_values(&original), Vec::new());
            kept_values(&original, &mut kept);
            secrets.retain(|secret| match kept.iter().find(|(_, v)| v.contains(secret.as_str())) {
                Some((tag, v)) => {
                    eprintln!("{name}: {secret:?} is also in {tag} = {v:?}, kept by the profile");
                    false
                }
                None => true,
            });
            for secret in &secrets {
                assert!(!contains(&out.bytes, secret.as_bytes()), "{name}: {secret:?} is still in the output");
            }
            // The meta group names medsentry, nothing of the original's is left.
            assert_eq!(result.meta().implementation_class_uid(), IMPLEMENTATION_CLASS_UID, "{name}");
            assert_eq!(result.meta().source_application_entity_title(), None, "{name}");
            // Same transfer syntax, same Pixel Data element (fragments included).
            assert_eq!(result.meta().transfer_syntax(), original.meta().transfer_syntax(), "{name}");
            assert!(result.get(tags::PIXEL_DATA).unwrap().value() == original.get(tags::PIXEL_DATA).unwrap().value(), "{name}: pixel data changed");
            // (4) identical decoded pixels, for the files this build decodes.
            let decoded = match decode_dicom(&input, &limits) {
                Ok(before) => {
                    let after = decode_dicom(&out.bytes, &limits).unwrap_or_else(|e| panic!("{name}: output does not decode: {e}"));
                    assert_eq!((after.width, after.height, after.channels), (before.width, before.height, before.channels), "{name}");
                    assert!(after.data == before.data, "{name}: pixels differ");
                    "pixels identical"
                }
                Err(_) => "not decodable here, pixel data compared as stored",
            };
            // (5) meta group and data set agree on the new SOP Instance UID.
            let sop = text(&result, tags::SOP_INSTANCE_UID).unwrap();
            assert_eq!(result.meta().media_storage_sop_instance_uid(), sop, "{name}");
            assert_eq!(sop, new_uid(&text(&original, tags::SOP_INSTANCE_UID).unwrap()), "{name}");
            // (6) deterministic: a second run gives the same bytes, hence the same UIDs.
            assert!(deidentify(&input).unwrap().bytes == out.bytes, "{name}: second run differs");
            // Instances of one study stay linked.
            if let (Some(old), Some(new)) = (text(&original, tags::STUDY_INSTANCE_UID), text(&result, tags::STUDY_INSTANCE_UID)) {
                assert_eq!(studies.entry(old).or_insert_with(|| new.clone()), &new, "{name}: study link lost");
            }

            let mut found = Vec::new();
            present(&original, &mut found);
            eprintln!(
                "{name}: {} removed, {} replaced, burned-in {}, {decoded}, {} identifying values checked; profile attributes present: {}",
                out.removed,
                out.replaced,
                out.burned_in_annotation,
                secrets.len(),
                found.join(" ")
            );
        }
    }

    #[test]
    fn nested_and_private_attributes_are_handled() {
        let input = std::fs::read(data_dir().join("CT_small.dcm")).unwrap();
        let mut file = open(&input).unwrap();
        let s = |tag, vr, v: &str| DataElement::new(tag, vr, PrimitiveValue::from(v));
        let nested_uid = "1.2.826.0.1.3680043.2.1125.4711.1";
        let deepest = InMemDicomObject::from_element_iter([s(tags::PATIENT_NAME, VR::PN, "Deep^Nested^Person")]);
        let item = InMemDicomObject::from_element_iter([
            s(tags::REFERENCED_SOP_CLASS_UID, VR::UI, "1.2.840.10008.5.1.4.1.1.2"),
            s(tags::REFERENCED_SOP_INSTANCE_UID, VR::UI, nested_uid),
            s(tags::PATIENT_NAME, VR::PN, "Nested^Person"),
            s(Tag(0x0011, 0x0010), VR::LO, "MEDSENTRY TEST"),
            s(Tag(0x0011, 0x1001), VR::LO, "nested-private-value"),
            DataElement::new(tags::PURPOSE_OF_REFERENCE_CODE_SEQUENCE, VR::SQ, DataSetSequence::from(vec![deepest])),
        ]);
        file.put(DataElement::new(tags::REFERENCED_IMAGE_SEQUENCE, VR::SQ, DataSetSequence::from(vec![item])));
        let patient = InMemDicomObject::from_element_iter([s(tags::PATIENT_ID, VR::LO, "OTHER-ID-0815")]);
        file.put(DataElement::new(tags::OTHER_PATIENT_I_DS_SEQUENCE, VR::SQ, DataSetSequence::from(vec![patient])));
        file.put(s(tags::PATIENT_NAME, VR::PN, "Doe^Jane^Synthetic"));
        file.put(s(tags::PATIENT_ID, VR::LO, "SYNTH-4711"));
        file.put(s(tags::PATIENT_BIRTH_DATE, VR::DA, "19610723"));
        file.put(s(tags::INSTITUTION_NAME, VR::LO, "Saint Synthetic Hospital"));
        file.put(s(tags::BURNED_IN_ANNOTATION, VR::CS, "YES"));
        file.put(s(Tag(0x0009, 0x0010), VR::LO, "MEDSENTRY TEST"));
        file.put(s(Tag(0x0009, 0x1001), VR::LO, "top-private-value"));
        let mut bytes = Vec::new();
        file.write_all(&mut bytes).unwrap();

        let out = deidentify(&bytes).unwrap();
        assert!(out.burned_in_annotation);
        let secrets = [
            "Doe^Jane^Synthetic",
            "SYNTH-4711",
            "19610723",
            "Saint Synthetic Hospital",
            "top-private-value",
            "nested-private-value",
            "Nested^Person",
            "Deep^Nested^Person",
            "OTHER-ID-0815",
            nested_uid,
        ];
        for secret in secrets {
            assert!(contains(&bytes, secret.as_bytes()), "test input lacks {secret}");
            assert!(!contains(&out.bytes, secret.as_bytes()), "{secret} is still in the output");
        }
        let result = open(&out.bytes).unwrap();
        assert_deidentified(&result, "");
        assert!(result.get(tags::OTHER_PATIENT_I_DS_SEQUENCE).is_none());
        assert_eq!(text(&result, tags::PATIENT_NAME), None); // Z: present, zero length
        assert!(result.get(tags::PATIENT_NAME).is_some());
        assert_eq!(text(&result, tags::INSTITUTION_NAME).as_deref(), Some(DUMMY_TEXT)); // X/Z/D -> D
        let item = &result.get(tags::REFERENCED_IMAGE_SEQUENCE).unwrap().items().unwrap()[0];
        assert_eq!(text(item, tags::REFERENCED_SOP_INSTANCE_UID), Some(new_uid(nested_uid)));
        assert_eq!(text(item, tags::REFERENCED_SOP_CLASS_UID).as_deref(), Some("1.2.840.10008.5.1.4.1.1.2"));
        assert!(item.get(tags::PATIENT_NAME).is_some() && text(item, tags::PATIENT_NAME).is_none());
        let deepest = &item.get(tags::PURPOSE_OF_REFERENCE_CODE_SEQUENCE).unwrap().items().unwrap()[0];
        assert!(deepest.get(tags::PATIENT_NAME).is_some() && text(deepest, tags::PATIENT_NAME).is_none());
        // Private creator + value at the top and in the item, plus the whole removed sequence.
        assert!(out.removed >= 5 && out.replaced >= 7, "{} removed, {} replaced", out.removed, out.replaced);
        let limits = DecodeLimits::default();
        assert!(decode_dicom(&out.bytes, &limits).unwrap().data == decode_dicom(&input, &limits).unwrap().data);
    }

    #[test]
    fn part10_without_preamble_is_accepted() {
        let input = std::fs::read(data_dir().join("MR_small.dcm")).unwrap();
        let full = deidentify(&input).unwrap().bytes;
        assert_eq!(deidentify(&input[128..]).unwrap().bytes, full, "starting at DICM");
        assert_eq!(deidentify(&input[132..]).unwrap().bytes, full, "starting at the meta group");
    }

    #[test]
    fn deflated_data_set_stays_deflated() {
        let mut file = open(&std::fs::read(data_dir().join("MR_small.dcm")).unwrap()).unwrap();
        file.update_meta(|m| m.transfer_syntax = "1.2.840.10008.1.2.1.99".into());
        let mut deflated = Vec::new();
        file.write_all(&mut deflated).unwrap();
        assert!(!contains(&deflated, b"CompressedSamples^MR1"), "the data set is not deflated");
        let out = deidentify(&deflated).unwrap();
        let result = open(&out.bytes).unwrap();
        assert_eq!(result.meta().transfer_syntax(), "1.2.840.10008.1.2.1.99");
        assert_deidentified(&result, "");
        assert!(result.get(tags::PATIENT_NAME).is_some() && text(&result, tags::PATIENT_NAME).is_none());
        let limits = DecodeLimits::default();
        assert!(decode_dicom(&out.bytes, &limits).unwrap().data == decode_dicom(&deflated, &limits).unwrap().data);
    }

    #[test]
    fn unreadable_input_is_an_error_not_a_panic() {
        let ct = std::fs::read(data_dir().join("CT_small.dcm")).unwrap();
        let mut junk = vec![0x5Au8; 600];
        assert!(matches!(deidentify(&junk), Err(DeidError::Parse(_))));
        junk[128..132].copy_from_slice(b"DICM");
        let cases: [&[u8]; 7] = [b"", b"DICM", &junk, &ct[..132], &ct[..200], &ct[..ct.len() / 2], &ct[..ct.len() - 1]];
        for (i, case) in cases.into_iter().enumerate() {
            assert!(matches!(deidentify(case), Err(DeidError::Parse(_))), "case {i}");
        }
        let err = deidentify(&ct[..ct.len() / 2]).unwrap_err().to_string();
        assert!(err.starts_with("cannot de-identify") && err.contains("declares"), "{err}");
        let mut unknown = ct.clone();
        let at = unknown.windows(19).position(|w| w == b"1.2.840.10008.1.2.1").unwrap();
        unknown[at..at + 19].copy_from_slice(b"1.2.840.10008.9.9.9");
        let err = deidentify(&unknown).unwrap_err().to_string();
        assert!(err.contains("1.2.840.10008.9.9.9"), "{err}");
    }

    #[test]
    fn profile_table_is_sorted_and_named_as_in_the_dictionary() {
        use dicom_core::dictionary::DataDictionary;
        let t = profile_tags();
        assert_eq!(t.len(), 459 + 2, "Table E.1-1 plus InstanceCreationDate/Time");
        assert!(t.windows(2).all(|w| (w[0].0, w[0].1) < (w[1].0, w[1].1)), "sorted, no duplicates");
        for &(g, e, kw) in t {
            let entry = dicom_dictionary_std::StandardDataDictionary.by_tag(Tag(g, e));
            assert_eq!(entry.map(|d| d.alias), Some(kw), "({g:04X},{e:04X})");
        }
        let uid = new_uid("1.2.840.113619.2.1.1.322987881.621.736170080.681\0");
        assert!(uid.starts_with("2.25.") && uid.len() <= 64 && uid == new_uid("1.2.840.113619.2.1.1.322987881.621.736170080.681"));
    }
}
