//! CURVE on every beamflow socket: a process without the pipeline's keys cannot join, report, or
//! send event parts.
//!
//! One key pair serves the whole pipeline, as a shared secret: servers (the controller's ROUTER,
//! the workers' and the reducer's PULLs) use its secret key as their server key, and clients use
//! the pair as their own. A ZAP handler in each context then admits only clients that proved they
//! hold that same secret key, so the public key alone, which appears in configurations and logs,
//! lets nobody in. A peer refused at the handshake (no keys, other keys, or no CURVE at all) never
//! delivers a message; it is counted in [`refused_peers`] and logged once per address.
//!
//! CURVE encrypts every byte, which costs more than half the rate of 4 MiB frames on a 2-core
//! machine (README, "Security"). Where the data network needs no secrecy, the data plane (event
//! parts and reports, [`Plane::Data`]) can be *authenticated* only ([`DataPlane::Authenticated`]):
//! ZeroMQ's PLAIN handshake with a password derived from the secret key, checked by the same
//! handler, and frames unencrypted. The control plane stays CURVE. A listener on the wire then
//! learns the derived password, which opens the data plane but not the control plane and does
//! not reveal the key.
//!
//! Without keys every socket is plain ZeroMQ, for a single host or a trusted network. Only the
//! sockets between beamflow's own components are secured: a detector's stream (`zmq_stins`)
//! speaks whatever its sender does.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::thread::JoinHandle;

use subtle::ConstantTimeEq as _;
use tracing::{info, warn};

use crate::FirstSeen;

/// The secret key's file in a keys folder (Z85 text).
pub const SECRET_FILE: &str = "beamflow.key";
/// The public key's file in a keys folder (Z85 text).
pub const PUBLIC_FILE: &str = "beamflow.pub";

/// ZeroMQ's fixed address of a context's authentication handler (RFC 27).
const ZAP_ENDPOINT: &str = "inproc://zeromq.zap.01";
/// The ZAP domain beamflow's servers ask about.
const ZAP_DOMAIN: &str = "beamflow";
/// How often the handler and the monitors look up from a quiet socket to see if they should end.
const POLL_MS: i32 = 250;

/// The user name of the data plane's PLAIN handshake.
const DATA_USER: &str = "beamflow";

/// Which of beamflow's connections a socket carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Plane {
    /// Hellos, leases, scans: always CURVE when there are keys.
    Control,
    /// Event parts and reports: CURVE, or authenticated only ([`DataPlane`]).
    Data,
}

/// How the data plane is secured when there are keys.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DataPlane {
    /// CURVE: authenticated and encrypted.
    #[default]
    Encrypted,
    /// ZeroMQ PLAIN with a password derived from the key: authenticated, not encrypted.
    Authenticated,
}

/// Why the keys could not be made, read or used.
#[derive(Debug, thiserror::Error)]
pub enum KeysError {
    /// A key file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The reason.
        source: std::io::Error,
    },
    /// A key file does not hold a 32-byte key in Z85 (40 characters).
    #[error("{path}: not a CURVE key (40 characters of Z85 expected)")]
    NotAKey {
        /// The file.
        path: PathBuf,
    },
    /// The public key is not the secret key's.
    #[error("{0}: the public key does not belong to the secret key beside it")]
    Mismatch(PathBuf),
    /// This libzmq was built without CURVE.
    #[error("this build's libzmq has no CURVE support")]
    NoCurve,
    /// libzmq refused a CURVE operation.
    #[error("{operation}: {error}")]
    Zmq {
        /// What was being done.
        operation: &'static str,
        /// libzmq's error.
        error: zmq::Error,
    },
}

/// The pipeline's CURVE key pair.
#[derive(Clone, PartialEq, Eq)]
pub struct Keys {
    public: [u8; 32],
    secret: [u8; 32],
}

impl std::fmt::Debug for Keys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The secret key never reaches a log.
        f.debug_struct("Keys")
            .field("public", &z85(&self.public))
            .finish_non_exhaustive()
    }
}

impl Keys {
    /// A new random key pair.
    pub fn generate() -> Result<Self, KeysError> {
        if zmq::has("curve") != Some(true) {
            return Err(KeysError::NoCurve);
        }
        let pair = zmq::CurveKeyPair::new().map_err(|error| KeysError::Zmq {
            operation: "generate a key pair",
            error,
        })?;
        Ok(Self {
            public: pair.public_key,
            secret: pair.secret_key,
        })
    }

