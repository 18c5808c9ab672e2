//! `NdArray`: a typed, shaped view of a frame's bytes, what stream parsers hand to analyses.

use bytes::Bytes;
use serde::{Deserialize, Serialize};

/// Element type of an array, named as numpy names them (the STINS `type` field).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DType {
    /// `uint8`
    Uint8,
    /// `uint16`
    Uint16,
    /// `uint32`
    Uint32,
    /// `uint64`
    Uint64,
    /// `int8`
    Int8,
    /// `int16`
    Int16,
    /// `int32`
    Int32,
    /// `int64`
    Int64,
    /// `float32`
    Float32,
    /// `float64`
    Float64,
}

/// Means of `bin` × `bin` blocks of a row-major image `width` pixels wide, with the binned
/// image's `[rows, columns]`; the rows and columns left over at the bottom and right edges are
/// dropped (an image smaller than a block gives none). Sums are kept in f64, so a 16×16 block
/// of 32-bit counts loses nothing before the mean.
pub fn bin_mean<T: Copy + Into<f64>>(
    pixels: &[T],
    width: usize,
    bin: usize,
) -> (Vec<f32>, [usize; 2]) {
    if width == 0 || bin == 0 {
        return (Vec::new(), [0, 0]);
    }
    let [h, w] = [pixels.len() / width / bin, width / bin];
    let scale = 1.0 / (bin * bin) as f64;
    let mut out = Vec::with_capacity(w * h);
    let mut sums = vec![0.0f64; w];
    for row in 0..h {
        sums.fill(0.0);
        for source_row in row * bin..(row + 1) * bin {
            let line = &pixels[source_row * width..source_row * width + w * bin];
            for (sum, block) in sums.iter_mut().zip(line.chunks_exact(bin)) {
                *sum += block.iter().map(|&v| v.into()).sum::<f64>();
            }
        }
        out.extend(sums.iter().map(|sum| (sum * scale) as f32));
    }
    (out, [h, w])
}

impl DType {
    /// Bytes per element.
    pub fn size(self) -> usize {
        match self {
            DType::Uint8 | DType::Int8 => 1,
            DType::Uint16 | DType::Int16 => 2,
            DType::Uint32 | DType::Int32 | DType::Float32 => 4,
            DType::Uint64 | DType::Int64 | DType::Float64 => 8,
        }
    }

    /// The numpy name, e.g. `uint16`.
    pub fn name(self) -> &'static str {
        match self {
            DType::Uint8 => "uint8",
            DType::Uint16 => "uint16",
            DType::Uint32 => "uint32",
            DType::Uint64 => "uint64",
            DType::Int8 => "int8",
            DType::Int16 => "int16",
            DType::Int32 => "int32",
            DType::Int64 => "int64",
            DType::Float32 => "float32",
            DType::Float64 => "float64",
        }
    }

    /// Parses a numpy name; also accepts the `<u2`-style array-interface strings.
    pub fn from_name(name: &str) -> Option<Self> {
        Some(match name {
            "uint8" | "|u1" | "<u1" | "u1" => DType::Uint8,
            "uint16" | "<u2" | "u2" => DType::Uint16,
            "uint32" | "<u4" | "u4" => DType::Uint32,
            "uint64" | "<u8" | "u8" => DType::Uint64,
            "int8" | "|i1" | "<i1" | "i1" => DType::Int8,
            "int16" | "<i2" | "i2" => DType::Int16,
            "int32" | "<i4" | "i4" => DType::Int32,
            "int64" | "<i8" | "i8" => DType::Int64,
            "float32" | "<f4" | "f4" => DType::Float32,
            "float64" | "<f8" | "f8" => DType::Float64,
            _ => return None,
        })
    }
}

/// A row-major array of little-endian elements.
///
/// Holds `Bytes`, so an uncompressed frame is viewed without copying. The invariant
/// `data.len() == shape.product() * dtype.size()` is checked by [`NdArray::new`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NdArray {
    shape: Vec<usize>,
    dtype: DType,
    data: Bytes,
}

/// An array whose byte length does not match its shape and type.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("shape {shape:?} of {dtype} needs {expected} bytes, found {found}", dtype = dtype.name())]
pub struct ShapeMismatch {
    /// The declared shape.
    pub shape: Vec<usize>,
    /// The declared type.
    pub dtype: DType,
    /// Bytes the shape and type need (saturated on overflow).
    pub expected: usize,
    /// Bytes present.
    pub found: usize,
}

impl NdArray {
    /// Views `data` as an array, checking its length.
    pub fn new(shape: Vec<usize>, dtype: DType, data: Bytes) -> Result<Self, ShapeMismatch> {
        let expected = shape
            .iter()
            .try_fold(dtype.size(), |acc, &n| acc.checked_mul(n))
            .unwrap_or(usize::MAX);
        if expected != data.len() {
            return Err(ShapeMismatch {
                shape,
                dtype,
                expected,
                found: data.len(),
            });
        }
        Ok(Self { shape, dtype, data })
    }

    /// Dimensions, slowest first.
    pub fn shape(&self) -> &[usize] {
        &self.shape
    }

    /// Element type.
    pub fn dtype(&self) -> DType {
        self.dtype
    }

    /// The raw little-endian bytes.
    pub fn data(&self) -> &Bytes {
        &self.data
    }

    /// Number of elements.
    pub fn len(&self) -> usize {
        self.data.len() / self.dtype.size()
    }

    /// Whether the array has no elements.
    pub fn is_empty(&self) -> bool {
        self.data.is_empty()
    }

    /// The elements as f64 (64-bit integers beyond 2^53 are rounded).
    pub fn to_f64(&self) -> Vec<f64> {
        macro_rules! read {
            ($t:ty) => {
                self.data
                    .chunks_exact(std::mem::size_of::<$t>())
                    .map(|b| {
                        let mut raw = [0u8; std::mem::size_of::<$t>()];
                        raw.copy_from_slice(b);
                        <$t>::from_le_bytes(raw) as f64
                    })
                    .collect()
            };
        }
        match self.dtype {
            DType::Uint8 => read!(u8),
            DType::Uint16 => read!(u16),
            DType::Uint32 => read!(u32),
            DType::Uint64 => read!(u64),
            DType::Int8 => read!(i8),
            DType::Int16 => read!(i16),
            DType::Int32 => read!(i32),
            DType::Int64 => read!(i64),
            DType::Float32 => read!(f32),
            DType::Float64 => read!(f64),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bin_mean_averages_blocks_and_drops_the_edges() {
        // A 3×5 ramp binned 2: one row of two blocks, the last row and column dropped.
        let pixels: Vec<f64> = (0..15).map(f64::from).collect();
        let (binned, shape) = bin_mean(&pixels, 5, 2);
        assert_eq!(shape, [1, 2]);
        assert_eq!(
            binned,
            [(0.0 + 1.0 + 5.0 + 6.0) / 4.0, (2.0 + 3.0 + 7.0 + 8.0) / 4.0]
        );
        assert_eq!(bin_mean(&pixels, 5, 4), (Vec::new(), [0, 1]));
        assert_eq!(bin_mean(&pixels, 0, 2), (Vec::new(), [0, 0]));
    }
}
