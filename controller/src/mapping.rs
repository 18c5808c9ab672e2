//! The mapping ("trigger map"): which stream has a frame in which event, and which workers get it.
//! The JSON is dranspose's, unchanged, so scan software that drives dranspose drives beamflow:
//!
//! ```json
//! {"parts": {"main": {"det": [[{"constraint": 0}], [], null]}}, "sequence": ["main", "main"]}
//! ```
//!
//! Per stream and event one slot: `null` — no frame from this stream in this event; `[]` — the
//! frame belongs to the event but is read and dropped; a list of virtual workers
//! `{"tags": [...], "constraint": k | null}`. Equal constraints within one *occurrence* of a part
//! go to one real worker; a `null` constraint goes to every live worker carrying the tags
//! (broadcast). Parts are concatenated in `sequence` order; a stream missing from a part has
//! `null` slots there. `all_wrap` adds a first and a last event (`reserved_start_end`) that every
//! worker of every tag in the map receives, for the series start and end messages.
//!
//! This module only parses, validates and answers questions about a sequence; binding virtual
//! to real workers is `route.rs`'s job.

use std::collections::{BTreeMap, BTreeSet};

use beamflow_protocol::{EventNumber, StreamName, WorkerTag};
use serde::{Deserialize, Serialize};

/// The reserved part `all_wrap` adds before and after the sequence.
pub const START_END_PART: &str = "reserved_start_end";
/// The tag of workers that were started without tags.
pub const GENERIC_TAG: &str = "generic";

/// A virtual worker: "one real worker per constraint number" or, without a constraint, "every
/// live worker carrying these tags".
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VirtualWorker {
    /// Tags a real worker must all carry.
    #[serde(default = "generic_tags")]
    pub tags: BTreeSet<WorkerTag>,
    /// Slots with equal numbers (within one part occurrence) go to the same real worker; `None`
    /// broadcasts to every live worker with the tags.
    #[serde(default)]
    pub constraint: Option<u64>,
}

fn generic_tags() -> BTreeSet<WorkerTag> {
    BTreeSet::from([WorkerTag::from(GENERIC_TAG)])
}

/// One stream's slot in one event.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(
    from = "Option<Vec<VirtualWorker>>",
    into = "Option<Vec<VirtualWorker>>"
)]
pub enum Slot {
    /// `null`: the stream has no frame in this event.
    Absent,
    /// `[]`: the stream's frame belongs to this event but no worker gets it.
    Discard,
    /// The frame goes to the real workers bound to these virtual workers.
    Workers(Vec<VirtualWorker>),
}

impl From<Option<Vec<VirtualWorker>>> for Slot {
    fn from(slot: Option<Vec<VirtualWorker>>) -> Self {
        match slot {
            None => Slot::Absent,
            Some(workers) if workers.is_empty() => Slot::Discard,
            Some(workers) => Slot::Workers(workers),
        }
    }
}

impl From<Slot> for Option<Vec<VirtualWorker>> {
    fn from(slot: Slot) -> Self {
        match slot {
            Slot::Absent => None,
            Slot::Discard => Some(Vec::new()),
            Slot::Workers(workers) => Some(workers),
        }
    }
}

/// One part: per stream, one slot per event; every stream has the same number of events.
pub type Part = BTreeMap<StreamName, Vec<Slot>>;

/// A validated mapping sequence, with the start/end part already added when wrapped.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Sequence {
    parts: BTreeMap<String, Part>,
    sequence: Vec<String>,
    /// Events per part, by name.
    #[serde(skip)]
    lengths: BTreeMap<String, u64>,
    /// First event number of each occurrence in `sequence`.
    #[serde(skip)]
    starts: Vec<u64>,
    /// Per part, the tags a worker needs to take a constraint: the union over every virtual
    /// worker with that number, since they all go to the same worker.
    #[serde(skip)]
    constraint_tags: BTreeMap<String, BTreeMap<u64, BTreeSet<WorkerTag>>>,
    /// Per stream, where its frames fall; see [`Sequence::event_of_frame`].
    #[serde(skip)]
    frames: BTreeMap<StreamName, FrameIndex>,
}

