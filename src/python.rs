//! Python payloads from any `beamflow`: the stock binary has no interpreter, so a command whose
//! pipeline runs Python payloads (`kind = "python"`) is handed over to the `beamflow` installed
//! in the payloads' environment, the same command line run by that environment's own `python`.
//!
//! Which environment: `--python` (a venv or conda folder, or its interpreter), else the
//! activated one (`VIRTUAL_ENV`, then conda's `CONDA_PREFIX`). Never a guess: without one,
//! with an interpreter older than the wheel's 3.11, or without the wheel installed there, the
//! command fails saying which and what to do.

use std::ffi::{OsStr, OsString};
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, bail};

/// Set in the environment of a command handed over, so it is never handed over twice.
const HANDED_OVER: &str = "BEAMFLOW_HANDED_OVER";
/// Set by the wheel's `beamflow` to the environment it runs in (`sys.prefix`).
pub const PREFIX: &str = "BEAMFLOW_PYTHON_PREFIX";

/// What a command needs from Python.
#[derive(Debug, Default)]
pub struct Needs<'a> {
    /// The pipeline file the command runs, if any.
    pub pipeline: Option<&'a Path>,
    /// The environment the user named with `--python`.
    pub python: Option<&'a Path>,
    /// Whether the command builds analyses or accumulators (a controller or an ingester runs
    /// no payload, so it never needs Python).
    pub runs_payloads: bool,
}

/// Hands the command over to the payloads' environment when it needs one and this process
/// runs in no environment, or in another one than the command names (`--python`, else the
/// activated one). Returns only when this process is the one to run it.
pub fn hand_over(needs: &Needs<'_>, args: &[OsString]) -> anyhow::Result<()> {
    if !needs.runs_payloads {
        return Ok(());
    }
    let handed_over = std::env::var_os(HANDED_OVER).is_some();
    let target = match needs.python {
        Some(named) => Some(interpreter(named)?),
        None => activated()?,
    };
    if beamflow_workers::analyses::python::has_runtime() {
        match target {
            Some(target) if !handed_over && !is_current(&target) => {
                probe(&target)?;
                return exec(&target, args);
            }
            _ => return Ok(()),
        }
    }
    let payload = needs.pipeline.and_then(python_payload);
    if needs.python.is_none() && payload.is_none() {
        return Ok(());
    }
    let what = payload.unwrap_or_else(|| "pipeline".to_owned());
    if handed_over {
        bail!(
            "the {what} is a Python payload, but the beamflow it was handed over to runs no Python"
        );
    }
    let target = target.with_context(|| {
        format!(
            "the pipeline's {what} is a Python payload: activate the Python environment it runs \
             in (VIRTUAL_ENV or CONDA_PREFIX) or name it with --python <env>; beamflow runs it \
             with the beamflow wheel installed there (python/README.md)"
        )
    })?;
    probe(&target)?;
    exec(&target, args)
}

/// Whether `interpreter` is of the environment this process runs in (the wheel's `sys.prefix`).
fn is_current(interpreter: &Path) -> bool {
    let Some(prefix) = std::env::var_os(PREFIX) else {
        return false;
    };
    // `<env>/bin/python`: the environment is two levels up.
    let environment = interpreter.parent().and_then(Path::parent);
    let canonical = |path: &Path| std::fs::canonicalize(path).ok();
    environment
        .and_then(canonical)
        .is_some_and(|env| Some(env) == canonical(Path::new(&prefix)))
}

/// The interpreter of an environment folder, or the interpreter named itself.
fn interpreter(named: &Path) -> anyhow::Result<PathBuf> {
    let path = if named.is_dir() {
        named.join("bin").join("python")
    } else {
        named.to_path_buf()
    };
    if !path.is_file() {
        bail!("{}: no Python interpreter there", path.display());
    }
    std::path::absolute(&path).with_context(|| format!("{}", path.display()))
}

/// The activated environment's interpreter.
fn activated() -> anyhow::Result<Option<PathBuf>> {
    for variable in ["VIRTUAL_ENV", "CONDA_PREFIX"] {
        if let Some(folder) = std::env::var_os(variable).filter(|v| !v.is_empty()) {
            return interpreter(Path::new(&folder))
                .with_context(|| format!("{variable} names {}", folder.display()))
                .map(Some);
        }
    }
    Ok(None)
}

/// The first Python payload of a pipeline file (`analysis x`, `accumulator y`), read from its
/// tables alone; the file is TOML, or JSON as the Helm chart mounts it.
fn python_payload(pipeline: &Path) -> Option<String> {
    let text = std::fs::read_to_string(pipeline).ok()?;
    let tables: serde_json::Value = if pipeline.extension().is_some_and(|e| e == "json") {
        serde_json::from_str(&text).ok()?
    } else {
        serde_json::to_value(toml::from_str::<toml::Table>(&text).ok()?).ok()?
    };
    for (section, what) in [("analyses", "analysis"), ("accumulators", "accumulator")] {
        let Some(entries) = tables.get(section).and_then(serde_json::Value::as_object) else {
            continue;
        };
        for (name, table) in entries {
            if table.get("kind").and_then(serde_json::Value::as_str) == Some("python") {
                return Some(format!("{what} {name}"));
            }
        }
    }
    None
}

