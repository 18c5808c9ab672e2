//! LUME-style surrogate models: a directory with `model.yaml` (inputs with units, defaults,
//! ranges and read-only flags; outputs with units; input and output transformer chains; the
//! layer list) and the weights in safetensors, as in `../shared/models/lcls_cu_injector/`.
//! Loaded with candle (f64, CPU), checked on load, evaluated in batches.
//!
//! Evaluation, as `model.yaml`'s header defines it: inputs in the listed order → each input
//! transformer's `transform` → the layers → each output transformer's `untransform`. An affine
//! transformer has fwd(x) = (x − offset)/coef and inv(x) = offset + coef·x; `transform` is fwd
//! unless `reverse` (then inv), `untransform` the other one.
//!
//! # Threads
//!
//! candle's CPU matmul splits work over `RAYON_NUM_THREADS` threads (default: all cores),
//! reading the variable at every call. For this model's batch-1 evaluation that costs ~410 µs
//! on 2 cores against ~58 µs on one (measured here), so the `beamflow` binary sets it to 1 at
//! start, after building its own rayon pool; parallelism comes from workers evaluating
//! batches side by side instead.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use serde::{Deserialize, Serialize};

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

/// The name of the built-in LCLS Cu-injector surrogate (`builtin:lcls_cu_injector`).
pub const LCLS_CU_INJECTOR: &str = "lcls_cu_injector";

const LCLS_CU_INJECTOR_YAML: &str = include_str!("../../models/lcls_cu_injector/model.yaml");

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

/// Where an input's value came from.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
#[serde(tag = "provenance", rename_all = "snake_case")]
pub enum Provenance {
    /// A live machine value.
    Live,
    /// A live value older than allowed.
    Stale {
        /// Its age, s.
        age_s: f64,
    },
    /// The model's default stands in.
    Default,
    /// Given in a request (what-if, `beamflow model eval`).
    Request,
}

/// One input as evaluated.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct InputValue {
    /// The value used.
    pub value: f64,
    /// Unit.
    pub unit: String,
    /// Where it came from.
    #[serde(flatten)]
    pub provenance: Provenance,
}

/// Something wrong with an input: out of the training range, a read-only input off its
/// default, not a finite number, or not an input of the model.
#[derive(Debug, Clone, PartialEq, Serialize, thiserror::Error)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum InputIssue {
    /// Outside the training domain.
    #[error("{name} = {value} is outside the model's range [{low}, {high}]")]
    OutOfRange {
        /// The input.
        name: String,
        /// Its value.
        value: f64,
        /// Range low.
        low: f64,
        /// Range high.
        high: f64,
    },
    /// A read-only input given another value than its default (the default is used).
    #[error("{name} is read-only: {value} given, the model is only valid at {default}")]
    ReadOnly {
        /// The input.
        name: String,
        /// Given.
        value: f64,
        /// Its default.
        default: f64,
    },
    /// NaN or infinite (the default is used).
    #[error("{name} is not a finite number")]
    NotFinite {
        /// The input.
        name: String,
    },
    /// Not an input of the model.
    #[error("{name} is not an input of the model")]
    Unknown {
        /// The name given.
        name: String,
    },
    /// Its stream was in the event but gave no number (the default is used).
    #[error("{name}: stream {stream} gave no value ({reason})")]
    Unreadable {
        /// The input.
        name: String,
        /// The stream mapped to it.
        stream: String,
        /// Why.
        reason: String,
    },
}

impl InputIssue {
    /// The input (or the name given) the issue is about.
    pub fn name(&self) -> &str {
        match self {
            InputIssue::OutOfRange { name, .. }
            | InputIssue::ReadOnly { name, .. }
            | InputIssue::NotFinite { name }
            | InputIssue::Unknown { name }
            | InputIssue::Unreadable { name, .. } => name,
        }
    }
}

/// A model's answer: each output with its unit, each input as used.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Evaluation {
    /// Output name → value and unit.
    pub outputs: std::collections::BTreeMap<String, OutputValue>,
    /// Input name → value, unit and provenance.
    pub inputs: std::collections::BTreeMap<String, InputValue>,
    /// What was wrong with the inputs (flagged, not refused).
    pub issues: Vec<InputIssue>,
}

