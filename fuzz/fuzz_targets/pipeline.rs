//! The pipeline file (`beamflow::pipeline`): TOML as an operator writes it, or JSON as the Helm
//! chart renders it, parsed and checked as `beamflow` does before anything binds or connects.
//! Needs the `pipeline` feature: it builds every component crate.
#![no_main]

use beamflow::pipeline::Pipeline;
use beamflow_fuzz::Budget;
use libfuzzer_sys::fuzz_target;

/// An operator's file, read once: only a gross blow-up counts (a model a table names may load).
const BUDGET: Budget = Budget {
    per_byte: 1024,
    flat: 64 << 20,
};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    beamflow_fuzz::within(data, BUDGET, || {
        for pipeline in [Pipeline::parse(text), Pipeline::parse_json(text)]
            .into_iter()
            .flatten()
        {
            // What `GET /api/v1/parameters` shows, from the tables alone.
            let _ = pipeline.describe_parameters();
        }
    });
});
