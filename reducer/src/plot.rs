//! Plots as PNG files, drawn here pixel by pixel: a scan's line plot with its PeakStats markers,
//! and a 2-D map with its colourbar, for the snapshots folder a beamline reads after a run.
//!
//! No plotting library, no font files: the text is a 5×7 bitmap font kept in this file
//! (`FONT`), scaled by whole pixels, so the same PNG comes out on any machine, headless, with
//! nothing installed. Ticks are "nice" numbers (1, 2 or 5 × 10^k), labelled with as many decimals
//! as their step needs. Colours: Tableau 10 for the series (colorous), the dashboard's viridis
//! ([`Colormap::palette`]) for maps.

use crate::dashboard::png::Colormap;

/// The smallest width or height accepted, in pixels.
pub const MIN_SIZE: u32 = 64;
/// The largest width or height accepted, in pixels (a 4096² RGB image is 48 MiB in memory).
pub const MAX_SIZE: u32 = 4096;
/// A snapshot's usual width: with [`DEFAULT_HEIGHT`], text is drawn at twice the font's size.
pub const DEFAULT_WIDTH: u32 = 800;
/// A snapshot's usual height.
pub const DEFAULT_HEIGHT: u32 = 500;

/// One curve.
#[derive(Debug, Clone, Copy)]
pub struct Series<'a> {
    /// Its name in the legend (none when empty).
    pub label: &'a str,
    /// Abscissae, as many as `y`.
    pub x: &'a [f64],
    /// Ordinates; a non-finite point (of either) is skipped and breaks the line there.
    pub y: &'a [f64],
}

/// A vertical line with a label (PeakStats' cen, com; a fit's centre).
#[derive(Debug, Clone, PartialEq)]
pub struct Marker {
    /// Where, in the x axis' units. A marker outside the data's x range is not drawn.
    pub x: f64,
    /// The text beside the line, e.g. `cen = 1.2345`.
    pub label: String,
}

/// A line plot (BMM's linescan/timescan/xafsscan panels).
#[derive(Debug, Clone)]
pub struct LinePlot<'a> {
    /// Above the plot.
    pub title: &'a str,
    /// Below the x axis.
    pub x_label: &'a str,
    /// Along the y axis.
    pub y_label: &'a str,
    /// The curves, each in its own colour, in the legend in this order.
    pub series: Vec<Series<'a>>,
    /// Dashed vertical lines.
    pub markers: Vec<Marker>,
}

/// A 2-D map (BMM's areascan, bluesky's LiveGrid): `values` row-major `shape = [rows, cols]`,
/// NaN where nothing was measured; `extent = [x_min, x_max, y_min, y_max]` (cells' centres'
/// span). Row 0 is at `y_min`, column 0 at `x_min`; a reversed extent (`x_min > x_max`) flips
/// the cells, not the axis, which always increases to the right and upwards.
#[derive(Debug, Clone, Copy)]
pub struct MapPlot<'a> {
    /// Above the map.
    pub title: &'a str,
    /// Below the x axis (the fast motor's).
    pub x_label: &'a str,
    /// Along the y axis (the slow motor's).
    pub y_label: &'a str,
    /// `[rows, cols]`.
    pub shape: [usize; 2],
    /// `[x_min, x_max, y_min, y_max]`: the first and last cells' centres.
    pub extent: [f64; 4],
    /// `rows × cols` values, row after row; non-finite cells stay background.
    pub values: &'a [f64],
}