/// Where a stream's frames fall: the k-th frame of a stream belongs to the event of its k-th
/// non-`null` slot (dranspose's rule). Stored per part plus a running count per occurrence, so a
/// part repeated a thousand times costs one part's worth of memory.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
struct FrameIndex {
    /// Per part: offsets of the events that have a frame of this stream.
    offsets: BTreeMap<String, Vec<u64>>,
    /// Per occurrence: the stream's frames in all earlier occurrences.
    before: Vec<u64>,
}

/// A mapping that cannot be used, with the reason (served as HTTP 400).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MappingError {
    /// Not JSON of the expected shape.
    #[error("mapping is not valid: {0}")]
    Json(String),
    /// A part's streams have different numbers of slots.
    #[error("part {part}: streams have different numbers of events: {lengths}")]
    UnequalLengths {
        /// The part.
        part: String,
        /// `stream: length` for each stream.
        lengths: String,
    },
    /// `sequence` names a part that `parts` does not define.
    #[error("sequence names part {0}, which parts does not define")]
    UnknownPart(String),
    /// Nothing to do: no events at all.
    #[error("the sequence has no events")]
    Empty,
    /// A user part uses the reserved name.
    #[error("part name {START_END_PART} is reserved for the start and end events")]
    ReservedName,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SequenceJson {
    parts: BTreeMap<String, Part>,
    sequence: Vec<String>,
}

impl Sequence {
    /// Parses `POST /api/v1/sequence`'s body.
    pub fn from_json(body: &[u8], all_wrap: bool) -> Result<Self, MappingError> {
        let json: SequenceJson =
            serde_json::from_slice(body).map_err(|e| MappingError::Json(e.to_string()))?;
        Self::new(json.parts, json.sequence, all_wrap)
    }

    /// Parses the legacy `POST /api/v1/mapping` body: one part, named `main`.
    pub fn from_mapping_json(body: &[u8], all_wrap: bool) -> Result<Self, MappingError> {
        let part: Part =
            serde_json::from_slice(body).map_err(|e| MappingError::Json(e.to_string()))?;
        Self::new(
            BTreeMap::from([("main".to_owned(), part)]),
            vec!["main".to_owned()],
            all_wrap,
        )
    }

