//! The `beamflow` command line: one subcommand per component or tool. The stock binary
//! (`main.rs`) and the Python wheel's `beamflow` (`python/wheel`) both run [`main`].

use std::io::{IsTerminal as _, Write as _};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use crate::components::{Components, dashboard_description, local_reach};
use crate::pipeline::Pipeline;
use anyhow::Context;
use beamflow_controller::ensemble::LIVE_RESUME_AFTER;
use beamflow_ingesters::IngesterConfig;
use beamflow_net::Stop;
use beamflow_net::curve::{DataPlane, Keys};
use beamflow_protocol::WorkerTag;
use beamflow_reducer::dashboard::{Dashboard, Description};
use beamflow_reducer::http::View;
use beamflow_reducer::nexus::ScanInfo;
use beamflow_replay::ReplayConfig;
use beamflow_sim::ioc::SimIocConfig;
use clap::{Args, Parser, Subcommand};
use indicatif::{ProgressBar, ProgressDrawTarget};
use tracing_subscriber::EnvFilter;

/// Live analysis for accelerators and beamlines.
#[derive(Parser)]
#[command(name = "beamflow", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
    /// Log lines as text (coloured only on a terminal, unless NO_COLOR is set) or as one JSON
    /// object per line for a log collector. Which lines: RUST_LOG (default info), e.g.
    /// RUST_LOG=beamflow_ingesters=debug.
    #[arg(long, global = true, value_enum, env = "BEAMFLOW_LOG_FORMAT", default_value_t = LogFormat::Text)]
    log_format: LogFormat,
    /// The pipeline's CURVE keys (a folder made by `beamflow keys`): every ZeroMQ socket between
    /// components then admits only processes holding them. Give every component the same.
    /// Without: plain ZeroMQ, for one host or a trusted network.
    #[arg(long, global = true, env = "BEAMFLOW_KEYS", value_name = "DIR")]
    keys: Option<PathBuf>,
    /// With --keys: event parts and reports `encrypted` (CURVE, like the control plane) or
    /// only `authenticated` (a password derived from the key, frames in the clear), which keeps
    /// large frames at full speed where the data network needs no secrecy. The same for every
    /// component.
    #[arg(long, global = true, env = "BEAMFLOW_DATA_PLANE", value_enum, default_value_t = DataPlaneArg::Encrypted)]
    data_plane: DataPlaneArg,
    /// The Python environment of the pipeline's Python payloads (a venv or conda folder, or its
    /// interpreter), with the beamflow wheel installed. Default: the activated one
    /// (VIRTUAL_ENV, then CONDA_PREFIX).
    #[arg(long, global = true, value_name = "ENV")]
    python: Option<PathBuf>,
}

/// What the command needs from Python: its pipeline, if it runs payloads.
fn cli_python(cli: &Cli) -> crate::python::Needs<'_> {
    let pipeline = match &cli.command {
        Command::Run(args) => args.pipeline.as_deref(),
        Command::Worker(args) => Some(args.connect.pipeline.as_path()),
        Command::Reducer(args) => Some(args.connect.pipeline.as_path()),
        Command::Replay(args) => Some(args.pipeline.as_path()),
        _ => None,
    };
    crate::python::Needs {
        runs_payloads: pipeline.is_some() || matches!(cli.command, Command::Run(_)),
        pipeline,
        python: cli.python.as_deref(),
    }
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum DataPlaneArg {
    Encrypted,
    Authenticated,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Subcommand)]
enum Command {
    /// Every component in one process. Without --pipeline: a simulated beamline, two workers,
    /// and a scan started at once.
    Run(RunArgs),
    /// The controller: the control socket components connect to, and the REST API.
    Controller(ControllerArgs),
    /// One ingester of the pipeline file.
    Ingester(IngesterArgs),
    /// One worker.
    Worker(WorkerArgs),
    /// The reducer and its HTTP view of the state.
    Reducer(ReducerArgs),
    /// Replay recorded .cbors dumps through a pipeline's analyses and accumulators.
    Replay(ReplayArgs),
    /// A simulated LCLS injector served over Channel Access: moving magnets, a settable scan
    /// quad (QUAD:IN20:525:BCTRL), an OTR2 camera and its true beam sizes.
    SimIoc(SimIocArgs),
    /// Fit a quad scan offline: read a scan (JSON) and print the emittance fit as JSON.
    Emittance(EmittanceArgs),
    /// Drive a scan of the machine while the pipeline measures it.
    #[command(subcommand)]
    Scan(ScanCommand),
    /// Surrogate models.
    #[command(subcommand)]
    Model(ModelCommand),
    /// Make the pipeline's CURVE key pair (`beamflow.key`, `beamflow.pub`) in a new folder, for
    /// --keys / BEAMFLOW_KEYS or a Kubernetes Secret.
    Keys(KeysArgs),
}

#[derive(Args)]
struct KeysArgs {
    /// The folder to write them into (created; existing keys are never overwritten).
    #[arg(long)]
    out: PathBuf,
}

#[derive(Subcommand)]
enum ModelCommand {
    /// Evaluate a model on inputs from a JSON object {name: value} (defaults fill the rest)
    /// and print the outputs as JSON. With --sweep, evaluate every swept value in one batch and
    /// print one JSON line each: the evaluation plus `sweep` {name: value}. Out-of-range or
    /// unknown inputs (given or swept) are refused with every reason.
    Eval(ModelEvalArgs),
}

