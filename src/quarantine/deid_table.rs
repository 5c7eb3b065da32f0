//! The attributes of DICOM PS3.15 Table E.1-1 (Application Level Confidentiality Profile
//! Attributes) with their Basic Profile action, sorted by tag for binary search.
//!
//! Transcribed from the table as published in the standard (the version structured as JSON
//! by the innolitics/dicom-standard project, 459 rows, plus InstanceCreationDate/Time); keywords are dicom-rs's dictionary
//! names. Compound codes are kept as the table writes them (`XZD` is "X/Z/D", `XZU` is
//! "X/Z/U*"); [`Action::effect`] decides what each one does here. Rows not listed here:
//! private attributes (odd groups), removed by rule in `deid.rs`; the repeating groups
//! Curve Data (50xx,xxxx) and Overlay Data / Overlay Comments (60xx,3000 / 60xx,4000) are
//! listed once with xx = 00 and match every group of their range.

/// A Basic Profile action code of Table E.1-1.
#[allow(clippy::upper_case_acronyms)] // the standard's own codes, so that rows read like the table
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Action {
    X,
    Z,
    D,
    U,
    ZD,
    XZ,
    XD,
    XZD,
    XZU,
}

/// What is done to an attribute that is present.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Effect {
    Remove,
    Empty,
    Dummy,
    NewUid,
    /// Kept, its items de-identified recursively (X/Z/U*: the contained UIDs are replaced).
    CleanItems,
}

impl Action {
    /// A compound code allows X or Z only where the IOD does not require a value, and we do
    /// not know the IOD of a flagged input: the alternative that keeps any IOD conformant
    /// is taken (Z/D, X/D, X/Z/D -> D; X/Z -> Z), so that viewers still open the file.
    pub(super) fn effect(self) -> Effect {
        match self {
            Action::X => Effect::Remove,
            Action::Z | Action::XZ => Effect::Empty,
            Action::D | Action::ZD | Action::XD | Action::XZD => Effect::Dummy,
            Action::U => Effect::NewUid,
            Action::XZU => Effect::CleanItems,
        }
    }
}

// One row list, two static tables: the public (group, element, keyword) slice and the
// actions, index for index.
macro_rules! profile {
    ($(($g:literal, $e:literal, $kw:literal, $a:ident),)*) => {
        pub(super) static TAGS: &[(u16, u16, &str)] = &[$(($g, $e, $kw)),*];
        pub(super) static ACTIONS: &[Action] = &[$(Action::$a),*];
    };
}

// The rows themselves: 460 lines of data, kept apart from the code that reads them.
include!("deid_rows.rs");

/// The Basic Profile action of `(group, element)`, if Table E.1-1 lists it.
pub(super) fn action(tag: (u16, u16)) -> Option<Action> {
    TAGS.binary_search_by_key(&tag, |&(g, e, _)| (g, e)).ok().map(|i| ACTIONS[i])
}
