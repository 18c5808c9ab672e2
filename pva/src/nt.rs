//! The normative types beamflow reads and serves: NTScalar, NTScalarArray, NTEnum, NTTable and
//! NTNDArray, with their alarm and time stamp, and NTNDArray's codecs (none, and the `lz4` and
//! `bslz4` forms areaDetector's codec plugin writes).

use std::sync::Arc;

use beamflow_protocol::{DType, NdArray};
use bytes::Bytes;

use crate::pvdata::{ArrayValue, BitSet, FieldDesc, PvStructure, ScalarType, StructDesc, Value};

/// `epics:nt/NTScalar:1.0`.
pub const NT_SCALAR: &str = "epics:nt/NTScalar:1.0";
/// `epics:nt/NTScalarArray:1.0`.
pub const NT_SCALAR_ARRAY: &str = "epics:nt/NTScalarArray:1.0";
/// `epics:nt/NTEnum:1.0`.
pub const NT_ENUM: &str = "epics:nt/NTEnum:1.0";
/// `epics:nt/NTTable:1.0`.
pub const NT_TABLE: &str = "epics:nt/NTTable:1.0";
/// `epics:nt/NTNDArray:1.0`.
pub const NT_NDARRAY: &str = "epics:nt/NTNDArray:1.0";

/// Seconds from the POSIX epoch to the EPICS one (1990-01-01): PVA time stamps count from
/// POSIX's, Channel Access's from EPICS's.
pub const POSIX_TIME_AT_EPICS_EPOCH: i64 = 631_152_000;

/// Why an NT value cannot be read as beamflow data.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NtError {
    /// A member the type requires is missing or of another type.
    #[error("{id}: no usable {member}")]
    Missing {
        /// The structure's type id.
        id: String,
        /// The member.
        member: &'static str,
    },
    /// The dimensions do not match the number of elements.
    #[error("NTNDArray dimensions {dims:?} hold {expected} elements, value has {got}")]
    Shape {
        /// Sizes, fastest first.
        dims: Vec<usize>,
        /// Their product.
        expected: usize,
        /// Elements present.
        got: usize,
    },
    /// A codec beamflow does not decode, or data it cannot decode.
    #[error("NTNDArray codec {codec:?}: {error}")]
    Codec {
        /// The codec's name.
        codec: String,
        /// What went wrong.
        error: String,
    },
}

fn scalar(t: ScalarType) -> FieldDesc {
    FieldDesc::Scalar(t)
}

/// `alarm_t`.
pub fn alarm_t() -> FieldDesc {
    FieldDesc::structure(
        "alarm_t",
        vec![
            ("severity", scalar(ScalarType::Int)),
            ("status", scalar(ScalarType::Int)),
            ("message", scalar(ScalarType::String)),
        ],
    )
}

/// `time_t`.
pub fn time_t() -> FieldDesc {
    FieldDesc::structure(
        "time_t",
        vec![
            ("secondsPastEpoch", scalar(ScalarType::Long)),
            ("nanoseconds", scalar(ScalarType::Int)),
            ("userTag", scalar(ScalarType::Int)),
        ],
    )
}

fn enum_t() -> FieldDesc {
    FieldDesc::structure(
        "enum_t",
        vec![
            ("index", scalar(ScalarType::Int)),
            ("choices", FieldDesc::ScalarArray(ScalarType::String)),
        ],
    )
}

/// `display_t`: the range displays draw, units, precision and description.
pub fn display_t() -> FieldDesc {
    FieldDesc::structure(
        "display_t",
        vec![
            ("limitLow", scalar(ScalarType::Double)),
            ("limitHigh", scalar(ScalarType::Double)),
            ("description", scalar(ScalarType::String)),
            ("units", scalar(ScalarType::String)),
            ("precision", scalar(ScalarType::Int)),
            ("form", enum_t()),
        ],
    )
}

