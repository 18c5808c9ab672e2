//! What a server answers a client that asks for a PV in another type or form than its own: the
//! values converted to the requested native type, behind the requested form's metadata (plain,
//! STS, TIME, GR or CTRL). camonitor asks TIME, caget plain or TIME, Phoebus and cainfo CTRL; GR
//! and CTRL carry the PV's [`Metadata`] (units, precision, limits).

use bytes::BufMut;

use crate::dbr::{AlarmLimits, Metadata, Native, TimeValue, Values};

/// The forms a DBR type code can ask for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Form {
    /// Values only (0-6).
    Plain,
    /// Status and severity (7-13).
    Sts,
    /// Status, severity and time stamp (14-20).
    Time,
    /// Status, severity and display metadata (21-27).
    Gr,
    /// GR plus control limits (28-34).
    Ctrl,
}

/// The form and native type a DBR code asks for.
pub fn requested(dbr_type: u16) -> Option<(Form, Native)> {
    let form = match dbr_type / 7 {
        0 => Form::Plain,
        1 => Form::Sts,
        2 => Form::Time,
        3 => Form::Gr,
        4 => Form::Ctrl,
        _ => return None,
    };
    Some((form, Native::of(dbr_type % 7)?))
}

/// `values` as `native`: numbers convert as EPICS' C casts do (integers wrap, so a u16 pixel
/// served as LONG reads back from SHORT with the same bits), strings parse or print.
pub fn convert(values: &Values, native: Native) -> Values {
    if values.native() == native {
        return values.clone();
    }
    if native == Native::String {
        return Values::String(match values {
            Values::String(v) => v.clone(),
            other => numbers(other).iter().map(|x| format!("{x}")).collect(),
        });
    }
    let numbers = numbers(values);
    match native {
        Native::Short => Values::Short(numbers.iter().map(|&x| x as i64 as i16).collect()),
        Native::Float => Values::Float(numbers.iter().map(|&x| x as f32).collect()),
        Native::Enum => Values::Enum(numbers.iter().map(|&x| x as i64 as u16).collect()),
        Native::Char => Values::Char(numbers.iter().map(|&x| x as i64 as u8).collect()),
        Native::Long => Values::Long(numbers.iter().map(|&x| x as i64 as i32).collect()),
        Native::Double | Native::String => Values::Double(numbers),
    }
}

/// Every element as a number (unparsable strings as NaN).
pub fn numbers(values: &Values) -> Vec<f64> {
    match values {
        Values::String(v) => v
            .iter()
            .map(|s| s.trim().parse().unwrap_or(f64::NAN))
            .collect(),
        Values::Short(v) => v.iter().map(|&x| x.into()).collect(),
        Values::Float(v) => v.iter().map(|&x| x.into()).collect(),
        Values::Enum(v) => v.iter().map(|&x| x.into()).collect(),
        Values::Char(v) => v.iter().map(|&x| x.into()).collect(),
        Values::Long(v) => v.iter().map(|&x| x.into()).collect(),
        Values::Double(v) => v.clone(),
    }
}

/// Appends what the GR and CTRL forms of `native` carry between status/severity and the values,
/// laid out as EPICS base's `db_access.h` `struct dbr_gr_*` / `dbr_ctrl_*`: precision (floating
/// types), units, the display and alarm limits, then (CTRL) the control limits, in the requested
/// type. Limits convert as C casts do (saturating here, NaN as 0) for the integer types.
fn write_metadata(form: Form, native: Native, metadata: &Metadata, out: &mut impl BufMut) {
    let ctrl = form == Form::Ctrl;
    let AlarmLimits {
        lolo,
        low,
        high,
        hihi,
    } = metadata.alarm;
    // db_access.h's order: upper and lower display, upper alarm (HIHI), upper warning (HIGH),
    // lower warning (LOW), lower alarm (LOLO), then upper and lower control.
    let mut limits = vec![
        metadata.display.high,
        metadata.display.low,
        hihi,
        high,
        low,
        lolo,
    ];
    if ctrl {
        limits.extend([metadata.control.high, metadata.control.low]);
    }
    match native {
        // DBR_GR_STRING and DBR_CTRL_STRING are DBR_STS_STRING.
        Native::String => {}
        // The number of state strings (none) and sixteen of 26 bytes.
        Native::Enum => out.put_bytes(0, 2 + 16 * 26),
        Native::Double | Native::Float => {
            out.put_i16(metadata.precision);
            out.put_i16(0);
            out.put_slice(&metadata.units_field());
            for limit in limits {
                if native == Native::Double {
                    out.put_f64(limit);
                } else {
                    out.put_f32(limit as f32);
                }
            }
        }
        Native::Short => {
            out.put_slice(&metadata.units_field());
            limits.iter().for_each(|&x| out.put_i16(x as i16));
        }
        Native::Long => {
            out.put_slice(&metadata.units_field());
            limits.iter().for_each(|&x| out.put_i32(x as i32));
        }
        Native::Char => {
            out.put_slice(&metadata.units_field());
            limits.iter().for_each(|&x| out.put_u8(x as u8));
            // RISC_pad before the value.
            out.put_u8(0);
        }
    }
}

