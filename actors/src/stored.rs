//! Versioned storage formats: the one rule for every value Tributary stores
//! with postcard, so a release can add a field without breaking data dirs.
//!
//! - Each stored type has an enum with one variant per format version (`V1`,
//!   `V2`, ...) that implements [`Versioned`]; the bytes written are that enum.
//!   Postcard writes an enum's variant index first (a varint), so the version
//!   leads the bytes, and a release that adds `V2` still decodes `V1` data and
//!   converts it ([`Versioned::into_current`]). New data is written as the
//!   newest variant only. A variant's layout is frozen once released: change a
//!   stored type by adding a variant, never by editing one.
//! - Data written before versioning (release aaeadfb and earlier) has no
//!   version: its bytes are the V1 payload alone. Telling the two apart per
//!   value would be a guess, so each LMDB environment carries a marker instead
//!   (database [`FORMAT_DB`], key [`FORMAT_KEY`]; absent means legacy).
//!   [`ensure_format`] upgrades a legacy environment in place: it rewrites every
//!   legacy value as V1 and sets the marker in one write transaction, so a
//!   crash mid-upgrade leaves the old data as it was and the next open starts over.
//! - Not versioned, on purpose: record batches (Kafka's own format, which
//!   carries its magic byte) and fixed-width integers (offsets, epochs,
//!   counters, timestamps as 8-byte big-endian keys or values), whose width is
//!   their whole format. Each store says which of its values those are.
//!
//! Bad stored bytes are a [`FormatError`] naming the record and its version,
//! never a panic.

use heed::byteorder::BigEndian;
use heed::types::{Bytes as RawBytes, Str, U32};
use heed::{Database, RwTxn};
use serde::de::DeserializeOwned;
use serde::Serialize;

/// The environment format this build writes: every postcard value is a
/// versioned enum. (0, never stored, is the legacy format: no marker.)
pub const CURRENT_FORMAT: u32 = 1;
/// The database in every environment that holds the format marker.
pub const FORMAT_DB: &str = "format";
/// The marker's key in [`FORMAT_DB`]: a big-endian u32.
pub const FORMAT_KEY: &str = "version";

pub type FormatDb<'e> = Database<'e, Str, U32<BigEndian>>;

/// A stored type's enum of format versions.
///
/// Implemented by the enum, not the type it holds, so a type from another
/// crate (openraft's log entries, say) can be stored too.
pub trait Versioned: Serialize + DeserializeOwned {
    /// Names the record in errors and logs ("topic record").
    const RECORD: &'static str;
    /// The newest version this build reads and writes: the variant count.
    const NEWEST: u32;
    /// What the code works with: the newest variant's payload.
    type Current;

    /// The newest variant holding `value`.
    fn from_current(value: &Self::Current) -> Self;
    /// Converts any version to the current one.
    fn into_current(self) -> Self::Current;
    /// Reads the unversioned bytes stores wrote before versioning (release
    /// aaeadfb): postcard of the V1 payload alone.
    fn from_legacy(bytes: &[u8]) -> Result<Self, postcard::Error>;
}

