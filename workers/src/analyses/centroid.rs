//! `centroid`: the intensity-weighted centre of an image, in pixels. The template analysis:
//! copy this file to start one (`docs/tutorials/analysis.md`).

use beamflow_protocol::{EventData, Parameters, StreamName, StreamType};
use serde::{Deserialize, Serialize};

use crate::analyses::AnalysisKind;
use crate::check::{ResultKeys, TableError};
use crate::{Analysis, AnalysisError, DynAnalysis};

/// Configuration of `centroid`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CentroidConfig {
    /// The image stream (STINS, or a PV image).
    pub stream: StreamName,
}

impl AnalysisKind for CentroidConfig {
    const KIND: &str = "centroid";
    const SUMMARY: &str = "the intensity-weighted centre of an image: `{x, y, total}`";

    fn build(&self) -> Result<Box<dyn DynAnalysis>, TableError> {
        Ok(Box::new(Centroid(self.clone())))
    }

    fn reads_stream(&self, stream: &StreamName, _: &StreamType) -> bool {
        *stream == self.stream
    }

    fn streams_named(&self) -> Vec<(String, StreamName)> {
        vec![("stream".to_owned(), self.stream.clone())]
    }

    fn check(&self) -> Result<ResultKeys, TableError> {
        Ok(ResultKeys::named(["x", "y", "total"], &ResultKeys::Number))
    }
}

/// The centre (px, from the first column and row) and the sum of the counts.
#[derive(Debug, PartialEq, Serialize)]
pub struct CentroidOutput {
    /// Column.
    pub x: f64,
    /// Row.
    pub y: f64,
    /// The sum of all counts.
    pub total: f64,
}

/// The `centroid` analysis.
pub struct Centroid(CentroidConfig);

impl Analysis for Centroid {
    type Output = CentroidOutput;

    fn process_event(
        &self,
        event: &EventData,
        _: &Parameters,
    ) -> Result<Option<CentroidOutput>, AnalysisError> {
        let Some(image) = event.image(self.0.stream.as_str())? else {
            return Ok(None);
        };
        let width = image.shape().last().copied().unwrap_or(1).max(1);
        let (mut total, mut x, mut y) = (0.0, 0.0, 0.0);
        for (i, count) in image.to_f64().into_iter().enumerate() {
            total += count;
            x += count * (i % width) as f64;
            y += count * (i / width) as f64;
        }
        Ok(Some(CentroidOutput {
            x: x / total,
            y: y / total,
            total,
        }))
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use beamflow_protocol::{DType, EventNumber, NdArray};

    use super::*;
    use crate::testing::replay;

    fn centroid() -> Centroid {
        Centroid(CentroidConfig {
            stream: "det".into(),
        })
    }

    #[test]
    fn two_spots_weigh_in_by_their_counts() {
        // 1 count at (x 0, y 0) and 3 at (x 2, y 1): the centre is (6/4, 3/4).
        let counts: [u16; 12] = [1, 0, 0, 0, 0, 0, 3, 0, 0, 0, 0, 0];
        let bytes: Vec<u8> = counts.iter().flat_map(|c| c.to_le_bytes()).collect();
        let image = NdArray::new(vec![3, 4], DType::Uint16, bytes.into()).unwrap();
        let event = EventData::new(EventNumber(1)).with_image("det", &image);
        let output = centroid().process_event(&event, &Parameters::default());
        let expected = CentroidOutput {
            x: 1.5,
            y: 0.75,
            total: 4.0,
        };
        assert_eq!(output.unwrap(), Some(expected));
        let without = EventData::new(EventNumber(2)).with_scalar("qe04", 1.0);
        assert_eq!(
            centroid()
                .process_event(&without, &Parameters::default())
                .unwrap(),
            None
        );
    }

    #[test]
    fn a_recorded_dump_gives_each_image_its_centre_and_dransposes_sum() {
        let data = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/data");
        let sums: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(data.join("stats.json")).unwrap())
                .unwrap();
        let outputs = replay(&centroid(), &data.join("det.cbors"), &Parameters::default()).unwrap();
        assert_eq!(outputs.len(), sums.as_object().unwrap().len());
        for (event, output) in outputs {
            assert_eq!(
                Some(output.total),
                sums[event.0.to_string()]["sum"].as_f64()
            );
            assert!((0.0..40.0).contains(&output.x) && (0.0..32.0).contains(&output.y));
        }
    }
}
