//! EPICS process variables over Channel Access: scalars, waveforms and areaDetector images,
//! each a stream of [`PvFrame`]s (value, alarm, CA time stamp), numbered into events by an
//! [`EventClock`](super::event_clock::EventClock).
//!
//! Images: `ArrayData` is a flat waveform; its shape comes from `width_pv`/`height_pv`
//! (`ArraySize0_RBV`/`ArraySize1_RBV`) or a configured `shape`. With `dtype = "uint16"`, both
//! encodings real servers send become the same u16 frame: caproto's big-endian int16 (the raw
//! bits) and EPICS 7's 32-bit LONG for USHORT waveforms. `counter_pv` (`ArrayCounter_RBV`)
//! reveals images the monitor did not deliver, which are counted.
//!
//! The Channel Access client runs on its own thread; updates reach the source through a
//! bounded queue (`queue`), and what does not fit is counted, never buffered without bound.
//!
//! What it shares with `epics_pva` (connection reports, the event clock, the queue) is in
//! [`super::epics`].

use std::collections::BTreeMap;
use std::net::SocketAddr;

use beamflow_ca::client::{ClientConfig, MonitorEvent, monitor, parse_addr_list};
use beamflow_ca::convert::numbers;
use beamflow_ca::wire::DEFAULT_PORT;
use beamflow_ca::{TimeValue, Values};
use beamflow_protocol::streams::pv::PvFrame;
use beamflow_protocol::{DType, NdArray, StreamName};
use bytes::Bytes;
use serde::Deserialize;

use crate::sources::epics::{Epics, Protocol, PvEvent, Role, StreamPv, configured_dtype};
use crate::sources::event_clock::ClockConfig;
use crate::{Source, SourceError, SourceKind};

/// `[ingesters.<name>]` with `kind = "epics_ca"`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EpicsCaConfig {
    /// The streams: one PV each.
    pub pvs: BTreeMap<StreamName, PvConfig>,
    /// How updates become events.
    pub clock: ClockConfig,
    /// Where to search (`host[:port] ...`); default: `EPICS_CA_ADDR_LIST` and friends.
    #[serde(default)]
    pub addr_list: Option<String>,
    /// Updates buffered between the Channel Access client and the ingester at most.
    #[serde(default = "default_queue")]
    pub queue: usize,
}

fn default_queue() -> usize {
    1024
}

/// One stream's PV.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PvConfig {
    /// The PV name, e.g. `OTRS:IN20:571:Image:ArrayData`.
    pub pv: String,
    /// Image shape `[height, width]`, when no size PVs say it.
    #[serde(default)]
    pub shape: Option<[usize; 2]>,
    /// The PV holding the image width (`...:ArraySize0_RBV`).
    #[serde(default)]
    pub width_pv: Option<String>,
    /// The PV holding the image height (`...:ArraySize1_RBV`).
    #[serde(default)]
    pub height_pv: Option<String>,
    /// The image counter (`...:ArrayCounter_RBV`): its jumps count images not delivered.
    #[serde(default)]
    pub counter_pv: Option<String>,
    /// Element type of the frames (numpy name); default: the PV's own type. `uint16` reads
    /// 16-bit detector images from either encoding.
    #[serde(default)]
    pub dtype: Option<String>,
    /// Events flow without this PV: until it has a value, its frame is an INVALID/UDF
    /// placeholder with no elements (as EPICS shows a record that was never processed).
    #[serde(default)]
    pub optional: bool,
}

impl SourceKind for EpicsCaConfig {
    const KIND: &str = "epics_ca";
    const SUMMARY: &str = "EPICS PVs over Channel Access (scalars, waveforms, areaDetector \
        images), cut into events by a trigger PV, a period or the LCLS pulse id";
    const BRACKETS_SERIES: bool = false;

    fn build(&self, _: &str, _: &zmq::Context) -> Result<Box<dyn Source>, SourceError> {
        Ok(Box::new(EpicsCa::connect(self)?))
    }

    fn stream_names(&self, _: &str) -> Option<Vec<StreamName>> {
        Some(self.pvs.keys().cloned().collect())
    }

    fn streams_named(&self) -> Vec<(String, StreamName)> {
        self.clock.streams_named()
    }

    /// What the table cannot say by its types: dtype names and the clock's rate (the trigger
    /// stream's existence is the pipeline's check, which knows every stream).
    fn check(&self) -> Result<(), SourceError> {
        for (stream, pv) in &self.pvs {
            configured_dtype(stream, pv.dtype.as_ref())?;
        }
        self.clock.check()
    }
}

/// The `epics_ca` source.
pub type EpicsCa = Epics<Ca>;