/// Why a plot could not be drawn.
#[derive(Debug, thiserror::Error)]
pub enum PlotError {
    /// Width or height outside [`MIN_SIZE`]..=[`MAX_SIZE`].
    #[error("a {width}×{height} plot: width and height must be {MIN_SIZE} to {MAX_SIZE} pixels")]
    Size {
        /// The width asked for.
        width: u32,
        /// The height asked for.
        height: u32,
    },
    /// A series whose `x` and `y` differ in length.
    #[error("series {label:?} has {x} x values and {y} y values")]
    SeriesLength {
        /// The series' label.
        label: String,
        /// Its x values.
        x: usize,
        /// Its y values.
        y: usize,
    },
    /// A map whose values do not fill its shape.
    #[error("a {rows}×{cols} map has {values} values")]
    MapShape {
        /// Rows of the shape.
        rows: usize,
        /// Columns of the shape.
        cols: usize,
        /// Values given.
        values: usize,
    },
    /// A map extent with a NaN or infinite bound.
    #[error("map extent {extent:?} is not finite")]
    Extent {
        /// The extent given.
        extent: [f64; 4],
    },
    /// The PNG encoder refused.
    #[error("PNG encoding: {0}")]
    Encode(#[from] ::png::EncodingError),
}

/// Draws `plot` as a `width` × `height` RGB PNG.
pub fn line_png(plot: &LinePlot<'_>, width: u32, height: u32) -> Result<Vec<u8>, PlotError> {
    render_line(plot, width, height)?.0.png()
}

/// The line plot's pixels, and where its axes are.
fn render_line(plot: &LinePlot<'_>, width: u32, height: u32) -> Result<(Canvas, Frame), PlotError> {
    check_size(width, height)?;
    for series in &plot.series {
        if series.x.len() != series.y.len() {
            return Err(PlotError::SeriesLength {
                label: series.label.to_owned(),
                x: series.x.len(),
                y: series.y.len(),
            });
        }
    }
    let points = || {
        plot.series
            .iter()
            .flat_map(|s| s.x.iter().zip(s.y))
            .filter(|(x, y)| x.is_finite() && y.is_finite())
    };
    let x_range = min_max(points().map(|(x, _)| *x));
    let y_range = min_max(points().map(|(_, y)| *y));
    let (x_lo, x_hi) = padded(x_range, X_MARGIN);
    let (y_lo, y_hi) = padded(y_range, Y_MARGIN);

    // Markers are told apart by colour, named in the legend: labels beside the lines would
    // cover the peak they mark, and cen and com are usually a few pixels apart.
    let markers: Vec<(Rgb, &Marker)> = plot
        .markers
        .iter()
        .enumerate()
        .filter(|(_, m)| m.x.is_finite() && (x_lo..=x_hi).contains(&m.x))
        .map(|(i, m)| (series_colour(plot.series.len() + i), m))
        .collect();
    let entries: Vec<Key<'_>> = plot
        .series
        .iter()
        .enumerate()
        .filter(|(_, s)| !s.label.is_empty())
        .map(|(i, s)| Key {
            colour: series_colour(i),
            label: s.label,
            dashed: false,
        })
        .chain(markers.iter().map(|&(colour, m)| Key {
            colour,
            label: &m.label,
            dashed: true,
        }))
        .collect();
    let mut canvas = Canvas::new(width, height);
    let frame = Frame::lay_out(
        &mut canvas,
        plot.title,
        plot.x_label,
        plot.y_label,
        &entries,
        FrameKind::Line,
        (x_lo, x_hi),
        (y_lo, y_hi),
    );
    let s = frame.scale;
    let radius = 0.5 + 0.5 * f64::from(s);
    canvas.clip = frame.inner;
    for (i, series) in plot.series.iter().enumerate() {
        let colour = series_colour(i);
        let finite = series
            .x
            .iter()
            .zip(series.y)
            .filter(|(x, y)| x.is_finite() && y.is_finite())
            .count();
        // Dots help read a scan of a few dozen points; on a dense series they only blur it.
        let dots =
            finite > 0 && finite * 4 * s as usize <= (frame.inner.x1 - frame.inner.x0) as usize;
        let mut previous: Option<(f64, f64)> = None;
        for (&x, &y) in series.x.iter().zip(series.y) {
            if !(x.is_finite() && y.is_finite()) {
                previous = None;
                continue;
            }
            let here = (frame.x.px(x), frame.y.px(y));
            match previous {
                Some(from) => canvas.segment(from, here, radius, colour),
                None => canvas.disc(here, radius, colour),
            }
            if dots {
                canvas.disc(here, radius + f64::from(s), colour);
            }
            previous = Some(here);
        }
    }
    let dash = i64::from(6 * s);
    for &(colour, marker) in &markers {
        let px = frame.x.px(marker.x).floor() as i64;
        let mut y = frame.inner.y0;
        while y <= frame.inner.y1 {
            canvas.fill(
                Rect::new(
                    px - i64::from(s / 2),
                    y,
                    px + i64::from((s - 1) / 2),
                    y + dash - 1,
                ),
                colour,
            );
            y += dash + i64::from(4 * s);
        }
    }
    if x_range.is_none() {
        frame.no_data(&mut canvas);
    }
    canvas.clip = canvas.whole();
    Ok((canvas, frame))
}

/// Draws `plot` as a `width` × `height` RGB PNG, with a viridis colourbar spanning the finite
/// values' minimum to maximum.
pub fn map_png(plot: &MapPlot<'_>, width: u32, height: u32) -> Result<Vec<u8>, PlotError> {
    render_map(plot, width, height)?.0.png()
}

/// The map's pixels, and where its axes are.
fn render_map(plot: &MapPlot<'_>, width: u32, height: u32) -> Result<(Canvas, Frame), PlotError> {
    check_size(width, height)?;
    let [rows, cols] = plot.shape;
    if rows.checked_mul(cols) != Some(plot.values.len()) {
        return Err(PlotError::MapShape {
            rows,
            cols,
            values: plot.values.len(),
        });
    }
    if !plot.extent.iter().all(|v| v.is_finite()) {
        return Err(PlotError::Extent {
            extent: plot.extent,
        });
    }
    let [x_min, x_max, y_min, y_max] = plot.extent;
    let (x_first, dx) = cells(x_min, x_max, cols);
    let (y_first, dy) = cells(y_min, y_max, rows);
    let x_ends = edges(x_first, dx, cols);
    let y_ends = edges(y_first, dy, rows);
    let value_range = min_max(plot.values.iter().copied());
    let (v_lo, v_hi) = match value_range {
        Some((lo, hi)) if lo < hi => (lo, hi),
        other => padded(other, 0.0),
    };

    let mut canvas = Canvas::new(width, height);
    let frame = Frame::lay_out(
        &mut canvas,
        plot.title,
        plot.x_label,
        plot.y_label,
        &[],
        FrameKind::Map {
            values: (v_lo, v_hi),
        },
        x_ends,
        y_ends,
    );
    let palette = Colormap::Viridis.palette();
    canvas.clip = frame.inner;
    for (i, row) in plot.values.chunks(cols.max(1)).enumerate() {
        let cy = y_first + i as f64 * dy;
        let (ya, yb) = order(frame.y.px(cy - dy / 2.0), frame.y.px(cy + dy / 2.0));
        for (j, &v) in row.iter().enumerate() {
            if !v.is_finite() {
                continue;
            }
            let cx = x_first + j as f64 * dx;
            let (xa, xb) = order(frame.x.px(cx - dx / 2.0), frame.x.px(cx + dx / 2.0));
            // A pixel belongs to the cell holding its centre: neighbours share edges exactly, so
            // there are no seams and no overlaps.
            let rect = Rect::new(
                (xa - 0.5).ceil() as i64,
                (ya - 0.5).ceil() as i64,
                (xb - 0.5).ceil() as i64 - 1,
                (yb - 0.5).ceil() as i64 - 1,
            );
            canvas.fill(rect, palette[colour_index(v, v_lo, v_hi)]);
        }
    }
    if value_range.is_none() {
        frame.no_data(&mut canvas);
    }
    canvas.clip = canvas.whole();
    if let Some(bar) = frame.colourbar {
        let span = (bar.y1 - bar.y0).max(1) as f64;
        for y in bar.y0..=bar.y1 {
            // In 0..=255 after the clamp, so the cast is exact.
            let index = ((bar.y1 - y) as f64 / span * 255.0)
                .round()
                .clamp(0.0, 255.0) as usize;
            canvas.fill(Rect::new(bar.x0, y, bar.x1, y), palette[index]);
        }
    }
    Ok((canvas, frame))
}

/// The first cell's centre and the step between centres along one axis of `n` cells whose
/// centres span `first..=last`. One cell, or a zero span, gets a cell a unit wide, so it shows.
fn cells(first: f64, last: f64, n: usize) -> (f64, f64) {
    let span = last - first;
    if n > 1 && span != 0.0 && span.is_finite() {
        (first, span / (n - 1) as f64)
    } else if n == 1 && span != 0.0 && span.is_finite() {
        ((first + last) / 2.0, span.abs())
    } else {
        (first, 1.0)
    }
}

/// The outer edges, lowest first, of `n` cells (at least one, so an empty map still has axes).
fn edges(first: f64, step: f64, n: usize) -> (f64, f64) {
    let last = first + n.saturating_sub(1) as f64 * step;
    order(first - step / 2.0, last + step / 2.0)
}

fn order(a: f64, b: f64) -> (f64, f64) {
    if a <= b { (a, b) } else { (b, a) }
}

/// A value's index in a 256-colour palette spanning `lo..hi`.
fn colour_index(v: f64, lo: f64, hi: f64) -> usize {
    // In 0..=255 after the clamp, so the cast is exact.
    ((v - lo) / (hi - lo) * 255.0).round().clamp(0.0, 255.0) as usize
}

fn check_size(width: u32, height: u32) -> Result<(), PlotError> {
    let range = MIN_SIZE..=MAX_SIZE;
    if range.contains(&width) && range.contains(&height) {
        Ok(())
    } else {
        Err(PlotError::Size { width, height })
    }
}

/// The smallest and largest finite value, if any.
fn min_max(values: impl Iterator<Item = f64>) -> Option<(f64, f64)> {
    values
        .filter(|v| v.is_finite())
        .fold(None, |range, v| match range {
            None => Some((v, v)),
            Some((lo, hi)) => Some((lo.min(v), hi.max(v))),
        })
}

/// Fraction of the x data range left free at each side, so end points are not on the frame.
const X_MARGIN: f64 = 0.02;
/// Fraction of the y data range left free above and below.
const Y_MARGIN: f64 = 0.05;

/// The range widened by `fraction` of its span at each end; an empty range becomes 0..1 and a
/// single value gets a range around it (10 % of its size, or ±1 around 0).
fn padded(range: Option<(f64, f64)>, fraction: f64) -> (f64, f64) {
    match range {
        None => (0.0, 1.0),
        Some((lo, hi)) if hi > lo => {
            let pad = (hi - lo) * fraction;
            (lo - pad, hi + pad)
        }
        Some((v, _)) => {
            let half = if v == 0.0 { 1.0 } else { v.abs() * 0.1 };
            (v - half, v + half)
        }
    }
}

/// Nice tick values inside `lo..=hi`: multiples of a step 1, 2 or 5 × 10^k, the smallest such
/// step giving at most `target` intervals across the range.
#[derive(Debug, Clone, PartialEq)]
struct Ticks {
    values: Vec<f64>,
    /// The step's power of ten: labels need `-k` decimals.
    k: i32,
}

/// At most this many ticks, whatever the range: a guard against absurd spans.
const MAX_TICKS: i64 = 100;

fn nice_ticks(lo: f64, hi: f64, target: usize) -> Ticks {
    let span = hi - lo;
    if !(span.is_finite() && span > 0.0) {
        return Ticks {
            values: Vec::new(),
            k: 0,
        };
    }
    let raw = span / target.max(1) as f64;
    let mut k = raw.log10().floor() as i32;
    // Dividing by 10^-k rather than multiplying by 10^k keeps 0.1, 0.2, ... exact as decimals.
    let scaled = |n: f64, k: i32| {
        if k < 0 {
            n / 10f64.powi(-k)
        } else {
            n * 10f64.powi(k)
        }
    };
    let mut m = 10.0;
    for candidate in [1.0, 2.0, 5.0, 10.0] {
        if scaled(candidate, k) >= raw * (1.0 - 1e-9) {
            m = candidate;
            break;
        }
    }
    if m == 10.0 {
        m = 1.0;
        k += 1;
    }
    let step = scaled(m, k);
    let first = (lo / step - 1e-9).ceil();
    let last = (hi / step + 1e-9).floor();
    if !(first.is_finite() && last.is_finite()) || last - first > MAX_TICKS as f64 {
        return Ticks {
            values: Vec::new(),
            k,
        };
    }
    // Whole numbers of steps within ±MAX_TICKS of each other: the casts are exact.
    let values = (first as i64..=last as i64)
        .map(|n| {
            let v = scaled(n as f64 * m, k);
            if v == 0.0 { 0.0 } else { v }
        })
        .collect();
    Ticks { values, k }
}

impl Ticks {
    /// The labels: fixed decimals for everyday magnitudes; for very large or very small ones
    /// (counts in millions, currents in nanoamperes) one exponent for the whole axis, so the
    /// mantissas line up: 1.0e6, 1.2e6, 1.4e6.
    fn labels(&self) -> Vec<String> {
        let largest = self.values.iter().fold(0.0f64, |m, v| m.max(v.abs()));
        let exponent = (largest >= 1e6 || (largest > 0.0 && largest < 1e-3))
            .then(|| largest.log10().floor() as i32);
        self.values
            .iter()
            .map(|&v| match exponent {
                _ if v == 0.0 => "0".to_owned(),
                Some(e) => {
                    let decimals = (e - self.k).clamp(0, 15) as usize;
                    let mantissa = if e < 0 {
                        v * 10f64.powi(-e)
                    } else {
                        v / 10f64.powi(e)
                    };
                    format!("{mantissa:.decimals$}e{e}")
                }
                None => {
                    let decimals = (-self.k).clamp(0, 15) as usize;
                    format!("{v:.decimals$}")
                }
            })
            .collect()
    }
}

type Rgb = [u8; 3];

const BACKGROUND: Rgb = [255, 255, 255];
const INK: Rgb = [0x22, 0x22, 0x22];
const GRID: Rgb = [0xE6, 0xE6, 0xE6];
const MARKER: Rgb = [0x40, 0x40, 0x40];

fn series_colour(i: usize) -> Rgb {
    colorous::TABLEAU10[i % colorous::TABLEAU10.len()].into_array()
}

/// An inclusive pixel rectangle.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Rect {
    x0: i64,
    y0: i64,
    x1: i64,
    y1: i64,
}

