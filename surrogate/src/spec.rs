//! `model.yaml`: the description of a model's inputs, outputs, transformers and layers, and
//! the built-in LCLS Cu-injector model's.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::ModelError;

/// The name of the built-in LCLS Cu-injector surrogate (`builtin:lcls_cu_injector`).
pub const LCLS_CU_INJECTOR: &str = "lcls_cu_injector";

pub(crate) const LCLS_CU_INJECTOR_YAML: &str =
    include_str!("../../models/lcls_cu_injector/model.yaml");

/// `model.yaml`.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ModelSpec {
    /// The model's name.
    pub name: String,
    /// What it predicts.
    #[serde(default)]
    pub description: String,
    /// The safetensors file, relative to the directory.
    pub weights: String,
    /// Element type of the weights (`f64`; `f32` weights are widened).
    #[serde(default = "f64_name")]
    pub dtype: String,
    /// Inputs in evaluation order.
    pub inputs: Vec<InputSpec>,
    /// Outputs in network order.
    pub outputs: Vec<OutputSpec>,
    /// Applied to the input vector, in order.
    #[serde(default)]
    pub input_transformers: Vec<Transformer>,
    /// The layers, in order.
    pub network: Vec<Layer>,
    /// Undone on the network's output, in order.
    #[serde(default)]
    pub output_transformers: Vec<Transformer>,
}

impl ModelSpec {
    /// The description of a model compiled into beamflow, without loading its weights (the
    /// simulated injector reads its inputs' defaults and ranges from it).
    pub fn builtin(name: &str) -> Option<Result<Self, ModelError>> {
        match name {
            LCLS_CU_INJECTOR => Some(serde_saphyr::from_str(LCLS_CU_INJECTOR_YAML).map_err(
                |error| ModelError::Description {
                    path: PathBuf::from("builtin:lcls_cu_injector/model.yaml"),
                    message: error.to_string(),
                },
            )),
            _ => None,
        }
    }

    /// The input called `name`.
    pub fn input(&self, name: &str) -> Option<&InputSpec> {
        self.inputs.iter().find(|input| input.name == name)
    }
}

fn f64_name() -> String {
    "f64".to_owned()
}

/// One input.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct InputSpec {
    /// Its name (a PV name for machine inputs).
    pub name: String,
    /// Unit.
    #[serde(default)]
    pub unit: String,
    /// Value used when none is given.
    pub default: f64,
    /// The training domain `[low, high]`.
    pub range: [f64; 2],
    /// A read-only input must equal its default.
    #[serde(default)]
    pub read_only: bool,
}

/// One output.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct OutputSpec {
    /// Its name.
    pub name: String,
    /// Unit.
    #[serde(default)]
    pub unit: String,
}

/// A transformer of the input or output chain.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum Transformer {
    /// fwd(x) = (x − offset)/coef, inv(x) = offset + coef·x.
    Affine {
        /// Tensor name of the coefficients.
        coef: String,
        /// Tensor name of the offsets.
        offset: String,
        /// `transform` is inv instead of fwd.
        #[serde(default)]
        reverse: bool,
    },
}

/// A layer of the network.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum Layer {
    /// y = W x + b, W of shape [out, in].
    Linear {
        /// Tensor name of W.
        weight: String,
        /// Tensor name of b.
        bias: String,
    },
    /// y = x if x > 0 else α(eˣ − 1).
    Elu {
        /// α.
        #[serde(default = "one")]
        alpha: f64,
    },
    /// max(x, 0).
    Relu,
    /// tanh x.
    Tanh,
    /// 1/(1 + e⁻ˣ).
    Sigmoid,
}

fn one() -> f64 {
    1.0
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::Model;

    #[test]
    fn the_builtin_spec_is_the_models() {
        let spec = ModelSpec::builtin(LCLS_CU_INJECTOR)
            .expect("built in")
            .expect("valid");
        let model = Model::open(Path::new("builtin:lcls_cu_injector")).expect("built in");
        assert_eq!(&spec, model.spec());
        assert_eq!(
            spec.input("QUAD:IN20:525:BCTRL").map(|i| i.default),
            Some(-3.218399988942528)
        );
        assert!(ModelSpec::builtin("nothing").is_none());
    }
}