#[derive(Args)]
struct ModelEvalArgs {
    /// The model directory (model.yaml and its safetensors), or builtin:lcls_cu_injector.
    #[arg(long, value_name = "DIR")]
    model: PathBuf,
    /// The inputs: a JSON object {name: value}; `-` for standard input. Without it, the
    /// model's defaults.
    #[arg(long, value_name = "FILE.json")]
    inputs: Option<PathBuf>,
    /// Step an input over COUNT evenly spaced values from FROM to TO, both included (e.g.
    /// QUAD:IN20:525:BCTRL=-6:-2:9); a swept input overrides --inputs. Repeat for a grid, the
    /// first sweep varying slowest.
    #[arg(long, value_name = "NAME=FROM:TO:COUNT")]
    sweep: Vec<beamflow_surrogate::Sweep>,
}

#[derive(Subcommand)]
enum ScanCommand {
    /// A quad scan: put each value over Channel Access, wait for the readback to settle, let
    /// the pipeline's quad_scan accumulator collect --shots accepted shots; print the fit.
    Quad(QuadArgs),
}

#[derive(Args)]
struct QuadArgs {
    /// The quad's setpoint PV.
    #[arg(long, value_name = "PV")]
    pv: String,
    /// Its readback PV; needed unless the setpoint ends in BCTRL (then BACT).
    #[arg(long, value_name = "PV")]
    readback: Option<String>,
    /// Settings FROM:TO:COUNT in kG, e.g. 0.5:4.5:9 or -6:-2:5.
    // A value may start with '-' (QE04 runs at negative kG): `--values -6:-2:5` as well as
    // `--values=-6:-2:5`.
    #[arg(long, value_name = "A:B:N", allow_hyphen_values = true)]
    values: String,
    /// Seconds to wait after the readback arrived.
    #[arg(long, default_value_t = 1.0)]
    settle: f64,
    /// Accepted shots per step.
    #[arg(long, default_value_t = 5)]
    shots: u64,
    /// The readback has arrived within this (kG).
    #[arg(long, default_value_t = 0.01)]
    tolerance: f64,
    /// Seconds a step may take before it is reported incomplete (also the longest wait for the
    /// readback when putting the quad back).
    #[arg(long, default_value_t = 60.0)]
    step_timeout: f64,
    /// The quad_scan accumulator's name.
    #[arg(long, default_value = "quad_scan")]
    result: String,
    /// The measurement's id in the accumulator (default: qs- and the start time in ms).
    #[arg(long, value_name = "ID")]
    measurement: Option<String>,
    /// The controller's REST address.
    #[arg(long, value_name = "HOST:PORT", default_value = "127.0.0.1:5000")]
    controller: SocketAddr,
    /// The reducer's HTTP address.
    #[arg(long, value_name = "HOST:PORT", default_value = "127.0.0.1:5001")]
    reducer: SocketAddr,
    /// Leave the quad at the last setting instead of putting it back (at the end or when
    /// stopped).
    #[arg(long)]
    no_restore: bool,
    /// Putting the quad back is the default now; accepted so older scripts still run.
    #[arg(long, hide = true, conflicts_with = "no_restore")]
    restore: bool,
    /// Write the JSON report here instead of to standard output.
    #[arg(long, value_name = "FILE.json")]
    out: Option<PathBuf>,
    /// Keep the fit's 50-point model curves in the JSON report.
    #[arg(long)]
    curves: bool,
}

/// The embedded default pipeline (`examples/injector.toml`): the simulated injector over CA.
const DEFAULT_PIPELINE: &str = include_str!("../examples/injector.toml");

#[derive(Args)]
struct RunArgs {
    /// The pipeline file (TOML or JSON); default: the embedded simulated beamline.
    #[arg(long, value_name = "P.toml")]
    pipeline: Option<PathBuf>,
    /// Instead of the live scan, start a scan of this many frames per stream, each event on any
    /// worker (plus the start and end events of a wrapped sequence for detector streams).
    #[arg(long, value_name = "N", conflicts_with = "no_scan")]
    events: Option<u64>,
    /// Start no scan: wait for one to be posted (POST /api/v1/sequence).
    #[arg(long)]
    no_scan: bool,
    /// Resume the live scan whenever no other runs: a few seconds after each posted sequence
    /// finishes, as a control room expects its histories to go on.
    #[arg(long, conflicts_with = "no_scan")]
    live: bool,
    /// The controller's REST address (overrides the pipeline file).
    #[arg(long, value_name = "HOST:PORT")]
    http: Option<String>,
    /// The reducer's HTTP address (overrides the pipeline file).
    #[arg(long, value_name = "HOST:PORT")]
    reducer_http: Option<String>,
    /// The control socket (overrides the pipeline file), e.g. tcp://127.0.0.1:0.
    #[arg(long, value_name = "ENDPOINT")]
    control: Option<String>,
    /// Also start the simulated injector (always, without --pipeline); `epics_ca` ingesters
    /// with no addr_list watch it.
    #[arg(long)]
    sim_ioc: bool,
    /// Where this process serves Channel Access (the simulated injector; result PVs that name
    /// the same address share it): host or host:port.
    #[arg(long, value_name = "HOST[:PORT]", default_value = "127.0.0.1")]
    ca_server: String,
    /// Serve /healthz and /readyz here for probes (e.g. 0.0.0.0:8080).
    #[arg(long, value_name = "HOST:PORT", env = "BEAMFLOW_HEALTH")]
    health: Option<String>,
    /// HTTP writes need no token, as `[security] open_writes`: for dranspose's clients on a
    /// trusted network only.
    #[arg(long)]
    open_writes: bool,
}

