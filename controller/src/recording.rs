//! What the controller writes beside the ingesters' dumps when `dump_prefix` is set, under
//! dranspose's names, so that a recording carries the mapping and parameters that made it.

use std::path::PathBuf;

use beamflow_protocol::parameters::encode_parameter_file;
use bytes::Bytes;

use crate::mapping::Sequence;

/// Writes `{prefix}mapping-{uuid}.json` (`{"parts": {name: {"mapping": part}}, "sequence"}`, as
/// dranspose dumps its parts) and `{prefix}parameters-{uuid}.json` (or `.cbor`); returns each
/// path with how its write went.
pub fn write(
    prefix: &str,
    uuid: &str,
    sequence: &Sequence,
    parameters: &[(String, Bytes)],
) -> Vec<(PathBuf, std::io::Result<()>)> {
    let mut mapping = serde_json::to_value(sequence).unwrap_or_default();
    if let Some(parts) = mapping
        .get_mut("parts")
        .and_then(serde_json::Value::as_object_mut)
    {
        for part in parts.values_mut() {
            *part = serde_json::json!({ "mapping": part.take() });
        }
    }
    let mapping_path = PathBuf::from(format!("{prefix}mapping-{uuid}.json"));
    let written = serde_json::to_vec(&mapping)
        .map_err(std::io::Error::other)
        .and_then(|bytes| std::fs::write(&mapping_path, bytes));
    let (extension, bytes) = encode_parameter_file(parameters);
    let parameters_path = PathBuf::from(format!("{prefix}parameters-{uuid}.{extension}"));
    let parameters_written = std::fs::write(&parameters_path, bytes);
    vec![
        (mapping_path, written),
        (parameters_path, parameters_written),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mapping::Sequence;

    #[test]
    fn the_mapping_and_parameters_are_written_with_dranspose_names() {
        let dir = tempfile::tempdir().unwrap();
        let prefix = format!("{}/scan-", dir.path().display());
        let sequence = Sequence::from_json(
            br#"{"parts": {"p": {"det": [[{"constraint": 1}], null]}}, "sequence": ["p"]}"#,
            false,
        )
        .unwrap();
        let parameters = [("dump_prefix".to_owned(), Bytes::from(prefix.clone()))];
        for (path, written) in write(&prefix, "u1", &sequence, &parameters) {
            written.unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        }
        let mapping: serde_json::Value = serde_json::from_slice(
            &std::fs::read(dir.path().join("scan-mapping-u1.json")).unwrap(),
        )
        .unwrap();
        assert_eq!(mapping["sequence"], serde_json::json!(["p"]));
        assert_eq!(
            mapping["parts"]["p"]["mapping"]["det"][1],
            serde_json::Value::Null
        );
        let read = beamflow_protocol::parameters::parse_parameter_file(
            &std::fs::read(dir.path().join("scan-parameters-u1.json")).unwrap(),
        )
        .unwrap();
        assert_eq!(read[0].1, prefix.as_bytes());
    }
}
