//! Writable PVs over PV Access: EPICS in, EPICS out.
//!
//! - **Parameters** (`[reducer.pvs] parameters = true`): every parameter the pipeline's analyses
//!   and accumulators declare is `<prefix>PARAM:<name>` (NTScalar of its type; binary ones are
//!   not served). A put sets it through the controller, as `POST /api/v1/parameter/<name>`
//!   does, so an analysis whose parameters are PVs is a processing device a client drives.
//! - **Collectors**: each `collector` accumulator `<acc>` is controlled as the FHI collector
//!   device is: `<prefix><acc>:CONFIG` (the streams to record), `ENABLE`, `CLEAR` (a put empties
//!   the histories), `STATE` (idle or recording) and, where the reducer writes HDF5, `EXPORT` (a
//!   put writes a file now). Each recorded stream's history is `<prefix><acc>:<stream>` (its
//!   values, NTScalarArray) and `<prefix><acc>:<stream>:TABLE` (time, value, severity and
//!   status of every sample, NTTable).
//!
//! Puts are allowed only from the peers `[reducer.pvs.writers]` names (loopback by default);
//! the server refuses others with an error status and logs them. A put of a value the
//! parameter's type cannot take is refused with the reason. Values are read back from the
//! controller after each put and every second, so a change made over REST shows on the PVs too.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, mpsc};
use std::time::{Duration, Instant};

use beamflow_net::Stop;
use beamflow_protocol::{ParameterDescription, ParameterType, ParameterValue, Value};
use beamflow_pva::nt::{self, TimeStamp};
use beamflow_pva::pvdata::{ArrayValue, BitSet, PvStructure, ScalarType, Value as PvValue};
use beamflow_pva::server::{Access, PutHandler, PutRequest, PvStore, WriteRule};
use bytes::Bytes;
use tracing::{info, warn};

use crate::dashboard::health::ControllerClient;
use crate::http::View;

/// How often parameters are read back from the controller when no put was made here, so a
/// change made over REST or by another client shows on the PVs.
pub const PARAMETER_READ_EVERY: Duration = Duration::from_secs(1);

/// What the control thread is asked to do by a put.
#[derive(Debug, Clone, PartialEq)]
enum Command {
    /// Set a parameter to these bytes.
    Set(String, Vec<u8>),
    /// Add one to an integer parameter (a collector's `CLEAR`).
    Increment(String),
    /// Write an HDF5 file now.
    Export,
}

/// Writes an HDF5 file now, answering its name or why not.
pub type Export = Arc<dyn Fn() -> Result<String, String> + Send + Sync>;

/// A parameter served as a PV.
struct ParameterPv {
    pv: String,
    name: String,
    dtype: ParameterType,
    /// The bytes last read from the controller.
    seen: Option<Vec<u8>>,
}

/// A collector's PVs.
struct CollectorPvs {
    accumulator: String,
    prefix: String,
    /// Streams whose history PVs exist.
    streams: BTreeSet<String>,
    /// Per stream: the samples and the newest sample's time last posted (a full history keeps
    /// its length as it moves on).
    posted: BTreeMap<String, (usize, u64)>,
    state: Option<String>,
}

/// Which control PVs to serve.
pub struct Controls<'a> {
    /// Put before every name.
    pub prefix: &'a str,
    /// The pipeline's parameters.
    pub descriptions: &'a [ParameterDescription],
    /// Whether each parameter is a PV.
    pub parameters: bool,
    /// Each collector accumulator with its parameters' prefix.
    pub collectors: &'a [(String, String)],
    /// Who may put.
    pub writers: WriteRule,
}

/// The writable PVs and what keeps them current.
pub struct ControlPvs {
    store: PvStore,
    client: ControllerClient,
    parameters: Vec<ParameterPv>,
    collectors: Vec<CollectorPvs>,
    commands: mpsc::Receiver<Command>,
    export: Option<Export>,
    exports: i64,
    /// The controller could not be read: logged once until it can.
    unreachable: bool,
}

/// The PV type of a parameter of type `dtype` (none for binary ones).
fn parameter_type(dtype: ParameterType) -> Option<ScalarType> {
    match dtype {
        ParameterType::Str => Some(ScalarType::String),
        ParameterType::Int => Some(ScalarType::Long),
        ParameterType::Float => Some(ScalarType::Double),
        ParameterType::Bool => Some(ScalarType::Boolean),
        ParameterType::Binary => None,
    }
}

