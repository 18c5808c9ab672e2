//! The reducer's state as a NeXus (HDF5) file: one `NXentry` per scan, each accumulator's
//! [`Node`] tree below it as it is, written atomically (issue 21, files at scan end).
//!
//! The layout:
//!
//! ```text
//! /                     @NX_class=NXroot @default=entry @creator @file_name @file_time
//! /entry                @NX_class=NXentry @default=<first accumulator with a `signal`>
//!   title               "scan 3" (or the source, "replay")
//!   start_time          ISO 8601, when known; end_time likewise
//!   entry_identifier    the scan's uuid, when known
//!   beamflow/           @NX_class=NXcollection: scan, source, mapping (JSON), streams/<name>,
//!                       parameters/<name>
//!   <accumulator>/      its subtree; a group without NX_class gets NXcollection
//! ```
//!
//! Numbers with more than one element are chunked by whole rows (≲ 1 MiB a chunk) with shuffle
//! and deflate, which every HDF5 reader decodes without plugins; a single value is contiguous.
//! Strings are variable-length UTF-8, except where rust-hdf5 0.7.9 has no writer for that:
//! a scalar string, an empty list and a string array of two or more dimensions are
//! fixed-length UTF-8
//! (h5py reads them as `bytes`; `.asstr()` gives `str`), so a scalar still reads back with
//! shape `()`.
//!
//! The file is written as `.<name>.partial` in the target folder and renamed once complete, so
//! a crash never leaves a half file under the final name, and a failed write leaves the
//! previous file (if any) in place.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use beamflow_protocol::{DType, NdArray};
use jiff::Timestamp;
use rust_hdf5::{DatatypeMessage, H5Dataset, H5File, H5Group, H5Type, Hdf5Error, VarLenUnicode};
use tracing::debug;

use crate::hdf5_rest::{Attribute, Data, Node};

/// What a file says of its scan (the `NXentry`'s metadata).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ScanInfo {
    /// The live scan's number; `None` in a replay.
    pub number: Option<u64>,
    /// The scan's id (it names dumps); `None` when unknown.
    pub uuid: Option<String>,
    /// When the scan started.
    pub started: Option<Timestamp>,
    /// When it ended; `None` while it runs (a periodic or on-demand file).
    pub ended: Option<Timestamp>,
    /// Each stream's frame count (the scan's mapping, as the reducer knows it).
    pub streams: Vec<(String, u64)>,
    /// Parameter name → value as text.
    pub parameters: BTreeMap<String, String>,
    /// The scan's mapping sequence as asked for (JSON), when the controller sent it; shared,
    /// as the reducer publishes its scan's metadata with every view.
    pub mapping: Option<std::sync::Arc<str>>,
    /// Who wrote the file: `"reducer"` or `"replay"`.
    pub source: String,
}

/// Why a file could not be written. Each variant names the file (its final path).
#[derive(Debug, thiserror::Error)]
pub enum WriteError {
    /// The folder is missing and cannot be made, or is not writable.
    #[error("cannot create {}: {source}{}", path.display(), hint(source))]
    Create {
        /// The file that was to be written.
        path: PathBuf,
        /// What the system said.
        source: std::io::Error,
    },
    /// An object could not be written by the HDF5 library.
    #[error("cannot write {object} in {}: {source}", path.display())]
    Object {
        /// The file.
        path: PathBuf,
        /// The object's path in the file, e.g. `/entry/history/x`.
        object: String,
        /// What the library said (boxed: the library's error is large).
        source: Box<Hdf5Error>,
    },
    /// The tree holds something HDF5 cannot name or hold.
    #[error("cannot write {object} in {}: {reason}", path.display())]
    Invalid {
        /// The file.
        path: PathBuf,
        /// The object's path in the file.
        object: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The complete file could not be renamed to its final name, or measured.
    #[error("cannot finish {}: {source}", path.display())]
    Finish {
        /// The file.
        path: PathBuf,
        /// What the system or library said.
        source: std::io::Error,
    },
}

/// The operator's next step for the common creation failures.
fn hint(error: &std::io::Error) -> &'static str {
    match error.kind() {
        std::io::ErrorKind::PermissionDenied | std::io::ErrorKind::ReadOnlyFilesystem => {
            " (the folder is not writable)"
        }
        std::io::ErrorKind::NotADirectory | std::io::ErrorKind::AlreadyExists => {
            " (a part of the folder's path is a file)"
        }
        std::io::ErrorKind::NotFound => " (the folder does not exist)",
        _ => "",
    }
}

/// The names `/entry` holds besides the accumulators; an accumulator under one of these names
/// cannot be written (check pipeline names against it).
pub const ENTRY_FIELDS: [&str; 5] = [
    "title",
    "start_time",
    "end_time",
    "entry_identifier",
    "beamflow",
];

/// A chunk holds whole rows and at most about this many bytes (at least one row): big enough
/// for deflate to work, small enough that a reader slicing one image does not inflate many.
const CHUNK_BYTES: usize = 1 << 20;

/// Level 4: most of level 9's ratio on detector images at a fraction of its time (the bench).
const DEFLATE_LEVEL: u32 = 4;

const NX_CLASS: &str = "NX_class";

