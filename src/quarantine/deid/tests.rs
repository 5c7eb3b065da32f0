//! Tests of DICOM de-identification on the shared DICOM files and a synthetic one.

use super::table::Action;
use super::*;
use crate::decode::{decode_dicom, DecodeLimits};
use dicom_core::header::Header;
use std::collections::HashMap;
use std::path::{Path, PathBuf};

/// A test salt (the store's is secret and random).
const SALT: &[u8] = b"0123456789abcdef-test-salt";

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
        let out = deidentify(&input, SALT).unwrap_or_else(|e| panic!("{name}: {e}"));
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
        assert_eq!(sop, new_uid(&text(&original, tags::SOP_INSTANCE_UID).unwrap(), SALT), "{name}");
        // (6) deterministic: a second run gives the same bytes, hence the same UIDs.
        assert!(deidentify(&input, SALT).unwrap().bytes == out.bytes, "{name}: second run differs");
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

    let out = deidentify(&bytes, SALT).unwrap();
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
    assert_eq!(text(item, tags::REFERENCED_SOP_INSTANCE_UID), Some(new_uid(nested_uid, SALT)));
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
    let full = deidentify(&input, SALT).unwrap().bytes;
    assert_eq!(deidentify(&input[128..], SALT).unwrap().bytes, full, "starting at DICM");
    assert_eq!(deidentify(&input[132..], SALT).unwrap().bytes, full, "starting at the meta group");
}

#[test]
fn deflated_data_set_stays_deflated() {
    let mut file = open(&std::fs::read(data_dir().join("MR_small.dcm")).unwrap()).unwrap();
    file.update_meta(|m| m.transfer_syntax = "1.2.840.10008.1.2.1.99".into());
    let mut deflated = Vec::new();
    file.write_all(&mut deflated).unwrap();
    assert!(!contains(&deflated, b"CompressedSamples^MR1"), "the data set is not deflated");
    let out = deidentify(&deflated, SALT).unwrap();
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
    assert!(matches!(deidentify(&junk, SALT), Err(DeidError::Parse(_))));
    junk[128..132].copy_from_slice(b"DICM");
    let cases: [&[u8]; 7] = [b"", b"DICM", &junk, &ct[..132], &ct[..200], &ct[..ct.len() / 2], &ct[..ct.len() - 1]];
    for (i, case) in cases.into_iter().enumerate() {
        assert!(matches!(deidentify(case, SALT), Err(DeidError::Parse(_))), "case {i}");
    }
    let err = deidentify(&ct[..ct.len() / 2], SALT).unwrap_err().to_string();
    assert!(err.starts_with("cannot de-identify") && err.contains("declares"), "{err}");
    let mut unknown = ct.clone();
    let at = unknown.windows(19).position(|w| w == b"1.2.840.10008.1.2.1").unwrap();
    unknown[at..at + 19].copy_from_slice(b"1.2.840.10008.9.9.9");
    let err = deidentify(&unknown, SALT).unwrap_err().to_string();
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
    let uid = new_uid("1.2.840.113619.2.1.1.322987881.621.736170080.681\0", SALT);
    assert_ne!(uid, new_uid("1.2.840.113619.2.1.1.322987881.621.736170080.681", b"another secret salt"), "the salt keys the mapping");
    assert!(uid.starts_with("2.25.") && uid.len() <= 64 && uid == new_uid("1.2.840.113619.2.1.1.322987881.621.736170080.681", SALT));
}