    /// Validates parts and sequence; `all_wrap` adds the start and end event.
    pub fn new(
        mut parts: BTreeMap<String, Part>,
        mut sequence: Vec<String>,
        all_wrap: bool,
    ) -> Result<Self, MappingError> {
        if parts.contains_key(START_END_PART) {
            return Err(MappingError::ReservedName);
        }
        if let Some(unknown) = sequence.iter().find(|name| !parts.contains_key(*name)) {
            return Err(MappingError::UnknownPart(unknown.clone()));
        }
        let mut lengths = BTreeMap::new();
        for (name, part) in &parts {
            let counts: BTreeSet<usize> = part.values().map(Vec::len).collect();
            if counts.len() > 1 {
                let lengths = part
                    .iter()
                    .map(|(stream, slots)| format!("{stream}: {}", slots.len()))
                    .collect::<Vec<_>>()
                    .join(", ");
                return Err(MappingError::UnequalLengths {
                    part: name.clone(),
                    lengths,
                });
            }
            lengths.insert(name.clone(), counts.first().copied().unwrap_or(0) as u64);
        }
        if all_wrap {
            let streams: BTreeSet<StreamName> = parts
                .values()
                .flat_map(|part| part.keys().cloned())
                .collect();
            let tags = all_tags(&parts);
            let everyone: Vec<VirtualWorker> = tags
                .into_iter()
                .map(|tag| VirtualWorker {
                    tags: BTreeSet::from([tag]),
                    constraint: None,
                })
                .collect();
            let wrap: Part = streams
                .into_iter()
                .map(|stream| (stream, vec![Slot::Workers(everyone.clone())]))
                .collect();
            parts.insert(START_END_PART.to_owned(), wrap);
            lengths.insert(START_END_PART.to_owned(), 1);
            sequence.insert(0, START_END_PART.to_owned());
            sequence.push(START_END_PART.to_owned());
        }
        let mut starts = Vec::with_capacity(sequence.len());
        let mut next = 0u64;
        for name in &sequence {
            starts.push(next);
            next += lengths.get(name).copied().unwrap_or(0);
        }
        if next == 0 {
            return Err(MappingError::Empty);
        }
        let constraint_tags = parts
            .iter()
            .map(|(name, part)| {
                let mut tags: BTreeMap<u64, BTreeSet<WorkerTag>> = BTreeMap::new();
                for worker in part
                    .values()
                    .flatten()
                    .filter_map(|slot| match slot {
                        Slot::Workers(workers) => Some(workers),
                        _ => None,
                    })
                    .flatten()
                {
                    if let Some(constraint) = worker.constraint {
                        tags.entry(constraint)
                            .or_default()
                            .extend(worker.tags.iter().cloned());
                    }
                }
                (name.clone(), tags)
            })
            .collect();
        let frames = frame_indexes(&parts, &sequence);
        Ok(Self {
            parts,
            sequence,
            lengths,
            starts,
            constraint_tags,
            frames,
        })
    }

    /// The event that the `frame`-th frame (0-based) of `stream` belongs to. Ingesters number the
    /// source's frames by the source's own counter (STINS `msg_number`), so a lost frame leaves its
    /// event without that stream instead of shifting every later frame by one.
    pub fn event_of_frame(&self, stream: &StreamName, frame: u64) -> Option<EventNumber> {
        let index = self.frames.get(stream)?;
        let occurrence = index
            .before
            .partition_point(|&before| before <= frame)
            .checked_sub(1)?;
        let offsets = index.offsets.get(self.sequence.get(occurrence)?)?;
        let within = usize::try_from(frame - index.before[occurrence]).ok()?;
        offsets
            .get(within)
            .map(|offset| EventNumber(self.starts[occurrence] + offset))
    }

    /// The index of `stream`'s frame in `event` (the inverse of [`Sequence::event_of_frame`]),
    /// or `None` when the event has no frame of that stream.
    pub fn frame_of_event(&self, stream: &StreamName, event: EventNumber) -> Option<u64> {
        let index = self.frames.get(stream)?;
        let (occurrence, _, offset) = self.locate(event)?;
        let offsets = index.offsets.get(self.sequence.get(occurrence)?)?;
        let within = offsets.binary_search(&(offset as u64)).ok()?;
        Some(index.before[occurrence] + within as u64)
    }

    /// Frames `stream` has in the whole sequence.
    pub fn frame_count(&self, stream: &StreamName) -> u64 {
        self.frames.get(stream).map_or(0, |index| {
            match (index.before.last(), self.sequence.last()) {
                (Some(before), Some(name)) => {
                    before + index.offsets.get(name).map_or(0, |o| o.len() as u64)
                }
                _ => 0,
            }
        })
    }

    /// Events in the whole sequence (start and end included when wrapped).
    pub fn total_events(&self) -> u64 {
        match (self.starts.last(), self.sequence.last()) {
            (Some(start), Some(name)) => start + self.lengths.get(name).copied().unwrap_or(0),
            _ => 0,
        }
    }

    /// Every stream any part names.
    pub fn streams(&self) -> BTreeSet<StreamName> {
        self.parts
            .values()
            .flat_map(|part| part.keys().cloned())
            .collect()
    }

    /// Every tag any virtual worker names.
    pub fn tags(&self) -> BTreeSet<WorkerTag> {
        all_tags(&self.parts)
    }

