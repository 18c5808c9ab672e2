//! DBR values: the seven native types and their TIME form (alarm status, severity and time stamp
//! before the values, with the type's own padding), the EPICS alarm codes, and the [`Metadata`]
//! (units, precision, limits) the GR and CTRL forms carry.

use beamflow_protocol::streams::pv::{EPICS_EPOCH_UNIX, epics_timestamp};
use bytes::{Buf, BufMut};

use crate::CaError;

/// Bytes of one DBR_STRING element.
pub const STRING_SIZE: usize = 40;

/// The native (plain) DBR types; TIME types are these plus 14.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Native {
    /// 40-byte NUL-terminated strings.
    String = 0,
    /// i16 (CA's INT).
    Short = 1,
    /// f32.
    Float = 2,
    /// u16 enum index.
    Enum = 3,
    /// u8.
    Char = 4,
    /// i32.
    Long = 5,
    /// f64.
    Double = 6,
}

/// Offset of TIME types from the plain ones.
pub const TIME_OFFSET: u16 = 14;

impl Native {
    /// The type of a plain or TIME DBR code.
    pub fn of(dbr_type: u16) -> Option<Self> {
        let plain = match dbr_type {
            0..=6 => dbr_type,
            14..=20 => dbr_type - TIME_OFFSET,
            _ => return None,
        };
        Some(match plain {
            0 => Native::String,
            1 => Native::Short,
            2 => Native::Float,
            3 => Native::Enum,
            4 => Native::Char,
            5 => Native::Long,
            _ => Native::Double,
        })
    }

    /// Its plain DBR code.
    pub fn code(self) -> u16 {
        self as u16
    }

    /// Its TIME DBR code.
    pub fn time_code(self) -> u16 {
        self as u16 + TIME_OFFSET
    }

    /// Bytes per element.
    pub fn element_size(self) -> usize {
        match self {
            Native::String => STRING_SIZE,
            Native::Short | Native::Enum => 2,
            Native::Float | Native::Long => 4,
            Native::Char => 1,
            Native::Double => 8,
        }
    }

    /// Bytes before the values in the TIME form: status, severity, time stamp, then padding that
    /// aligns the values (2 for SHORT and ENUM, 3 for CHAR, 4 for DOUBLE).
    pub fn time_value_offset(self) -> usize {
        12 + match self {
            Native::String | Native::Float | Native::Long => 0,
            Native::Short | Native::Enum => 2,
            Native::Char => 3,
            Native::Double => 4,
        }
    }
}

/// Values of one native type.
#[derive(Debug, Clone, PartialEq)]
pub enum Values {
    /// DBR_STRING.
    String(Vec<String>),
    /// DBR_SHORT.
    Short(Vec<i16>),
    /// DBR_FLOAT.
    Float(Vec<f32>),
    /// DBR_ENUM.
    Enum(Vec<u16>),
    /// DBR_CHAR.
    Char(Vec<u8>),
    /// DBR_LONG.
    Long(Vec<i32>),
    /// DBR_DOUBLE.
    Double(Vec<f64>),
}

impl Values {
    /// Its native type.
    pub fn native(&self) -> Native {
        match self {
            Values::String(_) => Native::String,
            Values::Short(_) => Native::Short,
            Values::Float(_) => Native::Float,
            Values::Enum(_) => Native::Enum,
            Values::Char(_) => Native::Char,
            Values::Long(_) => Native::Long,
            Values::Double(_) => Native::Double,
        }
    }

    /// Elements.
    pub fn len(&self) -> usize {
        match self {
            Values::String(v) => v.len(),
            Values::Short(v) => v.len(),
            Values::Float(v) => v.len(),
            Values::Enum(v) => v.len(),
            Values::Char(v) => v.len(),
            Values::Long(v) => v.len(),
            Values::Double(v) => v.len(),
        }
    }

