//! The `[reducer.hdf5]` output: the reducer's state as one NeXus file per scan, written
//! ([`nexus::write`]) when the scan ends, on demand (`POST /api/v1/hdf5`) and, with `every_s`,
//! while it runs (the same file, replaced). Files are listed with their sizes at
//! `GET /api/v1/files` and on the dashboard, and served at `GET /api/v1/files/{name}`.
//!
//! It runs beside the reducer, on the published [`View`]: writing a file never holds up the
//! results. A failed write (a folder that is not writable, a full disk) is logged once per
//! distinct error, counted and shown; the scan goes on, and the next write tries again.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::{Path as UrlPath, State};
use axum::http::header;
use axum::response::{IntoResponse, Response};
use beamflow_net::Stop;
use beamflow_net::http::{ApiError, Route, router};
use serde::{Deserialize, Serialize};
use tracing::{error, info};

use crate::hdf5_rest::Node;
use crate::http::View;
use crate::nexus::{self, ScanInfo, WriteError};

/// Files listed at most (the newest); older ones stay in the folder.
const LISTED: usize = 200;

/// How often the output looks at the view for a scan's end.
const PERIOD: Duration = Duration::from_millis(200);

/// `[reducer.hdf5]`.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Hdf5Config {
    /// The folder the files go to; made if missing.
    pub folder: PathBuf,
    /// The accumulators written, by name; empty: all of them.
    #[serde(default)]
    pub accumulators: Vec<String>,
    /// Also write the running scan's file every this many seconds (replaced each time).
    pub every_s: Option<f64>,
}

impl Hdf5Config {
    /// What is wrong with `every_s`, for the pipeline's check.
    pub fn every_mistake(&self) -> Option<String> {
        self.every_s
            .filter(|s| !(s.is_finite() && *s > 0.0))
            .map(|s| format!("{s} is not a number of seconds above 0"))
    }

    /// The names that are not accumulators of the pipeline, for its check.
    pub fn unknown_accumulators<'a>(
        &'a self,
        known: &'a BTreeMap<String, crate::AccumulatorConfig>,
    ) -> impl Iterator<Item = &'a String> {
        self.accumulators
            .iter()
            .filter(|name| !known.contains_key(*name))
    }

    /// The accumulators to write whose names `/entry` already holds (its title, times and
    /// metadata), for the pipeline's check: a file with them could not be written.
    pub fn clashing_accumulators<'a>(
        &'a self,
        known: &'a BTreeMap<String, crate::AccumulatorConfig>,
    ) -> impl Iterator<Item = &'a String> {
        let written: Box<dyn Iterator<Item = &String>> = if self.accumulators.is_empty() {
            Box::new(known.keys())
        } else {
            Box::new(self.accumulators.iter())
        };
        written.filter(|name| crate::nexus::ENTRY_FIELDS.contains(&name.as_str()))
    }
}

/// One file written.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct WrittenFile {
    /// Its name in the folder.
    pub name: String,
    /// Its size in bytes.
    pub size: u64,
    /// The scan's number (none in a replay).
    pub scan: Option<u64>,
    /// When it was written (ISO 8601).
    pub written: String,
    /// Whether the scan had ended: the file is final.
    pub complete: bool,
}

/// What `GET /api/v1/files` answers and the dashboard shows.
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct FilesStatus {
    /// The folder.
    pub folder: String,
    /// The files written by this process, newest first.
    pub files: Vec<WrittenFile>,
    /// Writes that failed.
    pub failures: u64,
    /// The last failure's reason.
    pub last_error: Option<String>,
}

/// The output; cheap to clone (its routes and its thread share it).
#[derive(Clone)]
pub struct Hdf5Output {
    inner: Arc<Inner>,
}

struct Inner {
    config: Hdf5Config,
    view: View,
    /// One write at a time: the timer's and an on-demand one would share the temporary name.
    writing: Mutex<()>,
    status: Mutex<FilesStatus>,
}

impl Hdf5Output {
    /// The output of `view` as `config` says.
    pub fn new(config: Hdf5Config, view: View) -> Self {
        Self {
            inner: Arc::new(Inner {
                status: Mutex::new(FilesStatus {
                    folder: config.folder.display().to_string(),
                    ..FilesStatus::default()
                }),
                config,
                view,
                writing: Mutex::new(()),
            }),
        }
    }

    /// Writes each scan's file at its end, and every `every_s` while it runs, until `stop`.
    pub fn run_until(&self, stop: &Stop) {
        let every = self
            .inner
            .config
            .every_s
            .filter(|s| s.is_finite() && *s > 0.0)
            .map(Duration::from_secs_f64);
        let mut finished: Option<(Option<u64>, Option<String>)> = None;
        let mut last_write = Instant::now();
        while !stop.is_stopped() {
            // Sampling the published view, as the dashboard does: the reducer is not held up.
            std::thread::sleep(PERIOD);
            let Some(scan) = self.inner.view.scan() else {
                continue;
            };
            let key = (scan.number, scan.uuid.clone());
            if scan.ended.is_some() {
                if finished.as_ref() != Some(&key) {
                    finished = Some(key);
                    // A failure is logged, counted and shown by `write`; the next scan tries again.
                    let _ = self.write(&scan);
                }
            } else if every.is_some_and(|every| last_write.elapsed() >= every) {
                last_write = Instant::now();
                let _ = self.write(&scan);
            }
        }
    }