/// The file's name in a folder, from the scan: `scan-000003-1a2b3c4d-20261201T101500Z.h5`
/// (number, the first 8 characters of the uuid, the start time in UTC); without a number or a
/// uuid, the source names it: `replay-20261201T101500Z.h5`. Without a start time, now.
pub fn file_name(scan: &ScanInfo) -> String {
    let time = scan
        .started
        .unwrap_or_else(Timestamp::now)
        .strftime("%Y%m%dT%H%M%SZ");
    let uuid: Option<String> = scan.uuid.as_ref().map(|uuid| {
        uuid.chars()
            .filter(char::is_ascii_alphanumeric)
            .take(8)
            .collect()
    });
    let uuid = uuid.filter(|uuid| !uuid.is_empty());
    let mut parts = Vec::new();
    if scan.number.is_some() || uuid.is_some() {
        parts.push("scan".to_owned());
        parts.extend(scan.number.map(|n| format!("{n:06}")));
        parts.extend(uuid);
    } else {
        // The source is free text; only its file-name-safe characters are kept.
        let source: String = scan
            .source
            .chars()
            .filter(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect();
        parts.push(if source.is_empty() {
            "scan".to_owned()
        } else {
            source
        });
    }
    parts.push(time.to_string());
    format!("{}.h5", parts.join("-"))
}

/// Writes `root` (each top-level member one accumulator) as one NeXus file at `path`, through
/// `.<name>.partial` in the same folder and a rename, so a crash never leaves a half file under
/// the final name; the folder is made if missing and a file already at `path` is replaced.
/// Returns the bytes written. A `root` that is a dataset is written as `/entry/value`.
pub fn write(path: &Path, root: &Node, scan: &ScanInfo) -> Result<u64, WriteError> {
    let started = std::time::Instant::now();
    let create = |source| WriteError::Create {
        path: path.to_owned(),
        source,
    };
    let (folder, name) = match (path.parent(), path.file_name().and_then(|n| n.to_str())) {
        (Some(folder), Some(name)) => (folder, name),
        _ => {
            return Err(create(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                "the path names no file",
            )));
        }
    };
    if !folder.as_os_str().is_empty() {
        std::fs::create_dir_all(folder).map_err(create)?;
    }
    let partial = folder.join(format!(".{name}.partial"));
    // Made here first, so a folder that refuses it is reported as the system says it; the
    // library then truncates it.
    std::fs::File::create(&partial).map_err(create)?;
    let written = (|| {
        let file = H5File::create(&partial).map_err(|source| WriteError::Object {
            path: path.to_owned(),
            object: "the file".to_owned(),
            source: Box::new(source),
        })?;
        Writer { path, file: &file }.entry(root, scan, name)?;
        file.close().map_err(|source| WriteError::Object {
            path: path.to_owned(),
            object: "the file (closing it)".to_owned(),
            source: Box::new(source),
        })?;
        std::fs::rename(&partial, path).map_err(|source| WriteError::Finish {
            path: path.to_owned(),
            source,
        })
    })();
    if let Err(error) = written {
        // Best effort: the error to report is the write's, not the clean-up's.
        let _ = std::fs::remove_file(&partial);
        return Err(error);
    }
    // The rename is durable once the folder is synced; not every system opens a folder.
    if let Ok(dir) = std::fs::File::open(folder) {
        let _ = dir.sync_all();
    }
    let bytes = std::fs::metadata(path)
        .map_err(|source| WriteError::Finish {
            path: path.to_owned(),
            source,
        })?
        .len();
    debug!(path = %path.display(), bytes, elapsed = ?started.elapsed(), "Wrote NeXus file.");
    Ok(bytes)
}

/// One file being written; errors name `path` (the final name, not the partial one).
struct Writer<'a> {
    path: &'a Path,
    file: &'a H5File,
}