/// Checks that the interpreter can run the wheel: Python 3.11 or later (its stable ABI) with
/// `beamflow` importable.
fn probe(interpreter: &Path) -> anyhow::Result<()> {
    const PROBE: &str = "import importlib.util, sys; \
        print('%d.%d' % sys.version_info[:2], importlib.util.find_spec('beamflow') is not None)";
    let output = Command::new(interpreter)
        .args(["-c", PROBE])
        .output()
        .with_context(|| format!("{}: cannot run it", interpreter.display()))?;
    let stdout = String::from_utf8_lossy(&output.stdout);
    let (version, wheel) = stdout.trim().split_once(' ').unwrap_or(("?", "False"));
    let (major, minor) = version.split_once('.').unwrap_or(("0", "0"));
    let version_number = (major.parse().unwrap_or(0), minor.parse().unwrap_or(0));
    if !output.status.success() || version_number < (3, 11) {
        bail!(
            "{}: Python {version}; beamflow's wheel needs 3.11 or later{}",
            interpreter.display(),
            if output.status.success() {
                String::new()
            } else {
                format!(" ({})", String::from_utf8_lossy(&output.stderr).trim())
            }
        );
    }
    if wheel != "True" {
        bail!(
            "{}: no beamflow wheel in this environment; install it there (pip install the \
             wheel built from python/wheel, see python/README.md)",
            interpreter.display()
        );
    }
    Ok(())
}

/// Runs the same command line in `interpreter`, without `--python`, and never returns unless
/// that failed.
fn exec(interpreter: &Path, args: &[OsString]) -> anyhow::Result<()> {
    let mut command = Command::new(interpreter);
    command
        .args(["-m", "beamflow"])
        .args(without_python(args.iter().skip(1)))
        .env(HANDED_OVER, "1");
    tracing::info!(interpreter = %interpreter.display(), "Handing over to the Python environment's beamflow.");
    #[cfg(unix)]
    {
        use std::os::unix::process::CommandExt as _;
        let error = command.exec();
        Err(error).with_context(|| format!("{}: cannot run it", interpreter.display()))
    }
    #[cfg(not(unix))]
    {
        let status = command
            .status()
            .with_context(|| format!("{}: cannot run it", interpreter.display()))?;
        std::process::exit(status.code().unwrap_or(1));
    }
}

/// The arguments without `--python X` or `--python=X`.
fn without_python<'a>(args: impl Iterator<Item = &'a OsString>) -> Vec<&'a OsStr> {
    let mut kept = Vec::new();
    let mut skip_next = false;
    for arg in args {
        if skip_next {
            skip_next = false;
            continue;
        }
        let text = arg.to_string_lossy();
        if text == "--python" {
            skip_next = true;
        } else if !text.starts_with("--python=") {
            kept.push(arg.as_os_str());
        }
    }
    kept
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_handed_over_command_line_has_no_python_option() {
        let args: Vec<OsString> = [
            "replay",
            "--python",
            "/env",
            "--pipeline",
            "p.toml",
            "--python=/e",
        ]
        .into_iter()
        .map(OsString::from)
        .collect();
        let kept: Vec<&OsStr> = without_python(args.iter());
        assert_eq!(kept, ["replay", "--pipeline", "p.toml"]);
    }

    #[test]
    fn a_pipeline_names_its_first_python_payload() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("p.toml");
        std::fs::write(&file, "[analyses.sum]\nkind = \"frame_stats\"\n[accumulators.xes]\nkind = \"python\"\nclass = \"a:B\"\n").unwrap();
        assert_eq!(python_payload(&file).as_deref(), Some("accumulator xes"));
        std::fs::write(&file, "[analyses.sum]\nkind = \"frame_stats\"\n").unwrap();
        assert_eq!(python_payload(&file), None);
        let json = dir.path().join("pipeline.json");
        std::fs::write(
            &json,
            r#"{"analyses": {"xes": {"kind": "python", "class": "a:B"}}}"#,
        )
        .unwrap();
        assert_eq!(python_payload(&json).as_deref(), Some("analysis xes"));
    }

    #[test]
    fn a_folder_without_an_interpreter_is_refused_by_name() {
        let dir = tempfile::tempdir().unwrap();
        let error = interpreter(dir.path()).unwrap_err().to_string();
        assert!(error.contains("no Python interpreter"), "{error}");
    }
}
