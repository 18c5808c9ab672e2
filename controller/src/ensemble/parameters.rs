//! The parameters: typed against their descriptions, versioned as dranspose versions them, and
//! written beside the dumps with the scan's mapping.

use beamflow_protocol::control::{ByteVec, FromController, Role};
use beamflow_protocol::parameters::{
    DEFAULT_DUMP_MAX_MB, DUMP_MAX_MB, DUMP_PREFIX, ParameterError,
};
use beamflow_protocol::{ParameterDescription, ParameterName, ParameterValue};
use bytes::Bytes;
use sha2::Digest as _;
use tracing::{info, warn};

use super::Ensemble;
use crate::mapping::Sequence;

/// How large a parameter may be and how many there may be: every value is kept in memory and
/// sent whole to every component at each set, so neither may grow without bound.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ParameterLimits {
    /// Bytes one value may have at most.
    pub max_bytes: u64,
    /// Distinct names at most.
    pub max_names: usize,
}

impl Default for ParameterLimits {
    /// 64 MiB a value (a 16-megapixel mask or calibration of 32-bit values fits), 1024 names.
    fn default() -> Self {
        Self {
            max_bytes: 64 << 20,
            max_names: 1024,
        }
    }
}

/// Why a parameter was not set.
#[derive(Debug, thiserror::Error)]
pub enum SetParameterError {
    /// The value does not parse as its declared type.
    #[error(transparent)]
    Invalid(#[from] ParameterError),
    /// `dump_prefix` names a place files may not be written.
    #[error("dump_prefix refused: {0}")]
    Confined(#[from] beamflow_net::files::ConfineError),
    /// The value is larger than the limit.
    #[error(
        "parameter {name}: {bytes} bytes, more than the limit of {limit} ([security] max_parameter_bytes)"
    )]
    TooLarge {
        /// The parameter.
        name: ParameterName,
        /// Its size.
        bytes: u64,
        /// The limit.
        limit: u64,
    },
    /// A new name beyond the limit on names.
    #[error(
        "parameter {name}: {limit} parameters are set already, the limit ([security] max_parameters)"
    )]
    TooMany {
        /// The parameter.
        name: ParameterName,
        /// The limit.
        limit: usize,
    },
}

/// A parameter value with its version, as dranspose keeps them.
#[derive(Debug, Clone)]
pub(super) struct Versioned {
    pub(super) data: Bytes,
    pub(super) version: uuid::Uuid,
}

/// `descriptions` with the ingesters' recording parameters (`dump_prefix`, `dump_max_mb`) added
/// where the pipeline does not declare them, sorted by name.
pub(super) fn with_recording(
    mut descriptions: Vec<ParameterDescription>,
) -> Vec<ParameterDescription> {
    let recording = [
        ParameterDescription {
            name: DUMP_PREFIX.into(),
            dtype: beamflow_protocol::ParameterType::Str,
            default: ParameterValue::Str(String::new()),
            description: "Record every handled event to {prefix}{ingester}-{scan uuid}.cbors, \
                with mapping-{uuid}.json and parameters-{uuid}.json beside them; takes effect at once"
                .to_owned(),
        },
        ParameterDescription {
            name: DUMP_MAX_MB.into(),
            dtype: beamflow_protocol::ParameterType::Int,
            default: ParameterValue::Int(DEFAULT_DUMP_MAX_MB),
            description: "Close a dump file at this many MB and go on in the next (-1, -2, ...); 0: no limit"
                .to_owned(),
        },
    ];
    for description in recording {
        if !descriptions.iter().any(|d| d.name == description.name) {
            descriptions.push(description);
        }
    }
    descriptions.sort_by(|a, b| a.name.cmp(&b.name));
    descriptions
}