    /// Writes the pair into `folder` (created if missing): the secret key readable by the owner
    /// only. Existing files are never overwritten, so a deployment's keys are not lost by a
    /// second run.
    pub fn write(&self, folder: &Path) -> Result<(), KeysError> {
        let io = |path: &Path| {
            let path = path.to_owned();
            move |source| KeysError::Io { path, source }
        };
        std::fs::create_dir_all(folder).map_err(io(folder))?;
        for (name, key, mode) in [
            (SECRET_FILE, &self.secret, 0o600),
            (PUBLIC_FILE, &self.public, 0o644),
        ] {
            let path = folder.join(name);
            let mut options = std::fs::OpenOptions::new();
            options.write(true).create_new(true);
            #[cfg(unix)]
            std::os::unix::fs::OpenOptionsExt::mode(&mut options, mode);
            #[cfg(not(unix))]
            let _ = mode;
            let mut file = options.open(&path).map_err(io(&path))?;
            std::io::Write::write_all(&mut file, format!("{}\n", z85(key)).as_bytes())
                .map_err(io(&path))?;
        }
        Ok(())
    }

    /// Reads the pair `beamflow keys` wrote into `folder`, and checks that the public key is the
    /// secret key's.
    pub fn read(folder: &Path) -> Result<Self, KeysError> {
        if zmq::has("curve") != Some(true) {
            return Err(KeysError::NoCurve);
        }
        let secret = read_key(&folder.join(SECRET_FILE))?;
        let public = read_key(&folder.join(PUBLIC_FILE))?;
        let derived = crate::ffi::curve_public(&z85(&secret))
            .and_then(|key| zmq::z85_decode(&key).ok())
            .and_then(|key| <[u8; 32]>::try_from(key).ok());
        if derived != Some(public) {
            return Err(KeysError::Mismatch(folder.to_owned()));
        }
        Ok(Self { public, secret })
    }

    /// The data plane's PLAIN password: a one-way digest of the secret key, so a listener who
    /// reads it on the wire cannot recover the key.
    fn data_password(&self) -> String {
        use sha2::Digest as _;
        let digest = sha2::Sha256::new()
            .chain_update(b"beamflow data plane\0")
            .chain_update(self.secret)
            .finalize();
        digest.iter().map(|b| format!("{b:02x}")).collect()
    }

    /// The public key in Z85, as `beamflow keys` prints it.
    pub fn public_z85(&self) -> String {
        z85(&self.public)
    }
}

fn z85(key: &[u8; 32]) -> String {
    // 32 bytes are a multiple of 4: Z85 cannot refuse them.
    zmq::z85_encode(key).unwrap_or_default()
}

fn read_key(path: &Path) -> Result<[u8; 32], KeysError> {
    let text = std::fs::read_to_string(path).map_err(|source| KeysError::Io {
        path: path.to_owned(),
        source,
    })?;
    let text = text.trim();
    (text.len() == 40)
        .then(|| zmq::z85_decode(text).ok())
        .flatten()
        .and_then(|key| <[u8; 32]>::try_from(key).ok())
        .ok_or_else(|| KeysError::NotAKey {
            path: path.to_owned(),
        })
}

/// The keys this process's sockets use and how the data plane is secured, once [`use_keys`] was
/// called.
static KEYS: OnceLock<(Keys, DataPlane)> = OnceLock::new();
/// Peers refused at the handshake, by every server socket of this process.
static REFUSED: AtomicU64 = AtomicU64::new(0);

/// Peers refused at the handshake so far (no keys, other keys, or a plain socket).
pub fn refused_peers() -> u64 {
    REFUSED.load(Ordering::Relaxed)
}

/// Whether this process's beamflow sockets use CURVE.
pub fn is_secured() -> bool {
    KEYS.get().is_some()
}