/// A put's `value` as the parameter's text, checked against its type.
fn put_text(put: &PutRequest, dtype: ParameterType) -> Result<Vec<u8>, String> {
    let value = put.value.value("value").ok_or("the put has no value")?;
    let text = match value {
        PvValue::String(s) => s.clone(),
        PvValue::Boolean(b) => if *b { "true" } else { "false" }.to_owned(),
        PvValue::Array(ArrayValue::String(items)) => items.join(" "),
        other => match (other.as_i64(), other.as_f64()) {
            (Some(i), _) if dtype != ParameterType::Float => i.to_string(),
            (_, Some(x)) => x.to_string(),
            _ => return Err("the value is not a number or text".to_owned()),
        },
    };
    ParameterValue::parse(dtype, &Bytes::from(text.clone()))
        .map_err(|error| format!("{}: {error}", put.pv))?;
    Ok(text.into_bytes())
}

/// The PV value of a parameter's bytes.
fn pv_value(dtype: ParameterType, bytes: &[u8]) -> Option<PvValue> {
    Some(
        match ParameterValue::parse(dtype, &Bytes::copy_from_slice(bytes)).ok()? {
            ParameterValue::Str(s) => PvValue::String(s),
            ParameterValue::Int(i) => PvValue::Long(i),
            ParameterValue::Float(x) => PvValue::Double(x),
            ParameterValue::Bool(b) => PvValue::Boolean(b),
            ParameterValue::Binary(_) => return None,
        },
    )
}

/// A new PV's value of type `desc`, stamped now: a client sees when it was made.
fn stamped(desc: Arc<beamflow_pva::pvdata::StructDesc>) -> PvStructure {
    let mut pv = PvStructure::new(desc);
    nt::set_time_stamp(&mut pv, "timeStamp", TimeStamp::now(), &mut BitSet::new());
    pv
}

fn scalar(t: ScalarType) -> PvStructure {
    stamped(nt::nt_scalar(t, false))
}

impl ControlPvs {
    /// Adds the PVs `controls` names to `store`; the parameters are read and set through
    /// `client`. `export` writes an HDF5 file where the reducer has an HDF5 output.
    pub fn new(
        controls: Controls<'_>,
        client: ControllerClient,
        store: &PvStore,
        export: Option<Export>,
    ) -> Self {
        let Controls {
            prefix,
            descriptions,
            parameters,
            collectors,
            writers,
        } = controls;
        let (sender, commands) = mpsc::channel();
        let writable = |on_put: PutHandler| Access::Writable {
            allow: writers.clone(),
            on_put,
        };
        let set = |name: &str, dtype: ParameterType| -> Access {
            let (sender, name) = (sender.clone(), name.to_owned());
            writable(Arc::new(move |put: &PutRequest| {
                let bytes = put_text(put, dtype)?;
                sender
                    .send(Command::Set(name.clone(), bytes))
                    .map_err(|_| "the reducer is stopping".to_owned())
            }))
        };
        let mut served = Vec::new();
        let serve = |name: &str,
                     pv: String,
                     dtype: ParameterType,
                     access: Access,
                     served: &mut Vec<ParameterPv>| {
            if let Some(t) = parameter_type(dtype) {
                store.add(&pv, scalar(t), access);
                served.push(ParameterPv {
                    pv,
                    name: name.to_owned(),
                    dtype,
                    seen: None,
                });
            }
        };
        if parameters {
            for description in descriptions {
                let name = description.name.as_str();
                serve(
                    name,
                    format!("{prefix}PARAM:{name}"),
                    description.dtype,
                    set(name, description.dtype),
                    &mut served,
                );
            }
        }
        let mut collector_pvs = Vec::new();
        for (accumulator, parameter_prefix) in collectors {
            let pvs_prefix = format!("{prefix}{accumulator}:");
            let enable = format!("{parameter_prefix}_enable");
            serve(
                &enable,
                format!("{pvs_prefix}ENABLE"),
                ParameterType::Bool,
                set(&enable, ParameterType::Bool),
                &mut served,
            );
            let clear = format!("{parameter_prefix}_clear");
            let increment = {
                let (sender, clear) = (sender.clone(), clear.clone());
                writable(Arc::new(move |_: &PutRequest| {
                    sender
                        .send(Command::Increment(clear.clone()))
                        .map_err(|_| "the reducer is stopping".to_owned())
                }))
            };
            serve(
                &clear,
                format!("{pvs_prefix}CLEAR"),
                ParameterType::Int,
                increment,
                &mut served,
            );
            // CONFIG is a list of streams: a string array, kept as the parameter's text.
            let config = format!("{parameter_prefix}_pvs");
            let config_pv = format!("{pvs_prefix}CONFIG");
            store.add(
                &config_pv,
                stamped(nt::nt_scalar_array(ScalarType::String, false)),
                set(&config, ParameterType::Str),
            );
            served.push(ParameterPv {
                pv: config_pv,
                name: config,
                dtype: ParameterType::Str,
                seen: None,
            });
            let mut state = stamped(nt::nt_enum());
            let choices = ArrayValue::String(vec!["idle".into(), "recording".into()]);
            let _ = state.set("value.choices", PvValue::Array(choices), &mut BitSet::new());
            store.add(&format!("{pvs_prefix}STATE"), state, Access::ReadOnly);
            if export.is_some() {
                let sender = sender.clone();
                store.add(
                    &format!("{pvs_prefix}EXPORT"),
                    scalar(ScalarType::Long),
                    writable(Arc::new(move |_: &PutRequest| {
                        sender
                            .send(Command::Export)
                            .map_err(|_| "the reducer is stopping".to_owned())
                    })),
                );
            }
            collector_pvs.push(CollectorPvs {
                accumulator: accumulator.clone(),
                prefix: pvs_prefix,
                streams: BTreeSet::new(),
                posted: BTreeMap::new(),
                state: None,
            });
        }
        Self {
            store: store.clone(),
            client,
            parameters: served,
            collectors: collector_pvs,
            commands,
            export,
            exports: 0,
            unreachable: false,
        }
    }

