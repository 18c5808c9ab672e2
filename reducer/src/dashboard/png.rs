//! A frame as an 8-bit indexed PNG: each pixel is an index into the colormap's 256 colours, so
//! the image is a byte per pixel before compression and the page draws it as it comes.
//!
//! The colour range comes from the frame itself ([`Scale::Robust`]: percentiles, so one hot
//! pixel does not wash out the beam; [`Scale::Auto`]: min to max) or from the user
//! ([`Scale::Fixed`]); [`Rendered`] says which counts it spans, for the page's colourbar.

use std::str::FromStr;

use crate::Frame;

/// The lowest percentile of [`Scale::Robust`].
const ROBUST_LOW: f64 = 0.005;
/// The highest percentile of [`Scale::Robust`]: a beam covers a few per cent of a screen, so
/// the 99.7th percentile (what lume's monitor starts from) lies inside the beam and burns out its
/// core; the top 0.05 % leaves out only hot pixels and the very peak.
const ROBUST_HIGH: f64 = 0.9995;
/// The largest further binning a request may ask for.
pub const MAX_BIN: usize = 16;

/// A colormap, by its name in the query (`cmap=inferno`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Colormap {
    /// `inferno`: perceptually uniform, dark to bright (the default).
    #[default]
    Inferno,
    /// `magma`: as inferno, ending in pale pink.
    Magma,
    /// `viridis`: blue to yellow, readable by colour-blind viewers.
    Viridis,
    /// `greys`: black to white, as a camera shows.
    Greys,
    /// `turbo`: an improved rainbow, for spotting small differences.
    Turbo,
}

impl Colormap {
    /// Every colormap, in the page's order.
    pub const ALL: [Colormap; 5] = [
        Colormap::Inferno,
        Colormap::Magma,
        Colormap::Viridis,
        Colormap::Greys,
        Colormap::Turbo,
    ];

    /// The query's name.
    pub fn name(self) -> &'static str {
        match self {
            Colormap::Inferno => "inferno",
            Colormap::Magma => "magma",
            Colormap::Viridis => "viridis",
            Colormap::Greys => "greys",
            Colormap::Turbo => "turbo",
        }
    }

    /// The 256 colours, the lowest count first.
    pub fn palette(self) -> [[u8; 3]; 256] {
        let gradient = match self {
            Colormap::Inferno => colorous::INFERNO,
            Colormap::Magma => colorous::MAGMA,
            Colormap::Viridis => colorous::VIRIDIS,
            Colormap::Greys => colorous::GREYS,
            Colormap::Turbo => colorous::TURBO,
        };
        std::array::from_fn(|i| {
            // colorous' greys runs white to black; reversed, more counts are brighter, as in
            // every other map here.
            let i = if self == Colormap::Greys { 255 - i } else { i };
            gradient.eval_rational(i, 256).into_array()
        })
    }
}

impl FromStr for Colormap {
    type Err = RenderError;

    fn from_str(name: &str) -> Result<Self, RenderError> {
        Colormap::ALL
            .into_iter()
            .find(|cmap| cmap.name() == name)
            .ok_or_else(|| RenderError::Colormap(name.to_owned()))
    }
}

/// Which counts the colours span.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub enum Scale {
    /// The 0.5th to the 99.95th percentile of the frame's finite pixels (the default).
    #[default]
    Robust,
    /// The frame's smallest to largest finite pixel.
    Auto,
    /// Given counts; pixels outside are clamped to the first or last colour.
    Fixed {
        /// The count of the first colour.
        low: f64,
        /// The count of the last colour.
        high: f64,
    },
}

impl Scale {
    /// From the query: `scale=robust|auto|fixed`, and for `fixed` its `min` and `max`.
    pub fn parse(name: &str, min: Option<f64>, max: Option<f64>) -> Result<Self, RenderError> {
        match name {
            "robust" => Ok(Scale::Robust),
            "auto" => Ok(Scale::Auto),
            "fixed" => match (min, max) {
                (Some(low), Some(high)) if low.is_finite() && high.is_finite() && low < high => {
                    Ok(Scale::Fixed { low, high })
                }
                _ => Err(RenderError::Scale(format!(
                    "fixed needs finite min < max, got min={min:?} max={max:?}"
                ))),
            },
            other => Err(RenderError::Scale(format!(
                "{other:?} is not robust, auto or fixed"
            ))),
        }
    }
}