#[derive(Args)]
struct EmittanceArgs {
    /// The scan: {energy_ev, quad_length_m, rmat_x, rmat_y, bctrl_kg, sizes_x_m, sizes_y_m,
    /// errors_x_m?, errors_y_m?, design_twiss?: {beta_x, alpha_x, beta_y, alpha_y}}.
    #[arg(long, value_name = "FILE.json")]
    scan: PathBuf,
}

#[derive(Args)]
struct SimIocArgs {
    /// Where to serve Channel Access: host or host:port (port default: EPICS_CAS_SERVER_PORT,
    /// EPICS_CA_SERVER_PORT or 5064). Loopback by default: simulated PVs with the machine's
    /// names must not answer searches on a control-room network.
    #[arg(long, value_name = "HOST[:PORT]", default_value = "127.0.0.1")]
    address: String,
    /// OTR2 images per second.
    #[arg(long, default_value_t = 10.0)]
    image_rate: f64,
    /// Updates of the moving injector inputs per second.
    #[arg(long, default_value_t = 2.0)]
    input_rate: f64,
    /// Serve /healthz and /readyz here for probes (e.g. 0.0.0.0:8080).
    #[arg(long, value_name = "HOST:PORT", env = "BEAMFLOW_HEALTH")]
    health: Option<String>,
}

#[derive(Args)]
struct ControllerArgs {
    /// The pipeline file (TOML).
    #[arg(long, value_name = "P.toml", env = "BEAMFLOW_PIPELINE")]
    pipeline: PathBuf,
    /// The control socket to bind (overrides the pipeline file), e.g. tcp://0.0.0.0:5555.
    #[arg(long, value_name = "ENDPOINT")]
    control: Option<String>,
    /// The REST address (overrides the pipeline file).
    #[arg(long, value_name = "HOST:PORT")]
    http: Option<String>,
    /// Serve /healthz and /readyz here for probes (e.g. 0.0.0.0:8080).
    #[arg(long, value_name = "HOST:PORT", env = "BEAMFLOW_HEALTH")]
    health: Option<String>,
    /// Scale this worker Deployment of the release between --min-workers and --max-workers
    /// from the event backlog and worker load (in a cluster; needs the `kubernetes` feature).
    #[arg(long, value_name = "DEPLOYMENT")]
    scale_workers: Option<String>,
    /// Fewest workers when scaling.
    #[arg(long, default_value_t = 1)]
    min_workers: u32,
    /// Most workers when scaling.
    #[arg(long, default_value_t = 8)]
    max_workers: u32,
    /// The Helm release, whose pods the controller reads.
    #[arg(long, env = "BEAMFLOW_RELEASE", default_value = "beamflow")]
    release: String,
    /// HTTP writes need no token, as `[security] open_writes`: for dranspose's clients on a
    /// trusted network only.
    #[arg(long)]
    open_writes: bool,
}

#[derive(Args)]
struct Connect {
    /// The pipeline file (TOML).
    #[arg(long, value_name = "P.toml", env = "BEAMFLOW_PIPELINE")]
    pipeline: PathBuf,
    /// The controller's control endpoint (default: the pipeline file's).
    #[arg(long, value_name = "ENDPOINT", env = "BEAMFLOW_CONTROLLER")]
    controller: Option<String>,
    /// Serve /healthz and /readyz here for probes (e.g. 0.0.0.0:8080).
    #[arg(long, value_name = "HOST:PORT", env = "BEAMFLOW_HEALTH")]
    health: Option<String>,
}

#[derive(Args)]
struct IngesterArgs {
    #[command(flatten)]
    connect: Connect,
    /// Which [ingesters.<name>] of the pipeline file to run.
    #[arg(long, env = "BEAMFLOW_NAME")]
    name: String,
}

#[derive(Args)]
struct WorkerArgs {
    #[command(flatten)]
    connect: Connect,
    /// The worker's name (unique among workers).
    #[arg(long, env = "BEAMFLOW_NAME")]
    name: String,
    /// Its tags, comma-separated (default: the pipeline file's, normally "generic").
    #[arg(long, value_delimiter = ',', env = "BEAMFLOW_TAGS")]
    tags: Vec<String>,
    /// The address other hosts reach it at (default: the pipeline file's [workers] host; in a
    /// cluster, the pod's IP).
    #[arg(long, value_name = "HOST", env = "BEAMFLOW_HOST")]
    host: Option<String>,
}