/// `control_t`: the range a client may set.
pub fn control_t() -> FieldDesc {
    FieldDesc::structure(
        "control_t",
        vec![
            ("limitLow", scalar(ScalarType::Double)),
            ("limitHigh", scalar(ScalarType::Double)),
            ("minStep", scalar(ScalarType::Double)),
        ],
    )
}

/// `valueAlarm_t`: alarm limits and the severities they raise.
pub fn value_alarm_t() -> FieldDesc {
    FieldDesc::structure(
        "valueAlarm_t",
        vec![
            ("active", scalar(ScalarType::Boolean)),
            ("lowAlarmLimit", scalar(ScalarType::Double)),
            ("lowWarningLimit", scalar(ScalarType::Double)),
            ("highWarningLimit", scalar(ScalarType::Double)),
            ("highAlarmLimit", scalar(ScalarType::Double)),
            ("lowAlarmSeverity", scalar(ScalarType::Int)),
            ("lowWarningSeverity", scalar(ScalarType::Int)),
            ("highWarningSeverity", scalar(ScalarType::Int)),
            ("highAlarmSeverity", scalar(ScalarType::Int)),
            ("hysteresis", scalar(ScalarType::Byte)),
        ],
    )
}

fn with_metadata(id: &str, value: FieldDesc, metadata: bool) -> Arc<StructDesc> {
    let mut fields = vec![
        ("value", value),
        ("alarm", alarm_t()),
        ("timeStamp", time_t()),
    ];
    if metadata {
        fields.push(("display", display_t()));
        fields.push(("control", control_t()));
        fields.push(("valueAlarm", value_alarm_t()));
    }
    Arc::new(StructDesc::new(id, fields))
}

/// NTScalar of `t`; with `metadata`, also `display`, `control` and `valueAlarm`.
pub fn nt_scalar(t: ScalarType, metadata: bool) -> Arc<StructDesc> {
    with_metadata(NT_SCALAR, scalar(t), metadata)
}

/// NTScalarArray of `t`; with `metadata`, also `display`, `control` and `valueAlarm`.
pub fn nt_scalar_array(t: ScalarType, metadata: bool) -> Arc<StructDesc> {
    with_metadata(NT_SCALAR_ARRAY, FieldDesc::ScalarArray(t), metadata)
}

/// NTEnum: `value` is `{index, choices}`.
pub fn nt_enum() -> Arc<StructDesc> {
    with_metadata(NT_ENUM, enum_t(), false)
}

/// NTTable of these columns (name and element type), in order; `labels` holds their names.
pub fn nt_table(columns: &[(&str, ScalarType)]) -> Arc<StructDesc> {
    let value = FieldDesc::structure(
        "",
        columns
            .iter()
            .map(|(name, t)| (*name, FieldDesc::ScalarArray(*t)))
            .collect(),
    );
    Arc::new(StructDesc::new(
        NT_TABLE,
        vec![
            ("labels", FieldDesc::ScalarArray(ScalarType::String)),
            ("value", value),
            ("descriptor", scalar(ScalarType::String)),
            ("alarm", alarm_t()),
            ("timeStamp", time_t()),
        ],
    ))
}

/// The element types of NTNDArray's `value` union, in its order.
const NDARRAY_ELEMENTS: [(&str, ScalarType); 11] = [
    ("booleanValue", ScalarType::Boolean),
    ("byteValue", ScalarType::Byte),
    ("shortValue", ScalarType::Short),
    ("intValue", ScalarType::Int),
    ("longValue", ScalarType::Long),
    ("ubyteValue", ScalarType::UByte),
    ("ushortValue", ScalarType::UShort),
    ("uintValue", ScalarType::UInt),
    ("ulongValue", ScalarType::ULong),
    ("floatValue", ScalarType::Float),
    ("doubleValue", ScalarType::Double),
];