impl Ensemble {
    /// Sets a parameter (validated against its description, if any, within the limits, and
    /// `dump_prefix` under the roots); answers the new parameters hash, as dranspose does.
    pub fn set_parameter(
        &mut self,
        name: ParameterName,
        data: Bytes,
    ) -> Result<String, SetParameterError> {
        let name_is_dump_prefix = name.as_str() == DUMP_PREFIX;
        if data.len() as u64 > self.limits.max_bytes {
            return Err(SetParameterError::TooLarge {
                name,
                bytes: data.len() as u64,
                limit: self.limits.max_bytes,
            });
        }
        if !self.parameters.contains_key(&name) && self.parameters.len() >= self.limits.max_names {
            return Err(SetParameterError::TooMany {
                name,
                limit: self.limits.max_names,
            });
        }
        if name_is_dump_prefix {
            let prefix = String::from_utf8_lossy(&data);
            if !prefix.is_empty() {
                // The ingesters write the files, and check in full; this process may not
                // see their folders (a cluster's controller does not mount the volume).
                self.roots.admits(&prefix)?;
            }
        }
        if let Some(description) = self.descriptions.iter().find(|d| d.name == name) {
            ParameterValue::parse(description.dtype, &data).map_err(|error| {
                ParameterError::Invalid {
                    name: name.clone(),
                    error,
                }
            })?;
        }
        self.parameters.insert(
            name,
            Versioned {
                data,
                version: uuid::Uuid::new_v4(),
            },
        );
        let message = FromController::Parameters {
            values: self.parameter_values(),
        };
        for role in [Role::Ingester, Role::Worker, Role::Reducer] {
            self.send_to_all(role, &message);
        }
        // The ingesters start recording the running scan at once; its mapping goes beside.
        if name_is_dump_prefix
            && let Some(current) = self.current.as_ref().filter(|c| !c.finish_sent)
        {
            self.write_mapping_and_parameters(&current.uuid, current.scan.sequence());
        }
        Ok(self.parameters_hash())
    }

    /// A parameter's bytes: its value, or its default when it is described but unset.
    pub fn parameter(&self, name: &str) -> Option<Bytes> {
        self.parameters
            .get(name)
            .map(|p| p.data.clone())
            .or_else(|| {
                self.descriptions
                    .iter()
                    .find(|d| d.name.as_str() == name)
                    .map(|d| d.default.to_bytes())
            })
    }

    /// The parameter descriptions, sorted by name.
    pub fn describe_parameters(&self) -> &[ParameterDescription] {
        &self.descriptions
    }

    /// sha256 over the sorted parameters' version uuids (dranspose's `parameters_hash`).
    pub fn parameters_hash(&self) -> String {
        let mut hasher = sha2::Sha256::new();
        for versioned in self.parameters.values() {
            hasher.update(versioned.version.as_bytes());
        }
        hasher
            .finalize()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect()
    }

    pub(super) fn parameter_values(&self) -> Vec<(ParameterName, ByteVec)> {
        self.parameters
            .iter()
            .map(|(name, p)| (name.clone(), ByteVec::from(p.data.to_vec())))
            .collect()
    }

    /// With `dump_prefix` set, writes the scan's mapping and every parameter beside the dumps
    /// under dranspose's names: `{prefix}mapping-{uuid}.json` (`{"parts", "sequence"}`) and
    /// `{prefix}parameters-{uuid}.json` (`[{"name", "data"}]`; `.cbor` when a value holds a NUL
    /// byte, which JSON text cannot carry), so a recording replays with what made it.
    pub(super) fn write_mapping_and_parameters(&self, uuid: &str, sequence: &Sequence) {
        let prefix = self
            .parameter(DUMP_PREFIX)
            .map(|p| String::from_utf8_lossy(&p).into_owned())
            .unwrap_or_default();
        if prefix.is_empty() {
            return;
        }
        // A writer checks in full before it writes: the folder must be here, under the roots.
        if let Err(error) = self.roots.confine(&prefix) {
            warn!(%error, "Not writing the mapping and parameters beside the dumps.");
            return;
        }
        let parameters: Vec<(String, Bytes)> = self
            .descriptions
            .iter()
            .filter_map(|d| Some((d.name.to_string(), self.parameter(d.name.as_str())?)))
            .chain(
                self.parameters
                    .iter()
                    .filter(|(name, _)| !self.descriptions.iter().any(|d| d.name == **name))
                    .map(|(name, p)| (name.to_string(), p.data.clone())),
            )
            .collect();
        for (path, written) in crate::recording::write(&prefix, uuid, sequence, &parameters) {
            match written {
                Ok(()) => info!(path = %path.display(), "Written beside the dumps."),
                Err(error) => {
                    warn!(path = %path.display(), %error, "Cannot write beside the dumps.")
                }
            }
        }
    }

