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
//!
//! # Layout
//!
//! - [`spec`]: `model.yaml`, and the built-in model's.
//! - [`model`]: loading and checking a model; evaluating rows of numbers.
//! - [`evaluation`]: evaluating by name, with provenance and input issues; what-ifs.
//! - [`sweep`]: sweeps over inputs for `beamflow model sweep`.
//! - [`http`]: the model endpoints the reducer serves (list, describe, what-if, live inputs).

pub mod evaluation;
pub mod http;
pub mod model;
pub mod spec;
pub mod sweep;

pub use evaluation::{
    Base, Evaluation, EvaluationError, InputIssue, InputValue, OutputValue, Provenance,
};
pub use model::{Model, ModelError};
pub use spec::{InputSpec, LCLS_CU_INJECTOR, Layer, ModelSpec, OutputSpec, Transformer};
pub use sweep::{MAX_SWEEP_ROWS, Sweep, SweepError};

#[cfg(test)]
mod test_data {
    use std::path::PathBuf;

    /// The model as the binary compiles it in.
    pub(crate) fn model_dir() -> PathBuf {
        PathBuf::from(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../models/lcls_cu_injector"
        ))
    }

    /// The model's outputs at five points, evaluated by its authors' PyTorch code in float64.
    pub(crate) fn reference() -> PathBuf {
        PathBuf::from(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../tests/data/lcls_cu_injector_reference.json"
        ))
    }

    pub(crate) fn spec() -> crate::ModelSpec {
        let text = std::fs::read_to_string(model_dir().join("model.yaml")).expect("yaml");
        serde_saphyr::from_str(&text).expect("valid")
    }
}