impl Writer<'_> {
    fn entry(&self, root: &Node, scan: &ScanInfo, name: &str) -> Result<(), WriteError> {
        let top = self.file.root_group();
        let file_attributes = BTreeMap::from([
            (NX_CLASS.to_owned(), text("NXroot")),
            ("default".to_owned(), text("entry")),
            (
                "creator".to_owned(),
                text(concat!("beamflow ", env!("CARGO_PKG_VERSION"))),
            ),
            ("file_name".to_owned(), text(name)),
            ("file_time".to_owned(), text(&Timestamp::now().to_string())),
        ]);
        self.group_attributes(&top, "/", &file_attributes)?;
        let entry = self.group(&top, "/", "entry")?;

        let (members, root_attributes) = match root {
            Node::Group {
                members,
                attributes,
            } => (members.clone(), attributes.clone()),
            // Not a tree of accumulators, but still written rather than lost.
            dataset @ Node::Dataset { .. } => (
                BTreeMap::from([("value".to_owned(), dataset.clone())]),
                BTreeMap::new(),
            ),
        };
        // The tree's own attributes go on the entry; the NeXus ones are the file's to set.
        let mut entry_attributes = root_attributes;
        entry_attributes.insert(NX_CLASS.to_owned(), text("NXentry"));
        let plot = members.iter().find_map(|(name, node)| match node {
            Node::Group { attributes, .. } if attributes.contains_key("signal") => Some(name),
            _ => None,
        });
        match plot {
            Some(name) => entry_attributes.insert("default".to_owned(), text(name)),
            None => entry_attributes.remove("default"),
        };
        self.group_attributes(&entry, "/entry", &entry_attributes)?;

        let title = match scan.number {
            Some(n) => format!("scan {n}"),
            None => scan.source.clone(),
        };
        self.scalar_string(&entry, "/entry", "title", &title)?;
        if let Some(time) = scan.started {
            self.scalar_string(&entry, "/entry", "start_time", &time.to_string())?;
        }
        if let Some(time) = scan.ended {
            self.scalar_string(&entry, "/entry", "end_time", &time.to_string())?;
        }
        if let Some(uuid) = &scan.uuid {
            self.scalar_string(&entry, "/entry", "entry_identifier", uuid)?;
        }
        self.metadata(&entry, scan)?;

        for (name, node) in &members {
            let object = format!("/entry/{name}");
            if ENTRY_FIELDS.contains(&name.as_str()) {
                return Err(self.invalid(
                    &object,
                    "the name is one of the entry's own fields; rename the accumulator",
                ));
            }
            self.node(&entry, "/entry", name, node)?;
        }
        Ok(())
    }

    /// `/entry/beamflow`: what only beamflow knows of the scan, as an `NXcollection`.
    fn metadata(&self, entry: &H5Group, scan: &ScanInfo) -> Result<(), WriteError> {
        let at = "/entry/beamflow";
        let group = self.group(entry, "/entry", "beamflow")?;
        self.group_attributes(&group, at, &collection())?;
        if let Some(number) = scan.number {
            self.scalar_i64(&group, at, "scan", number)?;
        }
        self.scalar_string(&group, at, "source", &scan.source)?;
        if let Some(mapping) = &scan.mapping {
            self.scalar_string(&group, at, "mapping", mapping)?;
        }

        let at = "/entry/beamflow/streams";
        let streams = self.group(&group, "/entry/beamflow", "streams")?;
        self.group_attributes(&streams, at, &collection())?;
        for (name, frames) in &scan.streams {
            self.scalar_i64(&streams, at, name, *frames)?;
        }

        let at = "/entry/beamflow/parameters";
        let parameters = self.group(&group, "/entry/beamflow", "parameters")?;
        self.group_attributes(&parameters, at, &collection())?;
        for (name, value) in &scan.parameters {
            self.scalar_string(&parameters, at, name, value)?;
        }
        Ok(())
    }

    fn node(&self, parent: &H5Group, at: &str, name: &str, node: &Node) -> Result<(), WriteError> {
        let object = format!("{at}/{name}");
        match node {
            Node::Group {
                members,
                attributes,
            } => {
                let group = self.group(parent, at, name)?;
                let mut attributes = attributes.clone();
                attributes
                    .entry(NX_CLASS.to_owned())
                    .or_insert_with(|| text("NXcollection"));
                self.group_attributes(&group, &object, &attributes)?;
                for (child, member) in members {
                    self.node(&group, &object, child, member)?;
                }
                Ok(())
            }
            Node::Dataset { data, attributes } => {
                self.check_name(at, name)?;
                let dataset = match data {
                    Data::Numbers(array) => self.numbers(parent, &object, name, array),
                    Data::Strings { shape, values } => {
                        self.strings(parent, &object, name, shape, values)
                    }
                }?;
                for (key, value) in attributes {
                    dataset_attribute(&dataset, key, value)
                        .map_err(|source| self.object(&format!("{object}@{key}"), source))?;
                }
                Ok(())
            }
        }
    }

    fn group(&self, parent: &H5Group, at: &str, name: &str) -> Result<H5Group, WriteError> {
        self.check_name(at, name)?;
        parent
            .create_group(name)
            .map_err(|source| self.object(&join(at, name), source))
    }

    fn group_attributes(
        &self,
        group: &H5Group,
        object: &str,
        attributes: &BTreeMap<String, Attribute>,
    ) -> Result<(), WriteError> {
        for (name, value) in attributes {
            let written = match value {
                Attribute::Text(value) => group.set_attr_string(name, value),
                Attribute::Texts(values) => {
                    let values: Vec<&str> = values.iter().map(String::as_str).collect();
                    group.set_attr_string_array(name, &values)
                }
                Attribute::Number(value) => group.set_attr_numeric(name, value),
                Attribute::Integer(value) => group.set_attr_numeric(name, value),
            };
            written.map_err(|source| self.object(&format!("{object}@{name}"), source))?;
        }
        Ok(())
    }

    fn numbers(
        &self,
        parent: &H5Group,
        object: &str,
        name: &str,
        array: &NdArray,
    ) -> Result<H5Dataset, WriteError> {
        let (shape, bytes) = (array.shape(), array.data());
        match array.dtype() {
            DType::Uint8 => numbers::<u8>(parent, name, shape, bytes),
            DType::Uint16 => numbers::<u16>(parent, name, shape, bytes),
            DType::Uint32 => numbers::<u32>(parent, name, shape, bytes),
            DType::Uint64 => numbers::<u64>(parent, name, shape, bytes),
            DType::Int8 => numbers::<i8>(parent, name, shape, bytes),
            DType::Int16 => numbers::<i16>(parent, name, shape, bytes),
            DType::Int32 => numbers::<i32>(parent, name, shape, bytes),
            DType::Int64 => numbers::<i64>(parent, name, shape, bytes),
            DType::Float32 => numbers::<f32>(parent, name, shape, bytes),
            DType::Float64 => numbers::<f64>(parent, name, shape, bytes),
        }
        .map_err(|source| self.object(object, source))
    }

    fn strings(
        &self,
        parent: &H5Group,
        object: &str,
        name: &str,
        shape: &[usize],
        values: &[String],
    ) -> Result<H5Dataset, WriteError> {
        let expected: usize = shape.iter().product();
        if values.len() != expected {
            return Err(self.invalid(
                object,
                &format!(
                    "shape {shape:?} holds {expected} strings, the tree has {}",
                    values.len()
                ),
            ));
        }
        // rust-hdf5 0.7.9 writes an empty variable-length string dataset that HDF5 cannot
        // open ("invalid dataset size"), so an empty one is fixed-length.
        let written = if shape.len() == 1 && !values.is_empty() {
            let values: Vec<&str> = values.iter().map(String::as_str).collect();
            parent.write_vlen_strings(name, &values)
        } else {
            fixed_strings(parent, name, shape, values)
        };
        written.map_err(|source| self.object(object, source))
    }

    fn scalar_string(
        &self,
        parent: &H5Group,
        at: &str,
        name: &str,
        value: &str,
    ) -> Result<(), WriteError> {
        self.check_name(at, name)?;
        fixed_strings(parent, name, &[], &[value.to_owned()])
            .map_err(|source| self.object(&join(at, name), source))?;
        Ok(())
    }

    fn scalar_i64(
        &self,
        parent: &H5Group,
        at: &str,
        name: &str,
        value: u64,
    ) -> Result<(), WriteError> {
        self.check_name(at, name)?;
        let object = join(at, name);
        let value = i64::try_from(value)
            .map_err(|_| self.invalid(&object, &format!("{value} does not fit an int64")))?;
        numbers::<i64>(parent, name, &[], &value.to_le_bytes())
            .map_err(|source| self.object(&object, source))?;
        Ok(())
    }

    /// HDF5 link names cannot hold `/`; `.` and the empty name do not name a new object.
    fn check_name(&self, at: &str, name: &str) -> Result<(), WriteError> {
        let reason = if name.is_empty() {
            "an empty name"
        } else if name == "." || name == ".." {
            "the name '.' or '..'"
        } else if name.contains('/') {
            "a name with '/'"
        } else {
            return Ok(());
        };
        Err(self.invalid(&join(at, name), &format!("HDF5 cannot hold {reason}")))
    }

    fn object(&self, object: &str, source: Hdf5Error) -> WriteError {
        WriteError::Object {
            path: self.path.to_owned(),
            object: object.to_owned(),
            source: Box::new(source),
        }
    }

    fn invalid(&self, object: &str, reason: &str) -> WriteError {
        WriteError::Invalid {
            path: self.path.to_owned(),
            object: object.to_owned(),
            reason: reason.to_owned(),
        }
    }
}