#[derive(Args)]
struct ReducerArgs {
    #[command(flatten)]
    connect: Connect,
    /// The HTTP address of the state (overrides the pipeline file).
    #[arg(long, value_name = "HOST:PORT")]
    http: Option<String>,
    /// The address workers reach it at (default: the pipeline file's [reducer] host; in a
    /// cluster, the pod's IP).
    #[arg(long, value_name = "HOST", env = "BEAMFLOW_HOST")]
    host: Option<String>,
    /// HTTP writes (model evaluations) need no token, as `[security] open_writes`.
    #[arg(long)]
    open_writes: bool,
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
    /// Write the final state as a NeXus HDF5 file here (the accumulators `[reducer.hdf5]`
    /// names, else all), as the live reducer writes at a scan's end.
    #[arg(long, value_name = "state.h5")]
    hdf5: Option<PathBuf>,
    /// Serve the reducer's HTTP view here during and after the replay, until Ctrl-C.
    #[arg(long, value_name = "ADDR")]
    serve: Option<SocketAddr>,
    /// Stop at the first bad record or failed analysis instead of skipping and counting it.
    #[arg(long)]
    strict: bool,
}

/// Runs the command line `args` (the program's name first); its exit status.
pub fn main(args: Vec<std::ffi::OsString>) -> u8 {
    beamflow_net::reuse_large_buffers();
    single_threaded_candle();
    let cli = Cli::parse_from(args.iter());
    if let Err(error) = crate::python::hand_over(&cli_python(&cli), &args) {
        eprintln!("beamflow: {error:#}");
        return 1;
    }
    // Only replay draws a bar (indicatif draws nothing when standard error is not a terminal);
    // a hidden one elsewhere, or each log line would redraw an empty bar after it.
    let progress = match cli.command {
        Command::Replay(_) => ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr()),
        _ => ProgressBar::hidden(),
    };
    init_logging(cli.log_format, &progress);
    match run(cli, progress) {
        Ok(()) => 0,
        Err(error) => {
            eprintln!("beamflow: {error:#}");
            // 2, as for clap's usage errors: the command line named a file that is not a dump.
            let not_a_dump = error
                .downcast_ref::<beamflow_replay::merge::InputError>()
                .is_some_and(beamflow_replay::merge::InputError::is_not_a_dump);
            if not_a_dump { 2 } else { 1 }
        }
    }
}

/// Builds beamflow's own rayon pool (all cores, or `RAYON_NUM_THREADS`), then, unless the user
/// chose, sets `RAYON_NUM_THREADS=1` for candle: its CPU matmul reads that variable at every
/// call and spreads even a batch of one over every core (~410 µs against ~58 µs on one core for
/// the LCLS injector surrogate). Surrogates gain their parallelism from workers side by side.
fn single_threaded_candle() {
    if let Err(error) = rayon::ThreadPoolBuilder::new().build_global() {
        eprintln!("beamflow: rayon pool: {error}");
    }
    if std::env::var_os("RAYON_NUM_THREADS").is_none() {
        // SAFETY: called first thing in main, before this process starts any other thread, so
        // nothing reads the environment concurrently.
        #[allow(unsafe_code)]
        unsafe {
            std::env::set_var("RAYON_NUM_THREADS", "1");
        }
    }
}

/// Text lines for people (colour only on a terminal and without NO_COLOR, so files and pod logs
/// carry no escape codes) or JSON lines for collectors; each line names its component's span.
fn init_logging(format: LogFormat, progress: &ProgressBar) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let bar = progress.clone();
    let writer = move || AroundProgress(bar.clone());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(writer);
    match format {
        LogFormat::Text => {
            let colour = std::io::stderr().is_terminal()
                && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty());
            builder.with_ansi(colour).init();
        }
        LogFormat::Json => builder.json().with_ansi(false).init(),
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
    if let Some(folder) = &cli.keys {
        let keys = Keys::read(folder)
            .with_context(|| format!("cannot use the keys in {}", folder.display()))?;
        let data = match cli.data_plane {
            DataPlaneArg::Encrypted => DataPlane::Encrypted,
            DataPlaneArg::Authenticated => DataPlane::Authenticated,
        };
        beamflow_net::curve::use_keys(keys, data)?;
    }
    match cli.command {
        Command::Run(args) => run_all(args),
        Command::Controller(args) => controller(args),
        Command::Ingester(args) => ingester(args),
        Command::Worker(args) => worker(args),
        Command::Reducer(args) => reducer(args),
        Command::Replay(args) => replay(args, progress),
        Command::SimIoc(args) => sim_ioc(args),
        Command::Emittance(args) => emittance(args),
        Command::Scan(ScanCommand::Quad(args)) => scan_quad(args),
        Command::Model(ModelCommand::Eval(args)) => model_eval(args),
        Command::Keys(args) => make_keys(&args.out),
    }
}

fn make_keys(folder: &Path) -> anyhow::Result<()> {
    let keys = Keys::generate()?;
    keys.write(folder)?;
    println!("{}", keys.public_z85());
    eprintln!(
        "Wrote {}/{{beamflow.key,beamflow.pub}}. Give every component --keys {} (or BEAMFLOW_KEYS), or in Kubernetes: kubectl create secret generic beamflow-keys --from-file={}",
        folder.display(),
        folder.display(),
        folder.display()
    );
    Ok(())
}