/// NTNDArray, as areaDetector's PVA plugin and p4p define it.
pub fn nt_ndarray() -> Arc<StructDesc> {
    let value = FieldDesc::Union(Arc::new(StructDesc::new(
        "",
        NDARRAY_ELEMENTS
            .iter()
            .map(|(name, t)| (*name, FieldDesc::ScalarArray(*t)))
            .collect(),
    )));
    let dimension = FieldDesc::StructureArray(Arc::new(StructDesc::new(
        "dimension_t",
        vec![
            ("size", scalar(ScalarType::Int)),
            ("offset", scalar(ScalarType::Int)),
            ("fullSize", scalar(ScalarType::Int)),
            ("binning", scalar(ScalarType::Int)),
            ("reverse", scalar(ScalarType::Boolean)),
        ],
    )));
    let attribute = FieldDesc::StructureArray(Arc::new(StructDesc::new(
        "epics:nt/NTAttribute:1.0",
        vec![
            ("name", scalar(ScalarType::String)),
            ("value", FieldDesc::Any),
            ("tags", FieldDesc::ScalarArray(ScalarType::String)),
            ("descriptor", scalar(ScalarType::String)),
            ("alarm", alarm_t()),
            ("timeStamp", time_t()),
            ("sourceType", scalar(ScalarType::Int)),
            ("source", scalar(ScalarType::String)),
        ],
    )));
    Arc::new(StructDesc::new(
        NT_NDARRAY,
        vec![
            ("value", value),
            (
                "codec",
                FieldDesc::structure(
                    "codec_t",
                    vec![
                        ("name", scalar(ScalarType::String)),
                        ("parameters", FieldDesc::Any),
                    ],
                ),
            ),
            ("compressedSize", scalar(ScalarType::Long)),
            ("uncompressedSize", scalar(ScalarType::Long)),
            ("dimension", dimension),
            ("uniqueId", scalar(ScalarType::Int)),
            ("dataTimeStamp", time_t()),
            ("attribute", attribute),
            ("descriptor", scalar(ScalarType::String)),
            ("alarm", alarm_t()),
            ("timeStamp", time_t()),
        ],
    ))
}

/// An alarm: EPICS severity (0 none, 1 minor, 2 major, 3 invalid), status and message.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Alarm {
    /// Severity.
    pub severity: i32,
    /// Status (PVA's: 0 none, 1 device, 2 driver, 3 record, 4 database, 5 confirm, 6 undefined,
    /// 7 client).
    pub status: i32,
    /// Message.
    pub message: String,
}

/// A PVA time stamp: seconds and nanoseconds since the POSIX epoch, and a user tag (a pulse id
/// where the source sets one).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TimeStamp {
    /// Seconds since 1970-01-01 UTC.
    pub seconds: i64,
    /// Nanoseconds within the second.
    pub nanoseconds: i32,
    /// The user tag.
    pub user_tag: i32,
}

impl TimeStamp {
    /// Now, from the system clock.
    pub fn now() -> Self {
        let since = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        Self {
            seconds: since.as_secs() as i64,
            nanoseconds: since.subsec_nanos() as i32,
            user_tag: 0,
        }
    }

    /// Seconds since the POSIX epoch, with their fraction.
    pub fn as_f64(&self) -> f64 {
        self.seconds as f64 + f64::from(self.nanoseconds) * 1e-9
    }
}

/// The alarm at `path` (`alarm`, say), if it is an `alarm_t`.
pub fn alarm(pv: &PvStructure, path: &str) -> Option<Alarm> {
    let number = |member: &str| pv.value(&format!("{path}.{member}"))?.as_i64();
    Some(Alarm {
        severity: number("severity")? as i32,
        status: number("status").unwrap_or(0) as i32,
        message: pv
            .value(&format!("{path}.message"))
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned(),
    })
}