fn join(at: &str, name: &str) -> String {
    if at == "/" {
        format!("/{name}")
    } else {
        format!("{at}/{name}")
    }
}

fn text(value: &str) -> Attribute {
    Attribute::Text(value.to_owned())
}

fn collection() -> BTreeMap<String, Attribute> {
    BTreeMap::from([(NX_CLASS.to_owned(), text("NXcollection"))])
}

/// A dataset of `T` from little-endian row-major bytes (the host's order: the library takes
/// them as `T`'s in-memory image), chunked and compressed when it holds more than one value.
fn numbers<T: H5Type>(
    parent: &H5Group,
    name: &str,
    shape: &[usize],
    bytes: &[u8],
) -> Result<H5Dataset, Hdf5Error> {
    let elements: usize = shape.iter().product();
    let mut builder = parent.new_dataset::<T>().shape(shape);
    if elements > 1 {
        builder = builder
            .chunk(&chunk_shape(shape, T::element_size()))
            .shuffle_deflate(DEFLATE_LEVEL);
    }
    let dataset = builder.create(name)?;
    if elements > 0 {
        dataset.write_raw_bytes(bytes)?;
    }
    Ok(dataset)
}

/// Whole rows, about [`CHUNK_BYTES`] a chunk, at least one row and at most all of them.
fn chunk_shape(shape: &[usize], item_size: usize) -> Vec<usize> {
    let row_bytes = shape.iter().skip(1).product::<usize>() * item_size;
    let rows =
        (CHUNK_BYTES / row_bytes.max(1)).clamp(1, shape.first().copied().unwrap_or(1).max(1));
    let mut chunk = shape.to_vec();
    if let Some(first) = chunk.first_mut() {
        *first = rows;
    }
    chunk
}

/// Fixed-length, null-padded UTF-8 strings as wide as the longest (at least one byte, as
/// HDF5 requires): rust-hdf5 writes variable-length strings only as 1-D datasets.
fn fixed_strings(
    parent: &H5Group,
    name: &str,
    shape: &[usize],
    values: &[String],
) -> Result<H5Dataset, Hdf5Error> {
    let width = values.iter().map(String::len).max().unwrap_or(0).max(1);
    let size = u32::try_from(width)
        .map_err(|_| Hdf5Error::InvalidState(format!("a string of {width} bytes")))?;
    let mut bytes = vec![0; width * values.len()];
    for (slot, value) in bytes.chunks_exact_mut(width).zip(values) {
        slot[..value.len()].copy_from_slice(value.as_bytes());
    }
    let dataset = parent
        .new_dataset::<u8>()
        .datatype(DatatypeMessage::FixedString {
            size,
            padding: 1,
            charset: 1,
        })
        .shape(shape)
        .create(name)?;
    if !values.is_empty() {
        dataset.write_raw_bytes(&bytes)?;
    }
    Ok(dataset)
}

