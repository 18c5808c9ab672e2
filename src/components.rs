//! Starting components from a pipeline file: each on its own thread, so `beamflow run` holds
//! them all in one process and `beamflow controller|ingester|worker|reducer` hold one each,
//! with the same code. HTTP servers share one small tokio runtime.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use anyhow::Context as _;
use beamflow_ca::client::{ClientConfig, parse_addr_list};
use beamflow_ca::server::{PvStore, resolve_address};
use beamflow_controller::ensemble::{Ensemble, Pacing};
use beamflow_controller::http::{Shared, lock};
use beamflow_controller::mapping::{GENERIC_TAG, Part, Sequence, Slot, VirtualWorker};
use beamflow_controller::node::ControlSocket;
use beamflow_controller::quad_scan::{Endpoints, ScanService};
use beamflow_ingesters::IngesterConfig;
use beamflow_ingesters::node::IngesterSettings;
use beamflow_net::http::{Access, guard};
use beamflow_net::{Reachable, Stop};
use beamflow_protocol::{IngesterName, StreamName, WorkerName, WorkerTag};
use beamflow_reducer::dashboard::{Dashboard, Description, Panel, PanelEntry};
use beamflow_reducer::hdf5_output::Hdf5Output;
use beamflow_reducer::http::View;
use beamflow_reducer::node::ReducerSettings;
use beamflow_reducer::result_pvs::ResultPvs;
use beamflow_surrogate::Model;
use beamflow_surrogate::http::ModelService;
use beamflow_workers::AnalysisConfig;
use beamflow_workers::node::WorkerSettings;

use crate::pipeline::Pipeline;
use beamflow_sim::ioc::{SimIoc, SimIocConfig};

/// Events in one live scan (`beamflow run` without `--events`): a day of OTR2 images at
/// 10 Hz; with `--live` the next one starts when it ends.
pub const LIVE_SCAN_EVENTS: u64 = 1_000_000;

/// How often `beamflow run` prints its one-line status on a terminal.
const STATUS_LINE_EVERY: Duration = Duration::from_secs(10);

struct Running {
    name: String,
    stop: Stop,
    thread: JoinHandle<anyhow::Result<()>>,
}

/// Which components of this process run, for the health endpoints.
type Alive = Arc<Mutex<Vec<(String, Arc<std::sync::atomic::AtomicBool>)>>>;

/// Clears a component's alive flag when its thread ends, however it ends.
struct AliveGuard(Arc<std::sync::atomic::AtomicBool>);

impl Drop for AliveGuard {
    fn drop(&mut self) {
        self.0.store(false, std::sync::atomic::Ordering::Relaxed);
    }
}

/// Components started in this process.
pub struct Components {
    context: zmq::Context,
    runtime: tokio::runtime::Runtime,
    http_stop: Arc<tokio::sync::Notify>,
    running: Vec<Running>,
    ensemble: Option<Shared>,
    view: Option<View>,
    ca_servers: Vec<CaServer>,
    pva_server: Option<PvaServer>,
    scans: Option<ScanService>,
    /// The controller's HTTP address, when it runs in this process.
    controller_http: Option<SocketAddr>,
    /// Where the reducer's result PVs are served, in one line, when it serves some.
    result_pvs: Option<String>,
    /// The dashboard's hub, closed before the HTTP servers stop so its pages' streams end.
    dashboard: Option<beamflow_reducer::dashboard::Hub>,
    alive: Alive,
    /// Whether each component of this process hears the controller, for `/readyz`.
    reachable: Arc<Mutex<Vec<(String, Reachable)>>>,
    /// Routes served beside the health endpoints (the autoscaler's view).
    extra_routes: Option<axum::Router>,
    /// Who may call the controller's and reducer's HTTP servers.
    access: Option<Access>,
    /// The CURVE authentication handler of `context`, when the pipeline has keys. Declared
    /// last: it stops after every socket of the components.
    _authentication: Option<beamflow_net::curve::ZapHandler>,
}

/// A Channel Access server of this process: the address asked for, the one bound, its PVs.
/// The process's PV Access server: one, as an IOC has one.
struct PvaServer {
    requested: String,
    tcp: SocketAddr,
    udp: SocketAddr,
    store: beamflow_pva::server::PvStore,
}

struct CaServer {
    requested: SocketAddr,
    bound: SocketAddr,
    store: PvStore,
}

