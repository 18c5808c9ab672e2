//! A frame lent to Python without a copy: a read-only buffer over the `Bytes` the worker
//! received, so `numpy.frombuffer(frame, dtype)` views the pixels where libzmq put them. The
//! Python object holds the `Bytes`, so the view outlives the event in Rust.
//!
//! The buffer protocol is the one place here that needs `unsafe`: CPython hands a raw
//! `Py_buffer` to fill in.
#![allow(unsafe_code)]

use std::ffi::{c_int, c_void};
use std::ptr;

use bytes::Bytes;
use pyo3::exceptions::PyBufferError;
use pyo3::ffi;
use pyo3::prelude::*;

/// A received frame, readable as a buffer (`memoryview`, `numpy.frombuffer`), never writable.
#[pyclass(frozen, module = "beamflow")]
pub struct Frame {
    data: Bytes,
}

impl Frame {
    /// Lends `data`.
    pub fn new(data: Bytes) -> Self {
        Self { data }
    }
}

#[pymethods]
impl Frame {
    fn __len__(&self) -> usize {
        self.data.len()
    }

    /// # Safety
    /// CPython calls this with a `Py_buffer` to fill in; everything it points to stays valid as
    /// long as the view holds its reference to this object (`obj`), which holds the bytes.
    unsafe fn __getbuffer__(
        slf: Bound<'_, Self>,
        view: *mut ffi::Py_buffer,
        flags: c_int,
    ) -> PyResult<()> {
        if view.is_null() {
            return Err(PyBufferError::new_err("no buffer to fill in"));
        }
        if flags & ffi::PyBUF_WRITABLE == ffi::PyBUF_WRITABLE {
            return Err(PyBufferError::new_err("a received frame is read-only"));
        }
        let data = &slf.get().data;
        // SAFETY: `view` is not null, and CPython gives it for us to fill; the pointers stored
        // point into `data` or into `view` itself, both alive while the view lives.
        unsafe {
            (*view).obj = slf.clone().into_any().into_ptr();
            (*view).buf = data.as_ptr() as *mut c_void;
            (*view).len = data.len() as ffi::Py_ssize_t;
            (*view).readonly = 1;
            (*view).itemsize = 1;
            (*view).format = if flags & ffi::PyBUF_FORMAT == ffi::PyBUF_FORMAT {
                c"B".as_ptr() as *mut _
            } else {
                ptr::null_mut()
            };
            (*view).ndim = 1;
            (*view).shape = if flags & ffi::PyBUF_ND == ffi::PyBUF_ND {
                &mut (*view).len
            } else {
                ptr::null_mut()
            };
            (*view).strides = if flags & ffi::PyBUF_STRIDES == ffi::PyBUF_STRIDES {
                &mut (*view).itemsize
            } else {
                ptr::null_mut()
            };
            (*view).suboffsets = ptr::null_mut();
            (*view).internal = ptr::null_mut();
        }
        Ok(())
    }

    /// # Safety
    /// Nothing to release: the view's reference to this object keeps the bytes.
    unsafe fn __releasebuffer__(&self, _view: *mut ffi::Py_buffer) {}
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_python;
    use pyo3::types::PyDict;

    #[test]
    fn numpy_views_the_frame_where_rust_holds_it_read_only_and_keeps_it_alive() {
        test_python(|py| {
            let data = Bytes::from(
                [1u16, 2, 3, 4, 5, 6]
                    .iter()
                    .flat_map(|v| v.to_le_bytes())
                    .collect::<Vec<u8>>(),
            );
            let address = data.as_ptr() as usize;
            let frame = Bound::new(py, Frame::new(data)).unwrap();
            let locals = PyDict::new(py);
            locals.set_item("frame", &frame).unwrap();
            py.run(
                c"import numpy as np\n\
                  image = np.frombuffer(frame, dtype='<u2').reshape(2, 3)\n\
                  address = image.ctypes.data\n\
                  total = int(image.sum())\n\
                  writeable = image.flags.writeable\n\
                  del frame\n\
                  try:\n    memoryview(image.base).cast('B')[0] = 9\n    refused = False\n\
                  except TypeError:\n    refused = True\n\
                  after = int(image.sum())",
                None,
                Some(&locals),
            )
            .unwrap();
            drop(frame);
            let get = |name: &str| locals.get_item(name).unwrap().unwrap();
            assert_eq!(
                get("address").extract::<usize>().unwrap(),
                address,
                "not copied"
            );
            assert_eq!(get("total").extract::<u64>().unwrap(), 21);
            assert!(!get("writeable").extract::<bool>().unwrap());
            assert!(
                get("refused").extract::<bool>().unwrap(),
                "a frame is read-only"
            );
            // Rust's handles are gone; the array still holds the frame, which holds the bytes.
            assert_eq!(get("after").extract::<u64>().unwrap(), 21);
        });
    }
}