/// How to render a frame.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RenderOptions {
    /// The colours.
    pub colormap: Colormap,
    /// Their range.
    pub scale: Scale,
    /// Further binning, 1..=[`MAX_BIN`] (1 = the frame as it is).
    pub bin: usize,
}

impl Default for RenderOptions {
    fn default() -> Self {
        Self {
            colormap: Colormap::default(),
            scale: Scale::default(),
            bin: 1,
        }
    }
}

/// A rendered frame.
#[derive(Debug, Clone, PartialEq)]
pub struct Rendered {
    /// The PNG file.
    pub png: Vec<u8>,
    /// The count of the first colour.
    pub low: f64,
    /// The count of the last colour.
    pub high: f64,
    /// Columns of the PNG.
    pub width: usize,
    /// Rows of the PNG.
    pub height: usize,
}

/// Why a frame could not be rendered.
#[derive(Debug, thiserror::Error)]
pub enum RenderError {
    /// The query's `cmap` names no colormap.
    #[error("unknown colormap {0:?}: inferno, magma, viridis, greys or turbo")]
    Colormap(String),
    /// The query's `scale` (or its `min`/`max`) is not usable.
    #[error("scale: {0}")]
    Scale(String),
    /// The binning is out of range, or leaves no pixel.
    #[error("bin {bin} of a {height}×{width} frame: {reason}")]
    Bin {
        /// The binning asked for.
        bin: usize,
        /// The frame's rows.
        height: usize,
        /// The frame's columns.
        width: usize,
        /// What is wrong.
        reason: &'static str,
    },
    /// The frame's pixels are not `width` × `height`.
    #[error("a {height}×{width} frame has {pixels} pixels")]
    Shape {
        /// Rows.
        height: usize,
        /// Columns.
        width: usize,
        /// Pixels present.
        pixels: usize,
    },
    /// The encoder refused (a size beyond PNG's).
    #[error("PNG encoding: {0}")]
    Encode(#[from] ::png::EncodingError),
}

/// Renders `frame` as an 8-bit indexed PNG whose palette is the colormap.
pub fn render(frame: &Frame, options: &RenderOptions) -> Result<Rendered, RenderError> {
    let (width, height) = (frame.width, frame.height);
    if width.checked_mul(height) != Some(frame.pixels.len()) {
        return Err(RenderError::Shape {
            height,
            width,
            pixels: frame.pixels.len(),
        });
    }
    let bin = options.bin;
    let bin_error = |reason| RenderError::Bin {
        bin,
        height,
        width,
        reason,
    };
    if !(1..=MAX_BIN).contains(&bin) {
        return Err(bin_error("must be 1 to 16"));
    }
    let (w, h) = (width / bin, height / bin);
    if w == 0 || h == 0 {
        return Err(bin_error("no block fits"));
    }
    let binned;
    let pixels: &[f32] = if bin == 1 {
        &frame.pixels
    } else {
        binned = beamflow_protocol::bin_mean(&frame.pixels, width, bin).0;
        &binned
    };
    let (low, high) = range(pixels, options.scale);
    let span = high - low;
    let indices: Vec<u8> = pixels
        .iter()
        .map(|&v| {
            let v = f64::from(v);
            // A constant frame (no span) is all the first colour, as are non-finite pixels.
            if !(v.is_finite() && span > 0.0) {
                return 0;
            }
            // In 0..=255 after the clamp, so the cast is exact.
            ((v - low) / span * 255.0).round().clamp(0.0, 255.0) as u8
        })
        .collect();
    let png = encode(&indices, w, h, options.colormap)?;
    Ok(Rendered {
        png,
        low,
        high,
        width: w,
        height: h,
    })
}

/// The colormap as a 256 × 1 indexed PNG, the first colour on the left: the page stretches it
/// into its colourbar.
///
/// # Panics
///
/// Never in practice: a 256 × 1 image of 256 indices is always encodable into memory.
pub fn colorbar(cmap: Colormap) -> Vec<u8> {
    let indices: Vec<u8> = (0..=255).collect();
    encode(&indices, 256, 1, cmap).expect("a 256×1 indexed image encodes")
}

/// The counts the colours span. With no finite pixel the range is 0..0 (all the first colour).
fn range(pixels: &[f32], scale: Scale) -> (f64, f64) {
    match scale {
        Scale::Fixed { low, high } => (low, high),
        Scale::Auto => {
            let (low, high) = pixels
                .iter()
                .filter(|v| v.is_finite())
                .fold((f32::INFINITY, f32::NEG_INFINITY), |(lo, hi), &v| {
                    (lo.min(v), hi.max(v))
                });
            if low <= high {
                (f64::from(low), f64::from(high))
            } else {
                (0.0, 0.0)
            }
        }
        Scale::Robust => {
            let mut finite: Vec<f32> = pixels.iter().copied().filter(|v| v.is_finite()).collect();
            if finite.is_empty() {
                return (0.0, 0.0);
            }
            let mut percentile = |p: f64| {
                let last = finite.len() - 1;
                // Nearest rank: in 0..=last since p is in 0..=1.
                let rank = ((last as f64) * p).round() as usize;
                let (_, value, _) = finite.select_nth_unstable_by(rank.min(last), f32::total_cmp);
                f64::from(*value)
            };
            (percentile(ROBUST_LOW), percentile(ROBUST_HIGH))
        }
    }
}

/// One byte per pixel, `w` × `h`, as an indexed PNG with the colormap's palette.
fn encode(indices: &[u8], w: usize, h: usize, cmap: Colormap) -> Result<Vec<u8>, RenderError> {
    let too_large = || RenderError::Encode(::png::EncodingError::LimitsExceeded);
    let width = u32::try_from(w).map_err(|_| too_large())?;
    let height = u32::try_from(h).map_err(|_| too_large())?;
    let palette: Vec<u8> = cmap.palette().into_iter().flatten().collect();
    let mut png = Vec::with_capacity(indices.len() / 2 + 1024);
    let mut encoder = ::png::Encoder::new(&mut png, width, height);
    encoder.set_color(::png::ColorType::Indexed);
    encoder.set_depth(::png::BitDepth::Eight);
    encoder.set_palette(palette);
    // Made per request and per frame: speed matters more than the last few percent of size.
    encoder.set_compression(::png::Compression::Fast);
    let mut writer = encoder.write_header()?;
    writer.write_image_data(indices)?;
    writer.finish()?;
    Ok(png)
}

#[cfg(test)]
mod tests {
    use beamflow_protocol::EventNumber;

