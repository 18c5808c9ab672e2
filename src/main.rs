//! The `beamflow` command: one binary, one subcommand per component or tool.

use std::io::Write as _;
use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context;
use beamflow::pipeline::Pipeline;
use beamflow_reducer::http::View;
use beamflow_replay::ReplayConfig;
use clap::{Args, Parser, Subcommand};
use indicatif::{ProgressBar, ProgressDrawTarget};
use tracing_subscriber::EnvFilter;

// glibc's malloc spent a third of a tiny-event replay in malloc/free across threads (callgrind);
// mimalloc's thread-local free lists remove most of that.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Live analysis for accelerators and beamlines.
#[derive(Parser)]
#[command(name = "beamflow", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Replay recorded .cbors dumps through a pipeline's analyses and accumulators.
    Replay(ReplayArgs),
}

#[derive(Args)]
struct ReplayArgs {
    /// The pipeline file (TOML).
    #[arg(long, value_name = "P.toml")]
    pipeline: PathBuf,
    /// A dump (.cbors or .cbors.gz); repeat for several ingesters' dumps.
    #[arg(long = "dump", value_name = "A.cbors", required = true)]
    dumps: Vec<PathBuf>,
    /// Parameter file: JSON (or CBOR) list of {"name": ..., "data": ...}, as dranspose's.
    #[arg(long, value_name = "F")]
    params: Option<PathBuf>,
    /// Analysis threads (default: one per core).
    #[arg(long, default_value_t = 0)]
    threads: usize,
    /// Write the final state as JSON to this file ("-" for standard output).
    #[arg(long, value_name = "state.json")]
    out: Option<PathBuf>,
    /// Serve the reducer's HTTP view here during and after the replay, until Ctrl-C.
    #[arg(long, value_name = "ADDR")]
    serve: Option<SocketAddr>,
    /// Stop at the first bad record or failed analysis instead of skipping and counting it.
    #[arg(long)]
    strict: bool,
}

fn main() -> std::process::ExitCode {
    // indicatif draws nothing when standard error is not a terminal.
    let progress = ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr());
    let bar = progress.clone();
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .with_writer(move || AroundProgress(bar.clone()))
        .init();
    match run(Cli::parse(), progress) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("beamflow: {error:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// Log lines written while the progress bar is hidden, so they do not leave torn bars behind.
struct AroundProgress(ProgressBar);

impl std::io::Write for AroundProgress {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.suspend(|| std::io::stderr().write_all(buf))?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        std::io::stderr().flush()
    }
}

fn run(cli: Cli, progress: ProgressBar) -> anyhow::Result<()> {
    match cli.command {
        Command::Replay(args) => replay(args, progress),
    }
}

fn replay(args: ReplayArgs, progress: ProgressBar) -> anyhow::Result<()> {
    let pipeline = Pipeline::load(&args.pipeline)?;
    let parameters = match &args.params {
        Some(path) => {
            let bytes =
                std::fs::read(path).with_context(|| format!("{}: cannot read", path.display()))?;
            beamflow_protocol::parameters::parse_parameter_file(&bytes)
                .with_context(|| format!("{}", path.display()))?
        }
        None => Vec::new(),
    };
    let config = ReplayConfig {
        analyses: pipeline.analyses,
        accumulators: pipeline.accumulators,
        parameters,
        dumps: args.dumps,
        threads: args.threads,
        strict: args.strict,
        progress: Some(progress),
    };
    let view = View::new();
    let server = match args.serve {
        Some(addr) => Some(start_server(addr, view.clone())?),
        None => None,
    };
    let summary = beamflow_replay::run(&config, &view)?;
    // Formatted first and written once, so the line is not interleaved with log output.
    let line = format!("{summary}\n");
    std::io::stderr().write_all(line.as_bytes())?;
    if let Some(out) = &args.out {
        let json = serde_json::to_vec_pretty(&*view.state()).context("cannot encode the state")?;
        if out.as_os_str() == "-" {
            std::io::stdout().write_all(&json)?;
        } else {
            std::fs::write(out, json)
                .with_context(|| format!("{}: cannot write", out.display()))?;
        }
    }
    if let Some((runtime, handle, addr)) = server {
        eprintln!("Replay done; still serving http://{addr}/api/v1/result (Ctrl-C to stop).");
        runtime
            .block_on(handle)
            .context("HTTP server task failed")??;
    }
    Ok(())
}

type Server = (
    tokio::runtime::Runtime,
    tokio::task::JoinHandle<std::io::Result<()>>,
    SocketAddr,
);

/// Binds before the replay starts, so the view is up from its first event.
fn start_server(addr: SocketAddr, view: View) -> anyhow::Result<Server> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .context("cannot start the HTTP runtime")?;
    let listener = runtime
        .block_on(tokio::net::TcpListener::bind(addr))
        .with_context(|| format!("cannot listen on {addr}"))?;
    let bound = listener.local_addr()?;
    eprintln!("Serving the reducer's state on http://{bound}/api/v1/result");
    let handle = runtime.spawn(beamflow_reducer::http::serve(
        listener,
        view,
        shutdown_signal(),
    ));
    Ok((runtime, handle, bound))
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {},
        () = terminate => {},
    }
}