impl Rect {
    fn new(x0: i64, y0: i64, x1: i64, y1: i64) -> Self {
        Self { x0, y0, x1, y1 }
    }

    fn intersect(self, other: Rect) -> Rect {
        Rect::new(
            self.x0.max(other.x0),
            self.y0.max(other.y0),
            self.x1.min(other.x1),
            self.y1.min(other.y1),
        )
    }
}

/// Data to pixel along one axis: `lo` maps to `p_lo`, `hi` to `p_hi` (pixel coordinates, pixel
/// `i` covering `i..i + 1`).
#[derive(Debug, Clone, Copy)]
struct Axis {
    lo: f64,
    hi: f64,
    p_lo: f64,
    p_hi: f64,
}

impl Axis {
    fn px(&self, v: f64) -> f64 {
        self.p_lo + (v - self.lo) / (self.hi - self.lo) * (self.p_hi - self.p_lo)
    }
}

/// An RGB image with a clip rectangle every drawing call respects.
struct Canvas {
    width: u32,
    height: u32,
    pixels: Vec<u8>,
    clip: Rect,
}

impl Canvas {
    fn new(width: u32, height: u32) -> Self {
        let size = width as usize * height as usize;
        let pixels = std::iter::repeat_n(BACKGROUND, size).flatten().collect();
        let mut canvas = Self {
            width,
            height,
            pixels,
            clip: Rect::new(0, 0, 0, 0),
        };
        canvas.clip = canvas.whole();
        canvas
    }

    fn whole(&self) -> Rect {
        Rect::new(0, 0, i64::from(self.width) - 1, i64::from(self.height) - 1)
    }

    fn fill(&mut self, rect: Rect, colour: Rgb) {
        let r = rect.intersect(self.clip).intersect(self.whole());
        let row = self.width as usize * 3;
        // After the intersection every coordinate is inside the image: the casts are exact.
        for y in r.y0..=r.y1 {
            let start = y as usize * row;
            for x in r.x0..=r.x1 {
                let at = start + x as usize * 3;
                self.pixels[at..at + 3].copy_from_slice(&colour);
            }
        }
    }

    fn dot(&mut self, x: i64, y: i64, colour: Rgb) {
        self.fill(Rect::new(x, y, x, y), colour);
    }

    /// The pixels whose centres lie within `radius` of `centre`.
    fn disc(&mut self, (cx, cy): (f64, f64), radius: f64, colour: Rgb) {
        if !(cx.is_finite() && cy.is_finite()) {
            return;
        }
        let r2 = radius * radius;
        let (xa, xb) = ((cx - radius).floor() as i64, (cx + radius).ceil() as i64);
        let (ya, yb) = ((cy - radius).floor() as i64, (cy + radius).ceil() as i64);
        for y in ya..=yb {
            for x in xa..=xb {
                let (ddx, ddy) = (x as f64 + 0.5 - cx, y as f64 + 0.5 - cy);
                if ddx * ddx + ddy * ddy <= r2 {
                    self.dot(x, y, colour);
                }
            }
        }
    }

    /// A line `2 × radius` wide with round ends, stamped every half pixel.
    fn segment(&mut self, from: (f64, f64), to: (f64, f64), radius: f64, colour: Rgb) {
        let length = (to.0 - from.0).hypot(to.1 - from.1);
        if !length.is_finite() {
            return;
        }
        // Bounded by the image's diagonal (the points are inside the plot), so at most ~12k.
        let steps = (length * 2.0).ceil().min(20_000.0) as usize;
        for i in 0..=steps {
            let t = if steps == 0 {
                0.0
            } else {
                i as f64 / steps as f64
            };
            let p = (from.0 + (to.0 - from.0) * t, from.1 + (to.1 - from.1) * t);
            self.disc(p, radius, colour);
        }
    }

    /// `text` with its top-left corner at `(x, y)`, each font pixel `scale` × `scale`.
    fn text(&mut self, x: i64, y: i64, text: &str, scale: u32, colour: Rgb) {
        let s = i64::from(scale);
        for (i, c) in text.chars().enumerate() {
            let left = x + i as i64 * GLYPH_ADVANCE * s;
            for (gy, bits) in glyph(c).iter().enumerate() {
                for gx in 0..GLYPH_WIDTH {
                    if bits & (1 << (GLYPH_WIDTH - 1 - gx)) != 0 {
                        let (px, py) = (left + gx * s, y + gy as i64 * s);
                        self.fill(Rect::new(px, py, px + s - 1, py + s - 1), colour);
                    }
                }
            }
        }
    }

    /// `text` read bottom to top, the bottom-left corner of its box at `(x, y)`.
    fn text_up(&mut self, x: i64, y: i64, text: &str, scale: u32, colour: Rgb) {
        let s = i64::from(scale);
        for (i, c) in text.chars().enumerate() {
            for (gy, bits) in glyph(c).iter().enumerate() {
                for gx in 0..GLYPH_WIDTH {
                    if bits & (1 << (GLYPH_WIDTH - 1 - gx)) != 0 {
                        let along = i as i64 * GLYPH_ADVANCE + gx;
                        let (px, py) = (x + gy as i64 * s, y - (along + 1) * s);
                        self.fill(Rect::new(px, py, px + s - 1, py + s - 1), colour);
                    }
                }
            }
        }
    }

    fn png(self) -> Result<Vec<u8>, PlotError> {
        let mut png = Vec::with_capacity(self.pixels.len() / 8 + 1024);
        let mut encoder = ::png::Encoder::new(&mut png, self.width, self.height);
        encoder.set_color(::png::ColorType::Rgb);
        encoder.set_depth(::png::BitDepth::Eight);
        let mut writer = encoder.write_header()?;
        writer.write_image_data(&self.pixels)?;
        writer.finish()?;
        Ok(png)
    }
}