/// The time stamp at `path` (`timeStamp`, say), if it is a `time_t`.
pub fn time_stamp(pv: &PvStructure, path: &str) -> Option<TimeStamp> {
    let number = |member: &str| pv.value(&format!("{path}.{member}"))?.as_i64();
    Some(TimeStamp {
        seconds: number("secondsPastEpoch")?,
        nanoseconds: number("nanoseconds").unwrap_or(0) as i32,
        user_tag: number("userTag").unwrap_or(0) as i32,
    })
}

/// Sets the `alarm_t` at `path` and marks what changed.
pub fn set_alarm(pv: &mut PvStructure, path: &str, alarm: &Alarm, changed: &mut BitSet) {
    for (member, value) in [
        ("severity", Value::Int(alarm.severity)),
        ("status", Value::Int(alarm.status)),
        ("message", Value::String(alarm.message.clone())),
    ] {
        let member = format!("{path}.{member}");
        if pv.value(&member) != Some(&value) {
            // Members of an alarm_t: the path exists whenever the structure does.
            let _ = pv.set(&member, value, changed);
        }
    }
}

/// Sets the `time_t` at `path` and marks it changed.
pub fn set_time_stamp(pv: &mut PvStructure, path: &str, time: TimeStamp, changed: &mut BitSet) {
    let _ = pv.set(
        path,
        Value::Structure(vec![
            Value::Long(time.seconds),
            Value::Int(time.nanoseconds),
            Value::Int(time.user_tag),
        ]),
        changed,
    );
}

/// NTNDArray's value from an image: `shape` is numpy's (slowest first); the dimensions are
/// written fastest first, as areaDetector does.
pub fn ndarray_value(image: &NdArray, unique_id: i32, time: TimeStamp) -> PvStructure {
    let desc = nt_ndarray();
    let mut pv = PvStructure::new(Arc::clone(&desc));
    let mut changed = BitSet::new();
    let data = image.data();
    let (selector, array) = match image.dtype() {
        DType::Int8 => (1, ArrayValue::Byte(data.iter().map(|&b| b as i8).collect())),
        DType::Int16 => (2, ArrayValue::Short(chunks(data, i16::from_le_bytes))),
        DType::Int32 => (3, ArrayValue::Int(chunks(data, i32::from_le_bytes))),
        DType::Int64 => (4, ArrayValue::Long(chunks(data, i64::from_le_bytes))),
        DType::Uint8 => (5, ArrayValue::UByte(data.to_vec())),
        DType::Uint16 => (6, ArrayValue::UShort(chunks(data, u16::from_le_bytes))),
        DType::Uint32 => (7, ArrayValue::UInt(chunks(data, u32::from_le_bytes))),
        DType::Uint64 => (8, ArrayValue::ULong(chunks(data, u64::from_le_bytes))),
        DType::Float32 => (9, ArrayValue::Float(chunks(data, f32::from_le_bytes))),
        DType::Float64 => (10, ArrayValue::Double(chunks(data, f64::from_le_bytes))),
    };
    let bytes = data.len() as i64;
    let dimensions = image
        .shape()
        .iter()
        .rev()
        .map(|&size| {
            let size = i32::try_from(size).unwrap_or(i32::MAX);
            Some(vec![
                Value::Int(size),
                Value::Int(0),
                Value::Int(size),
                Value::Int(1),
                Value::Boolean(false),
            ])
        })
        .collect();
    let sets = [
        (
            "value",
            Value::Union(Some((selector, Box::new(Value::Array(array))))),
        ),
        ("compressedSize", Value::Long(bytes)),
        ("uncompressedSize", Value::Long(bytes)),
        ("dimension", Value::StructureArray(dimensions)),
        ("uniqueId", Value::Int(unique_id)),
    ];
    for (path, value) in sets {
        // Members of the NTNDArray built above.
        let _ = pv.set(path, value, &mut changed);
    }
    set_time_stamp(&mut pv, "timeStamp", time, &mut changed);
    set_time_stamp(&mut pv, "dataTimeStamp", time, &mut changed);
    pv
}