/// Channel Access's part of an EPICS source.
pub struct Ca;

impl Protocol for Ca {
    type Value = TimeValue;
    const NAME: &'static str = "Channel Access";

    fn frame(
        pv: &str,
        value: TimeValue,
        shape: Option<[usize; 2]>,
        dtype: Option<DType>,
    ) -> Result<PvFrame, String> {
        frame(pv, value, shape, dtype).map_err(|error| error.to_string())
    }

    fn number(value: &TimeValue) -> Option<f64> {
        numbers(&value.values).first().copied()
    }
}

impl EpicsCa {
    /// Starts monitoring the configured PVs.
    pub fn connect(config: &EpicsCaConfig) -> Result<Self, SourceError> {
        config.check()?;
        let streams: Vec<StreamName> = config.pvs.keys().cloned().collect();
        let mut names = Vec::new();
        let mut roles = Vec::new();
        let mut pvs = Vec::new();
        for (index, pv) in config.pvs.values().enumerate() {
            let dtype = configured_dtype(&streams[index], pv.dtype.as_ref())?;
            pvs.push(StreamPv {
                pv: pv.pv.clone(),
                dtype,
                optional: pv.optional,
                shape: pv.shape,
            });
            names.push(pv.pv.clone());
            roles.push(Role::Value(index));
            for (name, role) in [
                (&pv.width_pv, Role::Width(index)),
                (&pv.height_pv, Role::Height(index)),
                (&pv.counter_pv, Role::Counter(index)),
            ] {
                if let Some(name) = name {
                    names.push(name.clone());
                    roles.push(role);
                }
            }
        }
        let client = match &config.addr_list {
            Some(list) => ClientConfig {
                addr_list: parse_addr_list(list, DEFAULT_PORT),
            },
            None => ClientConfig::from_env(),
        };
        let searched = format!(
            "{} ({})",
            client
                .addr_list
                .iter()
                .map(SocketAddr::to_string)
                .collect::<Vec<_>>()
                .join(" "),
            if config.addr_list.is_some() {
                "addr_list"
            } else {
                "EPICS_CA_ADDR_LIST"
            }
        );
        let task: crate::sources::epics::ClientTask<TimeValue> = Box::new(move |mut report| {
            Box::pin(monitor(client, names, move |event| report(event.into())))
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

impl From<MonitorEvent> for PvEvent<TimeValue> {
    fn from(event: MonitorEvent) -> Self {
        match event {
            MonitorEvent::Connected { pv, server, .. } => PvEvent::Connected { pv, server },
            MonitorEvent::Disconnected { pv } => PvEvent::Disconnected { pv },
            MonitorEvent::Malformed { pv, error } => PvEvent::Malformed { pv, error },
            MonitorEvent::CircuitLost { pvs, .. } => PvEvent::ConnectionLost { pvs },
            MonitorEvent::Update { pv, value } => PvEvent::Update { pv, value },
        }
    }
}

#[derive(Debug, thiserror::Error)]
enum ValueError {
    #[error("an image of {height}x{width} is not a size")]
    ImageSize { height: usize, width: usize },
    #[error("an image of {height}x{width} needs {needed} elements, the PV sent {elements}")]
    TooFewElements {
        height: usize,
        width: usize,
        needed: usize,
        elements: usize,
    },
    #[error("{used} bytes needed, {decoded} decoded")]
    TooFewBytes { used: usize, decoded: usize },
    #[error("a string PV cannot be read as {}", .0.name())]
    StringAs(DType),
    #[error(transparent)]
    Shape(#[from] beamflow_protocol::array::ShapeMismatch),
}

/// A PV update as a frame: its values as `dtype` (or their own type), shaped as an image when
/// `shape` is known, a scalar for one element, a waveform otherwise.
fn frame(
    pv: &str,
    value: TimeValue,
    shape: Option<[usize; 2]>,
    dtype: Option<DType>,
) -> Result<PvFrame, ValueError> {
    let (natural, bytes) = little_endian(&value.values, dtype)?;
    // A string is its bytes; anything else, its elements.
    let elements = match value.values {
        Values::String(_) => bytes.len(),
        _ => value.values.len(),
    };
    let shape = match shape {
        Some([height, width]) => {
            // Sizes come from the camera's PVs: a product that overflows is not an image.
            let needed = height
                .checked_mul(width)
                .ok_or(ValueError::ImageSize { height, width })?;
            if needed > elements {
                return Err(ValueError::TooFewElements {
                    height,
                    width,
                    needed,
                    elements,
                });
            }
            vec![height, width]
        }
        None if elements == 1 && !matches!(value.values, Values::String(_)) => vec![],
        None => vec![elements],
    };
    let used = shape.iter().product::<usize>() * natural.size();
    if used > bytes.len() {
        return Err(ValueError::TooFewBytes {
            used,
            decoded: bytes.len(),
        });
    }
    let data = Bytes::from(bytes).slice(..used);
    let value_array = NdArray::new(shape, natural, data)?;
    Ok(PvFrame {
        pv: pv.to_owned(),
        status: value.status,
        severity: value.severity,
        secs: value.stamp.secs,
        nanos: value.stamp.nanos,
        value: value_array,
    })
}

/// The values' little-endian bytes as `dtype` (integers keep their low bits, as a u16 image
/// served as int16 or int32 needs), or in their own type.
fn little_endian(values: &Values, dtype: Option<DType>) -> Result<(DType, Vec<u8>), ValueError> {
    let natural = match values {
        Values::String(_) => DType::Uint8,
        Values::Short(_) => DType::Int16,
        Values::Float(_) => DType::Float32,
        Values::Enum(_) => DType::Uint16,
        Values::Char(_) => DType::Uint8,
        Values::Long(_) => DType::Int32,
        Values::Double(_) => DType::Float64,
    };
    let target = dtype.unwrap_or(natural);
    if let Values::String(strings) = values {
        if target != DType::Uint8 {
            return Err(ValueError::StringAs(target));
        }
        return Ok((
            target,
            strings
                .first()
                .map(|s| s.as_bytes().to_vec())
                .unwrap_or_default(),
        ));
    }
    let integers: Option<Vec<i64>> = match values {
        Values::Short(v) => Some(v.iter().map(|&x| x.into()).collect()),
        Values::Enum(v) => Some(v.iter().map(|&x| x.into()).collect()),
        Values::Char(v) => Some(v.iter().map(|&x| x.into()).collect()),
        Values::Long(v) => Some(v.iter().map(|&x| x.into()).collect()),
        _ => None,
    };
    let floats = || numbers(values);
    let mut out = Vec::with_capacity(values.len() * target.size());
    macro_rules! put {
        ($t:ty) => {
            match &integers {
                Some(v) => v
                    .iter()
                    .for_each(|&x| out.extend_from_slice(&(x as $t).to_le_bytes())),
                None => floats()
                    .iter()
                    .for_each(|&x| out.extend_from_slice(&(x as $t).to_le_bytes())),
            }
        };
    }
    match target {
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
    Ok((target, out))
}

#[cfg(test)]
mod tests {
    use std::sync::mpsc::sync_channel;
    use std::time::Duration;

    use super::*;
    use beamflow_ca::EpicsTime;

    fn time_value(values: Values) -> TimeValue {
        TimeValue {
            status: 0,
            severity: 1,
            stamp: EpicsTime { secs: 5, nanos: 6 },
            values,
        }
    }

    /// caproto's int16 image and EPICS 7's LONG image of the same u16 pixels give one frame.
    #[test]
    fn both_image_encodings_become_the_same_u16_frame() {
        let pixels = [0u16, 1, 40_000, 65_535, 7, 8];
        let caproto = Values::Short(pixels.iter().map(|&p| p as i16).collect());
        let epics7 = Values::Long(pixels.iter().map(|&p| i32::from(p)).collect());
        let uint16 = Some(DType::Uint16);
        let a = frame("IMG", time_value(caproto), Some([2, 3]), uint16).unwrap();
        let b = frame("IMG", time_value(epics7), Some([2, 3]), uint16).unwrap();
        assert_eq!(a, b);
        assert_eq!(a.value.shape(), [2, 3]);
        let expected: Vec<u8> = pixels.iter().flat_map(|p| p.to_le_bytes()).collect();
        assert_eq!(&a.value.data()[..], &expected[..]);
        assert_eq!((a.severity, a.secs, a.nanos), (1, 5, 6));
    }

    #[test]
    fn scalars_waveforms_and_short_images() {
        let scalar = frame("X", time_value(Values::Double(vec![2.5])), None, None).unwrap();
        assert!(scalar.value.shape().is_empty());
        assert_eq!(&scalar.value.data()[..], &2.5f64.to_le_bytes());
        let wave = frame("W", time_value(Values::Float(vec![1.0, 2.0])), None, None).unwrap();
        assert_eq!(
            (wave.value.shape(), wave.value.dtype()),
            (&[2][..], DType::Float32)
        );
        // areaDetector's NELM may exceed the image: the first height × width elements are it.
        let longer = frame(
            "I",
            time_value(Values::Long(vec![1, 2, 3, 4, 5])),
            Some([2, 2]),
            None,
        )
        .unwrap();
        assert_eq!(longer.value.data().len(), 4 * 4);
        let error = frame(
            "I",
            time_value(Values::Long(vec![1, 2])),
            Some([2, 2]),
            None,
        )
        .unwrap_err();
        assert_eq!(
            error.to_string(),
            "an image of 2x2 needs 4 elements, the PV sent 2"
        );
    }

    #[test]
    fn string_pvs_and_absurd_image_sizes_never_panic() {
        let text = |s: &str| TimeValue {
            status: 0,
            severity: 0,
            stamp: beamflow_ca::EpicsTime::default(),
            values: Values::String(vec![s.to_owned()]),
        };
        let empty = frame("S", text(""), None, None).expect("an empty string is an empty array");
        assert_eq!(empty.value.shape(), [0]);
        let word = frame("S", text("OPEN"), None, None).expect("bytes");
        assert_eq!(&word.value.data()[..], b"OPEN");
        let huge = frame(
            "I",
            time_value(Values::Short(vec![1, 2])),
            Some([usize::MAX, 2]),
            None,
        );
        assert!(huge.is_err());
    }

    /// Issue 16 (probe 2b): updates queued while a scan stalled became the next scan's events.
    /// At a scan's start they only become the latest values; the first event is the first
    /// trigger after it, taken when the trigger's stamp says.
    #[test]
    fn updates_queued_before_a_scan_make_none_of_its_events() {
        let config: EpicsCaConfig = toml::from_str(
            r#"
            addr_list = "127.0.0.1:9"
            clock = { kind = "trigger", stream = "img" }
            pvs = { bact = { pv = "BACT" }, img = { pv = "IMG" } }
            "#,
        )
        .unwrap();
        let mut source = EpicsCa::connect(&config).unwrap();
        let (sender, updates) = sync_channel(16);
        source.updates = updates;
        // PVs in stream order: bact 0, img 1.
        let update = |pv, secs, value| PvEvent::Update {
            pv,
            value: TimeValue {
                status: 0,
                severity: 0,
                stamp: EpicsTime { secs, nanos: 0 },
                values: Values::Double(vec![value]),
            },
        };
        sender.send(update(0, 10, 1.0)).unwrap();
        for secs in 11..15 {
            sender.send(update(1, secs, f64::from(secs))).unwrap();
        }
        source.start_scan(&BTreeMap::new()).unwrap();
        assert_eq!(source.next_frame(Duration::ZERO).unwrap(), None);
        sender.send(update(1, 20, 20.0)).unwrap();
        let mut frames = Vec::new();
        while let Some(frame) = source.next_frame(Duration::from_secs(5)).unwrap() {
            frames.push(frame);
            if frames.len() == 2 {
                break;
            }
        }
        let taken = Some(beamflow_protocol::streams::pv::epics_timestamp(20, 0));
        let summary: Vec<(&str, u64, _)> = frames
            .iter()
            .map(|f| (f.stream.as_str(), f.index, f.taken_at))
            .collect();
        assert_eq!(summary, [("bact", 0, taken), ("img", 0, taken)]);
        assert_eq!(source.clock.counts().events, 1);
    }

    /// Issue 17 (probe 3f): updates the client could not read were logged but not counted, and
    /// a failing server's circuits showed nowhere. Both are counted in the PV's status now.
    #[test]
    fn unreadable_updates_and_failed_circuits_are_counted() {
        let config: EpicsCaConfig = toml::from_str(
            r#"
            addr_list = "127.0.0.1:9"
            clock = { kind = "trigger", stream = "img" }
            pvs = { img = { pv = "IMG", width_pv = "IMG:W" } }
            "#,
        )
        .unwrap();
        let mut source = EpicsCa::connect(&config).unwrap();
        let (sender, updates) = sync_channel(16);
        source.updates = updates;
        let server = SocketAddr::from(([127, 0, 0, 1], 5064));
        // PVs: IMG 0, IMG:W 1 (the width of img).
        for pv in [0, 1, 0] {
            let error = "DBR type 19 × 4294967295 needs 17179869192 bytes, payload has 16".into();
            sender.send(PvEvent::Malformed { pv, error }).unwrap();
        }
        for failures in 1..=2 {
            let lost = MonitorEvent::CircuitLost {
                server,
                pvs: vec![0, 1],
                error: "unknown CA command 30583".to_owned(),
                failures,
                retry_in: Duration::from_millis(100),
            };
            sender.send(lost.into()).unwrap();
        }
        source.idle();
        let status = &source.status()["pvs"]["img"];
        assert_eq!(status["malformed"], 3, "{status}");
        assert_eq!(status["circuit_failures"], 2, "{status}");
    }
}