/// The text scale for an image: 1 below ~400 × 250, 2 at the default 800 × 500, up to 4.
fn text_scale(width: u32, height: u32) -> u32 {
    let size = f64::from(width).min(f64::from(height) * 1.6);
    ((size / 400.0).round() as u32).clamp(1, 4)
}

fn text_width(text: &str, scale: u32) -> i64 {
    let n = text.chars().count() as i64;
    if n == 0 {
        0
    } else {
        (n * GLYPH_ADVANCE - 1) * i64::from(scale)
    }
}

/// `text` cut to at most `width` pixels at `scale`, ending in `..` when cut.
fn fit(text: &str, width: i64, scale: u32) -> String {
    if text_width(text, scale) <= width {
        return text.to_owned();
    }
    // n glyphs take n advances less the last gap.
    let room = ((width + i64::from(scale)) / (GLYPH_ADVANCE * i64::from(scale))).max(2) as usize;
    let mut cut: String = text.chars().take(room.saturating_sub(2)).collect();
    cut.push_str("..");
    cut
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum FrameKind {
    /// Axes padded around the data, a point's pixel is the one holding its centre.
    Line,
    /// Axes from edge to edge of the cells, a colourbar for `values` on the right.
    Map { values: (f64, f64) },
}

/// The drawn axes: where the data goes and how it maps there.
struct Frame {
    scale: u32,
    /// The plot area inside the frame's lines.
    inner: Rect,
    x: Axis,
    y: Axis,
    /// The colourbar's strip, for a map.
    colourbar: Option<Rect>,
}

impl Frame {
    /// Lays out and draws everything but the data: title, legend, frame, grid, ticks, labels.
    #[allow(clippy::too_many_arguments)]
    fn lay_out(
        canvas: &mut Canvas,
        title: &str,
        x_label: &str,
        y_label: &str,
        legend: &[Key<'_>],
        kind: FrameKind,
        (x_lo, x_hi): (f64, f64),
        (y_lo, y_hi): (f64, f64),
    ) -> Frame {
        let (width, height) = (i64::from(canvas.width), i64::from(canvas.height));
        let s = text_scale(canvas.width, canvas.height);
        let si = i64::from(s);
        let ch = 7 * si;
        let pad = 5 * si;
        let line = ((si + 1) / 2).max(1);
        let tick = 3 * si;

        // Top: title (a size bigger when it fits), then the legend rows.
        let mut top = pad;
        if !title.is_empty() {
            let room = width - 2 * pad;
            let ts = if text_width(title, s + 1) <= room {
                s + 1
            } else {
                s
            };
            let title = fit(title, room, ts);
            let tw = text_width(&title, ts);
            let tx = (width - tw) / 2;
            // Bold: drawn twice, a pixel apart.
            canvas.text(tx, top, &title, ts, INK);
            canvas.text(tx + 1, top, &title, ts, INK);
            top += 7 * i64::from(ts) + 2 * pad;
        }
        let legend_rows = legend_layout(legend, width - 2 * pad, s);
        for (row, entries) in legend_rows.iter().enumerate() {
            let row_w: i64 = entries.iter().map(|e| e.width).sum::<i64>()
                + LEGEND_GAP * si * (entries.len() as i64 - 1).max(0);
            let mut x = (width - row_w) / 2;
            let y = top + row as i64 * (ch + 4 * si);
            for entry in entries {
                let sample = LEGEND_SAMPLE * si;
                let (ya, yb) = (y + ch / 2 - si / 2 - 1, y + ch / 2 + si / 2);
                if entry.dashed {
                    for dash in 0..3 {
                        let xa = x + dash * 7 * si;
                        canvas.fill(Rect::new(xa, ya, xa + 4 * si - 1, yb), entry.colour);
                    }
                } else {
                    canvas.fill(Rect::new(x, ya, x + sample - 1, yb), entry.colour);
                }
                canvas.text(x + sample + si * 4, y, &entry.label, s, INK);
                x += entry.width + LEGEND_GAP * si;
            }
        }
        if !legend_rows.is_empty() {
            top += legend_rows.len() as i64 * (ch + 4 * si) + si;
        }
        let y0 = top + line;

        // Bottom: x label, then the x tick labels above it.
        let mut bottom = height - pad;
        if !x_label.is_empty() {
            bottom -= ch + 3 * si;
        }
        let y1 = (bottom - ch - 2 * si - tick - line).max(y0 + 1);

        let y_axis = |y0: i64, y1: i64| match kind {
            FrameKind::Line => Axis {
                lo: y_lo,
                hi: y_hi,
                p_lo: y1 as f64 + 0.5,
                p_hi: y0 as f64 + 0.5,
            },
            FrameKind::Map { .. } => Axis {
                lo: y_lo,
                hi: y_hi,
                p_lo: (y1 + 1) as f64,
                p_hi: y0 as f64,
            },
        };
        let y_target = ((y1 - y0) / (ch * 4)).clamp(2, 10) as usize;
        let y_ticks = nice_ticks(y_lo, y_hi, y_target);
        let y_labels = y_ticks.labels();
        let y_label_w = y_labels.iter().map(|l| text_width(l, s)).max().unwrap_or(0);

        // Left: y label (read upwards), y tick labels, ticks.
        let mut left = pad;
        if !y_label.is_empty() {
            left += ch + 3 * si;
        }
        let x0 = left + y_label_w + 2 * si + tick + line;

        // Right: room for half the last x tick label, or the colourbar and its labels.
        let (x1, colourbar, bar_ticks) = match kind {
            FrameKind::Line => (
                (width - pad - 3 * si * GLYPH_ADVANCE).max(x0 + 1),
                None,
                None,
            ),
            FrameKind::Map { values: (lo, hi) } => {
                let bar_ticks = nice_ticks(lo, hi, y_target);
                let labels = bar_ticks.labels();
                let label_w = labels.iter().map(|l| text_width(l, s)).max().unwrap_or(0);
                let bar_w = 4 * ch / 3;
                let bar_x1 = width - pad - label_w - 2 * si - tick - line;
                let bar_x0 = bar_x1 - bar_w + 1;
                let x1 = (bar_x0 - line - 5 * ch / 2).max(x0 + 1);
                let bar = Rect::new(bar_x0, y0, bar_x1, y1);
                (x1, Some(bar), Some((bar_ticks, labels, (lo, hi))))
            }
        };
        let inner = Rect::new(x0, y0, x1, y1);
        let x = match kind {
            FrameKind::Line => Axis {
                lo: x_lo,
                hi: x_hi,
                p_lo: x0 as f64 + 0.5,
                p_hi: x1 as f64 + 0.5,
            },
            FrameKind::Map { .. } => Axis {
                lo: x_lo,
                hi: x_hi,
                p_lo: x0 as f64,
                p_hi: (x1 + 1) as f64,
            },
        };
        let y = y_axis(y0, y1);

        // X ticks: as many as fit with two characters between labels.
        let mut x_target = ((x1 - x0) / (GLYPH_ADVANCE * si * 8)).clamp(2, 12) as usize;
        let (x_ticks, x_labels) = loop {
            let ticks = nice_ticks(x_lo, x_hi, x_target);
            let labels = ticks.labels();
            let widest = labels.iter().map(|l| text_width(l, s)).max().unwrap_or(0);
            let spacing = match ticks.values.as_slice() {
                [a, b, ..] => (x.px(*b) - x.px(*a)).abs() as i64,
                _ => i64::MAX,
            };
            if widest + 2 * GLYPH_ADVANCE * si <= spacing || x_target <= 1 {
                break (ticks, labels);
            }
            x_target -= 1;
        };

        // Grid under a line plot's data (a map's cells would hide it but for missing ones, where
        // it would read as data), frame around it.
        let grid = if kind == FrameKind::Line {
            x_ticks.values.as_slice()
        } else {
            &[]
        };
        let y_grid = if kind == FrameKind::Line {
            y_ticks.values.as_slice()
        } else {
            &[]
        };
        for &v in grid {
            let px = x.px(v).floor() as i64;
            canvas.fill(Rect::new(px, y0, px, y1).intersect(inner), GRID);
        }
        for &v in y_grid {
            let py = y.px(v).floor() as i64;
            canvas.fill(Rect::new(x0, py, x1, py).intersect(inner), GRID);
        }
        draw_box(canvas, inner, line);
        for (&v, label) in x_ticks.values.iter().zip(&x_labels) {
            let px = x.px(v).floor() as i64;
            if !(x0..=x1).contains(&px) {
                continue;
            }
            canvas.fill(
                Rect::new(px - line / 2, y1 + 1, px + (line - 1) / 2, y1 + line + tick),
                INK,
            );
            let w = text_width(label, s);
            canvas.text(px - w / 2, y1 + line + tick + 2 * si, label, s, INK);
        }
        for (&v, label) in y_ticks.values.iter().zip(&y_labels) {
            let py = y.px(v).floor() as i64;
            if !(y0..=y1).contains(&py) {
                continue;
            }
            canvas.fill(
                Rect::new(x0 - line - tick, py - line / 2, x0 - 1, py + (line - 1) / 2),
                INK,
            );
            let w = text_width(label, s);
            canvas.text(x0 - line - tick - 2 * si - w, py - ch / 2, label, s, INK);
        }
        if !x_label.is_empty() {
            let label = fit(x_label, width - 2 * pad, s);
            let w = text_width(&label, s);
            let cx = (x0 + x1) / 2;
            let tx = (cx - w / 2).clamp(pad, (width - pad - w).max(pad));
            canvas.text(tx, height - pad - ch, &label, s, INK);
        }
        if !y_label.is_empty() {
            let label = fit(y_label, height - 2 * pad, s);
            let w = text_width(&label, s);
            let cy = (y0 + y1) / 2;
            let ty = (cy + w / 2).clamp((pad + w).min(height - pad), height - pad);
            canvas.text_up(pad, ty, &label, s, INK);
        }
        if let (Some(bar), Some((ticks, labels, (lo, hi)))) = (colourbar, bar_ticks) {
            draw_box(canvas, bar, line);
            let axis = Axis {
                lo,
                hi,
                p_lo: (bar.y1 + 1) as f64,
                p_hi: bar.y0 as f64,
            };
            for (&v, label) in ticks.values.iter().zip(&labels) {
                let py = (axis.px(v).floor() as i64).min(bar.y1);
                canvas.fill(
                    Rect::new(
                        bar.x1 + 1,
                        py - line / 2,
                        bar.x1 + line + tick,
                        py + (line - 1) / 2,
                    ),
                    INK,
                );
                canvas.text(bar.x1 + line + tick + 2 * si, py - ch / 2, label, s, INK);
            }
        }
        Frame {
            scale: s,
            inner,
            x,
            y,
            colourbar,
        }
    }

    /// "no data" in the middle of the plot area.
    fn no_data(&self, canvas: &mut Canvas) {
        let text = "no data";
        let (w, h) = (text_width(text, self.scale), 7 * i64::from(self.scale));
        let cx = (self.inner.x0 + self.inner.x1) / 2;
        let cy = (self.inner.y0 + self.inner.y1) / 2;
        canvas.text(cx - w / 2, cy - h / 2, text, self.scale, MARKER);
    }
}

/// A frame `line` pixels wide just outside `inner`.
fn draw_box(canvas: &mut Canvas, inner: Rect, line: i64) {
    let outer = Rect::new(
        inner.x0 - line,
        inner.y0 - line,
        inner.x1 + line,
        inner.y1 + line,
    );
    canvas.fill(Rect::new(outer.x0, outer.y0, outer.x1, inner.y0 - 1), INK);
    canvas.fill(Rect::new(outer.x0, inner.y1 + 1, outer.x1, outer.y1), INK);
    canvas.fill(Rect::new(outer.x0, outer.y0, inner.x0 - 1, outer.y1), INK);
    canvas.fill(Rect::new(inner.x1 + 1, outer.y0, outer.x1, outer.y1), INK);
}

/// The colour sample's length in a legend entry, in font pixels.
const LEGEND_SAMPLE: i64 = 18;
/// Between legend entries, in font pixels.
const LEGEND_GAP: i64 = 12;
/// Legend rows at most; further entries are summed up as "+N more".
const LEGEND_ROWS: usize = 3;

/// What the legend shows of a series (a solid line) or a marker (a dashed one).
struct Key<'a> {
    colour: Rgb,
    label: &'a str,
    dashed: bool,
}

/// A legend entry laid out.
struct LegendEntry {
    colour: Rgb,
    label: String,
    dashed: bool,
    width: i64,
}

/// The legend's entries in rows no wider than `room`.
fn legend_layout(entries: &[Key<'_>], room: i64, s: u32) -> Vec<Vec<LegendEntry>> {
    let si = i64::from(s);
    let mut rows: Vec<Vec<LegendEntry>> = Vec::new();
    let mut used = 0;
    for (i, key) in entries.iter().enumerate() {
        let label = fit(key.label, (room - (LEGEND_SAMPLE + 4) * si).max(0), s);
        let e = LegendEntry {
            colour: key.colour,
            width: (LEGEND_SAMPLE + 4) * si + text_width(&label, s),
            label,
            dashed: key.dashed,
        };
        let fits = rows
            .last()
            .is_some_and(|row| !row.is_empty() && used + LEGEND_GAP * si + e.width <= room);
        if fits {
            used += LEGEND_GAP * si + e.width;
            if let Some(row) = rows.last_mut() {
                row.push(e);
            }
            continue;
        }
        if rows.len() == LEGEND_ROWS {
            if let Some(row) = rows.last_mut() {
                row.pop();
                let more = format!("+{} more", entries.len() - i + 1);
                row.push(LegendEntry {
                    colour: BACKGROUND,
                    dashed: false,
                    width: (LEGEND_SAMPLE + 4) * si + text_width(&more, s),
                    label: more,
                });
            }
            break;
        }
        used = e.width;
        rows.push(vec![e]);
    }
    rows
}

/// Font pixels per glyph row.
const GLYPH_WIDTH: i64 = 5;
/// Font pixels from one glyph's left edge to the next's.
const GLYPH_ADVANCE: i64 = 6;

/// The glyph of `c`: a box for what the font lacks (anything outside printable ASCII).
fn glyph(c: char) -> &'static [u8; 7] {
    const MISSING: [u8; 7] = [0x1F, 0x11, 0x11, 0x11, 0x11, 0x11, 0x1F];
    match u32::from(c) {
        // In 0..95 after the subtraction.
        code @ 32..=126 => &FONT[(code - 32) as usize],
        _ => &MISSING,
    }
}

/// A 5×7 font for ASCII 32..=126: seven rows per glyph, top first, bit 4 the leftmost pixel.
/// Drawn for this file; lowercase descenders sit inside the seven rows.
const FONT: [[u8; 7]; 95] = [
    [0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00], // ' '
    [0x04, 0x04, 0x04, 0x04, 0x04, 0x00, 0x04], // '!'
    [0x0A, 0x0A, 0x0A, 0x00, 0x00, 0x00, 0x00], // '"'
    [0x0A, 0x0A, 0x1F, 0x0A, 0x1F, 0x0A, 0x0A], // '#'
    [0x04, 0x0F, 0x14, 0x0E, 0x05, 0x1E, 0x04], // '$'
    [0x18, 0x19, 0x02, 0x04, 0x08, 0x13, 0x03], // '%'
    [0x0C, 0x12, 0x14, 0x08, 0x15, 0x12, 0x0D], // '&'
    [0x0C, 0x04, 0x08, 0x00, 0x00, 0x00, 0x00], // '\''
    [0x02, 0x04, 0x08, 0x08, 0x08, 0x04, 0x02], // '('
    [0x08, 0x04, 0x02, 0x02, 0x02, 0x04, 0x08], // ')'
    [0x00, 0x04, 0x15, 0x0E, 0x15, 0x04, 0x00], // '*'
    [0x00, 0x04, 0x04, 0x1F, 0x04, 0x04, 0x00], // '+'
    [0x00, 0x00, 0x00, 0x00, 0x0C, 0x04, 0x08], // ','
    [0x00, 0x00, 0x00, 0x1F, 0x00, 0x00, 0x00], // '-'
    [0x00, 0x00, 0x00, 0x00, 0x00, 0x0C, 0x0C], // '.'
    [0x00, 0x01, 0x02, 0x04, 0x08, 0x10, 0x00], // '/'
    [0x0E, 0x11, 0x13, 0x15, 0x19, 0x11, 0x0E], // '0'
    [0x04, 0x0C, 0x04, 0x04, 0x04, 0x04, 0x0E], // '1'
    [0x0E, 0x11, 0x01, 0x02, 0x04, 0x08, 0x1F], // '2'
    [0x1F, 0x02, 0x04, 0x02, 0x01, 0x11, 0x0E], // '3'
    [0x02, 0x06, 0x0A, 0x12, 0x1F, 0x02, 0x02], // '4'
    [0x1F, 0x10, 0x1E, 0x01, 0x01, 0x11, 0x0E], // '5'
    [0x06, 0x08, 0x10, 0x1E, 0x11, 0x11, 0x0E], // '6'
    [0x1F, 0x01, 0x02, 0x04, 0x08, 0x08, 0x08], // '7'
    [0x0E, 0x11, 0x11, 0x0E, 0x11, 0x11, 0x0E], // '8'
    [0x0E, 0x11, 0x11, 0x0F, 0x01, 0x02, 0x0C], // '9'
    [0x00, 0x0C, 0x0C, 0x00, 0x0C, 0x0C, 0x00], // ':'
    [0x00, 0x0C, 0x0C, 0x00, 0x0C, 0x04, 0x08], // ';'
    [0x02, 0x04, 0x08, 0x10, 0x08, 0x04, 0x02], // '<'
    [0x00, 0x00, 0x1F, 0x00, 0x1F, 0x00, 0x00], // '='
    [0x08, 0x04, 0x02, 0x01, 0x02, 0x04, 0x08], // '>'
    [0x0E, 0x11, 0x01, 0x02, 0x04, 0x00, 0x04], // '?'
    [0x0E, 0x11, 0x01, 0x0D, 0x15, 0x15, 0x0E], // '@'
    [0x0E, 0x11, 0x11, 0x11, 0x1F, 0x11, 0x11], // 'A'
    [0x1E, 0x11, 0x11, 0x1E, 0x11, 0x11, 0x1E], // 'B'
    [0x0E, 0x11, 0x10, 0x10, 0x10, 0x11, 0x0E], // 'C'
    [0x1C, 0x12, 0x11, 0x11, 0x11, 0x12, 0x1C], // 'D'
    [0x1F, 0x10, 0x10, 0x1E, 0x10, 0x10, 0x1F], // 'E'
    [0x1F, 0x10, 0x10, 0x1E, 0x10, 0x10, 0x10], // 'F'
    [0x0E, 0x11, 0x10, 0x17, 0x11, 0x11, 0x0F], // 'G'
    [0x11, 0x11, 0x11, 0x1F, 0x11, 0x11, 0x11], // 'H'
    [0x0E, 0x04, 0x04, 0x04, 0x04, 0x04, 0x0E], // 'I'
    [0x07, 0x02, 0x02, 0x02, 0x02, 0x12, 0x0C], // 'J'
    [0x11, 0x12, 0x14, 0x18, 0x14, 0x12, 0x11], // 'K'
    [0x10, 0x10, 0x10, 0x10, 0x10, 0x10, 0x1F], // 'L'
    [0x11, 0x1B, 0x15, 0x15, 0x11, 0x11, 0x11], // 'M'
    [0x11, 0x11, 0x19, 0x15, 0x13, 0x11, 0x11], // 'N'
    [0x0E, 0x11, 0x11, 0x11, 0x11, 0x11, 0x0E], // 'O'
    [0x1E, 0x11, 0x11, 0x1E, 0x10, 0x10, 0x10], // 'P'
    [0x0E, 0x11, 0x11, 0x11, 0x15, 0x12, 0x0D], // 'Q'
    [0x1E, 0x11, 0x11, 0x1E, 0x14, 0x12, 0x11], // 'R'
    [0x0F, 0x10, 0x10, 0x0E, 0x01, 0x01, 0x1E], // 'S'
    [0x1F, 0x04, 0x04, 0x04, 0x04, 0x04, 0x04], // 'T'
    [0x11, 0x11, 0x11, 0x11, 0x11, 0x11, 0x0E], // 'U'
    [0x11, 0x11, 0x11, 0x11, 0x11, 0x0A, 0x04], // 'V'
    [0x11, 0x11, 0x11, 0x15, 0x15, 0x15, 0x0A], // 'W'
    [0x11, 0x11, 0x0A, 0x04, 0x0A, 0x11, 0x11], // 'X'
    [0x11, 0x11, 0x11, 0x0A, 0x04, 0x04, 0x04], // 'Y'
    [0x1F, 0x01, 0x02, 0x04, 0x08, 0x10, 0x1F], // 'Z'
    [0x0E, 0x08, 0x08, 0x08, 0x08, 0x08, 0x0E], // '['
    [0x00, 0x10, 0x08, 0x04, 0x02, 0x01, 0x00], // '\\'
    [0x0E, 0x02, 0x02, 0x02, 0x02, 0x02, 0x0E], // ']'
    [0x04, 0x0A, 0x11, 0x00, 0x00, 0x00, 0x00], // '^'
    [0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x1F], // '_'
    [0x08, 0x04, 0x02, 0x00, 0x00, 0x00, 0x00], // '`'
    [0x00, 0x00, 0x0E, 0x01, 0x0F, 0x11, 0x0F], // 'a'
    [0x10, 0x10, 0x16, 0x19, 0x11, 0x11, 0x1E], // 'b'
    [0x00, 0x00, 0x0E, 0x10, 0x10, 0x11, 0x0E], // 'c'
    [0x01, 0x01, 0x0D, 0x13, 0x11, 0x11, 0x0F], // 'd'
    [0x00, 0x00, 0x0E, 0x11, 0x1F, 0x10, 0x0E], // 'e'
    [0x06, 0x09, 0x08, 0x1C, 0x08, 0x08, 0x08], // 'f'
    [0x00, 0x0F, 0x11, 0x11, 0x0F, 0x01, 0x0E], // 'g'
    [0x10, 0x10, 0x16, 0x19, 0x11, 0x11, 0x11], // 'h'
    [0x04, 0x00, 0x0C, 0x04, 0x04, 0x04, 0x0E], // 'i'
    [0x02, 0x00, 0x06, 0x02, 0x02, 0x12, 0x0C], // 'j'
    [0x10, 0x10, 0x12, 0x14, 0x18, 0x14, 0x12], // 'k'
    [0x0C, 0x04, 0x04, 0x04, 0x04, 0x04, 0x0E], // 'l'
    [0x00, 0x00, 0x1A, 0x15, 0x15, 0x11, 0x11], // 'm'
    [0x00, 0x00, 0x16, 0x19, 0x11, 0x11, 0x11], // 'n'
    [0x00, 0x00, 0x0E, 0x11, 0x11, 0x11, 0x0E], // 'o'
    [0x00, 0x00, 0x1E, 0x11, 0x1E, 0x10, 0x10], // 'p'
    [0x00, 0x00, 0x0D, 0x13, 0x0F, 0x01, 0x01], // 'q'
    [0x00, 0x00, 0x16, 0x19, 0x10, 0x10, 0x10], // 'r'
    [0x00, 0x00, 0x0E, 0x10, 0x0E, 0x01, 0x1E], // 's'
    [0x08, 0x08, 0x1C, 0x08, 0x08, 0x09, 0x06], // 't'
    [0x00, 0x00, 0x11, 0x11, 0x11, 0x13, 0x0D], // 'u'
    [0x00, 0x00, 0x11, 0x11, 0x11, 0x0A, 0x04], // 'v'
    [0x00, 0x00, 0x11, 0x11, 0x15, 0x15, 0x0A], // 'w'
    [0x00, 0x00, 0x11, 0x0A, 0x04, 0x0A, 0x11], // 'x'
    [0x00, 0x00, 0x11, 0x11, 0x0F, 0x01, 0x0E], // 'y'
    [0x00, 0x00, 0x1F, 0x02, 0x04, 0x08, 0x1F], // 'z'
    [0x02, 0x04, 0x04, 0x08, 0x04, 0x04, 0x02], // '{'
    [0x04, 0x04, 0x04, 0x04, 0x04, 0x04, 0x04], // '|'
    [0x08, 0x04, 0x04, 0x02, 0x04, 0x04, 0x08], // '}'
    [0x00, 0x00, 0x08, 0x15, 0x02, 0x00, 0x00], // '~'
];

#[cfg(test)]
mod tests {
    use super::*;

    /// The PNG's width, height and RGB pixels.
    fn decode(png: &[u8]) -> (u32, u32, Vec<u8>) {
        let decoder = ::png::Decoder::new(std::io::Cursor::new(png));
        let mut reader = decoder.read_info().expect("a PNG");
        let info = reader.info();
        assert_eq!(info.color_type, ::png::ColorType::Rgb);
        let (width, height) = (info.width, info.height);
        let mut pixels = vec![0; reader.output_buffer_size().expect("a size")];
        reader.next_frame(&mut pixels).expect("a frame");
        (width, height, pixels)
    }

    fn pixel(image: &(u32, u32, Vec<u8>), x: i64, y: i64) -> Rgb {
        let at = (y as usize * image.0 as usize + x as usize) * 3;
        [image.2[at], image.2[at + 1], image.2[at + 2]]
    }

    /// The pixel holding a data point.
    fn at(frame: &Frame, x: f64, y: f64) -> (i64, i64) {
        (frame.x.px(x).floor() as i64, frame.y.px(y).floor() as i64)
    }

    fn gaussian(x: f64, centre: f64, height: f64) -> f64 {
        height * (-(x - centre).powi(2) / 2.0).exp() + 0.3
    }

    /// The example plot a linescan gives: a peak, a second signal, PeakStats' cen and com.
    fn line_example<'a>(x: &'a [f64], y1: &'a [f64], y2: &'a [f64]) -> LinePlot<'a> {
        LinePlot {
            title: "It/I0 vs. xafs_x, scan 4711",
            x_label: "xafs_x (mm)",
            y_label: "It/I0",
            series: vec![
                Series {
                    label: "It/I0",
                    x,
                    y: y1,
                },
                Series {
                    label: "If/I0 (fluorescence)",
                    x,
                    y: y2,
                },
            ],
            markers: vec![
                Marker {
                    x: 1.25,
                    label: "cen = 1.2500".to_owned(),
                },
                Marker {
                    x: 1.31,
                    label: "com = 1.3100".to_owned(),
                },
            ],
        }
    }

    fn map_example() -> Vec<f64> {
        let (rows, cols) = (15, 20);
        let mut values: Vec<f64> = (0..rows * cols)
            .map(|i| {
                let (r, c) = ((i / cols) as f64, (i % cols) as f64);
                (-((c - 12.0).powi(2) + (r - 6.0).powi(2)) / 20.0).exp() * 1.5e4 + 200.0
            })
            .collect();
        // The scan was stopped early: the last row's end was never measured.
        for v in &mut values[rows * cols - 6..] {
            *v = f64::NAN;
        }
        values[0] = f64::NAN;
        values
    }

    /// Writes the examples to `$BEAMFLOW_PLOT_DIR` (when set), to look at them.
    fn keep(name: &str, png: &[u8]) {
        if let Some(dir) = std::env::var_os("BEAMFLOW_PLOT_DIR") {
            std::fs::write(std::path::Path::new(&dir).join(name), png).expect("written");
        }
    }

    #[test]
    fn nice_ticks_are_one_two_or_five_times_a_power_of_ten() {
        let ticks = nice_ticks(0.0, 1.0, 5);
        assert_eq!(ticks.values, [0.0, 0.2, 0.4, 0.6, 0.8, 1.0]);
        assert_eq!(ticks.labels(), ["0", "0.2", "0.4", "0.6", "0.8", "1.0"]);
        let ticks = nice_ticks(8950.0, 9050.0, 5);
        assert_eq!(ticks.values, [8960.0, 8980.0, 9000.0, 9020.0, 9040.0]);
        assert_eq!(ticks.labels(), ["8960", "8980", "9000", "9020", "9040"]);
        let ticks = nice_ticks(-3.7, 12.2, 5);
        assert_eq!(ticks.values, [0.0, 5.0, 10.0]);
        let ticks = nice_ticks(-0.013, 0.021, 6);
        assert_eq!(ticks.labels(), ["-0.01", "0", "0.01", "0.02"]);
        let ticks = nice_ticks(-1e-6, 1e-6, 4);
        assert_eq!(
            ticks.labels(),
            ["-1.0e-6", "-0.5e-6", "0", "0.5e-6", "1.0e-6"]
        );
        let ticks = nice_ticks(1.1e6, 1.9e6, 4);
        assert_eq!(ticks.labels(), ["1.2e6", "1.4e6", "1.6e6", "1.8e6"]);
        let ticks = nice_ticks(0.9e6, 1.5e6, 4);
        assert_eq!(ticks.labels(), ["1.0e6", "1.2e6", "1.4e6"]);
        // A step of exactly a power of ten.
        assert_eq!(nice_ticks(0.0, 100.0, 10).values.len(), 11);
        assert_eq!(nice_ticks(0.0, 100.0, 1).values, [0.0, 100.0]);
        // Nothing to tick.
        assert!(nice_ticks(1.0, 1.0, 5).values.is_empty());
        assert!(nice_ticks(0.0, f64::INFINITY, 5).values.is_empty());
        assert!(nice_ticks(-f64::MAX, f64::MAX, 5).values.is_empty());
    }

    #[test]
    fn a_series_is_drawn_in_its_colour_where_its_points_map() {
        let x: Vec<f64> = (0..41).map(|i| f64::from(i) * 0.0625).collect();
        let y1: Vec<f64> = x.iter().map(|&x| gaussian(x, 1.25, 2.0)).collect();
        let y2: Vec<f64> = x.iter().map(|&x| 0.5 * gaussian(x, 1.4, 1.0)).collect();
        let plot = line_example(&x, &y1, &y2);
        let png = line_png(&plot, DEFAULT_WIDTH, DEFAULT_HEIGHT).expect("drawn");
        keep("plot_line.png", &png);
        let image = decode(&png);
        assert_eq!((image.0, image.1), (800, 500));
        let (_, frame) = render_line(&plot, DEFAULT_WIDTH, DEFAULT_HEIGHT).expect("drawn");
        // The second series is drawn last, so where they cross the second wins: check the first
        // at its peak, the second at its first point.
        let (px, py) = at(&frame, x[20], y1[20]);
        assert_eq!(pixel(&image, px, py), series_colour(0));
        let (px, py) = at(&frame, x[0], y2[0]);
        assert_eq!(pixel(&image, px, py), series_colour(1));
        assert_ne!(series_colour(0), series_colour(1));
        // Above the second series' start, between grid lines: background.
        let (px, py) = at(&frame, 0.03, 1.93);
        assert_eq!(pixel(&image, px, py), BACKGROUND);
        // The markers' dashes start at the top of the plot, in the colours after the series'.
        let (px, _) = at(&frame, 1.31, 0.0);
        assert_eq!(pixel(&image, px, frame.inner.y0), series_colour(3));
        let (px, _) = at(&frame, 1.25, 0.0);
        assert_eq!(pixel(&image, px, frame.inner.y0), series_colour(2));
        // The frame and its corner.
        assert_eq!(pixel(&image, frame.inner.x0 - 1, frame.inner.y1 + 1), INK);
        assert_eq!(pixel(&image, 0, 0), BACKGROUND);
    }

    #[test]
    fn gaps_lone_points_flat_and_empty_series_draw() {
        let x = [0.0, 1.0, 2.0, 3.0, 4.0];
        // Off the grid lines: ticks fall on multiples of 0.02 or 0.05.
        let y = [1.03, 1.03, f64::NAN, 1.03, 1.03];
        let plot = LinePlot {
            title: "",
            x_label: "",
            y_label: "",
            series: vec![
                Series {
                    label: "flat",
                    x: &x,
                    y: &y,
                },
                Series {
                    label: "",
                    x: &[],
                    y: &[],
                },
            ],
            markers: vec![Marker {
                x: f64::NAN,
                label: "lost".to_owned(),
            }],
        };
        let (canvas, frame) = render_line(&plot, 400, 250).expect("drawn");
        let image = decode(&canvas.png().expect("encoded"));
        let colour = series_colour(0);
        let (a, y) = at(&frame, 1.0, 1.03);
        let (b, _) = at(&frame, 3.0, 1.03);
        // Either side of the gap, off the x grid lines.
        let (left, _) = at(&frame, 1.7, 1.03);
        let (right, _) = at(&frame, 2.3, 1.03);
        assert_eq!(pixel(&image, a, y), colour);
        assert_eq!(pixel(&image, b, y), colour);
        assert_eq!(
            pixel(&image, left, y),
            BACKGROUND,
            "the NaN breaks the line"
        );
        assert_eq!(pixel(&image, right, y), BACKGROUND);

        // No data at all: axes and "no data", the size asked for.
        let empty = LinePlot {
            series: vec![],
            markers: vec![],
            ..plot.clone()
        };
        for (w, h) in [(MIN_SIZE, MIN_SIZE), (MAX_SIZE, MIN_SIZE), (MIN_SIZE, 300)] {
            let image = decode(&line_png(&empty, w, h).expect("drawn"));
            assert_eq!((image.0, image.1), (w, h));
            let image = decode(&line_png(&plot, w, h).expect("drawn"));
            assert_eq!((image.0, image.1), (w, h));
        }
    }

    #[test]
    fn bad_sizes_and_ragged_series_are_errors() {
        let plot = LinePlot {
            title: "t",
            x_label: "x",
            y_label: "y",
            series: vec![Series {
                label: "ragged",
                x: &[1.0, 2.0],
                y: &[1.0],
            }],
            markers: vec![],
        };
        insta::assert_snapshot!(line_png(&plot, 800, 500).unwrap_err(), @r#"series "ragged" has 2 x values and 1 y values"#);
        let fine = LinePlot {
            series: vec![],
            ..plot
        };
        insta::assert_snapshot!(line_png(&fine, 63, 500).unwrap_err(), @"a 63×500 plot: width and height must be 64 to 4096 pixels");
        assert!(line_png(&fine, 800, 4097).is_err());
        let map = MapPlot {
            title: "",
            x_label: "",
            y_label: "",
            shape: [2, 3],
            extent: [0.0, 1.0, 0.0, 1.0],
            values: &[0.0; 5],
        };
        insta::assert_snapshot!(map_png(&map, 800, 500).unwrap_err(), @"a 2×3 map has 5 values");
        let map = MapPlot {
            values: &[0.0; 6],
            extent: [0.0, f64::NAN, 0.0, 1.0],
            ..map
        };
        insta::assert_snapshot!(map_png(&map, 800, 500).unwrap_err(), @"map extent [0.0, NaN, 0.0, 1.0] is not finite");
    }

    #[test]
    fn map_cells_take_the_colourmap_and_nan_cells_stay_background() {
        let values = map_example();
        let plot = MapPlot {
            title: "If/I0 areascan, scan 4712",
            x_label: "xafs_x (mm)",
            y_label: "xafs_y (mm)",
            shape: [15, 20],
            extent: [-2.0, 2.75, 10.0, 13.5],
            values: &values,
        };
        let png = map_png(&plot, DEFAULT_WIDTH, DEFAULT_HEIGHT).expect("drawn");
        keep("plot_map.png", &png);
        let image = decode(&png);
        assert_eq!((image.0, image.1), (800, 500));
        let (_, frame) = render_map(&plot, DEFAULT_WIDTH, DEFAULT_HEIGHT).expect("drawn");
        let palette = Colormap::Viridis.palette();
        let centre =
            |row: usize, col: usize| at(&frame, -2.0 + 0.25 * col as f64, 10.0 + 0.25 * row as f64);
        let (lo, hi) = min_max(values.iter().copied()).expect("finite values");
        let (min_at, max_at) = {
            let mut finite = values.iter().enumerate().filter(|(_, v)| v.is_finite());
            let first = finite.next().expect("a value");
            let (mut min_at, mut max_at) = (first, first);
            for item in finite {
                if item.1 < min_at.1 {
                    min_at = item;
                }
                if item.1 > max_at.1 {
                    max_at = item;
                }
            }
            (min_at.0, max_at.0)
        };
        let (x, y) = centre(min_at / 20, min_at % 20);
        assert_eq!(pixel(&image, x, y), palette[0], "the lowest value: {lo}");
        let (x, y) = centre(max_at / 20, max_at % 20);
        assert_eq!(pixel(&image, x, y), palette[255], "the highest value: {hi}");
        // Row 0 is at the bottom: its first cell is NaN, so the bottom-left corner is background.
        let (x, y) = centre(0, 0);
        assert_eq!(pixel(&image, x, y), BACKGROUND);
        assert_eq!(pixel(&image, frame.inner.x0, frame.inner.y1), BACKGROUND);
        let (x, y) = centre(14, 19);
        assert_eq!(pixel(&image, x, y), BACKGROUND);
        // Cells tile the plot area: its top-left pixel is row 14, column 0.
        let colour = palette[colour_index(values[14 * 20], lo, hi)];
        assert_eq!(pixel(&image, frame.inner.x0, frame.inner.y0), colour);
        // The colourbar: low at the bottom, high at the top.
        let bar = frame.colourbar.expect("a colourbar");
        assert_eq!(pixel(&image, bar.x0, bar.y1), palette[0]);
        assert_eq!(pixel(&image, bar.x1, bar.y0), palette[255]);
    }

    #[test]
    fn odd_maps_draw() {
        for (shape, extent, values) in [
            ([1, 1], [3.0, 3.0, 4.0, 4.0], vec![7.0]),
            ([2, 2], [1.0, 0.0, 1.0, 0.0], vec![1.0, 2.0, 3.0, 4.0]),
            ([2, 2], [0.0, 1.0, 0.0, 1.0], vec![f64::NAN; 4]),
            ([3, 1], [0.0, 0.0, 0.0, 2.0], vec![5.0; 3]),
            ([0, 0], [0.0, 1.0, 0.0, 1.0], vec![]),
        ] {
            let plot = MapPlot {
                title: "odd",
                x_label: "x",
                y_label: "y",
                shape,
                extent,
                values: &values,
            };
            let image = decode(&map_png(&plot, 300, 200).expect("drawn"));
            assert_eq!((image.0, image.1), (300, 200), "{shape:?}");
        }
        // A reversed extent flips the cells: the first column is on the right.
        let plot = MapPlot {
            title: "",
            x_label: "",
            y_label: "",
            shape: [1, 2],
            extent: [1.0, 0.0, 0.0, 0.0],
            values: &[0.0, 1.0],
        };
        let (canvas, frame) = render_map(&plot, 200, 200).expect("drawn");
        let image = decode(&canvas.png().expect("encoded"));
        let palette = Colormap::Viridis.palette();
        assert_eq!(pixel(&image, frame.inner.x1, frame.inner.y0), palette[0]);
        assert_eq!(pixel(&image, frame.inner.x0, frame.inner.y0), palette[255]);
    }

    #[test]
    fn text_outside_ascii_is_a_box_and_long_text_is_cut() {
        assert_eq!(glyph('µ'), glyph('\u{7f}'));
        assert_ne!(glyph('A'), glyph('B'));
        assert_eq!(fit("abcdef", text_width("abcdef", 1), 1), "abcdef");
        assert_eq!(fit("abcdef", text_width("abcd", 1), 1), "ab..");
        assert_eq!(text_scale(800, 500), 2);
        assert_eq!(text_scale(400, 250), 1);
        assert_eq!(text_scale(4096, 4096), 4);
    }
}