fn chunks<const N: usize, T>(data: &[u8], read: fn([u8; N]) -> T) -> Vec<T> {
    data.chunks_exact(N)
        .map(|c| read(c.try_into().unwrap_or([0; N])))
        .collect()
}

/// An NTNDArray's image: decompressed, with numpy's shape (slowest first).
pub fn ndarray_image(pv: &PvStructure) -> Result<NdArray, NtError> {
    let missing = |member| NtError::Missing {
        id: pv.id().to_owned(),
        member,
    };
    let Some(Value::StructureArray(dimensions)) = pv.value("dimension") else {
        return Err(missing("dimension"));
    };
    let mut shape: Vec<usize> = dimensions
        .iter()
        .map(|d| {
            d.as_ref()
                .and_then(|d| d.first())
                .and_then(Value::as_i64)
                .and_then(|s| usize::try_from(s).ok())
                .ok_or_else(|| missing("dimension size"))
        })
        .collect::<Result<_, _>>()?;
    shape.reverse();
    let elements = shape.iter().try_fold(1usize, |n, &s| n.checked_mul(s));
    let Some(Value::Union(Some((_, value)))) = pv.value("value") else {
        return Err(missing("value"));
    };
    let Value::Array(array) = &**value else {
        return Err(missing("value"));
    };
    let codec = pv
        .value("codec.name")
        .and_then(Value::as_str)
        .unwrap_or_default();
    let (dtype, bytes) = if codec.is_empty() || codec == "none" {
        array_bytes(array)
    } else {
        let dtype = compressed_dtype(pv).ok_or_else(|| missing("codec.parameters"))?;
        let ArrayValue::UByte(compressed) = array else {
            return Err(NtError::Codec {
                codec: codec.to_owned(),
                error: "compressed data must be a ubyte array".to_owned(),
            });
        };
        let size = pv
            .value("uncompressedSize")
            .and_then(Value::as_i64)
            .and_then(|s| usize::try_from(s).ok())
            .ok_or_else(|| missing("uncompressedSize"))?;
        let expected = elements.and_then(|n| n.checked_mul(dtype.size()));
        if expected != Some(size) {
            return Err(NtError::Codec {
                codec: codec.to_owned(),
                error: format!("uncompressedSize {size} does not match the dimensions {shape:?}"),
            });
        }
        (dtype, decompress(codec, compressed, size, dtype.size())?)
    };
    let got = bytes.len() / dtype.size();
    let expected = elements.unwrap_or(usize::MAX);
    if got != expected {
        return Err(NtError::Shape {
            dims: shape.iter().rev().copied().collect(),
            expected,
            got,
        });
    }
    NdArray::new(shape.clone(), dtype, Bytes::from(bytes)).map_err(|_| NtError::Shape {
        dims: shape.iter().rev().copied().collect(),
        expected,
        got,
    })
}

/// The element type of compressed data: areaDetector puts its `NDDataType_t` into
/// `codec.parameters`.
fn compressed_dtype(pv: &PvStructure) -> Option<DType> {
    let Some(Value::Any(Some(any))) = pv.value("codec.parameters") else {
        return None;
    };
    Some(match any.1.as_i64()? {
        0 => DType::Int8,
        1 => DType::Uint8,
        2 => DType::Int16,
        3 => DType::Uint16,
        4 => DType::Int32,
        5 => DType::Uint32,
        6 => DType::Int64,
        7 => DType::Uint64,
        8 => DType::Float32,
        9 => DType::Float64,
        _ => return None,
    })
}