/// Makes every beamflow socket this process creates from now on use `keys`, the data plane
/// secured as `data` says. A process has one pipeline and so one pair of keys: other keys or
/// another data plane later are refused.
pub fn use_keys(keys: Keys, data: DataPlane) -> Result<(), KeysError> {
    let wanted = (keys, data);
    if KEYS.get_or_init(|| wanted.clone()) != &wanted {
        return Err(KeysError::Mismatch(PathBuf::from(
            "(a second pair of keys)",
        )));
    }
    info!(public_key = %wanted.0.public_z85(), data_plane = ?data, "ZeroMQ sockets use CURVE.");
    Ok(())
}

/// Starts `context`'s authentication handler if this process uses keys ([`use_keys`]); it runs
/// until the returned guard is dropped. Without one, a CURVE server would admit any client that
/// knows the public key.
pub fn authenticate(context: &zmq::Context) -> Result<Option<ZapHandler>, KeysError> {
    let Some((keys, _)) = KEYS.get() else {
        return Ok(None);
    };
    let socket = context.socket(zmq::REP).map_err(zap_error("create"))?;
    socket.set_linger(0).map_err(zap_error("configure"))?;
    socket
        .set_rcvtimeo(POLL_MS)
        .map_err(zap_error("configure"))?;
    socket.bind(ZAP_ENDPOINT).map_err(zap_error("bind"))?;
    let stop = Arc::new(AtomicBool::new(false));
    let admitted = Admitted {
        public: keys.public,
        password: keys.data_password(),
    };
    let thread = std::thread::Builder::new()
        .name("beamflow-zap".into())
        .spawn({
            let stop = Arc::clone(&stop);
            move || answer_zap(&socket, &admitted, &stop)
        })
        .map_err(|_| KeysError::Zmq {
            operation: "start the authentication handler",
            error: zmq::Error::ENOMEM,
        })?;
    Ok(Some(ZapHandler {
        stop,
        thread: Some(thread),
    }))
}

fn zap_error(operation: &'static str) -> impl FnOnce(zmq::Error) -> KeysError {
    move |error| KeysError::Zmq {
        operation: match operation {
            "create" => "create the authentication socket",
            "bind" => "bind the authentication socket",
            _ => "configure the authentication socket",
        },
        error,
    }
}