fn dataset_attribute(dataset: &H5Dataset, name: &str, value: &Attribute) -> Result<(), Hdf5Error> {
    match value {
        Attribute::Text(value) => dataset
            .new_attr::<VarLenUnicode>()
            .create(name)?
            .write_string(value),
        Attribute::Texts(values) => {
            let values: Vec<&str> = values.iter().map(String::as_str).collect();
            dataset
                .new_attr::<VarLenUnicode>()
                .shape([values.len()])
                .create(name)?
                .write_string_array(&values)
        }
        Attribute::Number(value) => dataset.new_attr::<f64>().create(name)?.write_numeric(value),
        Attribute::Integer(value) => dataset.new_attr::<i64>().create(name)?.write_numeric(value),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use beamflow_protocol::Value;
    use bytes::Bytes;
    use serde_json::json;

    fn array<const N: usize>(dtype: DType, shape: &[usize], le: Vec<[u8; N]>) -> Data {
        let bytes: Vec<u8> = le.concat();
        Data::Numbers(NdArray::new(shape.to_vec(), dtype, Bytes::from(bytes)).unwrap())
    }

    fn dataset(data: Data, attributes: &[(&str, Attribute)]) -> Node {
        Node::Dataset {
            data,
            attributes: attributes
                .iter()
                .map(|(k, v)| ((*k).to_owned(), v.clone()))
                .collect(),
        }
    }

    fn group(members: Vec<(&str, Node)>, attributes: &[(&str, Attribute)]) -> Node {
        Node::Group {
            members: members
                .into_iter()
                .map(|(k, v)| (k.to_owned(), v))
                .collect(),
            attributes: attributes
                .iter()
                .map(|(k, v)| ((*k).to_owned(), v.clone()))
                .collect(),
        }
    }

    fn strings(shape: &[usize], values: &[&str]) -> Data {
        Data::Strings {
            shape: shape.to_vec(),
            values: values.iter().map(|s| (*s).to_owned()).collect(),
        }
    }

    fn texts(values: &[&str]) -> Attribute {
        Attribute::Texts(values.iter().map(|s| (*s).to_owned()).collect())
    }

    /// Every kind of dataset and attribute the tree has; `frame` spans two chunks.
    fn sample() -> Node {
        let x = [0.5, f64::NAN, -0.0, f64::INFINITY, 5e-324, -1.25e300];
        let y = [i64::MIN, -1, 0, 1, 42, i64::MAX];
        let frame: Vec<[u8; 2]> = (0..600 * 1000u32)
            .map(|i| ((i.wrapping_mul(2_654_435_761) >> 20) as u16).to_le_bytes())
            .collect();
        let history = group(
            vec![
                (
                    "x",
                    dataset(
                        array(DType::Float64, &[6], x.map(f64::to_le_bytes).to_vec()),
                        &[("units", text("mm"))],
                    ),
                ),
                (
                    "y",
                    dataset(
                        array(DType::Int64, &[6], y.map(i64::to_le_bytes).to_vec()),
                        &[],
                    ),
                ),
                (
                    "events",
                    dataset(array::<8>(DType::Int64, &[0], vec![]), &[]),
                ),
                ("labels", dataset(strings(&[3], &["a", "", "äöü ✓"]), &[])),
                ("no_labels", dataset(strings(&[0], &[]), &[])),
            ],
            &[
                (NX_CLASS, text("NXdata")),
                ("signal", text("y")),
                ("axes", texts(&["x"])),
            ],
        );
        let image = group(
            vec![
                (
                    "frame",
                    dataset(
                        array(DType::Uint16, &[600, 1000], frame),
                        &[
                            ("units", text("counts")),
                            ("axes", texts(&["row", "column"])),
                            ("scale", Attribute::Number(0.5)),
                            ("binning", Attribute::Integer(-4)),
                        ],
                    ),
                ),
                ("note", dataset(strings(&[], &["hello ✓"]), &[])),
                ("blank", dataset(strings(&[], &[""]), &[])),
                (
                    "grid",
                    dataset(strings(&[2, 2], &["a", "bb", "", "ü"]), &[]),
                ),
                (
                    "count",
                    dataset(array(DType::Int64, &[], vec![7i64.to_le_bytes()]), &[]),
                ),
                (
                    "ratio",
                    dataset(array(DType::Float32, &[1], vec![1.5f32.to_le_bytes()]), &[]),
                ),
                (
                    "small",
                    dataset(
                        array(
                            DType::Int8,
                            &[2, 3],
                            (0..6i8).map(|v| (-v).to_le_bytes()).collect(),
                        ),
                        &[],
                    ),
                ),
                (
                    "deep",
                    group(
                        vec![(
                            "u32",
                            dataset(
                                array(DType::Uint32, &[3], vec![[255; 4], [0; 4], [1, 0, 0, 0]]),
                                &[],
                            ),
                        )],
                        &[("note", text("no class"))],
                    ),
                ),
            ],
            &[],
        );
        group(
            vec![
                ("history", history),
                ("image", image),
                (
                    "counter",
                    dataset(array(DType::Uint64, &[], vec![u64::MAX.to_le_bytes()]), &[]),
                ),
            ],
            &[("comment", text("from the tree"))],
        )
    }

    fn scan() -> ScanInfo {
        ScanInfo {
            number: Some(3),
            uuid: Some("1a2b3c4d-aaaa-bbbb-cccc-0123456789ab".to_owned()),
            started: Some("2026-12-01T10:15:00Z".parse().unwrap()),
            ended: Some("2026-12-01T10:16:30.5Z".parse().unwrap()),
            streams: vec![("eiger".to_owned(), 100), ("pcap".to_owned(), 99)],
            parameters: BTreeMap::from([("energy".to_owned(), "8.5 keV".to_owned())]),
            mapping: Some(r#"{"parts":{"main":{"eiger":[[{"constraint":0}]]}},"sequence":["main"],"all_wrap":true}"#.into()),
            source: "reducer".to_owned(),
        }
    }

    fn attribute_json(value: &Attribute) -> serde_json::Value {
        match value {
            Attribute::Text(t) => json!(t),
            Attribute::Texts(t) => json!(t),
            Attribute::Number(x) => json!(x),
            Attribute::Integer(n) => json!(n),
        }
    }

    /// What h5py must find: each object by its path in the file.
    fn expected(node: &Node, at: &str, out: &mut serde_json::Map<String, serde_json::Value>) {
        match node {
            Node::Group {
                members,
                attributes,
            } => {
                let mut attributes: serde_json::Map<_, _> = attributes
                    .iter()
                    .map(|(k, v)| (k.clone(), attribute_json(v)))
                    .collect();
                attributes
                    .entry(NX_CLASS)
                    .or_insert_with(|| json!("NXcollection"));
                out.insert(
                    at.to_owned(),
                    json!({"kind": "group", "attributes": attributes,
                           "members": members.keys().collect::<Vec<_>>()}),
                );
                for (name, member) in members {
                    expected(member, &format!("{at}/{name}"), out);
                }
            }
            Node::Dataset { data, attributes } => {
                let attributes: serde_json::Map<_, _> = attributes
                    .iter()
                    .map(|(k, v)| (k.clone(), attribute_json(v)))
                    .collect();
                let shape = data.shape();
                let elements: usize = shape.iter().product();
                let mut object =
                    json!({"kind": "dataset", "attributes": attributes, "shape": shape});
                match data {
                    Data::Numbers(array) => {
                        let hex: String = array.data().iter().map(|b| format!("{b:02x}")).collect();
                        object["dtype"] = json!(array.dtype().name());
                        object["hex"] = json!(hex);
                        object["chunks"] = if elements > 1 {
                            json!(chunk_shape(shape, array.dtype().size()))
                        } else {
                            json!(null)
                        };
                    }
                    Data::Strings { values, .. } => {
                        object["strings"] = json!(values);
                        object["vlen"] = json!(shape.len() == 1 && !values.is_empty());
                        object["chunks"] = json!(null);
                    }
                }
                out.insert(at.to_owned(), object);
            }
        }
    }

    /// h5py (HDF5 2.x) reads every value back bit for bit, with the attributes, the chunks
    /// and the filters; and the NeXus layout around the tree. The Python is
    /// `$BEAMFLOW_PYTHON`, else the repository's `.venv`; skipped without it except under CI.
    #[test]
    fn h5py_reads_back_every_value_attribute_and_filter() {
        let dir = tempfile::tempdir().unwrap();
        let scan = scan();
        let path = dir.path().join(file_name(&scan));
        let root = sample();
        let bytes = write(&path, &root, &scan).unwrap();
        assert_eq!(bytes, std::fs::metadata(&path).unwrap().len());
        assert_eq!(
            std::fs::read_dir(dir.path()).unwrap().count(),
            1,
            "only the file is left"
        );

        let mut objects = serde_json::Map::new();
        let Node::Group { members, .. } = &root else {
            unreachable!()
        };
        for (name, member) in members {
            expected(member, &format!("/entry/{name}"), &mut objects);
        }
        let scalar = |value: &str| {
            json!({"kind": "dataset", "attributes": {}, "shape": [], "strings": [value],
                   "vlen": false, "chunks": null})
        };
        let int = |n: i64| {
            json!({"kind": "dataset", "attributes": {}, "shape": [], "dtype": "int64",
                   "hex": n.to_le_bytes().iter().map(|b| format!("{b:02x}")).collect::<String>(),
                   "chunks": null})
        };
        let name = path.file_name().unwrap().to_str().unwrap();
        objects.insert(
            "/".into(),
            json!({"kind": "group", "members": ["entry"], "attributes": {
            "NX_class": "NXroot", "default": "entry", "creator": "*", "file_name": name,
            "file_time": "*"}}),
        );
        objects.insert(
            "/entry".into(),
            json!({"kind": "group", "attributes": {
            "NX_class": "NXentry", "default": "history", "comment": "from the tree"},
            "members": ["beamflow", "counter", "end_time", "entry_identifier", "history",
                        "image", "start_time", "title"]}),
        );
        objects.insert("/entry/title".into(), scalar("scan 3"));
        objects.insert("/entry/start_time".into(), scalar("2026-12-01T10:15:00Z"));
        objects.insert("/entry/end_time".into(), scalar("2026-12-01T10:16:30.5Z"));
        objects.insert(
            "/entry/entry_identifier".into(),
            scalar("1a2b3c4d-aaaa-bbbb-cccc-0123456789ab"),
        );
        let collection = |members: &[&str]| json!({"kind": "group", "attributes": {"NX_class": "NXcollection"}, "members": members});
        objects.insert(
            "/entry/beamflow".into(),
            collection(&["mapping", "parameters", "scan", "source", "streams"]),
        );
        objects.insert(
            "/entry/beamflow/mapping".into(),
            scalar(r#"{"parts":{"main":{"eiger":[[{"constraint":0}]]}},"sequence":["main"],"all_wrap":true}"#),
        );
        objects.insert("/entry/beamflow/scan".into(), int(3));
        objects.insert("/entry/beamflow/source".into(), scalar("reducer"));
        objects.insert(
            "/entry/beamflow/streams".into(),
            collection(&["eiger", "pcap"]),
        );
        objects.insert("/entry/beamflow/streams/eiger".into(), int(100));
        objects.insert("/entry/beamflow/streams/pcap".into(), int(99));
        objects.insert("/entry/beamflow/parameters".into(), collection(&["energy"]));
        objects.insert(
            "/entry/beamflow/parameters/energy".into(),
            scalar("8.5 keV"),
        );

        let expected_path = dir.path().join("expected.json");
        std::fs::write(
            &expected_path,
            serde_json::Value::Object(objects).to_string(),
        )
        .unwrap();
        let Some(stdout) = crate::reference::run(READ_BACK, &[&path, &expected_path], "") else {
            return;
        };
        assert!(stdout.contains("read back 32 objects"), "{stdout}");
        eprintln!("{stdout}");
    }

    /// Compares a file with `expected.json`: per object, its kind, attributes ("*": any
    /// value), members, shape, type, bytes or strings, chunks and filters.
    const READ_BACK: &str = r##"
import json, sys
try:
    import h5py, numpy as np
except ImportError:
    print("h5py is not installed"); sys.exit(77)

path, expected_path = sys.argv[1:3]
expected = json.load(open(expected_path))

def plain(value):
    if isinstance(value, bytes):
        return value.decode()
    if isinstance(value, np.ndarray):
        return [plain(v) for v in value.tolist()]
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, np.floating):
        return float(value)
    return value

checked = 0
with h5py.File(path, "r") as f:
    for name, want in expected.items():
        obj = f[name]
        got = {k: plain(obj.attrs[k]) for k in obj.attrs}
        assert set(got) == set(want["attributes"]), (name, got, want["attributes"])
        for k, v in want["attributes"].items():
            assert v == "*" or got[k] == v, (name, k, got[k], v)
        for k in obj.attrs:
            if isinstance(obj.attrs[k], str) or isinstance(plain(obj.attrs[k]), list):
                info = h5py.check_string_dtype(obj.attrs.get_id(k).dtype)
                if info is not None:
                    assert info.encoding == "utf-8" and info.length is None, (name, k, info)
        if want["kind"] == "group":
            assert isinstance(obj, h5py.Group), name
            assert sorted(obj.keys()) == sorted(want["members"]), (name, list(obj.keys()))
        else:
            assert isinstance(obj, h5py.Dataset), name
            assert list(obj.shape) == want["shape"], (name, obj.shape, want["shape"])
            if "dtype" in want:
                assert obj.dtype == np.dtype(want["dtype"]), (name, obj.dtype)
                assert obj.dtype.byteorder in "<=|", (name, obj.dtype)
                raw = np.asarray(obj[()]).astype(obj.dtype.newbyteorder("<")).tobytes().hex()
                assert raw == want["hex"], (name, raw[:80], want["hex"][:80])
            else:
                info = h5py.check_string_dtype(obj.dtype)
                assert info is not None and info.encoding == "utf-8", (name, obj.dtype)
                assert (info.length is None) == want["vlen"], (name, info)
                values = obj.asstr()[()]
                values = [values] if obj.shape == () else np.asarray(values).ravel().tolist()
                assert values == want["strings"], (name, values, want["strings"])
            want_chunks = tuple(want["chunks"]) if want["chunks"] else None
            assert obj.chunks == want_chunks, (name, obj.chunks, want_chunks)
            if want_chunks:
                assert obj.compression == "gzip" and obj.compression_opts == 4, name
                assert obj.shuffle, name
                filters = obj.id.get_create_plist().get_nfilters()
                assert filters == 2, (name, filters)
            else:
                assert obj.compression is None and not obj.shuffle, name
        checked += 1
print(f"read back {checked} objects")
"##;

    /// Debian's `h5dump` (the HDF5 1.10 C library) reads the whole file, data included, and
    /// sees the chunks and filters. Skipped without `h5dump`, except under CI.
    #[test]
    fn h5dump_reads_the_whole_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("scan.h5");
        write(&path, &sample(), &scan()).unwrap();
        let run = |args: &[&str]| {
            std::process::Command::new("h5dump")
                .args(args)
                .arg(&path)
                .output()
        };
        let full = match run(&[]) {
            Ok(output) => output,
            Err(error) => {
                assert!(std::env::var_os("CI").is_none(), "h5dump: {error}");
                eprintln!("skipped: h5dump: {error}");
                return;
            }
        };
        let stdout = String::from_utf8_lossy(&full.stdout);
        let stderr = String::from_utf8_lossy(&full.stderr);
        assert!(full.status.success(), "{stderr}");
        for name in [
            "DATASET \"frame\"",
            "DATASET \"x\"",
            "DATASET \"labels\"",
            "DATASET \"note\"",
            "DATASET \"events\"",
            "DATASET \"title\"",
            "GROUP \"deep\"",
            // HDF5 1.10's h5dump prints UTF-8 beyond ASCII as octal escapes.
            "\"hello ",
        ] {
            assert!(stdout.contains(name), "{name} is missing");
        }
        let x = run(&["-d", "/entry/history/x"]).unwrap();
        let x = String::from_utf8_lossy(&x.stdout);
        assert!(
            x.contains("0.5, nan, -0, inf, 4.94066e-324, -1.25e+300"),
            "{x}"
        );
        let header = run(&["-p", "-H", "-d", "/entry/image/frame"]).unwrap();
        let header = String::from_utf8_lossy(&header.stdout);
        for word in ["CHUNKED ( 524, 1000 )", "SHUFFLE", "DEFLATE", "LEVEL 4"] {
            assert!(header.contains(word), "{word} is missing:\n{header}");
        }
    }

    fn leftovers(dir: &Path) -> Vec<String> {
        std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect()
    }

    /// Root ignores permissions, so a folder that cannot be made (its parent is a file)
    /// stands in for an unwritable one; a read-only folder is tried too when not root.
    #[test]
    fn a_folder_that_cannot_hold_the_file_is_named_and_left_clean() {
        let dir = tempfile::tempdir().unwrap();
        let blocker = dir.path().join("blocker");
        std::fs::write(&blocker, "a file").unwrap();
        let path = blocker.join("scans/scan.h5");
        let error = write(&path, &sample(), &scan()).unwrap_err();
        let message = error.to_string();
        assert!(matches!(error, WriteError::Create { .. }), "{error:?}");
        assert!(
            message.starts_with(&format!("cannot create {}: ", path.display())),
            "{message}"
        );
        assert!(
            message.contains("a part of the folder's path is a file"),
            "{message}"
        );
        assert_eq!(leftovers(dir.path()), ["blocker"]);

        let locked = dir.path().join("locked");
        std::fs::create_dir(&locked).unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&locked, std::fs::Permissions::from_mode(0o555)).unwrap();
        if std::fs::File::create(locked.join("probe")).is_ok() {
            eprintln!("skipped the read-only folder: root writes anyway");
            return;
        }
        let error = write(&locked.join("scan.h5"), &sample(), &scan()).unwrap_err();
        assert!(
            error.to_string().ends_with("(the folder is not writable)"),
            "{error}"
        );
        assert!(leftovers(&locked).is_empty());
    }

    /// A failure after much has been written removes the partial file and leaves the
    /// previous file under the final name as it was.
    #[test]
    fn a_failure_mid_write_leaves_the_previous_file_and_no_partial() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("scan.h5");
        std::fs::write(&path, "the previous file").unwrap();
        let Node::Group {
            mut members,
            attributes,
        } = sample()
        else {
            unreachable!()
        };
        // Members are written in name order: this one comes after the image.
        members.insert(
            "zz_broken".to_owned(),
            dataset(strings(&[3], &["only one"]), &[]),
        );
        let error = write(
            &path,
            &Node::Group {
                members,
                attributes,
            },
            &scan(),
        )
        .unwrap_err();
        assert_eq!(
            error.to_string(),
            format!(
                "cannot write /entry/zz_broken in {}: shape [3] holds 3 strings, the tree has 1",
                path.display()
            )
        );
        assert_eq!(leftovers(dir.path()), ["scan.h5"]);
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "the previous file");
    }

    #[test]
    fn names_a_name_hdf5_cannot_hold_and_an_accumulator_named_like_an_entry_field() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("scan.h5");
        let slash = group(vec![("a/b", dataset(strings(&[], &["x"]), &[]))], &[]);
        let error = write(&path, &group(vec![("acc", slash)], &[]), &scan()).unwrap_err();
        assert!(error.to_string().contains("/entry/acc/a/b"), "{error}");
        assert!(
            error
                .to_string()
                .ends_with("HDF5 cannot hold a name with '/'"),
            "{error}"
        );
        let title = group(vec![("title", group(vec![], &[]))], &[]);
        let error = write(&path, &title, &scan()).unwrap_err();
        assert!(
            error.to_string().contains("rename the accumulator"),
            "{error}"
        );
        assert!(leftovers(dir.path()).is_empty());
    }

    /// The writer runs off the reducer's loop and its error travels back (and into anyhow).
    #[test]
    fn the_error_crosses_threads() {
        fn check<T: Send + Sync + std::error::Error + 'static>() {}
        check::<WriteError>();
    }

    #[test]
    fn the_file_is_named_from_the_scan() {
        let scan = scan();
        assert_eq!(file_name(&scan), "scan-000003-1a2b3c4d-20261201T101500Z.h5");
        let replay = ScanInfo {
            started: scan.started,
            source: "replay".to_owned(),
            ..ScanInfo::default()
        };
        assert_eq!(file_name(&replay), "replay-20261201T101500Z.h5");
        let no_uuid = ScanInfo {
            uuid: None,
            ..scan.clone()
        };
        assert_eq!(file_name(&no_uuid), "scan-000003-20261201T101500Z.h5");
    }

    #[test]
    fn chunks_are_whole_rows_of_about_a_mebibyte() {
        assert_eq!(chunk_shape(&[100_000], 8), [100_000]);
        assert_eq!(chunk_shape(&[1_000_000], 8), [131_072]);
        assert_eq!(chunk_shape(&[100, 1024, 1024], 2), [1, 1024, 1024]);
        assert_eq!(chunk_shape(&[600, 1000], 2), [524, 1000]);
        assert_eq!(chunk_shape(&[3, 4096, 4096], 4), [1, 4096, 4096]);
    }

    /// The state tree as the reducer builds it goes through unchanged.
    #[test]
    fn a_tree_made_from_values_is_written() {
        let dir = tempfile::tempdir().unwrap();
        let state = Value::Map(BTreeMap::from([(
            "sum".to_owned(),
            Value::Map(BTreeMap::from([
                ("total".to_owned(), Value::Float(1.5)),
                (
                    "names".to_owned(),
                    Value::Array(vec![Value::Text("a".into())]),
                ),
            ])),
        )]));
        let root = crate::hdf5_rest::tree(&state);
        let bytes = write(&dir.path().join("x.h5"), &root, &ScanInfo::default()).unwrap();
        assert!(bytes > 0);
    }
}