    use super::*;

    fn frame(width: usize, height: usize, pixels: Vec<f32>) -> Frame {
        Frame {
            event_number: EventNumber(7),
            width,
            height,
            bin: 1,
            pixels,
        }
    }

    /// The PNG's size, colour type, palette and indices.
    fn decode(png: &[u8]) -> (u32, u32, ::png::ColorType, Vec<u8>, Vec<u8>) {
        let decoder = ::png::Decoder::new(std::io::Cursor::new(png));
        let mut reader = decoder.read_info().expect("a PNG");
        let info = reader.info();
        let (width, height, color) = (info.width, info.height, info.color_type);
        let palette = info.palette.as_deref().unwrap_or_default().to_vec();
        let mut indices = vec![0; reader.output_buffer_size().expect("a size")];
        reader.next_frame(&mut indices).expect("a frame");
        (width, height, color, palette, indices)
    }

    fn render_with(frame: &Frame, scale: Scale) -> (Rendered, Vec<u8>) {
        let options = RenderOptions {
            scale,
            ..RenderOptions::default()
        };
        let rendered = render(frame, &options).expect("rendered");
        let (_, _, _, _, indices) = decode(&rendered.png);
        (rendered, indices)
    }

    #[test]
    fn a_frame_is_an_indexed_png_whose_palette_is_the_colormap() {
        let ramp = frame(6, 4, (0..24).map(|i| i as f32).collect());
        for cmap in Colormap::ALL {
            assert_eq!(cmap.name().parse::<Colormap>().expect("its name"), cmap);
            let options = RenderOptions {
                colormap: cmap,
                ..RenderOptions::default()
            };
            let rendered = render(&ramp, &options).expect("rendered");
            let (width, height, color, palette, indices) = decode(&rendered.png);
            assert_eq!(
                (width, height, rendered.width, rendered.height),
                (6, 4, 6, 4)
            );
            assert_eq!(color, ::png::ColorType::Indexed);
            assert_eq!(indices.len(), 24);
            let gradient = match cmap {
                Colormap::Inferno => colorous::INFERNO,
                Colormap::Magma => colorous::MAGMA,
                Colormap::Viridis => colorous::VIRIDIS,
                Colormap::Greys => colorous::GREYS,
                Colormap::Turbo => colorous::TURBO,
            };
            let expected: Vec<u8> = (0..256)
                .map(|i| if cmap == Colormap::Greys { 255 - i } else { i })
                .flat_map(|i| gradient.eval_rational(i, 256).into_array())
                .collect();
            assert_eq!(palette, expected, "{cmap:?}");
        }
        assert_eq!(Colormap::Greys.palette()[0], [0, 0, 0], "black is low");
        assert!("jet".parse::<Colormap>().is_err());

        let bar = decode(&colorbar(Colormap::Viridis));
        assert_eq!((bar.0, bar.1), (256, 1));
        assert_eq!(bar.4, (0..=255).collect::<Vec<u8>>());
    }

