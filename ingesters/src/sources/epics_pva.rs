//! EPICS process variables over PV Access: NTScalar, NTScalarArray, NTEnum and areaDetector's
//! NTNDArray images (uncompressed, or `lz4`/`bslz4` from its codec plugin), each a stream of
//! [`PvFrame`]s (value, alarm, time stamp), numbered into events by the same clocks as
//! `epics_ca` (trigger, period, pulse id).
//!
//! Monitors are pipelined (`record[queueSize=4,pipeline=true]`), so a fast camera's images are
//! not squashed by the server while the ingester keeps up; an image's `uniqueId` reveals those
//! it did not deliver, which are counted. Time stamps are carried into the frames' EPICS time
//! (PV Access counts from 1970, Channel Access from 1990), the user tag ignored, so the
//! `pulse_id` clock reads LCLS's pulse id from the nanoseconds as over Channel Access. A
//! restarted server is found again and its PVs resume.
//!
//! What it shares with `epics_ca` (connection reports, the event clock, the queue) is in
//! [`super::epics`].

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;

use beamflow_ca::dbr::alarm;
use beamflow_protocol::streams::pv::PvFrame;
use beamflow_protocol::{DType, NdArray, StreamName};
use beamflow_pva::client::{
    ClientConfig, DEFAULT_BROADCAST_PORT, DEFAULT_SERVER_PORT, MonitorEvent, monitor,
    parse_addr_list,
};
use beamflow_pva::nt::{self, POSIX_TIME_AT_EPICS_EPOCH};
use beamflow_pva::pvdata::{ArrayValue, PvStructure, Value};
use beamflow_pva::request::Request;
use bytes::Bytes;
use serde::Deserialize;

use crate::sources::epics::{Epics, Protocol, PvEvent, Role, StreamPv, configured_dtype};
use crate::sources::event_clock::ClockConfig;
use crate::{Source, SourceError, SourceKind};

/// `[ingesters.<name>]` with `kind = "epics_pva"`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EpicsPvaConfig {
    /// The streams: one PV each.
    pub pvs: BTreeMap<StreamName, PvaPvConfig>,
    /// How updates become events.
    pub clock: ClockConfig,
    /// Where to search over UDP (`host[:port] ...`); default: `EPICS_PVA_ADDR_LIST` and
    /// friends.
    #[serde(default)]
    pub addr_list: Option<String>,
    /// Servers to search over TCP (`host[:port] ...`); default: `EPICS_PVA_NAME_SERVERS`.
    #[serde(default)]
    pub name_servers: Option<String>,
    /// Updates buffered between the PV Access client and the ingester at most.
    #[serde(default = "default_queue")]
    pub queue: usize,
}

fn default_queue() -> usize {
    1024
}

/// One stream's PV.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PvaPvConfig {
    /// The PV name, e.g. `13SIM1:Pva1:Image`.
    pub pv: String,
    /// Element type of the frames (numpy name); default: the PV's own.
    #[serde(default)]
    pub dtype: Option<String>,
    /// Events flow without this PV: until it has a value, its frame is an INVALID/UDF
    /// placeholder with no elements.
    #[serde(default)]
    pub optional: bool,
}

impl SourceKind for EpicsPvaConfig {
    const KIND: &str = "epics_pva";
    const SUMMARY: &str = "EPICS PVs over PV Access (NTScalar, NTScalarArray, NTEnum, NTNDArray \
        images, lz4 and bslz4 too), cut into events by a trigger PV, a period or the LCLS pulse id";
    const BRACKETS_SERIES: bool = false;

    fn build(&self, _: &str, _: &zmq::Context) -> Result<Box<dyn Source>, SourceError> {
        Ok(Box::new(EpicsPva::connect(self)?))
    }

    fn stream_names(&self, _: &str) -> Option<Vec<StreamName>> {
        Some(self.pvs.keys().cloned().collect())
    }

    fn streams_named(&self) -> Vec<(String, StreamName)> {
        self.clock.streams_named()
    }

    fn check(&self) -> Result<(), SourceError> {
        for (stream, pv) in &self.pvs {
            configured_dtype(stream, pv.dtype.as_ref())?;
        }
        self.clock.check()
    }
}

/// The `epics_pva` source.
pub type EpicsPva = Epics<Pva>;

/// PV Access's part of an EPICS source.
pub struct Pva;

impl Protocol for Pva {
    type Value = Arc<PvStructure>;
    const NAME: &'static str = "PV Access";

    fn frame(
        pv: &str,
        value: Arc<PvStructure>,
        _shape: Option<[usize; 2]>,
        dtype: Option<DType>,
    ) -> Result<PvFrame, String> {
        frame(pv, &value, dtype)
    }

    fn number(value: &Arc<PvStructure>) -> Option<f64> {
        value.value("value")?.as_f64()
    }

    fn counter(value: &Arc<PvStructure>) -> Option<i64> {
        (value.id() == nt::NT_NDARRAY)
            .then(|| value.value("uniqueId")?.as_i64())
            .flatten()
    }
}