    /// Real workers needed: the most distinct constraint numbers in any one event.
    pub fn min_workers(&self) -> usize {
        self.parts
            .values()
            .filter_map(|part| {
                let events = part.values().map(Vec::len).max()?;
                (0..events)
                    .map(|i| {
                        part.values()
                            .filter_map(|slots| match slots.get(i) {
                                Some(Slot::Workers(workers)) => Some(workers),
                                _ => None,
                            })
                            .flatten()
                            .filter_map(|worker| worker.constraint)
                            .collect::<BTreeSet<_>>()
                            .len()
                    })
                    .max()
            })
            .max()
            .unwrap_or(0)
    }

    /// Where an event lies: the index of its part occurrence in the sequence (constraint numbers
    /// are scoped to it), the part, and the event's index within the part.
    pub fn locate(&self, event: EventNumber) -> Option<(usize, &Part, usize)> {
        let occurrence = self
            .starts
            .partition_point(|&start| start <= event.0)
            .checked_sub(1)?;
        let name = self.sequence.get(occurrence)?;
        let offset = event.0 - self.starts[occurrence];
        (offset < self.lengths.get(name).copied().unwrap_or(0))
            .then(|| {
                self.parts
                    .get(name)
                    .map(|part| (occurrence, part, offset as usize))
            })
            .flatten()
    }

    /// The slot of `stream` in `event`: `Absent` for a stream the event's part does not name.
    pub fn slot(&self, event: EventNumber, stream: &StreamName) -> Option<&Slot> {
        let (_, part, offset) = self.locate(event)?;
        Some(
            part.get(stream)
                .and_then(|slots| slots.get(offset))
                .unwrap_or(&Slot::Absent),
        )
    }

    /// The tags a worker needs to take `constraint` in part occurrence `occurrence`.
    pub fn constraint_tags(
        &self,
        occurrence: usize,
        constraint: u64,
    ) -> Option<&BTreeSet<WorkerTag>> {
        self.constraint_tags
            .get(self.sequence.get(occurrence)?)?
            .get(&constraint)
    }

    /// The part names in order (as `GET /api/v1/sequence` returns them).
    pub fn sequence(&self) -> &[String] {
        &self.sequence
    }

    /// The sequence as it was asked for (`parts`, `sequence` and `all_wrap`), for the
    /// controller's record of the running scan; [`Sequence::from_record`] builds it again.
    pub fn to_record(&self) -> serde_json::Value {
        let wrapped = self.parts.contains_key(START_END_PART);
        let parts: BTreeMap<&String, &Part> = self
            .parts
            .iter()
            .filter(|(name, _)| *name != START_END_PART)
            .collect();
        let sequence: Vec<&String> = self
            .sequence
            .iter()
            .filter(|name| *name != START_END_PART)
            .collect();
        serde_json::json!({"parts": parts, "sequence": sequence, "all_wrap": wrapped})
    }

    /// [`Sequence::to_record`] as JSON text, unless it would be over `limit` bytes (judged
    /// before it is made: about 16 bytes a slot).
    pub fn record_json_within(&self, limit: usize) -> Option<String> {
        let streams = self.streams().len().max(1) as u64;
        let slots = self.lengths.values().sum::<u64>().saturating_mul(streams);
        if slots.saturating_mul(16) > limit as u64 {
            return None;
        }
        serde_json::to_string(&self.to_record())
            .ok()
            .filter(|json| json.len() <= limit)
    }

    /// A sequence from [`Sequence::to_record`]'s form.
    pub fn from_record(record: serde_json::Value) -> Result<Self, MappingError> {
        #[derive(Deserialize)]
        #[serde(deny_unknown_fields)]
        struct Record {
            parts: BTreeMap<String, Part>,
            sequence: Vec<String>,
            all_wrap: bool,
        }
        let record: Record =
            serde_json::from_value(record).map_err(|e| MappingError::Json(e.to_string()))?;
        Self::new(record.parts, record.sequence, record.all_wrap)
    }

