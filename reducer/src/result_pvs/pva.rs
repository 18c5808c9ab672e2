//! The result PVs over PV Access, under the same names as over Channel Access: scalars as
//! NTScalar with display, control and alarm metadata, waveforms and histories as
//! NTScalarArray, tables as NTTable and the latest screen image as NTNDArray.

use std::sync::Arc;

use beamflow_ca::dbr::Metadata;
use beamflow_ca::dbr::alarm::{severity, status};
use beamflow_protocol::{DType, NdArray, Value};
use beamflow_pva::nt::{self, TimeStamp};
use beamflow_pva::pvdata::{ArrayValue, BitSet, PvStructure, ScalarType, Value as PvValue};
use beamflow_pva::server::{Access, PvStore};
use bytes::Bytes;
use jiff::Timestamp;

use super::Alarm;
use crate::accumulators::image::Frame;

/// The PV Access side of the result PVs.
#[derive(Clone)]
pub(super) struct PvaSink {
    store: PvStore,
}

/// A PVA time stamp from a jiff one.
fn time_stamp(at: Timestamp) -> TimeStamp {
    TimeStamp {
        seconds: at.as_second(),
        nanoseconds: at.subsec_nanosecond(),
        user_tag: 0,
    }
}

/// A Channel Access alarm as PV Access says it: the same severity; the status as QSRV maps it
/// (a limit is the record's, a lost input the driver's, no value yet undefined), with the
/// condition's EPICS name as the message.
pub(super) fn pva_alarm(alarm: Alarm) -> nt::Alarm {
    let (pva_status, message) = match alarm.status {
        status::NO_ALARM => (0, ""),
        status::UDF => (6, "UDF"),
        status::COMM => (2, "COMM"),
        status::TIMEOUT => (2, "TIMEOUT"),
        status::HW_LIMIT => (1, "HW_LIMIT"),
        status::HIHI => (3, "HIHI"),
        status::HIGH => (3, "HIGH"),
        status::LOLO => (3, "LOLO"),
        status::LOW => (3, "LOW"),
        status::SOFT => (3, "SOFT"),
        _ => (3, "ALARM"),
    };
    nt::Alarm {
        severity: i32::from(alarm.severity),
        status: pva_status,
        message: message.to_owned(),
    }
}

impl PvaSink {
    pub(super) fn new(store: &PvStore) -> Self {
        Self {
            store: store.clone(),
        }
    }

    /// A number PV: NTScalar double with `metadata`, or with `elements` an NTScalarArray.
    pub(super) fn add_numbers(&self, name: &str, elements: Option<usize>, metadata: &Metadata) {
        let desc = match elements {
            None => nt::nt_scalar(ScalarType::Double, true),
            Some(_) => nt::nt_scalar_array(ScalarType::Double, true),
        };
        let mut pv = PvStructure::new(desc);
        let mut ignored = BitSet::new();
        let none = |x: f64| PvValue::Double(x);
        let sets = [
            ("display.limitLow", none(metadata.display.low)),
            ("display.limitHigh", none(metadata.display.high)),
            ("display.units", PvValue::String(metadata.units.clone())),
            (
                "display.precision",
                PvValue::Int(i32::from(metadata.precision)),
            ),
            ("control.limitLow", none(metadata.control.low)),
            ("control.limitHigh", none(metadata.control.high)),
            ("valueAlarm.lowAlarmLimit", none(metadata.alarm.lolo)),
            ("valueAlarm.lowWarningLimit", none(metadata.alarm.low)),
            ("valueAlarm.highWarningLimit", none(metadata.alarm.high)),
            ("valueAlarm.highAlarmLimit", none(metadata.alarm.hihi)),
            (
                "valueAlarm.lowAlarmSeverity",
                PvValue::Int(i32::from(severity::MAJOR)),
            ),
            (
                "valueAlarm.lowWarningSeverity",
                PvValue::Int(i32::from(severity::MINOR)),
            ),
            (
                "valueAlarm.highWarningSeverity",
                PvValue::Int(i32::from(severity::MINOR)),
            ),
            (
                "valueAlarm.highAlarmSeverity",
                PvValue::Int(i32::from(severity::MAJOR)),
            ),
            (
                "valueAlarm.active",
                PvValue::Boolean(
                    [
                        metadata.alarm.lolo,
                        metadata.alarm.low,
                        metadata.alarm.high,
                        metadata.alarm.hihi,
                    ]
                    .iter()
                    .any(|x| !x.is_nan()),
                ),
            ),
        ];
        for (path, value) in sets {
            // Members of the NTScalar built above.
            let _ = pv.set(path, value, &mut ignored);
        }
        if elements.is_none() {
            let _ = pv.set("value", PvValue::Double(f64::NAN), &mut ignored);
        }
        nt::set_alarm(&mut pv, "alarm", &pva_alarm(Alarm::UNDEFINED), &mut ignored);
        self.store.add(name, pv, Access::ReadOnly);
    }

