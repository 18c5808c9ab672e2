//! The C calls the `zmq` crate does not offer, for large frames.
//!
//! [`send`] sends a frame without copying it. libzmq is given a pointer to the frame's bytes and
//! a callback it calls once its I/O thread is done with them; the callback drops a clone of the
//! [`Bytes`] that keeps them alive meanwhile. So an ingester forwards an upstream frame to one or
//! several workers and keeps it for re-sending, all without a copy. The `zmq` crate can only hand
//! libzmq a buffer by giving it away (`Box<[u8]>`).
//!
//! [`reuse_large_buffers`] keeps the C heap from returning freed frame buffers to the kernel.
//!
//! [`curve_public`] derives a CURVE public key from its secret key, to check a key folder.

// The only unsafe code in beamflow: these FFI calls and the callback that ends a loan.
#![allow(unsafe_code)]

use std::ffi::c_void;
use std::mem::MaybeUninit;

use bytes::Bytes;

/// Frames below this size are copied: libzmq keeps small messages inline, and a copy is cheaper
/// than the two allocations a loan costs.
pub(crate) const MIN_SHARED: usize = 32 << 10;

unsafe extern "C" {
    // In libzmq's API since 4.2, but not among the `zmq-sys` crate's exports.
    fn zmq_curve_public(public: *mut std::ffi::c_char, secret: *const std::ffi::c_char) -> i32;
}

/// The Z85 public key of the Z85 secret key `secret`, or `None` if libzmq has no CURVE or the
/// key is not 40 characters of Z85.
pub(crate) fn curve_public(secret: &str) -> Option<String> {
    let secret = std::ffi::CString::new(secret).ok()?;
    if secret.as_bytes().len() != 40 {
        return None;
    }
    let mut public = [0u8; 41];
    // SAFETY: `public` has room for 40 characters and the NUL libzmq writes; `secret` is a
    // NUL-terminated 40-character string, as libzmq reads.
    let rc = unsafe { zmq_curve_public(public.as_mut_ptr().cast(), secret.as_ptr()) };
    (rc == 0).then(|| String::from_utf8_lossy(&public[..40]).into_owned())
}

/// libzmq's free callback: `hint` is the `Box<Bytes>` made in [`send`].
unsafe extern "C" fn release(_data: *mut c_void, hint: *mut c_void) {
    // SAFETY: `hint` came from `Box::into_raw` in `send`, and libzmq calls this exactly once.
    drop(unsafe { Box::from_raw(hint.cast::<Bytes>()) });
}

/// Sends `frame` on `socket` with `flags` (`zmq::SNDMORE`, `zmq::DONTWAIT`) without copying it.
pub(crate) fn send(socket: &mut zmq::Socket, frame: &Bytes, flags: i32) -> Result<(), zmq::Error> {
    let owner = Box::new(frame.clone());
    let (data, len) = (owner.as_ptr(), owner.len());
    let hint = Box::into_raw(owner).cast::<c_void>();
    let mut message = MaybeUninit::<zmq_sys::zmq_msg_t>::uninit();
    // SAFETY: `data` points to `len` bytes that stay valid and unchanged until `release` drops
    // the `Bytes` clone behind `hint` (a `Bytes`' data never moves or changes while it lives).
    // `Bytes` is `Send + Sync`, so dropping it on libzmq's I/O thread is sound.
    let rc = unsafe {
        zmq_sys::zmq_msg_init_data(
            message.as_mut_ptr(),
            data.cast_mut().cast(),
            len,
            Some(release),
            hint,
        )
    };
    if rc != 0 {
        // SAFETY: libzmq did not take the loan; `hint` is still ours to free.
        drop(unsafe { Box::from_raw(hint.cast::<Bytes>()) });
        return Err(last_error());
    }
    // SAFETY: `message` was initialised above; on success libzmq owns it (and the loan).
    let rc = unsafe { zmq_sys::zmq_msg_send(message.as_mut_ptr(), socket.as_mut_ptr(), flags) };
    if rc < 0 {
        let error = last_error();
        // SAFETY: on failure the message is still ours; closing it calls `release`.
        unsafe { zmq_sys::zmq_msg_close(message.as_mut_ptr()) };
        return Err(error);
    }
    Ok(())
}

/// libzmq allocates each received frame with the C `malloc`. glibc returns a freed multi-MiB
/// block to the kernel, so the next frame's pages fault in and are zeroed again: at 4 MiB frames
/// that was a fifth of an ingester's time. Freed blocks below 32 MiB now stay in the heap (up to
/// 256 MiB of them); measured: 4 MiB frames end to end went from ~1.0 to ~1.2 GB/s here.
/// Call once at start, before any thread allocates.
pub fn reuse_large_buffers() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: `mallopt` only changes glibc's allocation thresholds.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 32 << 20);
        libc::mallopt(libc::M_TRIM_THRESHOLD, 256 << 20);
    }
}

fn last_error() -> zmq::Error {
    // SAFETY: reads the calling thread's libzmq error number.
    zmq::Error::from_raw(unsafe { zmq_sys::zmq_errno() })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_shared_frame_arrives_intact_and_is_released_after_sending() {
        let context = zmq::Context::new();
        let mut push = context.socket(zmq::PUSH).unwrap();
        let pull = context.socket(zmq::PULL).unwrap();
        pull.bind("inproc://shared").unwrap();
        push.connect("inproc://shared").unwrap();
        let frame = Bytes::from((0..MIN_SHARED * 4).map(|i| i as u8).collect::<Vec<u8>>());
        send(&mut push, &frame, zmq::SNDMORE).unwrap();
        send(&mut push, &frame, 0).unwrap();
        let first = pull.recv_msg(0).unwrap();
        let second = pull.recv_msg(0).unwrap();
        assert_eq!((&first[..], &second[..]), (&frame[..], &frame[..]));
        // Over inproc the receiver holds the very buffer: the loan ends when it is dropped.
        drop((first, second));
        assert!(frame.is_unique(), "libzmq released both loans");
    }

    #[test]
    fn a_refused_send_returns_the_loan() {
        let context = zmq::Context::new();
        let mut push = context.socket(zmq::PUSH).unwrap();
        let frame = Bytes::from(vec![1u8; MIN_SHARED]);
        // Nobody connected: a non-blocking send cannot be queued.
        assert_eq!(
            send(&mut push, &frame, zmq::DONTWAIT),
            Err(zmq::Error::EAGAIN)
        );
        assert!(frame.is_unique());
    }
}