fn run_all(args: RunArgs) -> anyhow::Result<()> {
    let mut pipeline = match &args.pipeline {
        Some(path) => Pipeline::load(path)?,
        None => Pipeline::parse(DEFAULT_PIPELINE).context("the embedded pipeline")?,
    };
    if let Some(http) = args.http {
        pipeline.controller.http = http;
    }
    if let Some(control) = args.control {
        pipeline.controller.control = control;
    }
    if let Some(http) = args.reducer_http {
        pipeline.reducer.http = http;
    }
    let (access, token) = pipeline.security.access(args.open_writes)?;
    let mut components = Components::new()?.with_access(access);
    let mut sim_line = None;
    if args.sim_ioc || args.pipeline.is_none() {
        let served = components.start_sim_ioc(&args.ca_server, SimIocConfig::default())?;
        let reach = local_reach(served).to_string();
        for ingester in pipeline.ingesters.values_mut() {
            if let IngesterConfig::EpicsCa(config) = ingester {
                config.addr_list.get_or_insert_with(|| reach.clone());
            }
        }
        sim_line = Some(format!(
            "Simulated LCLS injector on Channel Access {served}: EPICS_CA_ADDR_LIST={reach} EPICS_CA_AUTO_ADDR_LIST=NO caget OTRS:IN20:571:XRMS"
        ));
    }
    let (_, rest, state) = components.start_all(&pipeline)?;
    eprintln!("{}", dashboard_line(state, components.token()));
    for line in [sim_line.as_deref(), components.result_pvs()]
        .into_iter()
        .flatten()
    {
        eprintln!("{line}");
    }
    eprintln!(
        "As HDF5: h5pyd.File(\"/\", \"r\", endpoint=\"http://{state}/\", swmr=True) or silx view http://{state}/{}",
        pipeline
            .reducer
            .hdf5
            .as_ref()
            .map_or_else(String::new, |hdf5| format!(
                "; each scan's NeXus file in {}",
                hdf5.folder.display()
            ))
    );
    eprintln!(
        "beamflow is running. Results: http://{state}/api/v1/result  Progress: http://{rest}/api/v1/progress  (Ctrl-C to stop)"
    );
    match &token {
        Some(source) => eprintln!(
            "HTTP writes need the token in {source}: curl -H \"Authorization: Bearer {}\" -d VALUE http://{rest}/api/v1/parameter/NAME",
            source.path().map_or_else(
                || format!("${}", beamflow_net::token::TOKEN_ENV),
                |path| format!("$(cat {})", path.display())
            )
        ),
        None => {
            eprintln!("HTTP writes are open to anyone who reaches http://{rest} (--open-writes).")
        }
    }
    if args.no_scan {
        eprintln!("No scan started (--no-scan): post one to http://{rest}/api/v1/sequence.");
    } else if let Some(events) = args.events {
        let uuid = components.start_scan_when_connected(&pipeline, events)?;
        eprintln!("Scan {uuid} of {events} events started.");
    } else {
        let uuid = components.start_live_scan_when_connected(&pipeline)?;
        eprintln!(
            "Live scan {uuid} started: every event as it comes, until a sequence is posted to http://{rest}/api/v1/sequence (--events N for a finite scan, --no-scan for none)."
        );
    }
    if args.live {
        components.resume_live_scan(&pipeline)?;
        eprintln!(
            "The live scan resumes {} s after each posted sequence finishes (--live).",
            LIVE_RESUME_AFTER.as_secs()
        );
    }
    if std::io::stderr().is_terminal() {
        components.print_status_lines()?;
    }
    serve_until_signal(components, args.health.as_deref())
}

/// The dashboard's address, first of what `beamflow run` prints. On a terminal it carries the
/// token in its fragment (which the browser never sends), as Jupyter's does, so the page can
/// evaluate what-ifs; in a log it does not.
fn dashboard_line(
    reducer: std::net::SocketAddr,
    token: Option<&beamflow_net::token::Token>,
) -> String {
    match token {
        Some(token) if std::io::stderr().is_terminal() => {
            format!("Dashboard: http://{reducer}/#token={}", token.as_str())
        }
        _ => format!("Dashboard: http://{reducer}/"),
    }
}

fn model_eval(args: ModelEvalArgs) -> anyhow::Result<()> {
    use beamflow_surrogate::{Base, Sweep};
    let model = beamflow_surrogate::Model::open(&args.model)?;
    let given: std::collections::BTreeMap<String, f64> = match &args.inputs {
        None => Default::default(),
        Some(path) => {
            let text = if path.as_os_str() == "-" {
                std::io::read_to_string(std::io::stdin())?
            } else {
                std::fs::read_to_string(path)
                    .with_context(|| format!("{}: cannot read", path.display()))?
            };
            serde_json::from_str(&text)
                .with_context(|| format!("{}: an object {{name: number}}", path.display()))?
        }
    };
    if args.sweep.is_empty() {
        let evaluation = model.what_if(&given)?;
        let mut out = serde_json::to_vec_pretty(&evaluation)?;
        out.push(b'\n');
        std::io::stdout().write_all(&out)?;
        return Ok(());
    }
    let swept = Sweep::grid(&args.sweep)?;
    // The file's inputs go into every row rather than into the base, so that they are refused
    // when out of range, as without --sweep.
    let rows: Vec<_> = swept
        .iter()
        .map(|sweep| {
            let mut row = given.clone();
            row.extend(sweep.iter().map(|(name, value)| (name.clone(), *value)));
            row
        })
        .collect();
    let evaluations = model.what_if_batch(&Base::new(), &rows)?;
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    for (sweep, evaluation) in swept.iter().zip(evaluations) {
        let mut line = serde_json::json!(evaluation);
        if let Some(object) = line.as_object_mut() {
            object.insert("sweep".to_owned(), serde_json::json!(sweep));
        }
        serde_json::to_writer(&mut out, &line)?;
        out.write_all(b"\n")?;
    }
    out.flush()?;
    Ok(())
}