    /// Posts numbers: one for a scalar PV, any number for an array PV.
    pub(super) fn post_numbers(&self, name: &str, values: &[f64], alarm: Alarm, at: Timestamp) {
        self.store.update(name, |pv, changed| {
            let value = match (pv.value("value"), values) {
                (Some(PvValue::Double(_)), [x]) => PvValue::Double(*x),
                (Some(PvValue::Double(_)), _) => PvValue::Double(f64::NAN),
                _ => PvValue::Array(ArrayValue::Double(values.to_vec())),
            };
            let _ = pv.set("value", value, changed);
            nt::set_alarm(pv, "alarm", &pva_alarm(alarm), changed);
            nt::set_time_stamp(pv, "timeStamp", time_stamp(at), changed);
        });
    }

    /// A table PV of these columns, each a double array until the state says otherwise.
    pub(super) fn add_table(&self, name: &str, columns: &[String]) {
        let desc = table_desc(
            &columns
                .iter()
                .map(|c| (c.clone(), ScalarType::Double))
                .collect::<Vec<_>>(),
        );
        self.store
            .add(name, PvStructure::new(desc), Access::ReadOnly);
    }

    /// Posts a table: its columns in order, each numbers or strings. A column whose type
    /// changed makes a new type for the PV, which monitors see as a new value.
    pub(super) fn post_table(
        &self,
        name: &str,
        columns: &[(String, Column)],
        alarm: Alarm,
        at: Timestamp,
    ) {
        let types: Vec<(String, ScalarType)> = columns
            .iter()
            .map(|(name, column)| (name.clone(), column.scalar_type()))
            .collect();
        let desc = table_desc(&types);
        let same_type = self
            .store
            .value(name)
            .is_some_and(|current| current.desc == desc);
        let mut pv = match self.store.value(name) {
            Some(current) if same_type => current,
            _ => PvStructure::new(desc),
        };
        let mut changed = BitSet::new();
        let labels = ArrayValue::String(columns.iter().map(|(n, _)| n.clone()).collect());
        let _ = pv.set("labels", PvValue::Array(labels), &mut changed);
        for (column, data) in columns {
            let _ = pv.set(
                &format!("value.{column}"),
                PvValue::Array(data.to_array()),
                &mut changed,
            );
        }
        nt::set_alarm(&mut pv, "alarm", &pva_alarm(alarm), &mut changed);
        nt::set_time_stamp(&mut pv, "timeStamp", time_stamp(at), &mut changed);
        if !same_type {
            self.store.add(name, pv, Access::ReadOnly);
        } else {
            self.store.post(name, pv, &changed);
        }
    }

    /// An image PV, empty until the first frame.
    pub(super) fn add_image(&self, name: &str) {
        self.store
            .add(name, PvStructure::new(nt::nt_ndarray()), Access::ReadOnly);
    }

    /// Posts a frame of the `image` accumulator as float32 pixels.
    pub(super) fn post_image(&self, name: &str, frame: &Frame, at: Timestamp) {
        let pixels: Vec<u8> = frame.pixels.iter().flat_map(|p| p.to_le_bytes()).collect();
        let Ok(image) = NdArray::new(
            vec![frame.height, frame.width],
            DType::Float32,
            Bytes::from(pixels),
        ) else {
            return;
        };
        let unique_id = i32::try_from(frame.event_number.0).unwrap_or(i32::MAX);
        let pv = nt::ndarray_value(&image, unique_id, time_stamp(at));
        self.store.post(name, pv, &BitSet::all());
    }
}

fn table_desc(columns: &[(String, ScalarType)]) -> Arc<beamflow_pva::pvdata::StructDesc> {
    let columns: Vec<(&str, ScalarType)> = columns.iter().map(|(n, t)| (n.as_str(), *t)).collect();
    nt::nt_table(&columns)
}

/// One column of a table read from the state.
#[derive(Debug, Clone, PartialEq)]
pub(super) enum Column {
    /// Numbers (NaN where a row has none).
    Numbers(Vec<f64>),
    /// Text.
    Strings(Vec<String>),
}

impl Column {
    fn scalar_type(&self) -> ScalarType {
        match self {
            Column::Numbers(_) => ScalarType::Double,
            Column::Strings(_) => ScalarType::String,
        }
    }

