//! Fuzz target: DICOM Part 10 bytes through the length guard, the deflate bound, the
//! codestream checks, the codecs and the display pipeline, then de-identification of what
//! decoded (the quarantine's path). Seeds: the small files of ../shared/data/dicom.

#[path = "common.rs"]
mod common;

fn main() {
    common::write_seeds_if_asked(&[]);
    let (limits, budget) = (common::limits(), common::budget());
    // fuzz_nohook: a codec panic that decode catches (and answers as a refusal) is not a
    // crash; one that escapes is. (With fuzz!, every caught RLE-adapter panic aborted.)
    afl::fuzz_nohook!(|data: &[u8]| {
        let mut res = budget.reserve(Default::default(), None);
        if medsentry::decode::decode_dicom_within(data, &limits, &mut res).is_ok() {
            let _ = medsentry::quarantine::deid::deidentify(data, b"fuzz-salt-0123456789");
        }
    });
}