/// One output value.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct OutputValue {
    /// The value (finite: a non-finite output is an error, never a number).
    pub value: f64,
    /// Unit.
    pub unit: String,
}

/// Why an evaluation gave no outputs.
#[derive(Debug, thiserror::Error)]
pub enum EvaluationError {
    /// The inputs were refused (out of range, unknown names).
    #[error("{}", .0.iter().map(ToString::to_string).collect::<Vec<_>>().join("; "))]
    Inputs(Vec<InputIssue>),
    /// The model produced NaN or infinity.
    #[error("output {name} is not finite ({value})")]
    NonFinite {
        /// The output.
        name: String,
        /// What came out.
        value: f64,
    },
    /// The model failed.
    #[error(transparent)]
    Model(#[from] ModelError),
}

impl Model {
    /// Arranges `given` values (plus provenance) in input order, defaults filling the rest;
    /// returns the input vector as used and the issues found.
    pub fn prepare(
        &self,
        given: &std::collections::BTreeMap<String, (f64, Provenance)>,
    ) -> (Vec<InputValue>, Vec<InputIssue>) {
        let mut issues: Vec<InputIssue> = given
            .keys()
            .filter(|name| !self.spec.inputs.iter().any(|i| &i.name == *name))
            .map(|name| InputIssue::Unknown { name: name.clone() })
            .collect();
        let values = self
            .spec
            .inputs
            .iter()
            .map(|input| {
                let default = InputValue {
                    value: input.default,
                    unit: input.unit.clone(),
                    provenance: Provenance::Default,
                };
                let Some(&(value, provenance)) = given.get(&input.name) else {
                    return default;
                };
                if !value.is_finite() {
                    issues.push(InputIssue::NotFinite {
                        name: input.name.clone(),
                    });
                    return default;
                }
                if input.read_only {
                    if value != input.default {
                        issues.push(InputIssue::ReadOnly {
                            name: input.name.clone(),
                            value,
                            default: input.default,
                        });
                    }
                    return default;
                }
                let [low, high] = input.range;
                if !(low..=high).contains(&value) {
                    issues.push(InputIssue::OutOfRange {
                        name: input.name.clone(),
                        value,
                        low,
                        high,
                    });
                }
                InputValue {
                    value,
                    unit: input.unit.clone(),
                    provenance,
                }
            })
            .collect();
        (values, issues)
    }

    /// Evaluates prepared inputs (one set per row) into named, finite outputs.
    pub fn evaluate_named(
        &self,
        rows: Vec<(Vec<InputValue>, Vec<InputIssue>)>,
    ) -> Result<Vec<Result<Evaluation, EvaluationError>>, ModelError> {
        let vectors: Vec<Vec<f64>> = rows
            .iter()
            .map(|(inputs, _)| inputs.iter().map(|i| i.value).collect())
            .collect();
        let outputs = self.evaluate(&vectors)?;
        Ok(rows
            .into_iter()
            .zip(outputs)
            .map(|((inputs, issues), values)| {
                let mut named = std::collections::BTreeMap::new();
                for (spec, value) in self.spec.outputs.iter().zip(values) {
                    if !value.is_finite() {
                        return Err(EvaluationError::NonFinite {
                            name: spec.name.clone(),
                            value,
                        });
                    }
                    named.insert(
                        spec.name.clone(),
                        OutputValue {
                            value,
                            unit: spec.unit.clone(),
                        },
                    );
                }
                Ok(Evaluation {
                    outputs: named,
                    inputs: self
                        .spec
                        .inputs
                        .iter()
                        .map(|i| i.name.clone())
                        .zip(inputs)
                        .collect(),
                    issues,
                })
            })
            .collect())
    }

    /// A what-if request: `given` values (the rest defaults); unknown, out-of-range and
    /// read-only-violating inputs refuse the request with every reason.
    pub fn what_if(
        &self,
        given: &std::collections::BTreeMap<String, f64>,
    ) -> Result<Evaluation, EvaluationError> {
        self.what_if_from(&Base::new(), given)
    }