/// A numeric array's elements as little-endian bytes with their element type (booleans as
/// bytes; strings as no bytes).
pub fn array_bytes(array: &ArrayValue) -> (DType, Vec<u8>) {
    fn bytes<T: Copy, const N: usize>(v: &[T], to: fn(T) -> [u8; N]) -> Vec<u8> {
        v.iter().flat_map(|&x| to(x)).collect()
    }
    match array {
        ArrayValue::Boolean(v) => (DType::Uint8, v.iter().map(|&b| u8::from(b)).collect()),
        ArrayValue::Byte(v) => (DType::Int8, v.iter().map(|&x| x as u8).collect()),
        ArrayValue::UByte(v) => (DType::Uint8, v.clone()),
        ArrayValue::Short(v) => (DType::Int16, bytes(v, i16::to_le_bytes)),
        ArrayValue::UShort(v) => (DType::Uint16, bytes(v, u16::to_le_bytes)),
        ArrayValue::Int(v) => (DType::Int32, bytes(v, i32::to_le_bytes)),
        ArrayValue::UInt(v) => (DType::Uint32, bytes(v, u32::to_le_bytes)),
        ArrayValue::Long(v) => (DType::Int64, bytes(v, i64::to_le_bytes)),
        ArrayValue::ULong(v) => (DType::Uint64, bytes(v, u64::to_le_bytes)),
        ArrayValue::Float(v) => (DType::Float32, bytes(v, f32::to_le_bytes)),
        ArrayValue::Double(v) => (DType::Float64, bytes(v, f64::to_le_bytes)),
        ArrayValue::String(_) => (DType::Uint8, Vec::new()),
    }
}

/// bitshuffle's default block for `elem_size`-byte elements, in elements: the block size that
/// areaDetector's `bslz4` (bitshuffle's `bshuf_compress_lz4` with block size 0) uses.
fn bitshuffle_block(elem_size: usize) -> usize {
    ((8192 / elem_size.max(1)) / 8 * 8).max(128)
}