    /// Whether there are no elements.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Reads `count` elements of `native` from `bytes`.
    pub fn read(native: Native, count: usize, bytes: &[u8]) -> Result<Self, CaError> {
        let needed = count * native.element_size();
        if bytes.len() < needed {
            return Err(CaError::ShortPayload {
                dbr_type: native.code(),
                count,
                needed,
                got: bytes.len(),
            });
        }
        let mut b = &bytes[..needed];
        Ok(match native {
            Native::String => Values::String(
                bytes[..needed]
                    .chunks_exact(STRING_SIZE)
                    .map(crate::wire::payload_name)
                    .collect(),
            ),
            Native::Short => Values::Short((0..count).map(|_| b.get_i16()).collect()),
            Native::Float => Values::Float((0..count).map(|_| b.get_f32()).collect()),
            Native::Enum => Values::Enum((0..count).map(|_| b.get_u16()).collect()),
            Native::Char => Values::Char(b.to_vec()),
            Native::Long => Values::Long((0..count).map(|_| b.get_i32()).collect()),
            Native::Double => Values::Double((0..count).map(|_| b.get_f64()).collect()),
        })
    }

    /// Appends the elements.
    pub fn write(&self, out: &mut impl BufMut) {
        match self {
            Values::String(v) => {
                for s in v {
                    let text = &s.as_bytes()[..s.len().min(STRING_SIZE - 1)];
                    out.put_slice(text);
                    out.put_bytes(0, STRING_SIZE - text.len());
                }
            }
            Values::Short(v) => v.iter().for_each(|&x| out.put_i16(x)),
            Values::Float(v) => v.iter().for_each(|&x| out.put_f32(x)),
            Values::Enum(v) => v.iter().for_each(|&x| out.put_u16(x)),
            Values::Char(v) => out.put_slice(v),
            Values::Long(v) => v.iter().for_each(|&x| out.put_i32(x)),
            Values::Double(v) => v.iter().for_each(|&x| out.put_f64(x)),
        }
    }
}

/// An EPICS time stamp: seconds since 1990-01-01 UTC and nanoseconds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct EpicsTime {
    /// Seconds past the EPICS epoch.
    pub secs: u32,
    /// Nanoseconds (at LCLS, the low 17 bits carry the pulse id).
    pub nanos: u32,
}

pub use beamflow_protocol::streams::pv::{PULSE_ID_INVALID, PULSE_ID_MASK};

impl EpicsTime {
    /// The time stamp of a Unix-epoch timestamp (clamped to what CA can carry).
    pub fn from_timestamp(t: jiff::Timestamp) -> Self {
        let secs = (t.as_second() - EPICS_EPOCH_UNIX).clamp(0, i64::from(u32::MAX));
        Self {
            secs: secs as u32,
            nanos: t.subsec_nanosecond().max(0) as u32,
        }
    }

    /// Now.
    pub fn now() -> Self {
        Self::from_timestamp(jiff::Timestamp::now())
    }

    /// As a Unix-epoch timestamp.
    pub fn to_timestamp(self) -> jiff::Timestamp {
        epics_timestamp(self.secs, self.nanos)
    }

    /// LCLS's beam-synchronous pulse id, when the time stamp carries one.
    pub fn pulse_id(self) -> Option<u32> {
        beamflow_protocol::streams::pv::pulse_id(self.nanos)
    }

    /// This time stamp with `pulse_id` in the low 17 bits of its nanoseconds.
    pub fn with_pulse_id(self, pulse_id: u32) -> Self {
        let mut secs = self.secs;
        let mut nanos = (self.nanos & !PULSE_ID_MASK) | (pulse_id & PULSE_ID_MASK);
        if nanos >= 1_000_000_000 {
            secs += 1;
            nanos = ((nanos - 1_000_000_000) & !PULSE_ID_MASK) | (pulse_id & PULSE_ID_MASK);
        }
        Self { secs, nanos }
    }
}

/// EPICS alarm severities and statuses (`alarm.h` of EPICS base).
pub mod alarm {
    /// Alarm severities: how bad.
    pub mod severity {
        /// No alarm.
        pub const NO_ALARM: u16 = 0;
        /// A warning (LOW/HIGH limits).
        pub const MINOR: u16 = 1;
        /// An alarm (LOLO/HIHI limits).
        pub const MAJOR: u16 = 2;
        /// The value is not to be trusted.
        pub const INVALID: u16 = 3;
    }