    /// The names of the PVs served.
    pub fn names(&self) -> Vec<String> {
        self.store.names()
    }

    /// Carries out puts and keeps the PVs current until `stop`: collectors every `period`,
    /// parameters right after a put and otherwise every [`PARAMETER_READ_EVERY`] (each read
    /// asks the controller, which a PV rate of 10 Hz would ask ten times a second for nothing).
    pub fn run_until(mut self, view: &View, period: Duration, stop: &Stop) {
        let mut next_read = Instant::now();
        while !stop.is_stopped() {
            while let Ok(command) = self.commands.recv_timeout(period) {
                self.carry_out(command);
                next_read = Instant::now();
                if stop.is_stopped() {
                    return;
                }
            }
            if Instant::now() >= next_read {
                self.read_parameters();
                next_read = Instant::now() + PARAMETER_READ_EVERY;
            }
            self.update_collectors(&view.state());
        }
    }

    fn carry_out(&mut self, command: Command) {
        let outcome = match &command {
            Command::Set(name, bytes) => self.client.set_parameter(name, bytes),
            Command::Increment(name) => {
                let current = self
                    .client
                    .parameter(name)
                    .ok()
                    .and_then(|b| String::from_utf8(b).ok())
                    .and_then(|t| t.trim().parse::<i64>().ok())
                    .unwrap_or(0);
                self.client
                    .set_parameter(name, (current + 1).to_string().as_bytes())
            }
            Command::Export => match &self.export {
                Some(export) => export().map(|file| {
                    self.exports += 1;
                    info!(%file, "HDF5 file written on a put to EXPORT.");
                }),
                None => Ok(()),
            },
        };
        if let Err(error) = outcome {
            warn!(?command, %error, "A put to a control PV could not be carried out.");
        }
        if matches!(command, Command::Export) {
            let exports = self.exports;
            for collector in &self.collectors {
                self.store
                    .update(&format!("{}EXPORT", collector.prefix), |pv, changed| {
                        let _ = pv.set("value", PvValue::Long(exports), changed);
                        nt::set_time_stamp(pv, "timeStamp", TimeStamp::now(), changed);
                    });
            }
        }
    }

    /// Reads every served parameter from the controller and posts those that changed.
    fn read_parameters(&mut self) {
        for parameter in &mut self.parameters {
            let bytes = match self.client.parameter(&parameter.name) {
                Ok(bytes) => bytes,
                Err(error) => {
                    if !self.unreachable {
                        warn!(%error, "Control PVs cannot read the controller's parameters; they keep their values until they can.");
                        self.unreachable = true;
                    }
                    return;
                }
            };
            if parameter.seen.as_ref() == Some(&bytes) {
                continue;
            }
            let value = if parameter.pv.ends_with(":CONFIG") {
                let text = String::from_utf8_lossy(&bytes);
                let streams = text
                    .split(|c: char| c == ',' || c.is_whitespace())
                    .filter(|s| !s.is_empty())
                    .map(str::to_owned)
                    .collect();
                Some(PvValue::Array(ArrayValue::String(streams)))
            } else {
                pv_value(parameter.dtype, &bytes)
            };
            if let Some(value) = value {
                self.store.update(&parameter.pv, |pv, changed| {
                    let _ = pv.set("value", value, changed);
                    nt::set_time_stamp(pv, "timeStamp", TimeStamp::now(), changed);
                });
            }
            parameter.seen = Some(bytes);
        }
        self.unreachable = false;
    }

