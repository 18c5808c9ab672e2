//! The stock `beamflow` binary: no Python in it (see `python.rs` for payloads).

// glibc's malloc spent a third of a tiny-event replay in malloc/free across threads (callgrind);
// mimalloc's thread-local free lists remove most of that.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    std::process::ExitCode::from(beamflow::cli::main(std::env::args_os().collect()))
}