    /// Alarm statuses: why.
    pub mod status {
        /// No alarm.
        pub const NO_ALARM: u16 = 0;
        /// At or above the HIHI limit.
        pub const HIHI: u16 = 3;
        /// At or above the HIGH limit.
        pub const HIGH: u16 = 4;
        /// At or below the LOLO limit.
        pub const LOLO: u16 = 5;
        /// At or below the LOW limit.
        pub const LOW: u16 = 6;
        /// Communication with the source failed.
        pub const COMM: u16 = 9;
        /// A device did not answer in time.
        pub const TIMEOUT: u16 = 10;
        /// An input outside the range its hardware (or model) covers.
        pub const HW_LIMIT: u16 = 11;
        /// A software-defined alarm.
        pub const SOFT: u16 = 15;
        /// The value was never defined.
        pub const UDF: u16 = 17;
    }
}

/// Bytes of the units field in the GR and CTRL forms (`MAX_UNITS_SIZE`, its NUL included).
pub const UNITS_SIZE: usize = 8;

/// A low and a high limit.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Limits {
    /// The low limit.
    pub low: f64,
    /// The high limit.
    pub high: f64,
}

/// Alarm limits, as an `ai` record's LOLO, LOW, HIGH and HIHI; NaN where none is set.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AlarmLimits {
    /// MAJOR at or below.
    pub lolo: f64,
    /// MINOR at or below.
    pub low: f64,
    /// MINOR at or above.
    pub high: f64,
    /// MAJOR at or above.
    pub hihi: f64,
}

impl Default for AlarmLimits {
    /// None set: NaN, which displays read as "no limit" where 0 would be a limit at zero.
    fn default() -> Self {
        Self {
            lolo: f64::NAN,
            low: f64::NAN,
            high: f64::NAN,
            hihi: f64::NAN,
        }
    }
}

/// What a PV's GR and CTRL forms carry beside the value: an `ai` record's EGU, PREC, HOPR/LOPR
/// (display), DRVH/DRVL (control) and alarm limits. The default is what a PV without any shows:
/// no units, precision 0, limits 0 (displays then scale to the data) and no alarm limits.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Metadata {
    /// Engineering units; sent as at most [`UNITS_SIZE`] − 1 bytes of UTF-8.
    pub units: String,
    /// Digits after the decimal point displays show (PREC; only floating-point types carry it).
    pub precision: i16,
    /// The range displays draw.
    pub display: Limits,
    /// The range a writer may set.
    pub control: Limits,
    /// Where MINOR and MAJOR begin.
    pub alarm: AlarmLimits,
}

impl Metadata {
    /// The units field: the units cut to whole characters within [`UNITS_SIZE`] − 1 bytes,
    /// NUL-padded.
    pub fn units_field(&self) -> [u8; UNITS_SIZE] {
        let mut end = self.units.len().min(UNITS_SIZE - 1);
        while !self.units.is_char_boundary(end) {
            end -= 1;
        }
        let mut field = [0; UNITS_SIZE];
        field[..end].copy_from_slice(&self.units.as_bytes()[..end]);
        field
    }
}

/// DBR_CTRL_DOUBLE: a double behind its alarm, units, precision and limits.
pub const CTRL_DOUBLE: u16 = 34;

/// A DBR_CTRL_DOUBLE payload (EPICS base's `struct dbr_ctrl_double`) of one element: what a
/// writer reads before it writes, above all the control limits (an `ao` record's DRVL/DRVH).
#[derive(Debug, Clone, PartialEq)]
pub struct CtrlDouble {
    /// Alarm status (0: none).
    pub status: u16,
    /// Alarm severity.
    pub severity: u16,
    /// Units, precision, and the display, alarm and control limits.
    pub metadata: Metadata,
    /// The value.
    pub value: f64,
}

impl CtrlDouble {
    /// Bytes before the value: status, severity, precision, padding, units, eight limits.
    pub const VALUE_OFFSET: usize = 8 + UNITS_SIZE + 8 * 8;