    /// A what-if request on top of `base` (e.g. the live machine): `given` values, then `base`'s
    /// with their provenance, then defaults. The request's own unknown, out-of-range or
    /// read-only-violating values refuse it with every reason; `base`'s are only flagged in
    /// `issues`, as the live analysis flags them, because a what-if about the machine must work
    /// while the machine is outside the model's range.
    pub fn what_if_from(
        &self,
        base: &Base,
        given: &std::collections::BTreeMap<String, f64>,
    ) -> Result<Evaluation, EvaluationError> {
        self.what_if_batch(base, std::slice::from_ref(given))?
            .pop()
            .ok_or(EvaluationError::Inputs(Vec::new()))
    }

    /// [`Model::what_if_from`] for many requests on one base, evaluated as one batch. Any
    /// refused value refuses the whole batch, with every distinct reason.
    pub fn what_if_batch(
        &self,
        base: &Base,
        rows: &[std::collections::BTreeMap<String, f64>],
    ) -> Result<Vec<Evaluation>, EvaluationError> {
        let mut refused: Vec<InputIssue> = Vec::new();
        let mut prepared = Vec::with_capacity(rows.len());
        for given in rows {
            let mut merged = base.clone();
            for (name, value) in given {
                merged.insert(name.clone(), (*value, Provenance::Request));
            }
            let (inputs, issues) = self.prepare(&merged);
            let (theirs, flagged): (Vec<_>, Vec<_>) = issues
                .into_iter()
                .partition(|issue| given.contains_key(issue.name()));
            for issue in theirs {
                if !refused.contains(&issue) {
                    refused.push(issue);
                }
            }
            prepared.push((inputs, flagged));
        }
        if !refused.is_empty() {
            return Err(EvaluationError::Inputs(refused));
        }
        self.evaluate_named(prepared)?.into_iter().collect()
    }
}

/// What a what-if starts from: input name → value and where it came from (inputs not in it take
/// their defaults).
pub type Base = std::collections::BTreeMap<String, (f64, Provenance)>;

/// At most this many rows in one sweep: a typo in a count must not fill the memory.
pub const MAX_SWEEP_ROWS: usize = 1_000_000;

/// One input stepped over evenly spaced values: `NAME=FROM:TO:COUNT`, both ends included
/// (`QUAD:IN20:525:BCTRL=-6:-2:9`). PV names hold colons, so the name ends at the last `=`.
#[derive(Debug, Clone, PartialEq)]
pub struct Sweep {
    /// The input.
    pub name: String,
    /// Its values, in order.
    pub values: Vec<f64>,
}

/// Why a sweep cannot be read.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum SweepError {
    /// Not `NAME=FROM:TO:COUNT`.
    #[error("{0:?} is not NAME=FROM:TO:COUNT (e.g. QUAD:IN20:525:BCTRL=-6:-2:9)")]
    Syntax(String),
    /// An end that is not a finite number, or a count below 1.
    #[error("{text:?}: {reason}")]
    Value {
        /// The sweep as given.
        text: String,
        /// What is wrong.
        reason: String,
    },
    /// One input swept twice.
    #[error("{0} is swept twice")]
    Twice(String),
    /// More rows than [`MAX_SWEEP_ROWS`].
    #[error("{0} rows; at most {MAX_SWEEP_ROWS} in one sweep")]
    TooLarge(usize),
}

impl std::str::FromStr for Sweep {
    type Err = SweepError;