fn scan_quad(args: QuadArgs) -> anyhow::Result<()> {
    use beamflow_controller::quad_scan::{
        Endpoints, QuadScanRequest, ScanStop, fit_summary, parse_values, run,
    };
    let request = QuadScanRequest {
        pv: args.pv,
        readback: args.readback,
        values: parse_values(&args.values)?,
        settle_s: args.settle,
        shots: args.shots,
        tolerance_kg: args.tolerance,
        result: args.result,
        step_timeout_s: args.step_timeout,
        restore: !args.no_restore,
        measurement: args.measurement,
    };
    let endpoints = Endpoints {
        controller: args.controller,
        reducer: args.reducer,
        ca: beamflow_ca::client::ClientConfig::from_env(),
        // The token of this user and host (or BEAMFLOW_TOKEN[_FILE]), as the servers find it.
        token: Some(
            beamflow_net::token::resolve(None)
                .context("the HTTP token for the controller")?
                .0,
        ),
    };
    let stop = ScanStop::new();
    let signal = stop_scan_on_signals(stop.clone());
    eprintln!(
        "Quad scan of {} over {} settings; the fit is live at http://{}/api/v1/result/{}/live/fit ({}).",
        request.pv,
        request.values.len(),
        endpoints.reducer,
        request.result,
        if request.restore {
            "Ctrl-C stops it and puts the quad back"
        } else {
            "Ctrl-C stops it"
        }
    );
    let progress = Default::default();
    let outcome = run(&request, &endpoints, &progress, &stop, &|line| {
        eprintln!("{line}");
    })?;
    let mut report = serde_json::to_value(&outcome)?;
    if !args.curves {
        for plane in ["x", "y"] {
            if let Some(plane) = report["fit"][plane].as_object_mut() {
                plane.remove("curve");
            }
        }
    }
    let mut out = serde_json::to_vec_pretty(&report)?;
    out.push(b'\n');
    match &args.out {
        Some(path) => std::fs::write(path, &out)
            .with_context(|| format!("{}: cannot write the report", path.display()))?,
        None => std::io::stdout().write_all(&out)?,
    }
    let complete = outcome.steps.iter().filter(|s| s.complete).count();
    let restored = outcome.restored.as_ref().map_or_else(
        || format!("{} left at its last setting", outcome.pv),
        |r| {
            format!(
                "{} back at {} kG (readback {} kG)",
                outcome.pv, r.setpoint, r.readback
            )
        },
    );
    eprintln!(
        "Measurement {} {}: {complete} of {} steps complete; {restored}.\n{}",
        outcome.measurement,
        outcome.state,
        request.values.len(),
        fit_summary(&outcome.fit)
    );
    if outcome.state == "stopped" {
        let by = signal.get().copied().unwrap_or("a signal");
        anyhow::bail!(
            "the scan was stopped by {by} after {} of {} steps; the fit above is partial",
            outcome.steps.iter().filter(|s| s.problem.is_none()).count(),
            request.values.len()
        );
    }
    Ok(())
}

/// Ctrl-C or SIGTERM stops the scan, which then closes its measurement, puts the quad back and
/// reports; a second one exits at once, after one put of the quad's old setting (not waiting
/// for the readback). Returns the first signal's name once one came.
fn stop_scan_on_signals(
    stop: beamflow_controller::quad_scan::ScanStop,
) -> std::sync::Arc<std::sync::OnceLock<&'static str>> {
    let seen = std::sync::Arc::new(std::sync::OnceLock::new());
    let first = seen.clone();
    let (ready_tx, ready) = std::sync::mpsc::channel();
    let watcher = std::thread::Builder::new()
        .name("signals".to_owned())
        .spawn(move || {
            let Ok(runtime) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            else {
                return;
            };
            let forced = runtime.block_on(async {
                // Registered before the scan starts: from here on a signal stops it, never the
                // process.
                let mut signals = ScanSignals::new().ok()?;
                let _ = ready_tx.send(());
                let name = signals.next().await;
                let _ = first.set(name);
                eprintln!(
                    "{name}: stopping the scan and putting the quad back ({name} again to exit at once)."
                );
                stop.stop();
                Some(signals.next().await)
            });
            if let Some(name) = forced {
                eprintln!("{name} again: exiting now.");
                for line in stop.rescue() {
                    eprintln!("{line}");
                }
                // The scan's thread may be blocked in a CA or HTTP wait; only exiting ends it.
                #[allow(clippy::exit)]
                std::process::exit(130);
            }
        });
    // Without the watcher (or its signals) a signal ends the process as it always would.
    if watcher.is_err()
        || ready
            .recv_timeout(std::time::Duration::from_secs(5))
            .is_err()
    {
        tracing::warn!(
            "Cannot watch for Ctrl-C: a signal ends the scan without restoring the quad."
        );
    }
    seen
}

/// SIGINT and SIGTERM, as one stream of names.
#[cfg(unix)]
struct ScanSignals(tokio::signal::unix::Signal, tokio::signal::unix::Signal);

#[cfg(unix)]
impl ScanSignals {
    /// Registers both; call inside a runtime.
    fn new() -> std::io::Result<Self> {
        use tokio::signal::unix::{SignalKind, signal};
        Ok(Self(
            signal(SignalKind::interrupt())?,
            signal(SignalKind::terminate())?,
        ))
    }