    /// Reads the payload of a DBR_CTRL_DOUBLE answer (its first element).
    pub fn read(payload: &[u8]) -> Result<Self, CaError> {
        let needed = Self::VALUE_OFFSET + 8;
        if payload.len() < needed {
            return Err(CaError::ShortPayload {
                dbr_type: CTRL_DOUBLE,
                count: 1,
                needed,
                got: payload.len(),
            });
        }
        let mut b = payload;
        let status = b.get_u16();
        let severity = b.get_u16();
        let precision = b.get_i16();
        b.advance(2);
        let units = crate::wire::payload_name(&b[..UNITS_SIZE]);
        b.advance(UNITS_SIZE);
        // db_access.h's order, as the server writes it (`convert::write`).
        let mut next = || b.get_f64();
        let (display_high, display_low) = (next(), next());
        let (hihi, high, low, lolo) = (next(), next(), next(), next());
        let (control_high, control_low) = (next(), next());
        let value = next();
        Ok(Self {
            status,
            severity,
            metadata: Metadata {
                units,
                precision,
                display: Limits {
                    low: display_low,
                    high: display_high,
                },
                control: Limits {
                    low: control_low,
                    high: control_high,
                },
                alarm: AlarmLimits {
                    lolo,
                    low,
                    high,
                    hihi,
                },
            },
            value,
        })
    }
}

/// A value with its alarm and time stamp (a DBR_TIME_* payload).
#[derive(Debug, Clone, PartialEq)]
pub struct TimeValue {
    /// Alarm status (0: none).
    pub status: u16,
    /// Alarm severity (0 none, 1 minor, 2 major, 3 invalid).
    pub severity: u16,
    /// When the value was taken.
    pub stamp: EpicsTime,
    /// The values.
    pub values: Values,
}

impl TimeValue {
    /// Reads a DBR_TIME_* payload of `count` elements.
    pub fn read(dbr_type: u16, count: usize, payload: &[u8]) -> Result<Self, CaError> {
        let native = Native::of(dbr_type)
            .filter(|_| dbr_type >= TIME_OFFSET)
            .ok_or(CaError::UnsupportedType(dbr_type))?;
        let offset = native.time_value_offset();
        if payload.len() < offset {
            return Err(CaError::ShortPayload {
                dbr_type,
                count,
                needed: offset + count * native.element_size(),
                got: payload.len(),
            });
        }
        let mut b = payload;
        let status = b.get_u16();
        let severity = b.get_u16();
        let stamp = EpicsTime {
            secs: b.get_u32(),
            nanos: b.get_u32(),
        };
        let values =
            Values::read(native, count, &payload[offset..]).map_err(|_| CaError::ShortPayload {
                dbr_type,
                count,
                needed: offset + count * native.element_size(),
                got: payload.len(),
            })?;
        Ok(Self {
            status,
            severity,
            stamp,
            values,
        })
    }

