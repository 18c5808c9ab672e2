//! Installs the page's one npm dependency (uPlot, pinned by package-lock.json) into OUT_DIR with
//! `npm ci`, so src/lib.rs can embed its files. `BEAMFLOW_UPLOT_DIR` names an unpacked `uplot`
//! package folder instead, for builds without npm or network.

use std::env;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

/// The files src/lib.rs embeds, relative to the `uplot` package folder.
const UPLOT_FILES: [&str; 3] = ["dist/uPlot.iife.min.js", "dist/uPlot.min.css", "LICENSE"];

fn main() {
    println!("cargo::rerun-if-changed=package.json");
    println!("cargo::rerun-if-changed=package-lock.json");
    println!("cargo::rerun-if-changed=page");
    println!("cargo::rerun-if-env-changed=BEAMFLOW_UPLOT_DIR");
    if let Err(message) = run() {
        // A build script reports failure by exiting non-zero; the message is what cargo shows.
        eprintln!("error: {message}");
        std::process::exit(1);
    }
}

fn run() -> Result<(), String> {
    let out = PathBuf::from(env::var("OUT_DIR").map_err(|e| format!("OUT_DIR: {e}"))?);
    let uplot = match env::var_os("BEAMFLOW_UPLOT_DIR") {
        Some(dir) => PathBuf::from(dir),
        None => npm_ci(&out)?,
    };
    for file in UPLOT_FILES {
        let path = uplot.join(file);
        if !path.is_file() {
            return Err(format!(
                "{} is missing: not an unpacked uplot package",
                path.display()
            ));
        }
    }
    // lib.rs includes from one fixed place, whichever way uPlot came.
    println!("cargo::rustc-env=BEAMFLOW_UPLOT={}", uplot.display());
    Ok(())
}

/// Runs `npm ci` in OUT_DIR on copies of package.json and package-lock.json; returns the
/// installed package's folder. Skipped when the lockfile is unchanged since the last install.
fn npm_ci(out: &Path) -> Result<PathBuf, String> {
    let manifest = PathBuf::from(
        env::var("CARGO_MANIFEST_DIR").map_err(|e| format!("CARGO_MANIFEST_DIR: {e}"))?,
    );
    let lock = fs::read(manifest.join("package-lock.json"))
        .map_err(|e| format!("package-lock.json: {e}"))?;
    let uplot = out.join("node_modules").join("uplot");
    let stamp = out.join("installed-package-lock.json");
    if fs::read(&stamp).is_ok_and(|old| old == lock) && uplot.is_dir() {
        return Ok(uplot);
    }
    for file in ["package.json", "package-lock.json"] {
        fs::copy(manifest.join(file), out.join(file))
            .map_err(|e| format!("copying {file} to {}: {e}", out.display()))?;
    }
    let status = Command::new(npm())
        .args(["ci", "--ignore-scripts", "--no-audit", "--no-fund"])
        .current_dir(out)
        .status()
        .map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => format!(
                "the dashboard needs npm to install uPlot: install Node.js's npm (apt-get install -y npm), \
                 or set BEAMFLOW_UPLOT_DIR to an unpacked uplot@1.6.32 package ({e})"
            ),
            _ => format!("running npm ci in {}: {e}", out.display()),
        })?;
    if !status.success() {
        return Err(format!(
            "npm ci in {} failed ({status}); without network, set BEAMFLOW_UPLOT_DIR to an unpacked uplot@1.6.32 package",
            out.display()
        ));
    }
    fs::write(&stamp, &lock).map_err(|e| format!("{}: {e}", stamp.display()))?;
    Ok(uplot)
}

/// `npm` is a batch file on Windows, which `Command` finds only by its full name.
fn npm() -> &'static str {
    if cfg!(windows) { "npm.cmd" } else { "npm" }
}
