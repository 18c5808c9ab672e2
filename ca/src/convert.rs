//! What a server answers a client that asks for a PV in another type or form than its own: the
//! values converted to the requested native type, behind the requested form's metadata (plain,
//! STS, TIME, GR or CTRL). camonitor asks TIME, caget plain or TIME, Phoebus and cainfo CTRL.

use bytes::BufMut;

use crate::dbr::{Native, TimeValue, Values};

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

/// Bytes between status/severity and the values in the GR and CTRL forms of `native` (units,
/// precision, limits; beamflow's PVs have none, so they are zeros of the right size).
fn metadata_len(form: Form, native: Native) -> usize {
    let gr = match native {
        Native::String => 0,
        Native::Short => 20,
        Native::Float => 36,
        Native::Enum => 418,
        Native::Char => 15,
        Native::Long => 32,
        Native::Double => 60,
    };
    let ctrl = match native {
        Native::String | Native::Enum => 0,
        Native::Short => 4,
        Native::Float => 8,
        Native::Char => 2,
        Native::Long => 8,
        Native::Double => 16,
    };
    match form {
        Form::Gr => gr,
        Form::Ctrl => gr + ctrl,
        _ => 0,
    }
}

/// Appends `value` in the requested form and type; returns the element count written. `count`
/// 0 means all elements; more than the PV has are zeros, as EPICS pads them.
pub fn write(value: &TimeValue, dbr_type: u16, count: usize, out: &mut impl BufMut) -> usize {
    let Some((form, native)) = requested(dbr_type) else {
        return 0;
    };
    let mut values = convert(&value.values, native);
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
        Form::Sts | Form::Gr | Form::Ctrl => {
            out.put_u16(value.status);
            out.put_u16(value.severity);
            // STS_CHAR and STS_DOUBLE pad to their value's alignment.
            let sts_pad = match (form, native) {
                (Form::Sts, Native::Char) => 1,
                (Form::Sts, Native::Double) => 4,
                _ => 0,
            };
            out.put_bytes(0, sts_pad + metadata_len(form, native));
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
    use crate::dbr::EpicsTime;

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
            let written = write(&value(Values::Double(vec![3.0])), dbr_type, 0, &mut out);
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
        let written = write(&value(Values::Short(vec![7])), 1, 3, &mut out);
        assert_eq!((written, out), (3, vec![0, 7, 0, 0, 0, 0]));
    }
}