    /// Appends the DBR_TIME_* payload (unpadded); its type is `values.native().time_code()`.
    pub fn write(&self, out: &mut impl BufMut) {
        out.put_u16(self.status);
        out.put_u16(self.severity);
        out.put_u32(self.stamp.secs);
        out.put_u32(self.stamp.nanos);
        out.put_bytes(0, self.values.native().time_value_offset() - 12);
        self.values.write(out);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A monitor update's payload from the protocol specification: TIME_DOUBLE, seconds 1e9,
    /// nanoseconds 123456789, value 3.5, four bytes of padding before the value.
    #[test]
    fn time_double_matches_the_specification_bytes() {
        let payload = [
            0x00, 0x00, 0x00, 0x00, 0x3b, 0x9a, 0xca, 0x00, 0x07, 0x5b, 0xcd, 0x15, 0x00, 0x00,
            0x00, 0x00, 0x40, 0x0c, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
        ];
        let value = TimeValue::read(20, 1, &payload).unwrap();
        assert_eq!(
            value,
            TimeValue {
                status: 0,
                severity: 0,
                stamp: EpicsTime {
                    secs: 1_000_000_000,
                    nanos: 123_456_789
                },
                values: Values::Double(vec![3.5]),
            }
        );
        let mut out = Vec::new();
        value.write(&mut out);
        assert_eq!(out, payload);
    }

    #[test]
    fn every_time_type_round_trips_with_its_padding() {
        let stamp = EpicsTime { secs: 7, nanos: 8 };
        for values in [
            Values::String(vec!["on".into(), "a".repeat(39)]),
            Values::Short(vec![-2, 32767]),
            Values::Float(vec![1.5]),
            Values::Enum(vec![3]),
            Values::Char(vec![1, 2, 255]),
            Values::Long(vec![-1, 1 << 30]),
            Values::Double(vec![f64::MIN_POSITIVE, -0.0]),
        ] {
            let value = TimeValue {
                status: 3,
                severity: 2,
                stamp,
                values,
            };
            let mut out = Vec::new();
            value.write(&mut out);
            let native = value.values.native();
            assert_eq!(
                out.len(),
                native.time_value_offset() + value.values.len() * native.element_size()
            );
            let back = TimeValue::read(native.time_code(), value.values.len(), &out).unwrap();
            assert_eq!(back, value);
        }
    }

    #[test]
    fn short_payloads_and_unknown_types_are_errors() {
        assert!(matches!(
            TimeValue::read(20, 2, &[0; 24]),
            Err(CaError::ShortPayload { needed: 32, .. })
        ));
        assert_eq!(
            TimeValue::read(34, 1, &[0; 88]),
            Err(CaError::UnsupportedType(34))
        );
        assert_eq!(
            TimeValue::read(6, 1, &[0; 8]),
            Err(CaError::UnsupportedType(6)),
            "a plain type is not a TIME type"
        );
    }

    /// What beamflow's server writes for DBR_CTRL_DOUBLE reads back field by field, and a
    /// payload too short for one value is an error.
    #[test]
    fn ctrl_double_reads_what_the_server_writes() {
        let metadata = Metadata {
            units: "kG".to_owned(),
            precision: 4,
            display: Limits {
                low: -12.0,
                high: 12.0,
            },
            control: Limits {
                low: -10.0,
                high: 10.0,
            },
            alarm: AlarmLimits {
                lolo: -11.0,
                low: -10.5,
                high: 10.5,
                hihi: 11.0,
            },
        };
        let value = TimeValue {
            status: 0,
            severity: 0,
            stamp: EpicsTime::default(),
            values: Values::Long(vec![-3]),
        };
        let mut out = Vec::new();
        crate::convert::write(&value, &metadata, CTRL_DOUBLE, 1, &mut out);
        assert_eq!(out.len(), CtrlDouble::VALUE_OFFSET + 8);
        assert_eq!(
            CtrlDouble::read(&out).unwrap(),
            CtrlDouble {
                status: 0,
                severity: 0,
                metadata,
                value: -3.0,
            }
        );
        assert!(matches!(
            CtrlDouble::read(&out[..87]),
            Err(CaError::ShortPayload { needed: 88, .. })
        ));
    }

    #[test]
    fn epics_time_converts_and_carries_the_pulse_id() {
        let t: jiff::Timestamp = "1990-01-01T00:00:01.5Z".parse().unwrap();
        let stamp = EpicsTime::from_timestamp(t);
        assert_eq!(
            stamp,
            EpicsTime {
                secs: 1,
                nanos: 500_000_000
            }
        );
        assert_eq!(stamp.to_timestamp(), t);
        let tagged = stamp.with_pulse_id(0x1_2345);
        assert_eq!(tagged.pulse_id(), Some(0x1_2345));
        assert_eq!(tagged.nanos & !PULSE_ID_MASK, 500_000_000 & !PULSE_ID_MASK);
        let near_second = EpicsTime {
            secs: 1,
            nanos: 999_999_999,
        }
        .with_pulse_id(0x1_FFDF);
        assert!(near_second.nanos < 1_000_000_000 && near_second.secs == 2);
        assert_eq!(near_second.pulse_id(), Some(0x1_FFDF));
        assert_eq!(stamp.with_pulse_id(PULSE_ID_INVALID).pulse_id(), None);
    }
}