impl Components {
    /// Nothing started yet.
    pub fn new() -> anyhow::Result<Self> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("beamflow-http")
            .enable_all()
            .build()
            .context("cannot start the HTTP runtime")?;
        let context = zmq::Context::new();
        let authentication = beamflow_net::curve::authenticate(&context)
            .context("cannot start the ZeroMQ authentication handler")?;
        Ok(Self {
            context,
            runtime,
            http_stop: Arc::new(tokio::sync::Notify::new()),
            running: Vec::new(),
            ensemble: None,
            view: None,
            ca_servers: Vec::new(),
            pva_server: None,
            scans: None,
            controller_http: None,
            result_pvs: None,
            dashboard: None,
            alive: Alive::default(),
            reachable: Arc::default(),
            extra_routes: None,
            access: None,
            _authentication: authentication,
        })
    }

    /// With the controller's and reducer's HTTP servers behind `access` (without it they
    /// cannot start: an API that moves magnets is not served open by accident).
    pub fn with_access(mut self, access: Access) -> Self {
        self.access = Some(access);
        self
    }

    /// Where the reducer started here serves its result PVs, in one line, if it does.
    pub fn result_pvs(&self) -> Option<&str> {
        self.result_pvs.as_deref()
    }

    /// The token the controller's and reducer's HTTP servers want for writes.
    pub fn token(&self) -> Option<&beamflow_net::token::Token> {
        self.access.as_ref()?.token()
    }

    /// The access the controller's and reducer's HTTP servers are behind.
    fn access(&self) -> anyhow::Result<&Access> {
        self.access
            .as_ref()
            .context("no HTTP access configured (a token, or [security] open_writes)")
    }

    fn spawn(
        &mut self,
        name: String,
        body: impl FnOnce(Stop) -> anyhow::Result<()> + Send + 'static,
    ) -> anyhow::Result<()> {
        let stop = Stop::new();
        let thread_stop = stop.clone();
        let flag = Arc::new(std::sync::atomic::AtomicBool::new(true));
        let guard = AliveGuard(Arc::clone(&flag));
        let thread = std::thread::Builder::new()
            .name(name.clone())
            .spawn({
                let span = tracing::info_span!("component", id = %name);
                move || {
                    let _guard = guard;
                    span.in_scope(|| body(thread_stop))
                }
            })
            .with_context(|| format!("cannot start {name}"))?;
        self.alive
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .push((name.clone(), flag));
        self.running.push(Running { name, stop, thread });
        Ok(())
    }

    /// Serves `app` on `address` until shutdown; returns the bound address.
    fn serve_http(
        &self,
        address: &str,
        what: &str,
        app: axum::Router,
    ) -> anyhow::Result<SocketAddr> {
        let listener = self
            .runtime
            .block_on(tokio::net::TcpListener::bind(address))
            .with_context(|| format!("{what}: cannot listen on {address}"))?;
        let bound = listener.local_addr()?;
        let stop = self.http_stop.clone();
        let what = what.to_owned();
        self.runtime.spawn(async move {
            // With the peer's address, which the access guard logs refusals by.
            let app = app.into_make_service_with_connect_info::<SocketAddr>();
            let served = axum::serve(listener, app)
                .with_graceful_shutdown(async move { stop.notified().await })
                .await;
            if let Err(error) = served {
                tracing::error!(%error, "{what} HTTP server failed");
            }
        });
        Ok(bound)
    }

    /// The Channel Access server on `address` (`host` or `host:port`), started on first use:
    /// one per process, as an IOC has, so the simulated injector and result PVs started here
    /// share it. Returns its PVs and the address it bound.
    pub fn ca_server(&mut self, address: &str) -> anyhow::Result<(PvStore, SocketAddr)> {
        let requested = resolve_address(address)
            .map_err(|why| anyhow::anyhow!("Channel Access server address: {why}"))?;
        if let Some(server) = self.ca_servers.iter().find(|s| s.requested == requested) {
            return Ok((server.store.clone(), server.bound));
        }
        let store = PvStore::new();
        let server = self
            .runtime
            .block_on(beamflow_ca::server::Server::bind(requested, store.clone()))
            .with_context(|| {
                format!("cannot serve Channel Access on {requested} (set EPICS_CAS_SERVER_PORT for another port)")
            })?;
        let bound = server.local_addr()?;
        let stop = self.http_stop.clone();
        self.runtime.spawn(async move {
            tokio::select! {
                () = server.run() => {}
                () = stop.notified() => {}
            }
        });
        self.ca_servers.push(CaServer {
            requested,
            bound,
            store: store.clone(),
        });
        Ok((store, bound))
    }

    /// The PV Access server on `address` (`host` or `host:port`), started on first use, one per
    /// process. Without a port it takes `EPICS_PVAS_SERVER_PORT` (else 5075), or any free one
    /// when that is taken (as pvxs does); its search port is `EPICS_PVAS_BROADCAST_PORT` (else
    /// 5076), shared with other PV Access processes on the host. Returns its PVs and its TCP
    /// and UDP addresses.
    pub fn pva_server(
        &mut self,
        address: &str,
    ) -> anyhow::Result<(beamflow_pva::server::PvStore, SocketAddr, SocketAddr)> {
        use beamflow_pva::server::{PvStore as PvaStore, Server, ServerConfig};
        if let Some(server) = &self.pva_server {
            anyhow::ensure!(
                server.requested == address,
                "one PV Access server per process: {:?} was asked for, {:?} runs",
                address,
                server.requested
            );
            return Ok((server.store.clone(), server.tcp, server.udp));
        }
        let defaults = ServerConfig::from_env();
        let spec = address.trim();
        let (tcp, explicit) = match spec.parse::<SocketAddr>() {
            Ok(tcp) => (tcp, true),
            Err(_) => {
                let ip: std::net::IpAddr = spec.parse().map_err(|_| {
                    anyhow::anyhow!(
                        "PV Access server address {spec:?} is neither host:port nor an IP address"
                    )
                })?;
                (SocketAddr::new(ip, defaults.tcp.port()), false)
            }
        };
        let config = ServerConfig {
            tcp,
            udp: SocketAddr::new(tcp.ip(), defaults.udp.port()),
            ..defaults
        };
        let store = PvaStore::new();
        let bound = match self
            .runtime
            .block_on(Server::bind(config.clone(), store.clone()))
        {
            Err(error) if !explicit && error.kind() == std::io::ErrorKind::AddrInUse => {
                let any = ServerConfig {
                    tcp: SocketAddr::new(tcp.ip(), 0),
                    ..config
                };
                self.runtime.block_on(Server::bind(any, store.clone()))
            }
            other => other,
        };
        let server = bound.with_context(|| format!("cannot serve PV Access on {tcp}"))?;
        let (tcp, udp) = (server.tcp_addr(), server.udp_addr());
        let stop = self.http_stop.clone();
        self.runtime.spawn(async move {
            tokio::select! {
                () = server.run() => {}
                () = stop.notified() => {}
            }
        });
        self.pva_server = Some(PvaServer {
            requested: address.to_owned(),
            tcp,
            udp,
            store: store.clone(),
        });
        Ok((store, tcp, udp))
    }

    /// Serves the pipeline's parameters (with `parameters = true`) and its collectors' controls
    /// as writable PV Access PVs; returns how many PVs that adds.
    fn control_pvs(
        &mut self,
        pipeline: &Pipeline,
        config: &beamflow_reducer::result_pvs::ResultPvsConfig,
        store: &beamflow_pva::server::PvStore,
        client: beamflow_reducer::dashboard::health::ControllerClient,
        view: &View,
        hdf5: Option<&Hdf5Output>,
    ) -> anyhow::Result<usize> {
        use beamflow_reducer::accumulators::AccumulatorConfig;
        use beamflow_reducer::control_pvs::{ControlPvs, Controls, Export};
        let collectors: Vec<(String, String)> = pipeline
            .accumulators
            .iter()
            .filter_map(|(name, accumulator)| match accumulator {
                AccumulatorConfig::Collector(collector) => {
                    Some((name.clone(), collector.parameters.clone()))
                }
                _ => None,
            })
            .collect();
        if !config.parameters && collectors.is_empty() {
            return Ok(0);
        }
        let export: Option<Export> = hdf5.cloned().map(|hdf5| -> Export {
            Arc::new(move || {
                hdf5.write_now()
                    .map(|file| file.name)
                    .map_err(|error| error.to_string())
            })
        });
        let before = store.names().len();
        let controls = ControlPvs::new(
            Controls {
                prefix: &config.prefix,
                descriptions: &pipeline.describe_parameters(),
                parameters: config.parameters,
                collectors: &collectors,
                writers: config.writers.rule(),
            },
            client,
            store,
            export,
        );
        let added = store.names().len() - before;
        let view = view.clone();
        let period = Duration::from_secs_f64(1.0 / config.rate_hz.clamp(0.01, 1000.0));
        self.spawn("control-pvs".to_owned(), move |stop| {
            controls.run_until(&view, period, &stop);
            Ok(())
        })?;
        Ok(added)
    }

    /// Starts the simulated LCLS injector on the CA server at `address`; returns where it is
    /// served.
    pub fn start_sim_ioc(
        &mut self,
        address: &str,
        config: SimIocConfig,
    ) -> anyhow::Result<SocketAddr> {
        let (store, bound) = self.ca_server(address)?;
        let ioc = SimIoc::new(config, &store);
        self.spawn("sim-ioc".to_owned(), move |stop| {
            ioc.run(&stop);
            Ok(())
        })?;
        Ok(bound)
    }

    /// A new readiness flag for the component `name`, which its loop keeps current.
    fn reachable(&self, name: &str) -> Reachable {
        let reachable = Reachable::default();
        self.reachable
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .push((name.to_owned(), reachable.clone()));
        reachable
    }

    /// Serves `GET /healthz` and `GET /readyz` on `address` for probes. `/healthz`: 200 with the
    /// components of this process while every one of them runs (and at least one was started),
    /// 503 naming the ones that stopped otherwise. `/readyz` also needs every component to hear
    /// the controller (503 naming those that cannot reach it). Returns the bound address.
    pub fn serve_health(&self, address: &str) -> anyhow::Result<SocketAddr> {
        use axum::http::StatusCode;
        let alive = Arc::clone(&self.alive);
        let reachable = Arc::clone(&self.reachable);
        let check = move |ready: bool| {
            let list = alive
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            let (running, stopped): (Vec<_>, Vec<_>) = list
                .iter()
                .partition(|(_, flag)| flag.load(std::sync::atomic::Ordering::Relaxed));
            let names = |v: Vec<&(String, Arc<std::sync::atomic::AtomicBool>)>| -> Vec<String> {
                v.into_iter().map(|(name, _)| name.clone()).collect()
            };
            let unreachable: Vec<String> = reachable
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .iter()
                .filter(|(_, r)| !r.is_reachable())
                .map(|(name, _)| name.clone())
                .collect();
            let healthy =
                stopped.is_empty() && !running.is_empty() && (!ready || unreachable.is_empty());
            let body = serde_json::json!({
                "running": names(running),
                "stopped": names(stopped),
                "controller_unreachable": unreachable,
            });
            let status = if healthy {
                StatusCode::OK
            } else {
                StatusCode::SERVICE_UNAVAILABLE
            };
            (status, axum::Json(body))
        };
        let app = axum::Router::new()
            .route(
                "/healthz",
                axum::routing::get({
                    let check = check.clone();
                    move || std::future::ready(check(false))
                }),
            )
            .route(
                "/readyz",
                axum::routing::get(move || std::future::ready(check(true))),
            )
            .merge(self.extra_routes.clone().unwrap_or_default());
        self.serve_http(address, "health", app)
    }

    /// Starts the controller: its control socket and REST API. Returns the control endpoint
    /// and the REST address.
    pub fn start_controller(
        &mut self,
        pipeline: &Pipeline,
    ) -> anyhow::Result<(String, SocketAddr)> {
        let section = &pipeline.controller;
        let descriptions = pipeline.describe_parameters();
        let mut ensemble = Ensemble::new(
            Pacing {
                window: section.window,
                worker_limit: section.worker_limit,
            },
            descriptions,
        );
        ensemble = ensemble
            .with_parameter_limits(pipeline.security.parameter_limits())
            .with_roots(pipeline.security.roots());
        if let Some(folder) = &pipeline.state {
            ensemble = ensemble.with_state(folder.clone())?;
        }
        let ensemble: Shared = Arc::new(Mutex::new(ensemble));
        let socket = ControlSocket::bind(&self.context, &section.control)
            .with_context(|| format!("controller: cannot bind {}", section.control))?;
        let control = socket.endpoint().to_owned();
        let scans = ScanService::new(section.scan.clone());
        let access = self.access()?.for_another_server();
        let app = beamflow_controller::http::app(ensemble.clone())
            .merge(scans.clone().router())
            .merge(controller_index(scans.clone()));
        let http = self.serve_http(&section.http, "controller", guard(app, &access))?;
        self.controller_http = Some(http);
        scans.set_endpoints(Endpoints {
            controller: http,
            reducer: pipeline
                .reducer
                .http
                .parse()
                .map_or_else(|_| SocketAddr::from(([127, 0, 0, 1], 5001)), local_reach),
            ca: pipeline
                .ingesters
                .values()
                .find_map(|i| match i {
                    IngesterConfig::EpicsCa(config) => config.addr_list.as_deref(),
                    _ => None,
                })
                .map_or_else(ClientConfig::from_env, |list| ClientConfig {
                    addr_list: parse_addr_list(list, beamflow_ca::wire::DEFAULT_PORT),
                }),
            // The driver calls this process's own servers, behind the same access.
            token: access.token().cloned(),
        });
        self.scans = Some(scans);
        let loop_ensemble = ensemble.clone();
        self.spawn("controller".to_owned(), move |stop| {
            socket.run(loop_ensemble, stop);
            Ok(())
        })?;
        self.ensemble = Some(ensemble);
        Ok((control, http))
    }

    /// Starts scaling the worker Deployment `deployment` of Helm release `release` (needs the
    /// controller started here); `GET /api/v1/scaling` on the health port shows it.
    #[cfg(feature = "kubernetes")]
    pub fn start_autoscaler(
        &mut self,
        pipeline: &Pipeline,
        deployment: String,
        release: String,
        policy: beamflow_controller::scaling::ScalePolicy,
    ) -> anyhow::Result<()> {
        let ensemble = self
            .ensemble
            .clone()
            .context("no controller runs in this process")?;
        let state = Arc::new(Mutex::new(
            beamflow_controller::autoscale::ScalingState::default(),
        ));
        self.extra_routes = Some(beamflow_controller::autoscale::router(Arc::clone(&state)));
        let window = pipeline.controller.window;
        self.spawn("autoscaler".to_owned(), move |stop| {
            beamflow_controller::autoscale::run(
                ensemble, window, deployment, release, policy, state, &stop,
            )?;
            Ok(())
        })
    }

    /// Starts the reducer; returns its HTTP address.
    pub fn start_reducer(
        &mut self,
        pipeline: &Pipeline,
        controller: &str,
        http: &str,
    ) -> anyhow::Result<SocketAddr> {
        let view = View::new();
        let (models, what_ifs) = model_service(pipeline, view.clone())?;
        let controller_http = self.controller_http.or_else(|| {
            let address = pipeline.controller.http.parse().ok()?;
            Some(local_reach(address))
        });
        let hdf5 = pipeline
            .reducer
            .hdf5
            .clone()
            .map(|config| Hdf5Output::new(config, view.clone()));
        let dashboard = Dashboard::new(
            view.clone(),
            dashboard_description(pipeline, what_ifs, controller_http),
        )
        .with_files(hdf5.clone());
        let mut app = beamflow_reducer::http::app(view.clone())
            .merge(models.router())
            .merge(dashboard.router());
        if let Some(hdf5) = &hdf5 {
            app = app.merge(hdf5.router());
        }
        let access = self.access()?.for_another_server();
        let address = self.serve_http(http, "reducer", guard(app, &access))?;
        let token = access.token().cloned();
        let health = dashboard.clone();
        self.spawn("dashboard health".to_owned(), move |stop| {
            health.publish_health_until(controller_http, token.as_ref(), &stop);
            Ok(())
        })?;
        self.dashboard = Some(dashboard.hub().clone());
        self.spawn("dashboard".to_owned(), move |stop| {
            dashboard.publish_until(&stop);
            Ok(())
        })?;
        let settings = ReducerSettings {
            controller: controller.to_owned(),
            host: pipeline.reducer.host.clone(),
            accumulators: pipeline.accumulators.clone(),
            reachable: self.reachable("reducer"),
            checkpoint: pipeline.state.as_ref().map(|folder| folder.join("reducer")),
        };
        let context = self.context.clone();
        let thread_view = view.clone();
        self.spawn("reducer".to_owned(), move |stop| {
            beamflow_reducer::node::run(&settings, &context, &thread_view, &stop).context("reducer")
        })?;
        if let Some(scans) = &self.scans {
            scans.set_reducer(address);
        }
        if let Some(config) = &pipeline.reducer.pvs {
            let (store, bound) = self.ca_server(&config.server)?;
            let pva = match config.pva.trim() {
                "off" => None,
                address => Some(self.pva_server(address)?),
            };
            let mut pvs = ResultPvs::new(config, &store, pva.as_ref().map(|(store, _, _)| store));
            let controls = match (&pva, controller_http) {
                (Some((pva_store, _, _)), Some(controller)) => {
                    let client = beamflow_reducer::dashboard::health::ControllerClient::new(
                        controller,
                        access.token(),
                    );
                    self.control_pvs(pipeline, config, pva_store, client, &view, hdf5.as_ref())?
                }
                _ => 0,
            };
            let over_pva = pva.map_or_else(String::new, |(_, tcp, udp)| {
                let controls = match controls {
                    0 => String::new(),
                    n => format!(", {n} control PVs"),
                };
                format!(
                    " and PV Access {tcp} (search port {}{controls})",
                    udp.port()
                )
            });
            let line = format!(
                "Results as EPICS PVs: {}* ({} PVs) on Channel Access {bound}{over_pva}",
                config.prefix,
                pvs.names().count()
            );
            // `beamflow run` prints it after the dashboard's address; the others log it.
            tracing::debug!("{line}");
            self.result_pvs = Some(line);
            let period = Duration::from_secs_f64(1.0 / config.rate_hz.clamp(0.01, 1000.0));
            let view = view.clone();
            self.spawn("result-pvs".to_owned(), move |stop| {
                while !stop.is_stopped() {
                    pvs.update(&view.state(), |name| view.frame(name));
                    // Sampling the published state at the configured rate is the point.
                    std::thread::sleep(period);
                }
                Ok(())
            })?;
        }
        if let Some(hdf5) = hdf5 {
            self.spawn("hdf5 files".to_owned(), move |stop| {
                hdf5.run_until(&stop);
                Ok(())
            })?;
        }
        self.view = Some(view);
        Ok(address)
    }

    /// Starts a worker named `name`.
    pub fn start_worker(
        &mut self,
        pipeline: &Pipeline,
        name: &str,
        tags: &[WorkerTag],
        controller: &str,
    ) -> anyhow::Result<()> {
        let settings = WorkerSettings {
            name: WorkerName::from(name),
            tags: tags.iter().cloned().collect(),
            controller: controller.to_owned(),
            host: pipeline.workers.host.clone(),
            analyses: pipeline.analyses.clone(),
            event_timeout: Duration::from_millis(pipeline.workers.event_timeout_ms),
            reachable: self.reachable(&format!("worker {name}")),
        };
        let context = self.context.clone();
        self.spawn(format!("worker {name}"), move |stop| {
            beamflow_workers::node::run(&settings, &context, &stop)
                .with_context(|| format!("worker {}", settings.name))
        })
    }

    /// Starts the ingester `[ingesters.<name>]` of the pipeline.
    pub fn start_ingester(
        &mut self,
        pipeline: &Pipeline,
        name: &str,
        controller: &str,
    ) -> anyhow::Result<()> {
        let source = pipeline
            .ingesters
            .get(name)
            .with_context(|| format!("the pipeline has no [ingesters.{name}]"))?
            .clone();
        let settings = IngesterSettings {
            name: IngesterName::from(name),
            controller: controller.to_owned(),
            source,
            reachable: self.reachable(&format!("ingester {name}")),
            roots: pipeline.security.roots(),
        };
        let context = self.context.clone();
        self.spawn(format!("ingester {name}"), move |stop| {
            beamflow_ingesters::node::run(&settings, &context, &stop)
                .with_context(|| format!("ingester {}", settings.name))
        })
    }

    /// Starts every component of `pipeline` here: the controller, the reducer, `[workers] count`
    /// workers named `w1`, `w2`, ... and every ingester. Returns the control endpoint, the
    /// controller's REST address and the reducer's HTTP address.
    pub fn start_all(
        &mut self,
        pipeline: &Pipeline,
    ) -> anyhow::Result<(String, SocketAddr, SocketAddr)> {
        let (control, rest) = self.start_controller(pipeline)?;
        let state = self.start_reducer(pipeline, &control, &pipeline.reducer.http)?;
        for i in 1..=pipeline.workers.count {
            self.start_worker(pipeline, &format!("w{i}"), &pipeline.workers.tags, &control)?;
        }
        for name in pipeline.ingesters.keys() {
            self.start_ingester(pipeline, name.as_str(), &control)?;
        }
        Ok((control, rest, state))
    }

    /// Waits (up to 30 s) until every component of `pipeline` has said hello to the controller
    /// running here; returns the streams the ingesters offer.
    pub fn wait_until_connected(&self, pipeline: &Pipeline) -> anyhow::Result<Vec<String>> {
        let ensemble = self
            .ensemble
            .as_ref()
            .context("no controller runs in this process")?;
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        loop {
            let config = lock(ensemble).config();
            let count = |key: &str| config[key].as_array().map_or(0, Vec::len);
            if count("workers") >= pipeline.workers.count
                && count("ingesters") >= pipeline.ingesters.len()
                && !config["reducer"].is_null()
            {
                return Ok(config["ingesters"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .flat_map(|i| i["streams"].as_array().cloned().unwrap_or_default())
                    .filter_map(|s| s.as_str().map(str::to_owned))
                    .collect());
            }
            anyhow::ensure!(
                std::time::Instant::now() < deadline,
                "components did not all connect within 30 s: {config}"
            );
            // Components say hello every 500 ms; looking every 20 ms costs nothing.
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Once every component is connected, starts a scan of `events` events over every
    /// ingester's streams, each event on any worker (wrapped in start and end events when a
    /// source brackets its series). Returns the scan's uuid.
    pub fn start_scan_when_connected(
        &self,
        pipeline: &Pipeline,
        events: u64,
    ) -> anyhow::Result<String> {
        let sequence = self.sequence_when_connected(pipeline, events)?;
        Ok(lock(self.controller()?).start(sequence, std::time::Instant::now())?)
    }

    /// Once every component is connected, starts the live scan: [`LIVE_SCAN_EVENTS`] events
    /// over every stream, until a sequence is posted. Returns the scan's uuid.
    pub fn start_live_scan_when_connected(&self, pipeline: &Pipeline) -> anyhow::Result<String> {
        let sequence = self.sequence_when_connected(pipeline, LIVE_SCAN_EVENTS)?;
        Ok(lock(self.controller()?).start_live(sequence, std::time::Instant::now())?)
    }

    /// Has the controller start the live scan again whenever no other scan runs
    /// (`beamflow run --live`).
    pub fn resume_live_scan(&self, pipeline: &Pipeline) -> anyhow::Result<()> {
        let sequence = self.sequence_when_connected(pipeline, LIVE_SCAN_EVENTS)?;
        lock(self.controller()?).resume_live(sequence);
        Ok(())
    }

    fn controller(&self) -> anyhow::Result<&Shared> {
        self.ensemble
            .as_ref()
            .context("no controller runs in this process")
    }

    /// A sequence of `events` events over every ingester's streams, once they are connected.
    fn sequence_when_connected(
        &self,
        pipeline: &Pipeline,
        events: u64,
    ) -> anyhow::Result<Sequence> {
        let streams = self.wait_until_connected(pipeline)?;
        // One part of up to 1000 events, repeated: the controller stores a repeated part once,
        // so a day-long live scan costs what a thousand events do.
        const PART: u64 = 1000;
        let part = |length: u64| -> Part {
            let slots: Vec<Slot> = (0..length)
                .map(|i| {
                    Slot::Workers(vec![VirtualWorker {
                        tags: [WorkerTag::from(GENERIC_TAG)].into(),
                        constraint: Some(i),
                    }])
                })
                .collect();
            streams
                .iter()
                .map(|stream| (StreamName::from(stream.as_str()), slots.clone()))
                .collect()
        };
        let mut parts = BTreeMap::new();
        let mut sequence = Vec::new();
        if events >= PART {
            parts.insert("main".to_owned(), part(PART));
            sequence.extend(std::iter::repeat_n(
                "main".to_owned(),
                (events / PART) as usize,
            ));
        }
        if !events.is_multiple_of(PART) {
            parts.insert("rest".to_owned(), part(events % PART));
            sequence.push("rest".to_owned());
        }
        let wrap = pipeline.ingesters.values().any(|i| i.brackets_series());
        Ok(Sequence::new(parts, sequence, wrap)?)
    }

    /// Prints one line every 10 s (for a terminal): events per second, p99
    /// latency, workers, PVs connected.
    pub fn print_status_lines(&mut self) -> anyhow::Result<()> {
        let ensemble = self.controller()?.clone();
        let view = self
            .view
            .clone()
            .context("no reducer runs in this process")?;
        self.spawn("status-line".to_owned(), move |stop| {
            let mut last = (std::time::Instant::now(), view.status().events);
            let mut next = last.0 + STATUS_LINE_EVERY;
            while !stop.is_stopped() {
                // Waking often keeps Ctrl-C prompt; the line itself is every 10 s.
                std::thread::sleep(Duration::from_millis(200));
                let now = std::time::Instant::now();
                if now < next {
                    continue;
                }
                next = now + STATUS_LINE_EVERY;
                let glance = Glance::of(&lock(&ensemble));
                let reduced = view.status();
                let rate = reduced.events.saturating_sub(last.1) as f64
                    / now.duration_since(last.0).as_secs_f64();
                last = (now, reduced.events);
                eprintln!(
                    "{}",
                    status_line(&glance, rate, reduced.latency_ms.map(|l| l.p99))
                );
            }
            Ok(())
        })
    }

    /// The controller's state, when it runs here.
    pub fn ensemble(&self) -> Option<&Shared> {
        self.ensemble.as_ref()
    }

    /// The reducer's published state, when it runs here.
    pub fn view(&self) -> Option<&View> {
        self.view.as_ref()
    }

    /// Stops the component with this thread name (`worker w1`, `reducer`, ...), as if it had
    /// died: it says nothing more and drops what it held. For tests of recovery.
    pub fn kill(&mut self, name: &str) -> bool {
        let Some(index) = self.running.iter().position(|r| r.name == name) else {
            return false;
        };
        let running = self.running.remove(index);
        running.stop.stop();
        let _ = running.thread.join();
        true
    }

    /// Waits until a component fails (returns its error) or `stop` is raised.
    pub fn wait(&mut self, stop: &Stop) -> anyhow::Result<()> {
        while !stop.is_stopped() {
            if let Some(index) = self.running.iter().position(|r| r.thread.is_finished()) {
                let running = self.running.remove(index);
                return match running.thread.join() {
                    Ok(Ok(())) => Ok(()),
                    Ok(Err(error)) => Err(error),
                    Err(_) => anyhow::bail!("{} panicked", running.name),
                };
            }
            // Waking every 100 ms to look at the threads is the simplest way to wait on
            // several of them and a signal at once.
            std::thread::sleep(Duration::from_millis(100));
        }
        Ok(())
    }

    /// Stops everything and waits for the threads; a quad scan running here first closes its
    /// measurement and restores the quad (up to a minute), while the pipeline still serves it.
    pub fn shutdown(self) {
        if let Some(scans) = &self.scans
            && !scans.stop_and_wait(Duration::from_secs(60))
        {
            tracing::error!(
                "The quad scan did not finish restoring within a minute; check the quad's setting."
            );
        }
        for running in &self.running {
            running.stop.stop();
        }
        // The pages' streams never end by themselves, and the graceful shutdown waits for them.
        if let Some(hub) = &self.dashboard {
            hub.close();
        }
        self.http_stop.notify_waiters();
        for running in self.running {
            if let Ok(Err(error)) = running.thread.join() {
                tracing::warn!(component = %running.name, error = %format!("{error:#}"), "Stopped with an error.");
            }
        }
        self.runtime.shutdown_timeout(Duration::from_secs(1));
    }
}

/// What `beamflow run`'s status line shows of the controller's state.
#[derive(Debug, Default)]
struct Glance {
    /// The running scan's number, whether it is live, events applied and events in it.
    scan: Option<(u64, bool, u64, u64)>,
    workers: usize,
    pvs_connected: usize,
    pvs_configured: usize,
}

impl Glance {
    fn of(ensemble: &Ensemble) -> Self {
        let progress = ensemble.progress();
        let scan = ensemble
            .running_scan()
            .map(|(scan, live)| (scan, live, progress.completed_events, progress.total_events));
        // A PV source's status lists its PVs by name, each with `connected`.
        let pvs: Vec<bool> = ensemble
            .ingester_statuses()
            .filter_map(|(_, status)| status.source.pointer("pvs")?.as_map())
            .flat_map(|pvs| pvs.values())
            .map(|pv| pv.pointer("connected") == Some(&beamflow_protocol::Value::Bool(true)))
            .collect();
        Self {
            scan,
            workers: ensemble.worker_statuses().count(),
            pvs_connected: pvs.iter().filter(|connected| **connected).count(),
            pvs_configured: pvs.len(),
        }
    }
}

/// `beamflow run`'s one-line status: the scan, events per second, p99 latency, workers, and PVs
/// connected of those configured.
fn status_line(glance: &Glance, events_per_second: f64, p99_ms: Option<f64>) -> String {
    let scan = match glance.scan {
        Some((scan, live, completed, total)) => format!(
            "scan {scan}{}: {completed}/{total} events",
            if live { " (live)" } else { "" }
        ),
        None => "no scan running".to_owned(),
    };
    let latency = p99_ms.map_or_else(|| "-".to_owned(), |ms| format!("{ms:.1} ms"));
    let workers = glance.workers;
    let mut line = format!(
        "{scan}, {events_per_second:.1} events/s, p99 latency {latency}, {workers} workers"
    );
    if glance.pvs_configured > 0 {
        line.push_str(&format!(
            ", PVs connected {}/{}",
            glance.pvs_connected, glance.pvs_configured
        ));
    }
    line
}

/// Where a client on this host reaches a server bound to `address` (an unspecified address is
/// reached on loopback).
pub fn local_reach(mut address: SocketAddr) -> SocketAddr {
    if address.ip().is_unspecified() {
        address.set_ip(std::net::Ipv4Addr::LOCALHOST.into());
    }
    address
}

/// The model endpoints over the models of the pipeline's `surrogate` analyses, reading their
/// live inputs from the reducer's view.
/// The surrogate analyses' models, served at `/api/v1/model`, and a what-if panel for each.
fn model_service(
    pipeline: &Pipeline,
    view: View,
) -> anyhow::Result<(ModelService, Vec<PanelEntry>)> {
    let mut models = BTreeMap::new();
    let mut panels = Vec::new();
    for (name, config) in &pipeline.analyses {
        if let AnalysisConfig::Surrogate(config) = config {
            let model = Model::open(&config.model)
                .map_err(|error| anyhow::anyhow!("analysis {name}: {error}"))?;
            panels.push(what_if_panel(pipeline, name.as_str(), &model));
            models.insert(name.to_string(), model);
        }
    }
    let service = ModelService::new(models, move |name| {
        view.latest(name)
            .and_then(|result| serde_json::to_value(&*result).ok())
    });
    Ok((service, panels))
}

/// The what-if form of the model of analysis `name`. Each output is shown beside the measured
/// value it predicts: the value of the PV of the same name, where an ingester reads it and a
/// `last` accumulator keeps it.
fn what_if_panel(pipeline: &Pipeline, name: &str, model: &Model) -> PanelEntry {
    let last = pipeline
        .accumulators
        .iter()
        .find(|(_, config)| config.kind() == "last" && config.analysis().is_none())
        .map(|(name, _)| name);
    let streams: BTreeMap<&str, &str> = pipeline
        .ingesters
        .values()
        .filter_map(|ingester| match ingester {
            IngesterConfig::EpicsCa(config) => Some(&config.pvs),
            _ => None,
        })
        .flatten()
        .map(|(stream, pv)| (pv.pv.as_str(), stream.as_str()))
        .collect();
    let measured = last.map_or_else(BTreeMap::new, |last| {
        model
            .spec()
            .outputs
            .iter()
            .filter_map(|output| {
                let stream = streams.get(output.name.as_str())?;
                Some((output.name.clone(), format!("{last}/values/{stream}/value")))
            })
            .collect()
    });
    PanelEntry {
        name: name.to_owned(),
        title: format!("{name}: what if"),
        path: name.to_owned(),
        panel: Panel::WhatIf {
            model: format!("/api/v1/model/{name}"),
            measured,
        },
        png: None,
    }
}

/// The controller's `GET /`, where dranspose has its status page: links to the dashboard,
/// which the reducer serves, and to the controller's own JSON.
fn controller_index(scans: ScanService) -> axum::Router {
    let page = move || {
        let dashboard = scans.reducer().map_or_else(
            || "<p>The reducer's address is not known yet.</p>".to_owned(),
            |reducer| {
                format!(
                    "<p><a href=\"http://{reducer}/\">Dashboard</a> (served by the reducer)</p>"
                )
            },
        );
        let body = format!(
            "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>beamflow controller</title></head>\
             <body><h1>beamflow controller</h1>{dashboard}<ul>\
             <li><a href=\"/api/v1/progress\">progress</a></li><li><a href=\"/api/v1/status\">status</a></li>\
             <li><a href=\"/api/v1/load\">load</a></li><li><a href=\"/api/v1/openapi.json\">API</a></li></ul></body></html>"
        );
        std::future::ready((
            [
                (axum::http::header::CONTENT_TYPE, "text/html; charset=utf-8"),
                (
                    axum::http::header::CONTENT_SECURITY_POLICY,
                    beamflow_reducer::dashboard::CONTENT_SECURITY_POLICY,
                ),
            ],
            body,
        ))
    };
    axum::Router::new().route("/", axum::routing::get(page))
}

/// The dashboard's panels: one per accumulator, as its kind declares, then the what-ifs.
pub fn dashboard_description(
    pipeline: &Pipeline,
    what_ifs: Vec<PanelEntry>,
    controller: Option<SocketAddr>,
) -> Description {
    let accumulators = pipeline
        .accumulators
        .iter()
        .map(|(name, config)| PanelEntry::accumulator(name, config.panel()));
    Description {
        title: "beamflow".to_owned(),
        controller: controller.map(|address| format!("http://{address}")),
        panels: accumulators.chain(what_ifs).collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_status_line_says_rate_latency_workers_and_pvs() {
        let running = Glance {
            scan: Some((3, true, 120, 1_000_000)),
            workers: 2,
            pvs_connected: 2,
            pvs_configured: 3,
        };
        assert_eq!(
            status_line(&running, 9.96, Some(1.04)),
            "scan 3 (live): 120/1000000 events, 10.0 events/s, p99 latency 1.0 ms, 2 workers, PVs connected 2/3"
        );
        assert_eq!(
            status_line(&Glance::default(), 0.0, None),
            "no scan running, 0.0 events/s, p99 latency -, 0 workers"
        );
    }
}