/// A context's running authentication handler; dropping it stops the handler.
#[derive(Debug)]
pub struct ZapHandler {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Drop for ZapHandler {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Who the authentication handler lets in.
struct Admitted {
    /// The only CURVE client key.
    public: [u8; 32],
    /// The data plane's PLAIN password.
    password: String,
}

impl Admitted {
    /// Whether the credentials of a ZAP request's `mechanism` are the pipeline's.
    fn admits(&self, mechanism: &[u8], credentials: &[Vec<u8>]) -> bool {
        match (mechanism, credentials) {
            (b"CURVE", [key]) => bool::from(key.ct_eq(&self.public)),
            (b"PLAIN", [user, password]) => {
                user == DATA_USER.as_bytes() && bool::from(password.ct_eq(self.password.as_bytes()))
            }
            _ => false,
        }
    }
}

/// Answers ZAP requests (RFC 27): a client is admitted if its credentials are the pipeline's.
fn answer_zap(socket: &zmq::Socket, admitted: &Admitted, stop: &AtomicBool) {
    let mut logged = FirstSeen::new();
    while !stop.load(Ordering::Relaxed) {
        let request = match socket.recv_multipart(0) {
            Ok(request) => request,
            Err(zmq::Error::EAGAIN) => continue,
            Err(_) => return,
        };
        // [version, request id, domain, address, routing id, mechanism, credentials...]
        let field = |i: usize| request.get(i).map_or(&[][..], Vec::as_slice);
        let admitted = admitted.admits(field(5), request.get(6..).unwrap_or_default());
        if !admitted {
            let address = String::from_utf8_lossy(field(3)).into_owned();
            if logged.is_new(address.clone()) {
                warn!(
                    peer = %address,
                    mechanism = %String::from_utf8_lossy(field(5)),
                    "Refused a ZeroMQ peer without the pipeline's keys; later refusals of it are only counted."
                );
            }
        }
        let (code, text): (&[u8], &[u8]) = if admitted {
            (b"200", b"OK")
        } else {
            (b"400", b"not the pipeline's key")
        };
        let reply: [&[u8]; 6] = [field(0), field(1), code, text, b"", b""];
        if socket.send_multipart(reply, 0).is_err() {
            return;
        }
    }
}

/// Counter of monitor endpoints, each unique in the process.
static MONITORS: AtomicU64 = AtomicU64::new(0);

/// Makes `socket` a server of `plane` with the pipeline's keys (nothing without keys), and
/// counts the peers it refuses. Call before binding.
pub(crate) fn serve(
    context: &zmq::Context,
    socket: &zmq::Socket,
    plane: Plane,
) -> Result<(), zmq::Error> {
    let Some((keys, data)) = KEYS.get() else {
        return Ok(());
    };
    socket.set_zap_domain(ZAP_DOMAIN)?;
    if plane == Plane::Data && *data == DataPlane::Authenticated {
        socket.set_plain_server(true)?;
    } else {
        socket.set_curve_server(true)?;
        socket.set_curve_secretkey(&keys.secret)?;
    }
    let endpoint = format!(
        "inproc://beamflow-monitor-{}",
        MONITORS.fetch_add(1, Ordering::Relaxed)
    );
    let refusals = zmq::SocketEvent::HANDSHAKE_FAILED_NO_DETAIL as i32
        | zmq::SocketEvent::HANDSHAKE_FAILED_PROTOCOL as i32
        | zmq::SocketEvent::HANDSHAKE_FAILED_AUTH as i32
        // libzmq says when the socket closed only if asked: the thread's cue to end.
        | zmq::SocketEvent::MONITOR_STOPPED as i32;
    socket.monitor(&endpoint, refusals)?;
    let monitor = context.socket(zmq::PAIR)?;
    monitor.set_rcvtimeo(POLL_MS)?;
    monitor.set_linger(0)?;
    monitor.connect(&endpoint)?;
    // The thread ends when the monitored socket closes (libzmq then closes the monitor's pipe
    // and stops answering) or the context ends.
    let _ = std::thread::Builder::new()
        .name("beamflow-monitor".into())
        .spawn(move || count_refusals(&monitor));
    Ok(())
}

fn count_refusals(monitor: &zmq::Socket) {
    static LOGGED: Mutex<FirstSeen<String>> = Mutex::new(FirstSeen::new());
    loop {
        let event = match monitor.recv_multipart(0) {
            Ok(event) => event,
            // A quiet socket: libzmq ends the monitor with MONITOR_STOPPED, below.
            Err(zmq::Error::EAGAIN) => continue,
            Err(_) => return,
        };
        let Some(code) = event
            .first()
            .and_then(|frame| frame.get(..2))
            .map(|b| u16::from_le_bytes([b[0], b[1]]))
        else {
            continue;
        };
        if i32::from(code) == zmq::SocketEvent::MONITOR_STOPPED as i32 {
            return;
        }
        REFUSED.fetch_add(1, Ordering::Relaxed);
        let endpoint = event
            .get(1)
            .map(|e| String::from_utf8_lossy(e).into_owned())
            .unwrap_or_default();
        let mut logged = LOGGED
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if logged.is_new(endpoint.clone()) {
            warn!(
                %endpoint,
                "A peer failed the CURVE handshake (no keys, other keys, or plain ZeroMQ); its messages are dropped. Later failures on this socket are only counted."
            );
        }
    }
}

/// Makes `socket` a client of `plane` with the pipeline's keys (nothing without keys). Call
/// before connecting.
pub(crate) fn join(socket: &zmq::Socket, plane: Plane) -> Result<(), zmq::Error> {
    let Some((keys, data)) = KEYS.get() else {
        return Ok(());
    };
    if plane == Plane::Data && *data == DataPlane::Authenticated {
        socket.set_plain_username(Some(DATA_USER))?;
        return socket.set_plain_password(Some(&keys.data_password()));
    }
    socket.set_curve_serverkey(&keys.public)?;
    socket.set_curve_publickey(&keys.public)?;
    socket.set_curve_secretkey(&keys.secret)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_written_are_read_back_and_a_foreign_public_key_is_refused() {
        let folder = tempfile::tempdir().unwrap();
        let keys = Keys::generate().unwrap();
        keys.write(folder.path()).unwrap();
        assert_eq!(Keys::read(folder.path()).unwrap(), keys);
        assert!(matches!(
            keys.write(folder.path()),
            Err(KeysError::Io { .. })
        ));

        let other = tempfile::tempdir().unwrap();
        Keys::generate().unwrap().write(other.path()).unwrap();
        std::fs::copy(
            other.path().join(PUBLIC_FILE),
            folder.path().join("mixed.pub"),
        )
        .unwrap();
        std::fs::rename(
            folder.path().join("mixed.pub"),
            folder.path().join(PUBLIC_FILE),
        )
        .unwrap();
        assert!(matches!(
            Keys::read(folder.path()),
            Err(KeysError::Mismatch(_))
        ));
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(folder.path().join(SECRET_FILE))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o077, 0, "the secret key is the owner's alone");
        }
        assert!(!format!("{keys:?}").contains(&z85(&keys.secret)));
    }