/// Appends `value` in the requested form and type, GR and CTRL with `metadata`; returns the
/// element count written. `count` 0 means all elements; more than the PV has are zeros, as EPICS
/// pads them.
pub fn write(
    value: &TimeValue,
    metadata: &Metadata,
    dbr_type: u16,
    count: usize,
    out: &mut impl BufMut,
) -> usize {
    let Some((form, native)) = requested(dbr_type) else {
        return 0;
    };
    let mut values = match (&value.values, native) {
        // As an IOC prints a floating-point record for DBR_STRING (`caget -s`): with its PREC.
        // Precision 0 is also "none set" here, so a PV without metadata prints every digit.
        (Values::Double(x), Native::String) if metadata.precision > 0 => {
            let digits = usize::from(metadata.precision.unsigned_abs()).min(17);
            Values::String(x.iter().map(|x| format!("{x:.digits$}")).collect())
        }
        (values, native) => convert(values, native),
    };
    let count = if count == 0 { values.len() } else { count };
    truncate_or_pad(&mut values, count);
    match form {
        Form::Plain => {}
        Form::Time => {
            let time = TimeValue {
                values,
                ..value.clone()
            };
            time.write(out);
            return count;
        }
        Form::Sts => {
            out.put_u16(value.status);
            out.put_u16(value.severity);
            // STS_CHAR and STS_DOUBLE pad to their value's alignment.
            out.put_bytes(
                0,
                match native {
                    Native::Char => 1,
                    Native::Double => 4,
                    _ => 0,
                },
            );
        }
        Form::Gr | Form::Ctrl => {
            out.put_u16(value.status);
            out.put_u16(value.severity);
            write_metadata(form, native, metadata, out);
        }
    }
    values.write(out);
    count
}

