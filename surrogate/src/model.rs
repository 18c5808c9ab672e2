//! Loading a model (its directory, the built-in one, or parts), checking it against its
//! description, and evaluating batches of input rows in candle.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};

use crate::spec::{LCLS_CU_INJECTOR, LCLS_CU_INJECTOR_YAML, Layer, ModelSpec, Transformer};

/// Why a model cannot be loaded or evaluated.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    /// A file cannot be read.
    #[error("{path}: {error}")]
    Io {
        /// The file.
        path: PathBuf,
        /// Why.
        error: std::io::Error,
    },
    /// `model.yaml` is not a model description (unknown layer kinds are named here).
    #[error("{path}: {message}")]
    Description {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// The weights file lacks a tensor the description names.
    #[error("tensor {0:?} is not in the weights file")]
    MissingTensor(String),
    /// A tensor's shape does not fit where it is used.
    #[error("tensor {name:?} has shape {found:?}, {expected}")]
    Shape {
        /// The tensor.
        name: String,
        /// What was needed.
        expected: String,
        /// What it has.
        found: Vec<usize>,
    },
    /// An input vector of the wrong length.
    #[error("{found} inputs given, the model takes {expected}")]
    InputCount {
        /// The model's inputs.
        expected: usize,
        /// Given.
        found: usize,
    },
    /// candle refused an operation.
    #[error("candle: {0}")]
    Candle(#[from] candle_core::Error),
}

/// A loaded, checked model.
#[derive(Debug)]
pub struct Model {
    spec: ModelSpec,
    inputs_in: Vec<Affine>,
    layers: Vec<Loaded>,
    outputs_out: Vec<Affine>,
}

/// An affine step with its direction resolved: `apply` is what evaluation does.
#[derive(Debug)]
struct Affine {
    coef: Tensor,
    offset: Tensor,
    /// True: (x − offset)/coef; false: offset + coef·x.
    forward: bool,
}

impl Affine {
    fn apply(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        if self.forward {
            x.broadcast_sub(&self.offset)?.broadcast_div(&self.coef)
        } else {
            x.broadcast_mul(&self.coef)?.broadcast_add(&self.offset)
        }
    }
}

#[derive(Debug)]
enum Loaded {
    /// Wᵀ (so a batch [n, in] multiplies on the left) and b.
    Linear(Tensor, Tensor),
    Elu(f64),
    Relu,
    Tanh,
    Sigmoid,
}

impl Model {
    /// Loads `dir/model.yaml` and its weights, checking every tensor's presence and shape.
    pub fn load(dir: &Path) -> Result<Self, ModelError> {
        let path = dir.join("model.yaml");
        let text = std::fs::read_to_string(&path).map_err(|error| ModelError::Io {
            path: path.clone(),
            error,
        })?;
        let spec: ModelSpec =
            serde_saphyr::from_str(&text).map_err(|error| ModelError::Description {
                path: path.clone(),
                message: error.to_string(),
            })?;
        let weights = dir.join(&spec.weights);
        let bytes = std::fs::read(&weights).map_err(|error| ModelError::Io {
            path: weights.clone(),
            error,
        })?;
        let tensors = candle_core::safetensors::load_buffer(&bytes, &Device::Cpu)?;
        Self::from_parts(spec, tensors)
    }

    /// Loads a model from the text of its `model.yaml` and the bytes of its weights.
    pub fn from_bytes(yaml: &str, weights: &[u8]) -> Result<Self, ModelError> {
        let spec: ModelSpec =
            serde_saphyr::from_str(yaml).map_err(|error| ModelError::Description {
                path: PathBuf::from("model.yaml"),
                message: error.to_string(),
            })?;
        let tensors = candle_core::safetensors::load_buffer(weights, &Device::Cpu)?;
        Self::from_parts(spec, tensors)
    }

    /// A model compiled into beamflow, by name (`lcls_cu_injector`).
    pub fn builtin(name: &str) -> Option<Result<Self, ModelError>> {
        match name {
            LCLS_CU_INJECTOR => Some(Self::from_bytes(
                LCLS_CU_INJECTOR_YAML,
                include_bytes!("../../models/lcls_cu_injector/model.safetensors"),
            )),
            _ => None,
        }
    }

    /// `builtin:<name>` for a model compiled in, else a model directory.
    pub fn open(location: &Path) -> Result<Self, ModelError> {
        if let Some(name) = location.to_str().and_then(|l| l.strip_prefix("builtin:")) {
            return Self::builtin(name).unwrap_or_else(|| {
                Err(ModelError::Description {
                    path: location.to_owned(),
                    message: format!("no model {name:?} is built in (there is lcls_cu_injector)"),
                })
            });
        }
        Self::load(location)
    }

    /// Builds a model from its description and named tensors.
    pub fn from_parts(
        spec: ModelSpec,
        tensors: HashMap<String, Tensor>,
    ) -> Result<Self, ModelError> {
        let tensor = |name: &str| -> Result<Tensor, ModelError> {
            let t = tensors
                .get(name)
                .ok_or_else(|| ModelError::MissingTensor(name.to_owned()))?;
            Ok(t.to_dtype(DType::F64)?)
        };
        let vector = |name: &str, len: usize, what: &str| -> Result<Tensor, ModelError> {
            let t = tensor(name)?;
            if t.dims() != [len] {
                return Err(ModelError::Shape {
                    name: name.to_owned(),
                    expected: format!("expected [{len}] ({what})"),
                    found: t.dims().to_vec(),
                });
            }
            Ok(t)
        };
        let chain = |list: &[Transformer], len: usize, what: &str, untransform: bool| {
            list.iter()
                .map(
                    |Transformer::Affine {
                         coef,
                         offset,
                         reverse,
                     }| {
                        Ok(Affine {
                            coef: vector(coef, len, what)?,
                            offset: vector(offset, len, what)?,
                            // transform is fwd unless reverse; untransform the other one.
                            forward: *reverse == untransform,
                        })
                    },
                )
                .collect::<Result<Vec<_>, ModelError>>()
        };
        let n_in = spec.inputs.len();
        let n_out = spec.outputs.len();
        let inputs_in = chain(&spec.input_transformers, n_in, "one per input", false)?;
        let outputs_out = chain(&spec.output_transformers, n_out, "one per output", true)?;
        let mut width = n_in;
        let mut layers = Vec::with_capacity(spec.network.len());
        for layer in &spec.network {
            layers.push(match layer {
                Layer::Linear { weight, bias } => {
                    let w = tensor(weight)?;
                    let [out, inp] = w.dims() else {
                        return Err(ModelError::Shape {
                            name: weight.clone(),
                            expected: "expected a matrix [out, in]".to_owned(),
                            found: w.dims().to_vec(),
                        });
                    };
                    if *inp != width {
                        return Err(ModelError::Shape {
                            name: weight.clone(),
                            expected: format!("expected [_, {width}] (the previous layer's width)"),
                            found: w.dims().to_vec(),
                        });
                    }
                    let out = *out;
                    let b = vector(bias, out, "one per output of its layer")?;
                    width = out;
                    Loaded::Linear(w.t()?.contiguous()?, b)
                }
                Layer::Elu { alpha } => Loaded::Elu(*alpha),
                Layer::Relu => Loaded::Relu,
                Layer::Tanh => Loaded::Tanh,
                Layer::Sigmoid => Loaded::Sigmoid,
            });
        }
        if width != n_out {
            return Err(ModelError::Description {
                path: PathBuf::from("model.yaml"),
                message: format!(
                    "the network ends with {width} values but {n_out} outputs are listed"
                ),
            });
        }
        Ok(Self {
            spec,
            inputs_in,
            layers,
            outputs_out,
        })
    }

    /// The description.
    pub fn spec(&self) -> &ModelSpec {
        &self.spec
    }

    /// Evaluates a batch of input vectors (each in the model's input order); one output vector
    /// each, in the model's output order.
    pub fn evaluate(&self, batch: &[Vec<f64>]) -> Result<Vec<Vec<f64>>, ModelError> {
        let n_in = self.spec.inputs.len();
        if let Some(bad) = batch.iter().find(|row| row.len() != n_in) {
            return Err(ModelError::InputCount {
                expected: n_in,
                found: bad.len(),
            });
        }
        if batch.is_empty() {
            return Ok(Vec::new());
        }
        let flat: Vec<f64> = batch.iter().flatten().copied().collect();
        let mut x = Tensor::from_vec(flat, (batch.len(), n_in), &Device::Cpu)?;
        for step in &self.inputs_in {
            x = step.apply(&x)?;
        }
        for layer in &self.layers {
            x = match layer {
                Loaded::Linear(w, b) => x.matmul(w)?.broadcast_add(b)?,
                Loaded::Elu(alpha) => x.elu(*alpha)?,
                Loaded::Relu => x.relu()?,
                Loaded::Tanh => x.tanh()?,
                Loaded::Sigmoid => {
                    candle_core::Tensor::ones_like(&x)?.broadcast_div(&(x.neg()?.exp()? + 1.0)?)?
                }
            };
        }
        for step in &self.outputs_out {
            x = step.apply(&x)?;
        }
        Ok(x.to_vec2::<f64>()?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_data::{model_dir, reference, spec};

    #[test]
    fn the_lcls_injector_model_reproduces_its_reference_outputs() {
        for model in [
            Model::load(&model_dir()).expect("loads"),
            Model::open(Path::new("builtin:lcls_cu_injector")).expect("built in"),
        ] {
            check_reference(&model);
        }
    }

    fn check_reference(model: &Model) {
        let text = std::fs::read_to_string(reference()).expect("reference");
        let reference: serde_json::Value = serde_json::from_str(&text).expect("json");
        let points = reference["points"].as_array().expect("points");
        let batch: Vec<Vec<f64>> = points
            .iter()
            .map(|p| {
                model
                    .spec()
                    .inputs
                    .iter()
                    .map(|i| p["inputs"][&i.name].as_f64().expect("every input"))
                    .collect()
            })
            .collect();
        let outputs = model.evaluate(&batch).expect("evaluates");
        let mut worst = 0f64;
        for (point, got) in points.iter().zip(&outputs) {
            for (spec, value) in model.spec().outputs.iter().zip(got) {
                let want = point["outputs"][&spec.name].as_f64().expect("every output");
                worst = worst.max(((value - want) / want).abs());
            }
        }
        assert!(worst < 1e-9, "worst relative difference {worst}");
        assert_eq!(points.len(), 5);
    }

    fn tensors() -> HashMap<String, Tensor> {
        candle_core::safetensors::load(model_dir().join("model.safetensors"), &Device::Cpu)
            .expect("weights")
    }

    #[test]
    fn a_missing_tensor_a_wrong_shape_and_an_unknown_layer_are_named() {
        let mut missing = tensors();
        missing.remove("layers.3.bias");
        let error = Model::from_parts(spec(), missing).expect_err("incomplete");
        assert_eq!(
            error.to_string(),
            "tensor \"layers.3.bias\" is not in the weights file"
        );

        let mut wrong = tensors();
        wrong.insert(
            "layers.2.weight".to_owned(),
            Tensor::zeros((200, 150), DType::F64, &Device::Cpu).expect("tensor"),
        );
        let error = Model::from_parts(spec(), wrong).expect_err("misshapen");
        assert!(
            error
                .to_string()
                .starts_with("tensor \"layers.2.weight\" has shape [200, 150]"),
            "{error}"
        );

        let dir = tempfile::tempdir().expect("dir");
        let text = std::fs::read_to_string(model_dir().join("model.yaml"))
            .expect("yaml")
            .replacen("kind: elu", "kind: gelu", 1);
        std::fs::write(dir.path().join("model.yaml"), text).expect("write");
        let error = Model::load(dir.path()).expect_err("unknown layer");
        assert!(error.to_string().contains("gelu"), "{error}");
    }

    #[test]
    fn other_activations_and_sizes_load_without_code_changes() {
        // A 2 → 3 → 1 network with relu, tanh and sigmoid, weights written here.
        let yaml = r#"
name: tiny
weights: tiny.safetensors
inputs:
- {name: a, default: 0.5, range: [0, 1]}
- {name: b, default: 0.5, range: [0, 1]}
outputs:
- {name: y}
network:
- {kind: linear, weight: w0, bias: b0}
- {kind: relu}
- {kind: tanh}
- {kind: linear, weight: w1, bias: b1}
- {kind: sigmoid}
"#;
        let dir = tempfile::tempdir().expect("dir");
        std::fs::write(dir.path().join("model.yaml"), yaml).expect("write");
        let device = Device::Cpu;
        let tensors = HashMap::from([
            (
                "w0".to_owned(),
                Tensor::new(&[[1f64, 0.0], [0.0, 1.0], [-1.0, -1.0]], &device).expect("t"),
            ),
            (
                "b0".to_owned(),
                Tensor::new(&[0f64, 0.0, 0.0], &device).expect("t"),
            ),
            (
                "w1".to_owned(),
                Tensor::new(&[[1f64, 1.0, 1.0]], &device).expect("t"),
            ),
            ("b1".to_owned(), Tensor::new(&[0.5f64], &device).expect("t")),
        ]);
        candle_core::safetensors::save(&tensors, dir.path().join("tiny.safetensors"))
            .expect("save");
        let model = Model::load(dir.path()).expect("loads");
        let y = model.evaluate(&[vec![0.2, 0.7]]).expect("evaluates")[0][0];
        let want = 1.0 / (1.0 + (-(0.2f64.tanh() + 0.7f64.tanh() + 0.5)).exp());
        assert!((y - want).abs() < 1e-15, "{y} vs {want}");
        assert!(matches!(
            model.evaluate(&[vec![0.2]]),
            Err(ModelError::InputCount {
                expected: 2,
                found: 1
            })
        ));
    }
}