    /// Frames `stream` has in the events before `event`: the index its frame of `event` (or
    /// the next event with one) takes.
    pub fn frames_before(&self, stream: &StreamName, event: EventNumber) -> u64 {
        let Some(index) = self.frames.get(stream) else {
            return 0;
        };
        let Some((occurrence, _, offset)) = self.locate(event) else {
            return self.frame_count(stream);
        };
        let within = self
            .sequence
            .get(occurrence)
            .and_then(|name| index.offsets.get(name))
            .map_or(0, |offsets| offsets.partition_point(|o| *o < offset as u64));
        index.before.get(occurrence).copied().unwrap_or(0) + within as u64
    }
}

fn frame_indexes(
    parts: &BTreeMap<String, Part>,
    sequence: &[String],
) -> BTreeMap<StreamName, FrameIndex> {
    let streams: BTreeSet<&StreamName> = parts.values().flat_map(BTreeMap::keys).collect();
    streams
        .into_iter()
        .map(|stream| {
            let offsets: BTreeMap<String, Vec<u64>> = parts
                .iter()
                .map(|(name, part)| {
                    let slots = part.get(stream).map(Vec::as_slice).unwrap_or_default();
                    let present = slots
                        .iter()
                        .enumerate()
                        .filter(|(_, slot)| **slot != Slot::Absent);
                    (
                        name.clone(),
                        present.map(|(offset, _)| offset as u64).collect(),
                    )
                })
                .collect();
            let mut before = Vec::with_capacity(sequence.len());
            let mut count = 0u64;
            for name in sequence {
                before.push(count);
                count += offsets.get(name).map_or(0, |o| o.len() as u64);
            }
            (stream.clone(), FrameIndex { offsets, before })
        })
        .collect()
}