fn truncate_or_pad(values: &mut Values, count: usize) {
    match values {
        Values::String(v) => v.resize(count, String::new()),
        Values::Short(v) => v.resize(count, 0),
        Values::Float(v) => v.resize(count, 0.0),
        Values::Enum(v) => v.resize(count, 0),
        Values::Char(v) => v.resize(count, 0),
        Values::Long(v) => v.resize(count, 0),
        Values::Double(v) => v.resize(count, 0.0),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dbr::{EpicsTime, Limits};

    fn value(values: Values) -> TimeValue {
        TimeValue {
            status: 0,
            severity: 0,
            stamp: EpicsTime { secs: 1, nanos: 2 },
            values,
        }
    }

    /// Value offsets of every form from EPICS base's `db_access.h` (the value's position in
    /// each `struct dbr_*`).
    #[test]
    fn every_form_puts_the_value_where_db_access_h_does() {
        let offsets: [(u16, usize); 28] = [
            (7, 4),
            (8, 4),
            (9, 4),
            (10, 4),
            (11, 5),
            (12, 4),
            (13, 8),
            (14, 12),
            (15, 14),
            (16, 12),
            (17, 14),
            (18, 15),
            (19, 12),
            (20, 16),
            (21, 4),
            (22, 24),
            (23, 40),
            (24, 422),
            (25, 19),
            (26, 36),
            (27, 64),
            (28, 4),
            (29, 28),
            (30, 48),
            (31, 422),
            (32, 21),
            (33, 44),
            (34, 80),
        ];
        for (dbr_type, offset) in offsets {
            let mut out = Vec::new();
            let written = write(
                &value(Values::Double(vec![3.0])),
                &Metadata::default(),
                dbr_type,
                0,
                &mut out,
            );
            let (_, native) = requested(dbr_type).unwrap();
            assert_eq!(written, 1);
            assert_eq!(
                out.len(),
                offset + native.element_size(),
                "DBR type {dbr_type}"
            );
            let back = Values::read(native, 1, &out[offset..]).unwrap();
            assert_eq!(numbers(&back), [3.0], "DBR type {dbr_type}");
        }
    }

    fn described() -> Metadata {
        Metadata {
            units: "µm".into(),
            precision: 2,
            display: Limits {
                low: 0.0,
                high: 500.0,
            },
            control: Limits {
                low: -1.0,
                high: 600.0,
            },
            alarm: AlarmLimits {
                lolo: 5.0,
                low: 10.0,
                high: 400.0,
                hihi: 450.0,
            },
        }
    }

    /// `struct dbr_ctrl_double` field by field: status, severity, precision, RISC_pad, units[8],
    /// upper/lower display, upper alarm, upper warning, lower warning, lower alarm, upper/lower
    /// control, value.
    #[test]
    fn ctrl_double_carries_units_precision_and_limits_where_db_access_h_puts_them() {
        let mut sts = value(Values::Double(vec![32.18]));
        (sts.status, sts.severity) = (4, 1);
        let mut out = Vec::new();
        assert_eq!(write(&sts, &described(), 34, 0, &mut out), 1);
        let mut expected = vec![0, 4, 0, 1, 0, 2, 0, 0];
        expected.extend_from_slice(b"\xc2\xb5m\0\0\0\0\0");
        for x in [500.0, 0.0, 450.0, 400.0, 10.0, 5.0, 600.0, -1.0, 32.18_f64] {
            expected.extend_from_slice(&x.to_be_bytes());
        }
        assert_eq!(out, expected);

        // GR: the same without the control limits.
        let mut gr = Vec::new();
        write(&sts, &described(), 27, 0, &mut gr);
        assert_eq!(gr[..64], expected[..64]);
        assert_eq!(gr[64..], expected[80..]);
    }

    #[test]
    fn other_types_carry_the_limits_in_their_own_type() {
        let v = value(Values::Double(vec![32.18]));
        // CTRL_LONG: units, then eight i32 limits, then the value.
        let mut out = Vec::new();
        write(&v, &described(), 33, 0, &mut out);
        assert_eq!(&out[4..12], b"\xc2\xb5m\0\0\0\0\0");
        let limits: Vec<i32> = out[12..44]
            .chunks_exact(4)
            .map(|b| i32::from_be_bytes(b.try_into().unwrap()))
            .collect();
        assert_eq!(limits, [500, 0, 450, 400, 10, 5, 600, -1]);
        assert_eq!(out[44..], 32_i32.to_be_bytes());
        // GR_FLOAT: precision, then f32 limits.
        let mut out = Vec::new();
        write(&v, &described(), 23, 0, &mut out);
        assert_eq!(out[4..6], 2_i16.to_be_bytes());
        assert_eq!(out[16..20], 500_f32.to_be_bytes());
        // No alarm limits set: NaN, which displays read as none.
        let mut out = Vec::new();
        write(&v, &Metadata::default(), 34, 0, &mut out);
        let hihi = f64::from_be_bytes(out[32..40].try_into().unwrap());
        assert!(hihi.is_nan());
    }

    #[test]
    fn units_are_cut_to_whole_characters_within_seven_bytes() {
        let metadata = |units: &str| Metadata {
            units: units.into(),
            ..Metadata::default()
        };
        assert_eq!(&metadata("counts").units_field(), b"counts\0\0");
        assert_eq!(&metadata("kG·m").units_field(), b"kG\xc2\xb7m\0\0\0");
        // "mm·mrad" is 8 bytes: the "d" goes, a NUL stays.
        assert_eq!(&metadata("mm·mrad").units_field(), b"mm\xc2\xb7mra\0");
        // A two-byte character that would straddle the seventh byte goes whole.
        assert_eq!(&metadata("abcdefµ").units_field(), b"abcdef\0\0");
    }

    #[test]
    fn a_double_read_as_a_string_has_the_pvs_precision() {
        let text = |metadata: &Metadata| {
            let mut out = Vec::new();
            write(
                &value(Values::Double(vec![32.1849])),
                metadata,
                0,
                0,
                &mut out,
            );
            Values::read(Native::String, 1, &out).unwrap()
        };
        assert_eq!(text(&described()), Values::String(vec!["32.18".into()]));
        assert_eq!(
            text(&Metadata::default()),
            Values::String(vec!["32.1849".into()])
        );
    }

    #[test]
    fn values_convert_between_types() {
        assert_eq!(
            convert(&Values::Long(vec![65535, -1]), Native::Short),
            Values::Short(vec![-1, -1]),
            "wrapping, as EPICS' C casts do"
        );
        assert_eq!(
            convert(&Values::Double(vec![2.5]), Native::String),
            Values::String(vec!["2.5".into()])
        );
        assert_eq!(
            convert(&Values::String(vec!["4.25".into()]), Native::Double),
            Values::Double(vec![4.25])
        );
    }

    #[test]
    fn a_count_beyond_the_values_pads_with_zeros() {
        let mut out = Vec::new();
        let written = write(
            &value(Values::Short(vec![7])),
            &Metadata::default(),
            1,
            3,
            &mut out,
        );
        assert_eq!((written, out), (3, vec![0, 7, 0, 0, 0, 0]));
    }
}