    fn from_str(text: &str) -> Result<Self, SweepError> {
        let syntax = || SweepError::Syntax(text.to_owned());
        let (name, range) = text.rsplit_once('=').ok_or_else(syntax)?;
        let parts: Vec<&str> = range.split(':').collect();
        let [from, to, count] = parts.as_slice() else {
            return Err(syntax());
        };
        let name = name.trim();
        if name.is_empty() {
            return Err(syntax());
        }
        let value = |reason: String| SweepError::Value {
            text: text.to_owned(),
            reason,
        };
        let number = |part: &str, what: &str| -> Result<f64, SweepError> {
            part.trim()
                .parse::<f64>()
                .ok()
                .filter(|v| v.is_finite())
                .ok_or_else(|| value(format!("{what} {part:?} is not a finite number")))
        };
        let from = number(from, "FROM")?;
        let to = number(to, "TO")?;
        let count: usize = count
            .trim()
            .parse()
            .ok()
            .filter(|&c| c >= 1)
            .ok_or_else(|| {
                value(format!(
                    "COUNT {count:?} is not a whole number of at least 1"
                ))
            })?;
        if count > MAX_SWEEP_ROWS {
            return Err(SweepError::TooLarge(count));
        }
        let values = (0..count)
            .map(|i| match i {
                0 => from,
                // The end exactly as written, not as from + (to − from) rounds it.
                i if i == count - 1 => to,
                i => from + (to - from) * i as f64 / (count - 1) as f64,
            })
            .collect();
        Ok(Self {
            name: name.to_owned(),
            values,
        })
    }
}

impl Sweep {
    /// Every combination of the sweeps' values, the first sweep varying slowest; one row with
    /// no values when there are no sweeps.
    pub fn grid(
        sweeps: &[Sweep],
    ) -> Result<Vec<std::collections::BTreeMap<String, f64>>, SweepError> {
        for (i, sweep) in sweeps.iter().enumerate() {
            if sweeps[..i].iter().any(|s| s.name == sweep.name) {
                return Err(SweepError::Twice(sweep.name.clone()));
            }
        }
        let total = sweeps
            .iter()
            .try_fold(1usize, |n, s| n.checked_mul(s.values.len()))
            .unwrap_or(usize::MAX);
        if total > MAX_SWEEP_ROWS {
            return Err(SweepError::TooLarge(total));
        }
        let mut rows = vec![std::collections::BTreeMap::new()];
        for sweep in sweeps {
            rows = rows
                .into_iter()
                .flat_map(|row| {
                    sweep.values.iter().map(move |&value| {
                        let mut row = row.clone();
                        row.insert(sweep.name.clone(), value);
                        row
                    })
                })
                .collect();
        }
        Ok(rows)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shared() -> PathBuf {
        PathBuf::from(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../shared/models/lcls_cu_injector"
        ))
    }

    #[test]
    fn the_lcls_injector_model_reproduces_its_reference_outputs() {
        for model in [
            Model::load(&shared()).expect("loads"),
            Model::open(Path::new("builtin:lcls_cu_injector")).expect("built in"),
        ] {
            check_reference(&model);
        }
    }