impl EpicsPva {
    /// Starts monitoring the configured PVs.
    pub fn connect(config: &EpicsPvaConfig) -> Result<Self, SourceError> {
        config.check()?;
        let streams: Vec<StreamName> = config.pvs.keys().cloned().collect();
        let mut pvs = Vec::new();
        for (stream, pv) in config.pvs.iter() {
            let dtype = configured_dtype(stream, pv.dtype.as_ref())?;
            pvs.push(StreamPv {
                pv: pv.pv.clone(),
                dtype,
                optional: pv.optional,
                shape: None,
            });
        }
        let names: Vec<String> = pvs.iter().map(|pv| pv.pv.clone()).collect();
        let roles = (0..pvs.len()).map(Role::Value).collect();
        let mut client = ClientConfig::from_env();
        if let Some(list) = &config.addr_list {
            client.addr_list = parse_addr_list(list, DEFAULT_BROADCAST_PORT);
        }
        if let Some(list) = &config.name_servers {
            client.name_servers = parse_addr_list(list, DEFAULT_SERVER_PORT);
        }
        let searched = format!(
            "{} ({}){}",
            client
                .addr_list
                .iter()
                .map(SocketAddr::to_string)
                .collect::<Vec<_>>()
                .join(" "),
            if config.addr_list.is_some() {
                "addr_list"
            } else {
                "EPICS_PVA_ADDR_LIST"
            },
            if client.name_servers.is_empty() {
                String::new()
            } else {
                format!(
                    " and name servers {}",
                    client
                        .name_servers
                        .iter()
                        .map(SocketAddr::to_string)
                        .collect::<Vec<_>>()
                        .join(" ")
                )
            }
        );
        let request = Request {
            queue_size: Some(4),
            pipeline: true,
            ..Request::default()
        };
        let task: crate::sources::epics::ClientTask<Arc<PvStructure>> =
            Box::new(move |mut report| {
                Box::pin(monitor(client, names, request, move |event| {
                    if let Some(event) = pv_event(event) {
                        report(event);
                    }
                }))
            });
        Epics::start(
            config.clock.clone(),
            streams,
            pvs,
            roles,
            searched,
            config.queue,
            task,
        )
    }
}

/// The client's report as the shared source takes it.
fn pv_event(event: MonitorEvent) -> Option<PvEvent<Arc<PvStructure>>> {
    Some(match event {
        MonitorEvent::Connected { pv, server, .. } => PvEvent::Connected { pv, server },
        MonitorEvent::Disconnected { pv } => PvEvent::Disconnected { pv },
        MonitorEvent::Malformed { pv, error } => PvEvent::Malformed { pv, error },
        MonitorEvent::ConnectionLost { pvs, .. } => PvEvent::ConnectionLost { pvs },
        MonitorEvent::Update { pv, value, .. } => PvEvent::Update { pv, value },
    })
}

/// A PV Access alarm status as Channel Access's: the condition named in the message where it
/// is one of EPICS's, else what the status class says.
fn ca_status(pv_status: i32, message: &str, severity: u16) -> u16 {
    use alarm::status;
    match message {
        "HIHI" => status::HIHI,
        "HIGH" => status::HIGH,
        "LOLO" => status::LOLO,
        "LOW" => status::LOW,
        "COMM" => status::COMM,
        "TIMEOUT" => status::TIMEOUT,
        "HW_LIMIT" => status::HW_LIMIT,
        "UDF" => status::UDF,
        _ if pv_status == 6 => status::UDF,
        _ if severity == 0 => status::NO_ALARM,
        _ => status::SOFT,
    }
}

/// An NT value as a frame: a number (or an enum's index) as a scalar, an array as a 1-D frame,
/// an NTNDArray as its image.
fn frame(pv: &str, value: &PvStructure, dtype: Option<DType>) -> Result<PvFrame, String> {
    let array = if value.id() == nt::NT_NDARRAY {
        nt::ndarray_image(value).map_err(|error| error.to_string())?
    } else {
        match value.value("value") {
            Some(Value::Array(array)) => array_frame(array)?,
            Some(Value::Structure(_)) => {
                let index = value
                    .value("value.index")
                    .and_then(Value::as_f64)
                    .ok_or("an enum without an index")?;
                scalar(index)?
            }
            Some(number) => scalar(number.as_f64().ok_or("the value is not a number")?)?,
            None => return Err(format!("{} has no value", value.id())),
        }
    };
    let array = match dtype {
        Some(dtype) if dtype != array.dtype() => convert(&array, dtype)?,
        _ => array,
    };
    let alarm = nt::alarm(value, "alarm").unwrap_or_default();
    let severity = u16::try_from(alarm.severity.clamp(0, 3)).unwrap_or(3);
    let time = nt::time_stamp(value, "timeStamp").unwrap_or_default();
    let secs = (time.seconds - POSIX_TIME_AT_EPICS_EPOCH).clamp(0, i64::from(u32::MAX));
    Ok(PvFrame {
        pv: pv.to_owned(),
        status: ca_status(alarm.status, &alarm.message, severity),
        severity,
        secs: secs as u32,
        nanos: u32::try_from(time.nanoseconds).unwrap_or(0),
        value: array,
    })
}

