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
    /// Sets a parameter (validated against its description, if any); answers the new
    /// parameters hash, as dranspose does.
    pub fn set_parameter(
        &mut self,
        name: ParameterName,
        data: Bytes,
    ) -> Result<String, ParameterError> {
        let name_is_dump_prefix = name.as_str() == DUMP_PREFIX;
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
}