    /// A data-plane PULL of this process's keys, bound on loopback, and its handler.
    fn secured_pull(context: &zmq::Context) -> (ZapHandler, zmq::Socket, String) {
        let zap = authenticate(context).unwrap().unwrap();
        let pull = crate::socket(context, zmq::PULL, 16, 5_000).unwrap();
        crate::as_server(context, &pull, Plane::Data).unwrap();
        let endpoint = crate::bind_any(&pull, "127.0.0.1").unwrap();
        (zap, pull, endpoint)
    }

    /// A forger's PUSH to `endpoint`, configured by `configure`, that has sent one message.
    fn forger(
        context: &zmq::Context,
        endpoint: &str,
        configure: impl FnOnce(&zmq::Socket) -> zmq::Result<()>,
    ) -> zmq::Socket {
        let socket = context.socket(zmq::PUSH).unwrap();
        socket.set_linger(0).unwrap();
        configure(&socket).unwrap();
        socket.connect(endpoint).unwrap();
        socket.send("forged", zmq::DONTWAIT).unwrap();
        socket
    }

    /// A member's message arrives, the forgers are counted, and nothing forged arrives.
    fn only_the_member_delivers(context: &zmq::Context, pull: &zmq::Socket, endpoint: &str) {
        let member = crate::push_to(context, endpoint, 1_000).unwrap();
        member.send("genuine", 0).unwrap();
        assert_eq!(pull.recv_bytes(0).unwrap(), b"genuine");
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while refused_peers() < 2 && std::time::Instant::now() < deadline {
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        assert!(refused_peers() >= 2, "refused {}", refused_peers());
        pull.set_rcvtimeo(300).unwrap();
        assert_eq!(
            pull.recv_bytes(0),
            Err(zmq::Error::EAGAIN),
            "nothing forged arrives"
        );
    }

    /// Each test runs in its own process (nextest), so the process-wide keys are this test's.
    #[test]
    fn only_a_peer_with_the_keys_delivers_and_the_others_are_counted() {
        let keys = Keys::generate().unwrap();
        use_keys(keys.clone(), DataPlane::Encrypted).unwrap();
        assert!(use_keys(Keys::generate().unwrap(), DataPlane::Encrypted).is_err());
        assert!(use_keys(keys.clone(), DataPlane::Authenticated).is_err());
        let context = zmq::Context::new();
        let (_zap, pull, endpoint) = secured_pull(&context);
        // A plain socket, and one with CURVE but its own keys, knowing the public key.
        let _plain = forger(&context, &endpoint, |_| Ok(()));
        let own = zmq::CurveKeyPair::new().unwrap();
        let _stranger = forger(&context, &endpoint, |s| {
            s.set_curve_serverkey(&keys.public)?;
            s.set_curve_publickey(&own.public_key)?;
            s.set_curve_secretkey(&own.secret_key)
        });
        only_the_member_delivers(&context, &pull, &endpoint);
    }

    #[test]
    fn an_authenticated_data_plane_admits_the_derived_password_only() {
        let keys = Keys::generate().unwrap();
        use_keys(keys.clone(), DataPlane::Authenticated).unwrap();
        let context = zmq::Context::new();
        let (_zap, pull, endpoint) = secured_pull(&context);
        let _guesser = forger(&context, &endpoint, |s| {
            s.set_plain_username(Some(DATA_USER))?;
            s.set_plain_password(Some("guess"))
        });
        let _plain = forger(&context, &endpoint, |_| Ok(()));
        only_the_member_delivers(&context, &pull, &endpoint);
        assert_ne!(keys.data_password(), z85(&keys.secret));
    }
}