    async fn next(&mut self) -> &'static str {
        tokio::select! {
            _ = self.0.recv() => "SIGINT",
            _ = self.1.recv() => "SIGTERM",
        }
    }
}

/// Ctrl-C, where there are no Unix signals.
#[cfg(not(unix))]
struct ScanSignals;

#[cfg(not(unix))]
impl ScanSignals {
    fn new() -> std::io::Result<Self> {
        Ok(Self)
    }

    async fn next(&mut self) -> &'static str {
        let _ = tokio::signal::ctrl_c().await;
        "Ctrl-C"
    }
}

fn emittance(args: EmittanceArgs) -> anyhow::Result<()> {
    let text = std::fs::read(&args.scan)
        .with_context(|| format!("{}: cannot read", args.scan.display()))?;
    let scan: beamflow_optics::scan_file::ScanFile =
        serde_json::from_slice(&text).with_context(|| format!("{}", args.scan.display()))?;
    let report = scan
        .report()
        .with_context(|| format!("{}", args.scan.display()))?;
    // The table for a person, the JSON for a program.
    eprint!("{}", report.summary());
    let mut out = serde_json::to_vec_pretty(&report)?;
    out.push(b'\n');
    std::io::stdout().write_all(&out)?;
    Ok(())
}

fn sim_ioc(args: SimIocArgs) -> anyhow::Result<()> {
    let mut components = Components::new()?;
    let config = SimIocConfig {
        image_rate_hz: args.image_rate,
        input_rate_hz: args.input_rate,
        ..SimIocConfig::default()
    };
    let served = components.start_sim_ioc(&args.address, config)?;
    eprintln!(
        "beamflow sim-ioc: the simulated LCLS injector on Channel Access {served}. Try: EPICS_CA_ADDR_LIST={} EPICS_CA_AUTO_ADDR_LIST=NO camonitor OTRS:IN20:571:XRMS",
        local_reach(served)
    );
    serve_until_signal(components, args.health.as_deref())
}

fn controller(args: ControllerArgs) -> anyhow::Result<()> {
    let mut pipeline = Pipeline::load(&args.pipeline)?;
    pipeline.state = Some(state_folder(&pipeline, &args.pipeline));
    if let Some(control) = args.control {
        pipeline.controller.control = control;
    }
    if let Some(http) = args.http {
        pipeline.controller.http = http;
    }
    let (access, _) = pipeline.security.access(args.open_writes)?;
    let mut components = Components::new()?.with_access(access);
    let (control, rest) = components.start_controller(&pipeline)?;
    if let Some(deployment) = args.scale_workers {
        start_autoscaler(
            &mut components,
            &pipeline,
            deployment,
            args.release,
            args.min_workers,
            args.max_workers,
        )?;
    }
    eprintln!("beamflow controller: control {control}  REST http://{rest}/api/v1/progress");
    serve_until_signal(components, args.health.as_deref())
}

#[cfg(feature = "kubernetes")]
fn start_autoscaler(
    components: &mut Components,
    pipeline: &Pipeline,
    deployment: String,
    release: String,
    min: u32,
    max: u32,
) -> anyhow::Result<()> {
    let policy = beamflow_controller::scaling::ScalePolicy::between(min, max);
    components.start_autoscaler(pipeline, deployment, release, policy)
}

#[cfg(not(feature = "kubernetes"))]
fn start_autoscaler(
    _: &mut Components,
    _: &Pipeline,
    _: String,
    _: String,
    _: u32,
    _: u32,
) -> anyhow::Result<()> {
    anyhow::bail!(
        "--scale-workers needs a beamflow built with the kubernetes feature (cargo build --features kubernetes; the container image has it)"
    )
}

fn ingester(args: IngesterArgs) -> anyhow::Result<()> {
    let (pipeline, controller) = args.connect.load()?;
    let mut components = Components::new()?;
    components.start_ingester(&pipeline, &args.name, &controller)?;
    eprintln!("beamflow ingester {}: connected to {controller}", args.name);
    serve_until_signal(components, args.connect.health.as_deref())
}

fn worker(args: WorkerArgs) -> anyhow::Result<()> {
    let (mut pipeline, controller) = args.connect.load()?;
    if let Some(host) = args.host {
        pipeline.workers.host = host;
    }
    let tags: Vec<WorkerTag> = if args.tags.is_empty() {
        pipeline.workers.tags.clone()
    } else {
        args.tags
            .iter()
            .map(|t| WorkerTag::from(t.as_str()))
            .collect()
    };
    let mut components = Components::new()?;
    components.start_worker(&pipeline, &args.name, &tags, &controller)?;
    eprintln!("beamflow worker {}: connected to {controller}", args.name);
    serve_until_signal(components, args.connect.health.as_deref())
}

fn reducer(args: ReducerArgs) -> anyhow::Result<()> {
    let (mut pipeline, controller) = args.connect.load()?;
    pipeline.state = Some(state_folder(&pipeline, &args.connect.pipeline));
    if let Some(host) = args.host {
        pipeline.reducer.host = host;
    }
    let http = args.http.unwrap_or_else(|| pipeline.reducer.http.clone());
    let (access, _) = pipeline.security.access(args.open_writes)?;
    let mut components = Components::new()?.with_access(access);
    let state = components.start_reducer(&pipeline, &controller, &http)?;
    eprintln!(
        "beamflow reducer: dashboard on http://{state}/, state on http://{state}/api/v1/result, connected to {controller}"
    );
    if let Some(line) = components.result_pvs() {
        eprintln!("{line}");
    }
    serve_until_signal(components, args.connect.health.as_deref())
}