fn all_tags(parts: &BTreeMap<String, Part>) -> BTreeSet<WorkerTag> {
    parts
        .values()
        .flat_map(BTreeMap::values)
        .flatten()
        .filter_map(|slot| match slot {
            Slot::Workers(workers) => Some(workers),
            _ => None,
        })
        .flatten()
        .flat_map(|worker| worker.tags.iter().cloned())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const EXAMPLE: &str = r#"{
        "parts": {
            "main": {
                "det": [[{"constraint": 0}], [{"constraint": 0}], [], [{"constraint": 1}, {"tags": ["debug"]}]],
                "pcap": [null, [{"constraint": 0}], null, [{"constraint": 2}]]
            },
            "slow": {"temp": [[{"constraint": 5}]]}
        },
        "sequence": ["main", "slow", "main"]
    }"#;

    #[test]
    fn a_recorded_sequence_is_the_same_sequence() {
        for wrapped in [false, true] {
            let sequence = Sequence::from_json(EXAMPLE.as_bytes(), wrapped).unwrap();
            let record = serde_json::to_string(&sequence.to_record()).unwrap();
            let again = Sequence::from_record(serde_json::from_str(&record).unwrap()).unwrap();
            assert_eq!(again, sequence);
        }
    }

    #[test]
    fn frames_before_an_event_count_the_streams_frames_in_earlier_events() {
        let sequence = Sequence::from_json(EXAMPLE.as_bytes(), true).unwrap();
        let pcap = StreamName::from("pcap");
        // Events: 0 start | 1-4 main | 5 slow | 6-9 main | 10 end; pcap has frames in 0, 2, 4,
        // 7, 9 and 10.
        let before: Vec<u64> = (0..=12)
            .map(|e| sequence.frames_before(&pcap, EventNumber(e)))
            .collect();
        assert_eq!(before, [0, 1, 1, 2, 2, 3, 3, 3, 4, 4, 5, 6, 6]);
        for e in 0..=10 {
            if let Some(frame) = sequence.frame_of_event(&pcap, EventNumber(e)) {
                assert_eq!(sequence.frames_before(&pcap, EventNumber(e)), frame);
            }
        }
    }

    #[test]
    fn parses_dranspose_json_and_wraps() {
        let sequence = Sequence::from_json(EXAMPLE.as_bytes(), true).unwrap();
        assert_eq!(sequence.total_events(), 1 + 4 + 1 + 4 + 1);
        assert_eq!(sequence.min_workers(), 2);
        let tags: Vec<String> = sequence.tags().iter().map(ToString::to_string).collect();
        assert_eq!(tags, ["debug", "generic"]);
        let det = StreamName::from("det");
        let temp = StreamName::from("temp");
        // Event 0 (start) and 10 (end) go to every tag; a stream missing from a part is absent.
        let everyone = Slot::Workers(vec![
            VirtualWorker {
                tags: BTreeSet::from([WorkerTag::from("debug")]),
                constraint: None,
            },
            VirtualWorker {
                tags: BTreeSet::from([WorkerTag::from("generic")]),
                constraint: None,
            },
        ]);
        assert_eq!(sequence.slot(EventNumber(0), &temp), Some(&everyone));
        assert_eq!(sequence.slot(EventNumber(10), &det), Some(&everyone));
        assert_eq!(sequence.slot(EventNumber(3), &det), Some(&Slot::Discard));
        assert_eq!(sequence.slot(EventNumber(3), &temp), Some(&Slot::Absent));
        assert_eq!(sequence.slot(EventNumber(11), &det), None);
        // The same constraint number in two occurrences of "main" is two different scopes.
        assert_eq!(
            sequence.locate(EventNumber(1)).map(|(o, _, i)| (o, i)),
            Some((1, 0))
        );
        assert_eq!(
            sequence.locate(EventNumber(6)).map(|(o, _, i)| (o, i)),
            Some((3, 0))
        );
        // Serialised back, as GET /api/v1/sequence answers, it is dranspose's shape again.
        let json = serde_json::to_value(&sequence).unwrap();
        assert_eq!(
            json["sequence"],
            serde_json::json!([START_END_PART, "main", "slow", "main", START_END_PART])
        );
        assert_eq!(json["parts"]["main"]["pcap"][0], serde_json::Value::Null);
        assert_eq!(json["parts"]["main"]["det"][2], serde_json::json!([]));
    }

    #[test]
    fn rejections_say_why() {
        let cases = [
            (
                r#"{"parts": {"a": {"x": [null], "y": []}}, "sequence": ["a"]}"#,
                "part a: streams have different numbers of events: x: 1, y: 0",
            ),
            (
                r#"{"parts": {}, "sequence": ["a"]}"#,
                "sequence names part a, which parts does not define",
            ),
            (
                r#"{"parts": {"reserved_start_end": {}}, "sequence": []}"#,
                "part name reserved_start_end is reserved for the start and end events",
            ),
            (
                r#"{"parts": {"a": {"x": [[{"constraint": -1}]]}}, "sequence": ["a"]}"#,
                "mapping is not valid: invalid value: integer `-1`, expected u64 at line 1 column 41",
            ),
        ];
        for (body, reason) in cases {
            assert_eq!(
                Sequence::from_json(body.as_bytes(), true)
                    .unwrap_err()
                    .to_string(),
                reason
            );
        }
        let empty =
            Sequence::from_json(br#"{"parts": {"a": {"x": []}}, "sequence": ["a"]}"#, false);
        assert_eq!(empty.unwrap_err(), MappingError::Empty);
    }

    #[test]
    fn frames_map_to_their_events_by_number() {
        let sequence = Sequence::from_json(EXAMPLE.as_bytes(), true).unwrap();
        let pcap = StreamName::from("pcap");
        // Start event, then pcap has frames in events 2 and 4 of each "main", then the end event.
        let events: Vec<u64> = (0..sequence.frame_count(&pcap))
            .map(|k| sequence.event_of_frame(&pcap, k).unwrap().0)
            .collect();
        assert_eq!(events, [0, 2, 4, 7, 9, 10]);
        assert_eq!(sequence.event_of_frame(&pcap, 6), None);
        assert_eq!(sequence.event_of_frame(&StreamName::from("nope"), 0), None);
    }

    #[test]
    fn legacy_mapping_is_one_part_named_main() {
        let sequence =
            Sequence::from_mapping_json(br#"{"det": [[{"constraint": 0}], null]}"#, false).unwrap();
        assert_eq!(sequence.sequence(), ["main"]);
        assert_eq!(sequence.total_events(), 2);
    }

    proptest! {
        /// The k-th frame of a stream lands on the k-th event that has a slot for it.
        #[test]
        fn event_of_frame_matches_positional_counting(
            slots in proptest::collection::vec(proptest::option::of(Just(())), 1..8),
            order in proptest::collection::vec(0usize..2, 1..6),
            wrap: bool,
        ) {
            let part_a: Vec<Slot> = slots.iter().map(|s| if s.is_some() { Slot::Discard } else { Slot::Absent }).collect();
            let parts = BTreeMap::from([
                ("a".to_owned(), Part::from([(StreamName::from("s"), part_a)])),
                ("b".to_owned(), Part::from([(StreamName::from("t"), vec![Slot::Discard; 2])])),
            ]);
            let sequence: Vec<String> = order.iter().map(|i| ["a", "b"][*i].to_owned()).collect();
            let Ok(seq) = Sequence::new(parts, sequence, wrap) else { return Ok(()) };
            let s = StreamName::from("s");
            let positional: Vec<u64> = (0..seq.total_events())
                .filter(|&n| seq.slot(EventNumber(n), &s) != Some(&Slot::Absent))
                .collect();
            prop_assert_eq!(seq.frame_count(&s), positional.len() as u64);
            for (k, event) in positional.iter().enumerate() {
                prop_assert_eq!(seq.event_of_frame(&s, k as u64), Some(EventNumber(*event)));
                prop_assert_eq!(seq.frame_of_event(&s, EventNumber(*event)), Some(k as u64));
            }
            for n in 0..seq.total_events() {
                if !positional.contains(&n) {
                    prop_assert_eq!(seq.frame_of_event(&s, EventNumber(n)), None);
                }
            }
            prop_assert_eq!(seq.event_of_frame(&s, positional.len() as u64), None);
        }

        /// Every event number below the total belongs to exactly one occurrence, in order.
        #[test]
        fn locate_covers_every_event_once(lengths in proptest::collection::vec(0usize..5, 1..5), order in proptest::collection::vec(0usize..4, 0..8), wrap: bool) {
            let parts: BTreeMap<String, Part> = lengths.iter().enumerate().map(|(i, &n)| {
                (format!("p{i}"), Part::from([(StreamName::from("s"), vec![Slot::Discard; n])]))
            }).collect();
            let sequence: Vec<String> = order.iter().map(|i| format!("p{}", i % lengths.len())).collect();
            let expected: u64 = sequence.iter().map(|name| parts[name].values().next().map_or(0, Vec::len) as u64).sum::<u64>() + if wrap { 2 } else { 0 };
            let Ok(seq) = Sequence::new(parts, sequence, wrap) else {
                prop_assert_eq!(expected, 0);
                return Ok(());
            };
            prop_assert_eq!(seq.total_events(), expected);
            let mut last = (0usize, 0usize);
            for n in 0..expected {
                let (occurrence, _, offset) = seq.locate(EventNumber(n)).unwrap();
                prop_assert!(n == 0 || (occurrence, offset) > last);
                last = (occurrence, offset);
            }
            prop_assert!(seq.locate(EventNumber(expected)).is_none());
        }
    }
}