fn decompress(codec: &str, data: &[u8], size: usize, elem_size: usize) -> Result<Vec<u8>, NtError> {
    let failed = |error: String| NtError::Codec {
        codec: codec.to_owned(),
        error,
    };
    // LZ4 expands a byte to at most 255: a larger size announced is not this data's, and
    // would reserve memory nothing was received for.
    if size > data.len().saturating_mul(255).saturating_add(64) {
        return Err(failed(format!(
            "uncompressedSize {size} is more than {} compressed bytes can hold",
            data.len()
        )));
    }
    match codec {
        "lz4" => lz4_flex::block::decompress(data, size).map_err(|e| failed(e.to_string())),
        "bslz4" => {
            // areaDetector sends bitshuffle's blocks without the HDF5 filter's 12-byte header:
            // the header is made from what the NTNDArray says.
            let mut framed = Vec::with_capacity(12 + data.len());
            framed.extend_from_slice(&(size as u64).to_be_bytes());
            framed.extend_from_slice(
                &((bitshuffle_block(elem_size) * elem_size) as u32).to_be_bytes(),
            );
            framed.extend_from_slice(data);
            beamflow_protocol::streams::bslz4::decompress(&framed, elem_size, Some(size))
                .map_err(|e| failed(e.to_string()))
        }
        other => Err(failed(format!(
            "{other:?} is not decoded (none, lz4 and bslz4 are)"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn image() -> NdArray {
        let pixels: Vec<u8> = (0..6u16).flat_map(|x| (x * 1000).to_le_bytes()).collect();
        NdArray::new(vec![2, 3], DType::Uint16, Bytes::from(pixels)).unwrap()
    }

    #[test]
    fn an_image_survives_ndarray_with_its_shape_reversed_on_the_wire() {
        let time = TimeStamp {
            seconds: 1_700_000_000,
            nanoseconds: 5,
            user_tag: 7,
        };
        let pv = ndarray_value(&image(), 42, time);
        let Some(Value::StructureArray(dims)) = pv.value("dimension") else {
            panic!("dimensions");
        };
        assert_eq!(dims[0].as_ref().unwrap()[0], Value::Int(3), "fastest first");
        assert_eq!(time_stamp(&pv, "timeStamp"), Some(time));
        assert_eq!(ndarray_image(&pv).unwrap(), image());
    }

    fn compressed(image: &NdArray, codec: &str, data: Vec<u8>) -> PvStructure {
        let mut pv = ndarray_value(image, 1, TimeStamp::default());
        let mut changed = BitSet::new();
        pv.set(
            "value",
            Value::Union(Some((5, Box::new(Value::Array(ArrayValue::UByte(data)))))),
            &mut changed,
        )
        .unwrap();
        pv.set("codec.name", Value::String(codec.into()), &mut changed)
            .unwrap();
        pv.set(
            "codec.parameters",
            Value::Any(Some(Box::new((
                FieldDesc::Scalar(ScalarType::Int),
                Value::Int(3),
            )))),
            &mut changed,
        )
        .unwrap();
        pv
    }

    #[test]
    fn lz4_and_bslz4_images_are_decompressed() {
        // Two whole bitshuffle blocks of 4096 pixels, a partial one and a few raw pixels.
        let pixels: Vec<u8> = (0..100 * 101u32)
            .flat_map(|x| ((x * 7 % 1000) as u16).to_le_bytes())
            .collect();
        let large =
            NdArray::new(vec![100, 101], DType::Uint16, Bytes::from(pixels.clone())).unwrap();
        let lz4 = compressed(&large, "lz4", lz4_flex::block::compress(&pixels));
        assert_eq!(ndarray_image(&lz4).unwrap(), large);
        let framed = beamflow_protocol::streams::bslz4::compress(&pixels, 2);
        assert_eq!(
            &framed[8..12],
            &8192u32.to_be_bytes(),
            "bitshuffle's default block"
        );
        let bslz4 = compressed(&large, "bslz4", framed[12..].to_vec());
        assert_eq!(ndarray_image(&bslz4).unwrap(), large);
        let jpeg = compressed(&large, "jpeg", pixels);
        assert!(matches!(ndarray_image(&jpeg), Err(NtError::Codec { .. })));
    }

    #[test]
    fn a_size_no_compressed_data_can_hold_is_refused_before_memory_is_reserved() {
        let pixels = 1 << 30;
        let huge = NdArray::new(vec![pixels], DType::Uint8, Bytes::from(vec![0u8; 0]));
        assert!(huge.is_err(), "an array cannot claim what it lacks");
        let mut pv = compressed(&image(), "lz4", vec![0x1f, 0, 1, 0]);
        let mut changed = BitSet::new();
        pv.set(
            "dimension",
            Value::StructureArray(vec![Some(vec![
                Value::Int(pixels as i32),
                Value::Int(0),
                Value::Int(pixels as i32),
                Value::Int(1),
                Value::Boolean(false),
            ])]),
            &mut changed,
        )
        .unwrap();
        pv.set(
            "uncompressedSize",
            Value::Long(2 * pixels as i64),
            &mut changed,
        )
        .unwrap();
        assert!(matches!(ndarray_image(&pv), Err(NtError::Codec { .. })));
    }

    #[test]
    fn dimensions_that_do_not_hold_the_value_are_an_error() {
        let mut pv = ndarray_value(&image(), 1, TimeStamp::default());
        pv.set(
            "value",
            Value::Union(Some((
                6,
                Box::new(Value::Array(ArrayValue::UShort(vec![1, 2]))),
            ))),
            &mut BitSet::new(),
        )
        .unwrap();
        assert!(matches!(
            ndarray_image(&pv),
            Err(NtError::Shape {
                expected: 6,
                got: 2,
                ..
            })
        ));
    }

    #[test]
    fn table_columns_are_arrays_under_value_with_their_labels() {
        let desc = nt_table(&[("x", ScalarType::Double), ("name", ScalarType::String)]);
        let pv = PvStructure::new(desc);
        assert!(matches!(
            pv.get("value.x"),
            Some((FieldDesc::ScalarArray(ScalarType::Double), _))
        ));
        assert_eq!(alarm(&pv, "alarm"), Some(Alarm::default()));
    }
}