/// The pipeline's state folder: its `state` key, or one of the system's temporary folder named
/// after the pipeline file, so a controller or reducer restarted on the same host finds what its
/// predecessor kept (`beamflow run` keeps none: its components cannot restart alone).
fn state_folder(pipeline: &Pipeline, file: &Path) -> PathBuf {
    if let Some(folder) = &pipeline.state {
        return folder.clone();
    }
    let file = std::fs::canonicalize(file).unwrap_or_else(|_| file.to_owned());
    let mut hasher = std::hash::DefaultHasher::new();
    std::hash::Hash::hash(&file, &mut hasher);
    let stem = file
        .file_stem()
        .map_or_else(|| "pipeline".into(), |s| s.to_string_lossy());
    let folder = std::env::temp_dir().join("beamflow-state").join(format!(
        "{stem}-{:016x}",
        std::hash::Hasher::finish(&hasher)
    ));
    tracing::info!(folder = %folder.display(), "State folder (set the pipeline's `state` key to choose one).");
    folder
}

impl Connect {
    fn load(&self) -> anyhow::Result<(Pipeline, String)> {
        let pipeline = Pipeline::load(&self.pipeline)?;
        let controller = self
            .controller
            .clone()
            .unwrap_or_else(|| pipeline.controller.control.clone());
        Ok((pipeline, controller))
    }
}

fn serve_until_signal(mut components: Components, health: Option<&str>) -> anyhow::Result<()> {
    if let Some(address) = health {
        let bound = components.serve_health(address)?;
        eprintln!("Health: http://{bound}/healthz and /readyz");
    }
    let stop = stop_on_signal();
    let outcome = components.wait(&stop);
    components.shutdown();
    outcome
}

/// A flag raised by Ctrl-C or SIGTERM.
fn stop_on_signal() -> Stop {
    let stop = Stop::new();
    let raised = stop.clone();
    let watcher = std::thread::Builder::new()
        .name("signals".to_owned())
        .spawn(move || {
            if let Ok(runtime) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                runtime.block_on(shutdown_signal());
            }
            raised.stop();
        });
    if let Err(error) = watcher {
        tracing::warn!(%error, "Cannot watch for Ctrl-C; stop with SIGKILL.");
    }
    stop
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
    let pipeline_panels = pipeline.clone();
    let written_accumulators = pipeline
        .reducer
        .hdf5
        .as_ref()
        .map(|hdf5| hdf5.accumulators.clone())
        .unwrap_or_default();
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
        Some(addr) => {
            let description = dashboard_description(&pipeline_panels, Vec::new(), None);
            Some(start_server(addr, view.clone(), description)?)
        }
        None => None,
    };
    let started = jiff::Timestamp::now();
    let summary = beamflow_replay::run(&config, &view)?;
    view.publish_scan(ScanInfo {
        started: Some(started),
        ended: Some(jiff::Timestamp::now()),
        parameters: config
            .parameters
            .iter()
            .map(|(name, value)| {
                (
                    name.to_string(),
                    String::from_utf8_lossy(value).into_owned(),
                )
            })
            .collect(),
        source: "replay".to_owned(),
        ..ScanInfo::default()
    });
    if let Some(path) = &args.hdf5 {
        let scan = view.scan().unwrap_or_default();
        let size =
            beamflow_reducer::hdf5_output::write_state(&view, &written_accumulators, &scan, path)?;
        tracing::info!(file = %path.display(), size, "HDF5 file written.");
    }
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

/// Binds before the replay starts, so the view (and the dashboard) is up from its first event.
fn start_server(addr: SocketAddr, view: View, description: Description) -> anyhow::Result<Server> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .context("cannot start the HTTP runtime")?;
    let listener = runtime
        .block_on(tokio::net::TcpListener::bind(addr))
        .with_context(|| format!("cannot listen on {addr}"))?;
    let bound = listener.local_addr()?;
    eprintln!("Dashboard: http://{bound}/");
    eprintln!("Serving the reducer's state on http://{bound}/api/v1/result");
    let dashboard = Dashboard::new(view.clone(), description);
    let app = beamflow_reducer::http::app(view).merge(dashboard.router());
    let stop = beamflow_net::Stop::new();
    for publish in [
        Dashboard::publish_until,
        |d: &Dashboard, stop: &beamflow_net::Stop| d.publish_health_until(None, None, stop),
    ] {
        let (dashboard, stop) = (dashboard.clone(), stop.clone());
        std::thread::Builder::new()
            .name("dashboard".to_owned())
            .spawn(move || publish(&dashboard, &stop))
            .context("cannot start the dashboard")?;
    }
    let hub = dashboard.hub().clone();
    let handle = runtime.spawn(async move {
        axum::serve(listener, app)
            .with_graceful_shutdown(async move {
                shutdown_signal().await;
                stop.stop();
                // The pages' streams never end by themselves; the graceful shutdown waits on them.
                hub.close();
            })
            .await
    });
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