    /// Writes the current state now (the on-demand write); the file written.
    pub fn write_now(&self) -> Result<WrittenFile, WriteError> {
        let scan = self.inner.view.scan().map_or_else(
            || ScanInfo {
                source: "reducer".to_owned(),
                ..ScanInfo::default()
            },
            |scan| (*scan).clone(),
        );
        self.write(&scan)
    }

    fn write(&self, scan: &ScanInfo) -> Result<WrittenFile, WriteError> {
        let _writing = self
            .inner
            .writing
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let config = &self.inner.config;
        let path = config.folder.join(nexus::file_name(scan));
        let written = std::fs::create_dir_all(&config.folder)
            .map_err(|source| WriteError::Create {
                path: path.clone(),
                source,
            })
            .and_then(|()| write_state(&self.inner.view, &config.accumulators, scan, &path));
        let mut status = self
            .inner
            .status
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        match written {
            Ok(size) => {
                let file = WrittenFile {
                    name: nexus::file_name(scan),
                    size,
                    scan: scan.number,
                    written: jiff::Timestamp::now().to_string(),
                    complete: scan.ended.is_some(),
                };
                info!(file = %path.display(), size, complete = file.complete, "HDF5 file written.");
                status.files.retain(|f| f.name != file.name);
                status.files.insert(0, file.clone());
                status.files.truncate(LISTED);
                Ok(file)
            }
            Err(failure) => {
                let reason = failure.to_string();
                if status.last_error.as_deref() != Some(reason.as_str()) {
                    error!(error = %reason, "HDF5 file not written; the scan goes on, and the next write tries again.");
                }
                status.failures += 1;
                status.last_error = Some(reason);
                Err(failure)
            }
        }
    }

    /// The files written so far, and failures.
    pub fn status(&self) -> FilesStatus {
        self.inner
            .status
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Its routes: they build [`router`](Self::router); the reducer's OpenAPI test holds the
    /// document to them.
    pub fn routes() -> Vec<Route<Hdf5Output>> {
        vec![
            Route::get("/api/v1/files", files),
            Route::get("/api/v1/files/{name}", file),
            Route::post("/api/v1/hdf5", write_now),
        ]
    }

    /// The router, to merge into the reducer's.
    pub fn router(&self) -> Router {
        router(Self::routes()).with_state(self.clone())
    }
}

/// Writes the state `view` publishes (the accumulators named, or all) as a NeXus file at `path`;
/// its size. `beamflow replay --hdf5` writes so, once, at the replay's end.
pub fn write_state(
    view: &View,
    accumulators: &[String],
    scan: &ScanInfo,
    path: &Path,
) -> Result<u64, WriteError> {
    let file = view.hdf5();
    match file.root() {
        Node::Group {
            members,
            attributes,
        } if !accumulators.is_empty() => {
            let members = members
                .iter()
                .filter(|(name, _)| accumulators.contains(name))
                .map(|(name, node)| (name.clone(), node.clone()))
                .collect();
            let chosen = Node::Group {
                members,
                attributes: attributes.clone(),
            };
            nexus::write(path, &chosen, scan)
        }
        whole => nexus::write(path, whole, scan),
    }
}

async fn files(State(output): State<Hdf5Output>) -> Response {
    axum::Json(output.status()).into_response()
}

/// A file this process wrote, by its listed name only: nothing else in the folder is served.
async fn file(
    State(output): State<Hdf5Output>,
    UrlPath(name): UrlPath<String>,
) -> Result<Response, ApiError> {
    let listed = output.status().files.iter().any(|f| f.name == name);
    if !listed {
        return Err(ApiError::not_found(format!(
            "no file {name:?} written here"
        )));
    }
    let path = output.inner.config.folder.join(&name);
    let opened = std::fs::File::open(&path)
        .map_err(|error| ApiError::not_found(format!("{}: {error}", path.display())))?;
    Ok((
        [
            (header::CONTENT_TYPE, "application/x-hdf5".to_owned()),
            (
                header::CONTENT_DISPOSITION,
                format!("attachment; filename=\"{name}\""),
            ),
        ],
        axum::body::Body::from_stream(chunks(opened)),
    )
        .into_response())
}

/// A file's bytes a chunk at a time, so a download of a large file holds one chunk in memory.
fn chunks(file: std::fs::File) -> impl futures_util::Stream<Item = std::io::Result<bytes::Bytes>> {
    const CHUNK: usize = 1 << 20;
    futures_util::stream::unfold(Some(file), |file| async move {
        let mut file = file?;
        let read = tokio::task::spawn_blocking(move || {
            let mut buffer = vec![0; CHUNK];
            let n = std::io::Read::read(&mut file, &mut buffer)?;
            buffer.truncate(n);
            Ok::<_, std::io::Error>((buffer, file))
        })
        .await;
        match read {
            Ok(Ok((buffer, _))) if buffer.is_empty() => None,
            Ok(Ok((buffer, file))) => Some((Ok(bytes::Bytes::from(buffer)), Some(file))),
            Ok(Err(error)) => Some((Err(error), None)),
            Err(error) => Some((Err(std::io::Error::other(error)), None)),
        }
    })
}

async fn write_now(State(output): State<Hdf5Output>) -> Result<Response, ApiError> {
    let written = tokio::task::spawn_blocking(move || output.write_now())
        .await
        .map_err(|error| ApiError::internal(format!("the write stopped: {error}")))?;
    match written {
        Ok(file) => Ok(axum::Json(file).into_response()),
        Err(error) => Err(ApiError::internal(error.to_string())),
    }
}
