//! How a pipeline file names a Python payload: its class, `module.path:Class` as dranspose names
//! it, checked when the file is read; and the contract the class follows. Shared by the
//! `python` analysis and the `python` accumulator.

use serde::Deserialize;

/// A payload's class, `module.path:Class` (dranspose's `WORKER_CLASS`, `-w`).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(try_from = "String")]
pub struct PayloadClass(String);

impl PayloadClass {
    /// As written.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for PayloadClass {
    type Error = String;

    fn try_from(name: String) -> Result<Self, Self::Error> {
        match name.split_once(':') {
            Some((module, class)) if !module.is_empty() && !class.is_empty() => Ok(Self(name)),
            _ => Err(format!(
                "{name:?} is not module.path:Class (e.g. \"src.worker:Worker\")"
            )),
        }
    }
}

impl std::fmt::Display for PayloadClass {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// The contract a payload's class follows.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PayloadApi {
    /// dranspose 0.2.0's: `Class(parameters=, context=, state=)` with dranspose's own objects
    /// (`EventData`, `WorkParameter`, `ResultData`), `process_event(event, parameters, tick)`,
    /// `process_result(result, parameters)`, `timer`, `finish`, `close`, `publish`.
    #[default]
    Dranspose,
    /// beamflow's leaner one: `Class(parameters=, context=)` with plain values, frames and
    /// images lent without a copy, results as values Rust accumulators read.
    Beamflow,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_class_names_its_module() {
        assert!(PayloadClass::try_from("src.worker:Worker".to_owned()).is_ok());
        for bad in ["Worker", "src.worker:", ":Worker", ""] {
            let error = PayloadClass::try_from(bad.to_owned()).unwrap_err();
            assert!(error.contains("module.path:Class"), "{error}");
        }
    }
}