    #[test]
    fn auto_spans_min_to_max_and_fixed_clamps() {
        let ramp = frame(5, 2, (0..10).map(|i| 100.0 + 10.0 * i as f32).collect());
        let (rendered, indices) = render_with(&ramp, Scale::Auto);
        assert_eq!((rendered.low, rendered.high), (100.0, 190.0));
        assert_eq!(indices[0], 0);
        assert_eq!(indices[9], 255);
        // 130 is a third of the way: 85.
        assert_eq!(indices[3], 85);

        let (rendered, indices) = render_with(
            &ramp,
            Scale::Fixed {
                low: 120.0,
                high: 160.0,
            },
        );
        assert_eq!((rendered.low, rendered.high), (120.0, 160.0));
        assert_eq!(&indices[..3], [0, 0, 0], "below low");
        assert_eq!(&indices[6..], [255; 4], "above high");
        assert_eq!(indices[4], 128, "the middle");

        assert_eq!(
            Scale::parse("fixed", Some(1.0), Some(2.0)).expect("valid"),
            Scale::Fixed {
                low: 1.0,
                high: 2.0
            }
        );
        assert!(Scale::parse("fixed", Some(2.0), Some(1.0)).is_err());
        assert!(Scale::parse("fixed", None, Some(1.0)).is_err());
        assert!(Scale::parse("log", None, None).is_err());
    }

    #[test]
    fn robust_ignores_a_hot_pixel_and_odd_frames_do_not_divide_by_zero() {
        // A 100×100 ramp 0..=99 per row, with one pixel at 1e6.
        let mut pixels: Vec<f32> = (0..10_000).map(|i| (i % 100) as f32).collect();
        pixels[5_050] = 1e6;
        let (rendered, indices) = render_with(&frame(100, 100, pixels), Scale::Robust);
        assert!(rendered.high < 100.0, "{}", rendered.high);
        assert!(rendered.low <= 1.0, "{}", rendered.low);
        assert_eq!(indices[99], 255, "the ramp's top is the top colour");
        assert_eq!(indices[50], 129, "50 of 0..=99: round(128.8)");
        let (auto, _) = render_with(&frame(100, 100, vec![0.0; 10_000]), Scale::Auto);
        assert_eq!((auto.low, auto.high), (0.0, 0.0));

        for scale in [Scale::Robust, Scale::Auto] {
            let (_, indices) = render_with(&frame(3, 1, vec![42.0; 3]), scale);
            assert_eq!(indices, [0, 0, 0], "constant: {scale:?}");
            let (_, indices) = render_with(&frame(3, 1, vec![f32::NAN, 1.0, 2.0]), scale);
            assert_eq!(indices[0], 0, "NaN: {scale:?}");
            let (_, indices) = render_with(&frame(2, 1, vec![f32::NAN; 2]), scale);
            assert_eq!(indices, [0, 0], "nothing finite: {scale:?}");
        }
    }

    #[test]
    fn bin_halves_the_size_and_bad_frames_are_errors() {
        let ramp = frame(7, 5, (0..35).map(|i| i as f32).collect());
        let options = RenderOptions {
            bin: 2,
            scale: Scale::Auto,
            ..RenderOptions::default()
        };
        let rendered = render(&ramp, &options).expect("rendered");
        let (width, height, _, _, indices) = decode(&rendered.png);
        assert_eq!(
            (width, height, rendered.width, rendered.height),
            (3, 2, 3, 2)
        );
        assert_eq!(indices.len(), 6);
        // Block means: (0+1+7+8)/4 = 4 is the lowest, (18+19+25+26)/4 = 22 the highest.
        assert_eq!((rendered.low, rendered.high), (4.0, 22.0));

        for bin in [0, 17, 6] {
            let options = RenderOptions {
                bin,
                ..RenderOptions::default()
            };
            assert!(
                matches!(render(&ramp, &options), Err(RenderError::Bin { .. })),
                "{bin}"
            );
        }
        let wrong = frame(3, 3, vec![0.0; 8]);
        assert!(matches!(
            render(&wrong, &RenderOptions::default()),
            Err(RenderError::Shape { .. })
        ));
    }
}