fn scalar(x: f64) -> Result<NdArray, String> {
    NdArray::new(vec![], DType::Float64, Bytes::copy_from_slice(&x.to_le_bytes()))
        .map_err(|error| error.to_string())
}

/// A scalar array in its own element type (strings as the bytes of the first).
fn array_frame(array: &ArrayValue) -> Result<NdArray, String> {
    let (dtype, data) = match array {
        ArrayValue::String(v) => (
            DType::Uint8,
            v.first().map(|s| s.as_bytes().to_vec()).unwrap_or_default(),
        ),
        numbers => nt::array_bytes(numbers),
    };
    let elements = data.len() / dtype.size();
    NdArray::new(vec![elements], dtype, Bytes::from(data)).map_err(|error| error.to_string())
}

/// The same numbers in another element type (as `epics_ca`'s `dtype` does).
fn convert(array: &NdArray, dtype: DType) -> Result<NdArray, String> {
    let values = array.to_f64();
    let mut out = Vec::with_capacity(values.len() * dtype.size());
    macro_rules! put {
        ($t:ty) => {
            values
                .iter()
                .for_each(|&x| out.extend_from_slice(&(x as $t).to_le_bytes()))
        };
    }
    match dtype {
        DType::Uint8 => put!(u8),
        DType::Uint16 => put!(u16),
        DType::Uint32 => put!(u32),
        DType::Uint64 => put!(u64),
        DType::Int8 => put!(i8),
        DType::Int16 => put!(i16),
        DType::Int32 => put!(i32),
        DType::Int64 => put!(i64),
        DType::Float32 => put!(f32),
        DType::Float64 => put!(f64),
    }
    NdArray::new(array.shape().to_vec(), dtype, Bytes::from(out)).map_err(|error| error.to_string())
}

#[cfg(test)]
mod tests {
    use beamflow_pva::nt::TimeStamp;
    use beamflow_pva::pvdata::{BitSet, ScalarType};

    use super::*;

    #[test]
    fn scalars_arrays_enums_and_images_become_frames_with_epics_time() {
        let mut number = PvStructure::new(nt::nt_scalar(ScalarType::Double, false));
        let mut changed = BitSet::new();
        number.set("value", Value::Double(2.5), &mut changed).unwrap();
        let stamp = TimeStamp {
            seconds: POSIX_TIME_AT_EPICS_EPOCH + 100,
            nanoseconds: 7,
            user_tag: 0,
        };
        nt::set_time_stamp(&mut number, "timeStamp", stamp, &mut changed);
        nt::set_alarm(
            &mut number,
            "alarm",
            &nt::Alarm {
                severity: 2,
                status: 3,
                message: "HIHI".into(),
            },
            &mut changed,
        );
        let frame = super::frame("X", &number, None).unwrap();
        assert!(frame.value.shape().is_empty());
        assert_eq!(frame.value.to_f64(), [2.5]);
        assert_eq!((frame.secs, frame.nanos), (100, 7), "EPICS epoch");
        assert_eq!((frame.severity, frame.status), (2, alarm::status::HIHI));

        let mut wave = PvStructure::new(nt::nt_scalar_array(ScalarType::Short, false));
        wave.set("value", Value::Array(ArrayValue::Short(vec![1, -2])), &mut changed)
            .unwrap();
        let frame = super::frame("W", &wave, Some(DType::Float32)).unwrap();
        assert_eq!((frame.value.shape(), frame.value.dtype()), (&[2][..], DType::Float32));
        assert_eq!(frame.value.to_f64(), [1.0, -2.0]);

        let mut choice = PvStructure::new(nt::nt_enum());
        choice.set("value.index", Value::Int(1), &mut changed).unwrap();
        assert_eq!(super::frame("E", &choice, None).unwrap().value.to_f64(), [1.0]);

        let pixels: Vec<u8> = (0..6u16).flat_map(|p| p.to_le_bytes()).collect();
        let image = NdArray::new(vec![2, 3], DType::Uint16, Bytes::from(pixels)).unwrap();
        let ndarray = nt::ndarray_value(&image, 9, stamp);
        assert_eq!(Pva::counter(&Arc::new(ndarray.clone())), Some(9));
        let frame = super::frame("I", &ndarray, None).unwrap();
        assert_eq!(frame.value, image);
    }

    #[test]
    fn a_value_of_no_use_is_an_error_not_a_panic() {
        let empty = PvStructure::new(Arc::new(beamflow_pva::pvdata::StructDesc::new("x", vec![])));
        assert!(super::frame("X", &empty, None).is_err());
        let mut text = PvStructure::new(nt::nt_scalar(ScalarType::String, false));
        text.set("value", Value::String("OPEN".into()), &mut BitSet::new())
            .unwrap();
        assert!(super::frame("S", &text, None).is_err());
    }
}