    fn to_array(&self) -> ArrayValue {
        match self {
            Column::Numbers(v) => ArrayValue::Double(v.clone()),
            Column::Strings(v) => ArrayValue::String(v.clone()),
        }
    }
}

/// A table in the state as columns: a list of rows (maps), or a map of equally long lists.
/// `wanted` names the columns and their order; empty: every key, in the state's order.
pub(super) fn read_table(
    value: &Value,
    wanted: &[String],
) -> Result<Vec<(String, Column)>, &'static str> {
    let cells: Vec<(String, Vec<&Value>)> = match value {
        Value::Array(rows) => {
            let names: Vec<String> = if wanted.is_empty() {
                let mut names: Vec<String> = Vec::new();
                for row in rows {
                    for key in row.as_map().ok_or("a table's rows are maps")?.keys() {
                        if !names.contains(key) {
                            names.push(key.clone());
                        }
                    }
                }
                names
            } else {
                wanted.to_vec()
            };
            names
                .into_iter()
                .map(|name| {
                    let column = rows
                        .iter()
                        .map(|row| {
                            row.as_map()
                                .and_then(|m| m.get(&name))
                                .unwrap_or(&Value::Null)
                        })
                        .collect();
                    (name, column)
                })
                .collect()
        }
        Value::Map(columns) => {
            let names: Vec<String> = if wanted.is_empty() {
                columns.keys().cloned().collect()
            } else {
                wanted.to_vec()
            };
            let mut out = Vec::new();
            for name in names {
                let column = match columns.get(&name) {
                    Some(Value::Array(items)) => items.iter().collect(),
                    Some(_) => return Err("a table's columns are lists"),
                    None => Vec::new(),
                };
                out.push((name, column));
            }
            let rows = out.iter().map(|(_, c)| c.len()).max().unwrap_or(0);
            for (_, column) in &mut out {
                column.resize(rows, &Value::Null);
            }
            out
        }
        _ => return Err("not a table (a list of rows or a map of columns)"),
    };
    Ok(cells
        .into_iter()
        .map(|(name, column)| {
            let text = column.iter().any(|v| matches!(v, Value::Text(_)));
            let column = if text {
                Column::Strings(
                    column
                        .iter()
                        .map(|v| match v {
                            Value::Text(s) => s.clone(),
                            Value::Null => String::new(),
                            other => other.as_f64().map(|x| x.to_string()).unwrap_or_default(),
                        })
                        .collect(),
                )
            } else {
                Column::Numbers(
                    column
                        .iter()
                        .map(|v| match v {
                            Value::Bool(b) => f64::from(u8::from(*b)),
                            other => other.as_f64().unwrap_or(f64::NAN),
                        })
                        .collect(),
                )
            };
            (name, column)
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state(json: serde_json::Value) -> Value {
        Value::from_serialize(&json).unwrap()
    }

    #[test]
    fn tables_are_read_from_rows_or_columns() {
        let rows = state(serde_json::json!([{"k": 1.0, "name": "a"}, {"k": 2.0, "extra": true}]));
        let table = read_table(&rows, &[]).unwrap();
        assert_eq!(table[0], ("k".to_owned(), Column::Numbers(vec![1.0, 2.0])));
        assert_eq!(
            table[1],
            (
                "name".to_owned(),
                Column::Strings(vec!["a".into(), String::new()])
            )
        );
        let Column::Numbers(extra) = &table[2].1 else {
            panic!("numbers")
        };
        assert!(extra[0].is_nan() && extra[1] == 1.0);
        let columns = state(serde_json::json!({"x": [1, 2, 3], "y": [4]}));
        let table = read_table(&columns, &["y".to_owned()]).unwrap();
        assert_eq!(table.len(), 1);
        let Column::Numbers(y) = &table[0].1 else {
            panic!("numbers")
        };
        assert_eq!(y.len(), 1);
        assert!(read_table(&state(serde_json::json!(3)), &[]).is_err());
    }

    #[test]
    fn limit_alarms_are_the_records_and_a_lost_input_the_drivers() {
        let hihi = pva_alarm(Alarm {
            severity: severity::MAJOR,
            status: status::HIHI,
        });
        assert_eq!(
            (hihi.severity, hihi.status, hihi.message.as_str()),
            (2, 3, "HIHI")
        );
        assert_eq!(pva_alarm(Alarm::STALE).status, 2);
        assert_eq!(pva_alarm(Alarm::UNDEFINED).message, "UDF");
    }
}