    /// Posts each collector's state and the histories that grew.
    fn update_collectors(&mut self, state: &Value) {
        for collector in &mut self.collectors {
            let Some(view) = state.pointer(&collector.accumulator) else {
                continue;
            };
            let recording = match view.pointer("state") {
                Some(Value::Text(state)) => Some(state.clone()),
                _ => None,
            };
            if recording != collector.state {
                let index = i32::from(recording.as_deref() == Some("recording"));
                self.store
                    .update(&format!("{}STATE", collector.prefix), |pv, changed| {
                        let _ = pv.set("value.index", PvValue::Int(index), changed);
                        nt::set_time_stamp(pv, "timeStamp", TimeStamp::now(), changed);
                    });
                collector.state = recording;
            }
            let empty = BTreeMap::new();
            let pvs = match view.pointer("pvs") {
                Some(Value::Map(pvs)) => pvs,
                _ => &empty,
            };
            // A cleared history is gone from the view: its PVs are emptied.
            let streams: BTreeSet<String> = collector
                .streams
                .iter()
                .chain(pvs.keys())
                .cloned()
                .collect();
            for stream in streams {
                let history = pvs.get(&stream).unwrap_or(&Value::Null);
                let column = |key: &str| -> Vec<f64> {
                    match history.pointer(key) {
                        Some(Value::Array(items)) => items
                            .iter()
                            .map(|v| v.as_f64().unwrap_or(f64::NAN))
                            .collect(),
                        _ => Vec::new(),
                    }
                };
                let (time, value) = (column("time"), column("value"));
                let (severity, status) = (column("severity"), column("status"));
                let samples = value.len();
                let values_pv = format!("{}{stream}", collector.prefix);
                let table_pv = format!("{values_pv}:TABLE");
                if collector.streams.insert(stream.clone()) {
                    self.store.add(
                        &values_pv,
                        PvStructure::new(nt::nt_scalar_array(ScalarType::Double, false)),
                        Access::ReadOnly,
                    );
                    let columns = [
                        ("time", ScalarType::Double),
                        ("value", ScalarType::Double),
                        ("severity", ScalarType::Int),
                        ("status", ScalarType::Int),
                    ];
                    let mut table = PvStructure::new(nt::nt_table(&columns));
                    let labels =
                        ArrayValue::String(columns.iter().map(|(n, _)| (*n).to_owned()).collect());
                    let _ = table.set("labels", PvValue::Array(labels), &mut BitSet::new());
                    self.store.add(&table_pv, table, Access::ReadOnly);
                }
                let newest = time.last().copied().unwrap_or(0.0);
                let seen = (samples, newest.to_bits());
                if collector.posted.get(&stream) == Some(&seen) {
                    continue;
                }
                let stamp = TimeStamp {
                    seconds: newest.floor() as i64,
                    nanoseconds: ((newest - newest.floor()) * 1e9) as i32,
                    user_tag: 0,
                };
                let alarm = nt::Alarm {
                    severity: severity.last().copied().unwrap_or(0.0) as i32,
                    status: 0,
                    message: String::new(),
                };
                let integers = |v: &[f64]| ArrayValue::Int(v.iter().map(|&x| x as i32).collect());
                self.store.update(&values_pv, |pv, changed| {
                    let _ = pv.set(
                        "value",
                        PvValue::Array(ArrayValue::Double(value.clone())),
                        changed,
                    );
                    nt::set_alarm(pv, "alarm", &alarm, changed);
                    nt::set_time_stamp(pv, "timeStamp", stamp, changed);
                });
                self.store.update(&table_pv, |pv, changed| {
                    for (column, data) in [
                        ("value.time", ArrayValue::Double(time.clone())),
                        ("value.value", ArrayValue::Double(value.clone())),
                        ("value.severity", integers(&severity)),
                        ("value.status", integers(&status)),
                    ] {
                        let _ = pv.set(column, PvValue::Array(data), changed);
                    }
                    nt::set_time_stamp(pv, "timeStamp", stamp, changed);
                });
                collector.posted.insert(stream.clone(), seen);
            }
        }
    }
}