/// Declares a stored type that has had one format version so far: the enum
/// `$name { V1($current) }` and its [`Versioned`] impl, whose legacy
/// (aaeadfb) bytes are the V1 payload alone. Its second version replaces the
/// macro with the enum and impl written out (this module's tests show the shape).
#[macro_export]
macro_rules! stored_v1 {
    ($(#[$doc:meta])* $vis:vis enum $name:ident($current:ty) = $record:literal;) => {
        $(#[$doc])*
        #[derive(::serde::Serialize, ::serde::Deserialize)]
        $vis enum $name {
            V1($current),
        }

        impl $crate::stored::Versioned for $name {
            const RECORD: &'static str = $record;
            const NEWEST: u32 = 1;
            type Current = $current;

            fn from_current(value: &$current) -> Self {
                $name::V1(::std::clone::Clone::clone(value))
            }

            fn into_current(self) -> $current {
                match self {
                    $name::V1(value) => value,
                }
            }

            fn from_legacy(bytes: &[u8]) -> Result<Self, $crate::stored::PostcardError> {
                $crate::stored::postcard_decode(bytes).map($name::V1)
            }
        }
    };
}

/// Postcard's error, for [`stored_v1`]'s expansion in other crates.
#[doc(hidden)]
pub use postcard::Error as PostcardError;

/// Postcard's decoder, for [`stored_v1`]'s expansion in other crates.
#[doc(hidden)]
pub fn postcard_decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, postcard::Error> {
    postcard::from_bytes(bytes)
}

/// Why stored bytes could not be read or written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FormatError {
    /// Bytes that do not even start with a version.
    NoVersion { record: &'static str, error: postcard::Error },
    /// A version this build does not know: written by a newer release.
    UnknownVersion { record: &'static str, version: u64, newest: u32 },
    /// Bytes that do not decode as the version they name (`None`: as the legacy layout).
    Corrupt { record: &'static str, version: Option<u32>, error: postcard::Error },
    /// Bytes left over after a whole record: not a record of this layout.
    TrailingBytes { record: &'static str, version: Option<u32>, extra: usize },
    /// An environment marked with a format this build does not know.
    UnknownFormat { store: &'static str, format: u32, current: u32 },
    /// Postcard refused to encode a value (never expected for these types).
    Encode { record: &'static str, error: postcard::Error },
}

impl std::fmt::Display for FormatError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let layout = |version: &Option<u32>| match version {
            Some(v) => format!("format version {v}"),
            None => "the unversioned legacy layout".to_string(),
        };
        match self {
            FormatError::NoVersion { record, error } => {
                write!(f, "{record} does not start with a format version: {error}")
            }
            FormatError::UnknownVersion { record, version, newest } => write!(
                f,
                "{record} is format version {version}, but this build reads versions 1 to {newest}: \
                 it was written by a newer release"
            ),
            FormatError::Corrupt { record, version, error } => {
                write!(f, "{record} does not decode as {}: {error}", layout(version))
            }
            FormatError::TrailingBytes { record, version, extra } => {
                write!(f, "{record} has {extra} bytes past its end as {}", layout(version))
            }
            FormatError::UnknownFormat { store, format, current } => write!(
                f,
                "{store} is in storage format {format}, but this build knows formats up to {current}: \
                 it was written by a newer release"
            ),
            FormatError::Encode { record, error } => write!(f, "cannot encode {record}: {error}"),
        }
    }
}

impl std::error::Error for FormatError {}

/// The bytes to store for `value`: its newest version.
pub fn encode<T: Versioned>(value: &T::Current) -> Result<Vec<u8>, FormatError> {
    let bytes = postcard::to_stdvec(&T::from_current(value))
        .map_err(|error| FormatError::Encode { record: T::RECORD, error })?;
    assert_eq!(version_of::<T>(&bytes), Ok(T::NEWEST), "{} must be written as its newest version", T::RECORD);
    Ok(bytes)
}

/// Reads a value written by [`encode`], of any version this build knows.
pub fn decode<T: Versioned>(bytes: &[u8]) -> Result<T::Current, FormatError> {
    let version = version_of::<T>(bytes)?;
    let corrupt = |error| FormatError::Corrupt { record: T::RECORD, version: Some(version), error };
    let (stored, rest) = postcard::take_from_bytes::<T>(bytes).map_err(corrupt)?;
    if !rest.is_empty() {
        return Err(FormatError::TrailingBytes { record: T::RECORD, version: Some(version), extra: rest.len() });
    }
    Ok(stored.into_current())
}

/// The format version leading `bytes` (1 for the first variant), if this build knows it.
pub fn version_of<T: Versioned>(bytes: &[u8]) -> Result<u32, FormatError> {
    let (index, _) =
        postcard::take_from_bytes::<u32>(bytes).map_err(|error| FormatError::NoVersion { record: T::RECORD, error })?;
    let version = u64::from(index) + 1;
    if version > u64::from(T::NEWEST) {
        return Err(FormatError::UnknownVersion { record: T::RECORD, version, newest: T::NEWEST });
    }
    Ok(version as u32)
}

/// Reads a value in the unversioned layout of release aaeadfb.
pub fn decode_legacy<T: Versioned>(bytes: &[u8]) -> Result<T::Current, FormatError> {
    let stored =
        T::from_legacy(bytes).map_err(|error| FormatError::Corrupt { record: T::RECORD, version: None, error })?;
    Ok(stored.into_current())
}

/// A legacy value's bytes in the current format.
pub fn upgrade<T: Versioned>(legacy: &[u8]) -> Result<Vec<u8>, FormatError> {
    encode::<T>(&decode_legacy::<T>(legacy)?)
}

/// Makes sure the environment `store` is in [`CURRENT_FORMAT`], inside `wtxn`.
///
/// Absent marker: the environment is legacy (or new and empty); `rewrite`
/// turns every legacy value into the current format, and the marker is set,
/// both in `wtxn`, so they commit together or not at all. A marker of another
/// format is refused: this build cannot read it. Returns the values rewritten.
pub fn ensure_format(
    format: FormatDb<'_>,
    wtxn: &mut RwTxn,
    store: &'static str,
    rewrite: impl FnOnce(&mut RwTxn) -> Result<usize, UpgradeError>,
) -> Result<usize, UpgradeError> {
    match format.get(wtxn, FORMAT_KEY)? {
        Some(CURRENT_FORMAT) => return Ok(0),
        Some(other) => {
            return Err(UpgradeError::Store(FormatError::UnknownFormat {
                store,
                format: other,
                current: CURRENT_FORMAT,
            }))
        }
        None => {}
    }
    let rewritten = rewrite(wtxn)?;
    format.put(wtxn, FORMAT_KEY, &CURRENT_FORMAT)?;
    if rewritten > 0 {
        tracing::info!(store, rewritten, format = CURRENT_FORMAT, "upgraded legacy storage format");
    }
    Ok(rewritten)
}

/// Rewrites every value of `db` from the legacy layout of `T` to the current
/// format, in `wtxn`. The new values are collected first (LMDB forbids writing
/// under a live cursor); that copy is bounded by the environment's map size.
pub fn upgrade_all<T: Versioned, K>(db: Database<'_, K, RawBytes>, wtxn: &mut RwTxn) -> Result<usize, UpgradeError> {
    let db = db.remap_key_type::<RawBytes>();
    let mut upgraded = Vec::new();
    for entry in db.iter(wtxn)? {
        let (key, value) = entry?;
        let value = upgrade::<T>(value).map_err(|error| UpgradeError::Format { key: describe_key(key), error })?;
        upgraded.push((key.to_vec(), value));
    }
    for (key, value) in &upgraded {
        db.put(wtxn, key, value)?;
    }
    Ok(upgraded.len())
}

/// Rewrites one value of `db`, if present, from the legacy layout of `T`.
pub fn upgrade_one<T: Versioned>(
    db: Database<'_, Str, RawBytes>,
    wtxn: &mut RwTxn,
    key: &str,
) -> Result<usize, UpgradeError> {
    let Some(legacy) = db.get(wtxn, key)? else { return Ok(0) };
    let value = upgrade::<T>(legacy).map_err(|error| UpgradeError::Format { key: key.to_string(), error })?;
    db.put(wtxn, key, &value)?;
    Ok(1)
}

/// A stored key as people read it: the text if it is printable, else hex
/// (offsets and producer ids are big-endian integers).
pub fn describe_key(key: &[u8]) -> String {
    if !key.is_empty() && key.iter().all(|b| b.is_ascii_graphic() || *b == b' ') {
        return String::from_utf8_lossy(key).into_owned();
    }
    let hex: String = key.iter().map(|b| format!("{b:02x}")).collect();
    format!("0x{hex}")
}

/// Why opening (and upgrading) an environment stopped.
#[derive(Debug)]
pub enum UpgradeError {
    Storage(heed::Error),
    /// The environment's marker names an unknown format.
    Store(FormatError),
    /// A stored value, at `key`, that does not decode.
    Format {
        key: String,
        error: FormatError,
    },
}

impl std::fmt::Display for UpgradeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            UpgradeError::Storage(e) => write!(f, "lmdb: {e}"),
            UpgradeError::Store(e) => write!(f, "{e}"),
            UpgradeError::Format { key, error } => write!(f, "at key {key}: {error}"),
        }
    }
}

impl std::error::Error for UpgradeError {}

impl From<heed::Error> for UpgradeError {
    fn from(e: heed::Error) -> Self {
        UpgradeError::Storage(e)
    }
}

#[cfg(test)]
mod tests {
    use serde::Deserialize;

    use super::*;

    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
    struct PointV1 {
        x: i32,
    }

    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
    struct Point {
        x: i32,
        label: String,
    }

    /// Today's shape: one version.
    #[derive(Serialize, Deserialize)]
    enum StoredPointV1Only {
        V1(PointV1),
    }

    impl Versioned for StoredPointV1Only {
        const RECORD: &'static str = "point";
        const NEWEST: u32 = 1;
        type Current = PointV1;
        fn from_current(value: &PointV1) -> Self {
            StoredPointV1Only::V1(value.clone())
        }
        fn into_current(self) -> PointV1 {
            match self {
                StoredPointV1Only::V1(p) => p,
            }
        }
        fn from_legacy(bytes: &[u8]) -> Result<Self, postcard::Error> {
            postcard::from_bytes(bytes).map(StoredPointV1Only::V1)
        }
    }

    /// A later release that added a field as V2.
    #[derive(Serialize, Deserialize)]
    enum StoredPoint {
        V1(PointV1),
        V2(Point),
    }

    impl Versioned for StoredPoint {
        const RECORD: &'static str = "point";
        const NEWEST: u32 = 2;
        type Current = Point;
        fn from_current(value: &Point) -> Self {
            StoredPoint::V2(value.clone())
        }
        fn into_current(self) -> Point {
            match self {
                StoredPoint::V1(p) => Point { x: p.x, label: String::new() },
                StoredPoint::V2(p) => p,
            }
        }
        fn from_legacy(bytes: &[u8]) -> Result<Self, postcard::Error> {
            postcard::from_bytes(bytes).map(StoredPoint::V1)
        }
    }

    #[test]
    fn a_v1_record_round_trips_and_leads_with_its_version() {
        let bytes = encode::<StoredPointV1Only>(&PointV1 { x: -3 }).unwrap();
        assert_eq!(bytes, [0, 5], "variant index 0, then the zigzag varint of -3");
        assert_eq!(version_of::<StoredPointV1Only>(&bytes), Ok(1));
        assert_eq!(decode::<StoredPointV1Only>(&bytes), Ok(PointV1 { x: -3 }));
    }

    #[test]
    fn a_later_release_reads_v1_and_upgrades_legacy_bytes() {
        let v1 = encode::<StoredPointV1Only>(&PointV1 { x: 7 }).unwrap();
        assert_eq!(decode::<StoredPoint>(&v1), Ok(Point { x: 7, label: String::new() }));
        let legacy = postcard::to_stdvec(&PointV1 { x: 7 }).unwrap();
        assert_eq!(upgrade::<StoredPointV1Only>(&legacy).unwrap(), v1);
        let v2 = encode::<StoredPoint>(&Point { x: 1, label: "a".into() }).unwrap();
        assert_eq!(decode::<StoredPoint>(&v2), Ok(Point { x: 1, label: "a".into() }));
    }

    #[test]
    fn an_unknown_future_version_is_an_error_naming_it() {
        let v2 = encode::<StoredPoint>(&Point { x: 1, label: "a".into() }).unwrap();
        let err = decode::<StoredPointV1Only>(&v2).unwrap_err();
        assert_eq!(err, FormatError::UnknownVersion { record: "point", version: 2, newest: 1 });
        assert_eq!(
            err.to_string(),
            "point is format version 2, but this build reads versions 1 to 1: it was written by a newer release"
        );
        // The largest varint postcard reads as an enum index: no overflow, no panic.
        let far = [0xff, 0xff, 0xff, 0xff, 0x0f];
        assert_eq!(
            decode::<StoredPoint>(&far),
            Err(FormatError::UnknownVersion { record: "point", version: 1 << 32, newest: 2 })
        );
    }

    #[test]
    fn bad_bytes_are_errors_not_panics() {
        assert!(matches!(decode::<StoredPoint>(&[]), Err(FormatError::NoVersion { record: "point", .. })));
        assert!(matches!(decode::<StoredPoint>(&[1, 2, 9]), Err(FormatError::Corrupt { version: Some(2), .. })));
        assert!(matches!(decode::<StoredPoint>(&[0, 2, 9]), Err(FormatError::TrailingBytes { extra: 1, .. })));
        assert!(matches!(upgrade::<StoredPoint>(&[]), Err(FormatError::Corrupt { version: None, .. })));
        // Every short byte string: any outcome but a panic.
        for a in 0..=255u8 {
            for b in [0u8, 1, 0x7f, 0x80, 0xff] {
                let _ = decode::<StoredPoint>(&[a, b]);
                let _ = decode::<StoredPoint>(&[a, b, b, a]);
            }
        }
    }
}