    /// Each set parameter's version, by name (`GET /api/v1/config`).
    pub(crate) fn parameter_versions(&self) -> impl Iterator<Item = (&ParameterName, uuid::Uuid)> {
        self.parameters.iter().map(|(name, p)| (name, p.version))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ensemble::Pacing;

    #[test]
    fn parameters_are_typed_versioned_and_have_defaults() {
        let mut ensemble = Ensemble::new(
            Pacing::default(),
            vec![ParameterDescription {
                name: "threshold".into(),
                dtype: beamflow_protocol::ParameterType::Int,
                default: ParameterValue::Int(5),
                description: String::new(),
            }],
        );
        assert_eq!(ensemble.parameter("threshold").as_deref(), Some(&b"5"[..]));
        assert_eq!(ensemble.parameter("dump_prefix").as_deref(), Some(&b""[..]));
        assert!(ensemble.parameter("nope").is_none());
        let empty = ensemble.parameters_hash();
        assert!(
            ensemble
                .set_parameter("threshold".into(), Bytes::from("x"))
                .is_err()
        );
        let first = ensemble
            .set_parameter("threshold".into(), Bytes::from("7"))
            .unwrap();
        let second = ensemble
            .set_parameter("threshold".into(), Bytes::from("7"))
            .unwrap();
        assert_ne!(empty, first);
        assert_ne!(first, second, "every set is a new version");
        assert_eq!(ensemble.parameter("threshold").as_deref(), Some(&b"7"[..]));
    }

    #[test]
    fn parameters_are_bounded_in_size_and_number() {
        let mut ensemble =
            Ensemble::new(Pacing::default(), Vec::new()).with_parameter_limits(ParameterLimits {
                max_bytes: 4,
                max_names: 2,
            });
        assert!(matches!(
            ensemble.set_parameter("a".into(), Bytes::from("12345")),
            Err(SetParameterError::TooLarge { bytes: 5, .. })
        ));
        ensemble
            .set_parameter("a".into(), Bytes::from("1"))
            .unwrap();
        ensemble
            .set_parameter("b".into(), Bytes::from("2"))
            .unwrap();
        let error = ensemble
            .set_parameter("c".into(), Bytes::from("3"))
            .unwrap_err();
        assert!(matches!(error, SetParameterError::TooMany { limit: 2, .. }));
        // A set name may still change.
        ensemble
            .set_parameter("b".into(), Bytes::from("22"))
            .unwrap();
    }

    #[test]
    fn a_dump_prefix_outside_the_roots_is_refused_and_nothing_written() {
        let root = tempfile::tempdir().unwrap();
        let roots = beamflow_net::files::Roots::new([root.path().to_owned()]);
        let mut ensemble = Ensemble::new(Pacing::default(), Vec::new()).with_roots(roots);
        let escape = format!("{}/../escaped-", root.path().display());
        let error = ensemble
            .set_parameter(DUMP_PREFIX.into(), Bytes::from(escape))
            .unwrap_err();
        assert!(matches!(error, SetParameterError::Confined(_)), "{error}");
        assert_eq!(ensemble.parameter(DUMP_PREFIX).as_deref(), Some(&b""[..]));
        let inside = format!("{}/", root.path().display());
        ensemble
            .set_parameter(DUMP_PREFIX.into(), Bytes::from(inside))
            .unwrap();
    }
}