    fn check_reference(model: &Model) {
        let text = std::fs::read_to_string(shared().join("reference.json")).expect("reference");
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

    fn spec() -> ModelSpec {
        let text = std::fs::read_to_string(shared().join("model.yaml")).expect("yaml");
        serde_saphyr::from_str(&text).expect("valid")
    }

    fn tensors() -> HashMap<String, Tensor> {
        candle_core::safetensors::load(shared().join("model.safetensors"), &Device::Cpu)
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
        let text = std::fs::read_to_string(shared().join("model.yaml"))
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

    #[test]
    fn what_if_fills_defaults_and_refuses_out_of_range_and_unknown_inputs() {
        let model = Model::load(&shared()).expect("loads");
        let defaults = model
            .what_if(&Default::default())
            .expect("the defaults evaluate");
        // physics.md §1.2: XRMS 304.6 µm, YRMS 124.3 µm at the model defaults.
        assert!((defaults.outputs["OTRS:IN20:571:XRMS"].value - 304.6).abs() < 0.1);
        assert!((defaults.outputs["OTRS:IN20:571:YRMS"].value - 124.3).abs() < 0.1);
        assert_eq!(
            defaults.inputs["QUAD:IN20:525:BCTRL"].provenance,
            Provenance::Default
        );
        let given = std::collections::BTreeMap::from([("QUAD:IN20:525:BCTRL".to_owned(), -4.0)]);
        let moved = model.what_if(&given).expect("in range");
        assert_eq!(
            moved.inputs["QUAD:IN20:525:BCTRL"].provenance,
            Provenance::Request
        );
        assert_ne!(
            moved.outputs["OTRS:IN20:571:XRMS"],
            defaults.outputs["OTRS:IN20:571:XRMS"]
        );
        let bad = std::collections::BTreeMap::from([
            ("QUAD:IN20:525:BCTRL".to_owned(), 2.5),
            ("QUAD:IN20:999:BCTRL".to_owned(), 1.0),
        ]);
        let error = model.what_if(&bad).expect_err("refused").to_string();
        assert!(
            error.contains("QUAD:IN20:525:BCTRL = 2.5 is outside the model's range"),
            "{error}"
        );
        assert!(
            error.contains("QUAD:IN20:999:BCTRL is not an input of the model"),
            "{error}"
        );
    }

    #[test]
    fn a_what_if_on_a_base_keeps_its_provenance_and_refuses_only_the_requests_values() {
        let model = Model::open(Path::new("builtin:lcls_cu_injector")).expect("built in");
        let base = Base::from([
            ("QUAD:IN20:525:BCTRL".to_owned(), (-3.0, Provenance::Live)),
            (
                "SOLN:IN20:121:BCTRL".to_owned(),
                (0.47, Provenance::Stale { age_s: 12.0 }),
            ),
            // The machine outside the range: flagged, still evaluated.
            ("QUAD:IN20:361:BCTRL".to_owned(), (-5.0, Provenance::Live)),
        ]);
        let given = std::collections::BTreeMap::from([("QUAD:IN20:371:BCTRL".to_owned(), 2.5)]);
        let evaluation = model.what_if_from(&base, &given).expect("evaluated");
        let input = |name: &str| evaluation.inputs[name].clone();
        assert_eq!(input("QUAD:IN20:525:BCTRL").value, -3.0);
        assert_eq!(input("QUAD:IN20:525:BCTRL").provenance, Provenance::Live);
        assert_eq!(
            input("SOLN:IN20:121:BCTRL").provenance,
            Provenance::Stale { age_s: 12.0 }
        );
        assert_eq!(input("QUAD:IN20:371:BCTRL").provenance, Provenance::Request);
        assert_eq!(input("QUAD:IN20:441:BCTRL").provenance, Provenance::Default);
        assert_eq!(evaluation.issues.len(), 1, "{:?}", evaluation.issues);
        assert_eq!(evaluation.issues[0].name(), "QUAD:IN20:361:BCTRL");
        // A request's value overrides the base; its own out-of-range value refuses it.
        let given = std::collections::BTreeMap::from([("QUAD:IN20:525:BCTRL".to_owned(), -4.0)]);
        let moved = model.what_if_from(&base, &given).expect("evaluated");
        assert_eq!(moved.inputs["QUAD:IN20:525:BCTRL"].value, -4.0);
        let given = std::collections::BTreeMap::from([("QUAD:IN20:361:BCTRL".to_owned(), -5.0)]);
        let error = model.what_if_from(&base, &given).expect_err("refused");
        assert!(
            error
                .to_string()
                .starts_with("QUAD:IN20:361:BCTRL = -5 is outside"),
            "{error}"
        );
    }

    #[test]
    fn a_sweep_is_read_with_colons_in_the_name_and_keeps_its_ends_exact() {
        let sweep: Sweep = "QUAD:IN20:525:BCTRL=-3.218399988942528:-1.1:3"
            .parse()
            .expect("valid");
        assert_eq!(sweep.name, "QUAD:IN20:525:BCTRL");
        assert_eq!(sweep.values, [-3.218399988942528, -2.159199994471264, -1.1]);
        let one: Sweep = "a=2:5:1".parse().expect("valid");
        assert_eq!(one.values, [2.0]);
        for (text, message) in [
            (
                "QUAD:IN20:525:BCTRL",
                "\"QUAD:IN20:525:BCTRL\" is not NAME=FROM:TO:COUNT (e.g. QUAD:IN20:525:BCTRL=-6:-2:9)",
            ),
            (
                "a=1:2",
                "\"a=1:2\" is not NAME=FROM:TO:COUNT (e.g. QUAD:IN20:525:BCTRL=-6:-2:9)",
            ),
            ("a=x:2:3", "\"a=x:2:3\": FROM \"x\" is not a finite number"),
            (
                "a=1:2:0",
                "\"a=1:2:0\": COUNT \"0\" is not a whole number of at least 1",
            ),
            (
                "a=1:2:2000000",
                "2000000 rows; at most 1000000 in one sweep",
            ),
        ] {
            let error = text.parse::<Sweep>().expect_err(text).to_string();
            assert_eq!(error, message);
        }
        let grid = Sweep::grid(&[
            "a=1:2:2".parse().expect("valid"),
            "b=0:1:3".parse().expect("valid"),
        ])
        .expect("small");
        assert_eq!(grid.len(), 6);
        assert_eq!((grid[1]["a"], grid[1]["b"]), (1.0, 0.5));
        assert_eq!((grid[3]["a"], grid[3]["b"]), (2.0, 0.0));
        let twice = Sweep::grid(&[
            "a=1:2:2".parse().expect("valid"),
            "a=0:1:3".parse().expect("valid"),
        ]);
        assert_eq!(twice, Err(SweepError::Twice("a".to_owned())));
        assert_eq!(Sweep::grid(&[]).expect("one row"), [Default::default()]);
    }

    #[test]
    fn a_sweep_through_a_reference_point_reproduces_it_in_one_batch() {
        let model = Model::open(Path::new("builtin:lcls_cu_injector")).expect("built in");
        let text = std::fs::read_to_string(shared().join("reference.json")).expect("reference");
        let reference: serde_json::Value = serde_json::from_str(&text).expect("json");
        let point = &reference["points"][3];
        let name = "QUAD:IN20:525:BCTRL";
        let at = point["inputs"][name].as_f64().expect("a value");
        let base: Base = point["inputs"]
            .as_object()
            .expect("inputs")
            .iter()
            .map(|(k, v)| {
                (
                    k.clone(),
                    (v.as_f64().expect("a number"), Provenance::Request),
                )
            })
            .collect();
        // The reference value as the sweep's far end, reached exactly.
        let sweep: Sweep = format!("{name}=-7:{at}:5").parse().expect("valid");
        let rows = Sweep::grid(&[sweep]).expect("small");
        let evaluations = model.what_if_batch(&base, &rows).expect("in range");
        assert_eq!(evaluations.len(), 5);
        let last = &evaluations[4];
        for (output, want) in point["outputs"].as_object().expect("outputs") {
            let want = want.as_f64().expect("a number");
            let got = last.outputs[output].value;
            assert!(
                ((got - want) / want).abs() < 1e-9,
                "{output}: {got} vs {want}"
            );
        }
        // One batch gives what one-by-one evaluation gives.
        let alone = model.what_if_from(&base, &rows[1]).expect("in range");
        assert_eq!(alone, evaluations[1]);
        // An out-of-range row refuses the batch, each reason once.
        let rows =
            Sweep::grid(&["QUAD:IN20:525:BCTRL=-9:-8:3".parse().expect("valid")]).expect("small");
        let EvaluationError::Inputs(issues) =
            model.what_if_batch(&base, &rows).expect_err("refused")
        else {
            panic!("refused for its inputs");
        };
        assert_eq!(issues.len(), 3, "{issues:?}");
    }

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

    #[test]
    fn stale_read_only_and_non_finite_inputs_are_flagged() {
        let model = Model::load(&shared()).expect("loads");
        let given = std::collections::BTreeMap::from([
            (
                "SOLN:IN20:121:BCTRL".to_owned(),
                (0.47, Provenance::Stale { age_s: 12.0 }),
            ),
            ("Pulse_length".to_owned(), (3.0, Provenance::Live)),
            (
                "QUAD:IN20:361:BCTRL".to_owned(),
                (f64::NAN, Provenance::Live),
            ),
        ]);
        let (inputs, issues) = model.prepare(&given);
        assert_eq!(inputs[3].provenance, Provenance::Stale { age_s: 12.0 });
        assert_eq!(
            inputs[1].provenance,
            Provenance::Default,
            "read-only: the default is used"
        );
        assert_eq!(
            inputs[10].provenance,
            Provenance::Default,
            "NaN: the default is used"
        );
        assert_eq!(issues.len(), 2, "{issues:?}");
        let evaluated = model.evaluate_named(vec![(inputs, issues)]).expect("runs");
        assert!(evaluated[0].is_ok());
    }
}
