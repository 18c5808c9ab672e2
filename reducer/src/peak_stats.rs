//! Bluesky's `PeakStats` of a 1-D scan (x a motor, y a detector), computed as bluesky computes
//! it, operation for operation, so that a beamline switching sees the same numbers: `cen` and
//! `fwhm` from the same crossings in the same order, means and sums with numpy's pairwise
//! summation. The scan views compute it after every point and once more at the run's stop.
//!
//! The algorithm (bluesky 1.15 `PeakStats._calc_stats`):
//! 1. With `edge_count = n`, a line through the mean of the first n points and the mean of the
//!    last n is subtracted from y (`lin_bkg`); `min`/`max` report the original y at the corrected
//!    y's extremes.
//! 2. `min`/`max`: x and original y at the first smallest and first largest y.
//! 3. `com`: the centre of mass in index space, Σ i·y / Σ y, mapped to x by linear
//!    interpolation over the indices.
//! 4. `crossings`: where y crosses `mid = (max y + min y) / 2` between neighbours, by linear
//!    interpolation; `cen` their mean, `fwhm` |last − first| when there are two or more.

use serde::Serialize;

/// What `PeakStats` reports; `None` where bluesky reports `None`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PeakStats {
    /// Centre of mass (x).
    pub com: f64,
    /// The mean of the crossings.
    pub cen: Option<f64>,
    /// x and y at the largest y.
    pub max: (f64, f64),
    /// x and y at the smallest y.
    pub min: (f64, f64),
    /// Where y crosses half way between its extremes.
    pub crossings: Vec<f64>,
    /// From the first crossing to the last.
    pub fwhm: Option<f64>,
    /// The subtracted background line `y = m x + b`, with `edge_count`.
    pub lin_bkg: Option<LinearBackground>,
}

/// A straight background.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct LinearBackground {
    /// Slope.
    pub m: f64,
    /// Intercept.
    pub b: f64,
}

/// `PeakStats` of the points `(x[i], y[i])`; `None` without a point (or with x and y of
/// different lengths). `edge_count` as bluesky's: `Some(n)` subtracts a line through the means
/// of the first and last n points.
pub fn peak_stats(x: &[f64], y: &[f64], edge_count: Option<usize>) -> Option<PeakStats> {
    if x.is_empty() || x.len() != y.len() {
        return None;
    }
    let (corrected, lin_bkg) = match edge_count {
        Some(n) if n > 0 => {
            let n = n.min(x.len());
            let mean = |v: &[f64]| pairwise_sum(v) / v.len() as f64;
            let (left_x, left_y) = (mean(&x[..n]), mean(&y[..n]));
            let (right_x, right_y) = (mean(&x[x.len() - n..]), mean(&y[y.len() - n..]));
            let m = (right_y - left_y) / (right_x - left_x);
            let b = left_y - m * left_x;
            let corrected = x.iter().zip(y).map(|(&x, &y)| y - (m * x + b)).collect();
            (corrected, Some(LinearBackground { m, b }))
        }
        _ => (y.to_vec(), None),
    };
    let y_orig = y;
    let y = corrected.as_slice();
    let argmin = first_extreme(y, |a, b| a < b);
    let argmax = first_extreme(y, |a, b| a > b);
    let com = interp_index(center_of_mass(y), x);
    let mid = (y[argmax] + y[argmin]) / 2.0;
    let mut crossings = Vec::new();
    for i in 0..y.len().saturating_sub(1) {
        if (y[i] > mid) != (y[i + 1] > mid) {
            let (y0, y1) = (y[i] - mid, y[i + 1] - mid);
            let m = (y1 - y0) / (x[i + 1] - x[i]);
            crossings.push((-y0 / m) + x[i]);
        }
    }
    let cen = (!crossings.is_empty()).then(|| pairwise_sum(&crossings) / crossings.len() as f64);
    let fwhm = match crossings.as_slice() {
        [first, .., last] => Some((last - first).abs()),
        _ => None,
    };
    Some(PeakStats {
        com,
        cen,
        max: (x[argmax], y_orig[argmax]),
        min: (x[argmin], y_orig[argmin]),
        crossings,
        fwhm,
        lin_bkg,
    })
}

/// The first index whose value beats every other by `better` (numpy's argmin/argmax: the
/// first occurrence; a NaN wins, as in numpy).
fn first_extreme(values: &[f64], better: impl Fn(f64, f64) -> bool) -> usize {
    let mut best = 0;
    for (i, &v) in values.iter().enumerate().skip(1) {
        if values[best].is_nan() {
            break;
        }
        if v.is_nan() || better(v, values[best]) {
            best = i;
        }
    }
    best
}

/// Σ i·y / Σ y, in index space (scipy's `center_of_mass` in 1-D).
fn center_of_mass(y: &[f64]) -> f64 {
    let weighted: Vec<f64> = y.iter().enumerate().map(|(i, &v)| v * i as f64).collect();
    pairwise_sum(&weighted) / pairwise_sum(y)
}

/// numpy's `interp(position, arange(len(x)), x)`: x at a fractional index, clamped to the ends.
fn interp_index(position: f64, x: &[f64]) -> f64 {
    let last = x.len() - 1;
    if position.is_nan() {
        return f64::NAN;
    }
    if position <= 0.0 {
        return x[0];
    }
    if position >= last as f64 {
        return x[last];
    }
    // In range, so the index fits.
    let j = position.floor() as usize;
    if position == j as f64 {
        return x[j];
    }
    let slope = (x[j + 1] - x[j]) / 1.0;
    slope * (position - j as f64) + x[j]
}

/// numpy's pairwise summation of float64 (`np.sum`, `np.mean` over a contiguous array): blocks
/// of up to 128 summed in eight interleaved partial sums, larger arrays halved.
fn pairwise_sum(a: &[f64]) -> f64 {
    let n = a.len();
    if n < 8 {
        a.iter().fold(-0.0, |sum, &v| sum + v)
    } else if n <= 128 {
        let mut r = [a[0], a[1], a[2], a[3], a[4], a[5], a[6], a[7]];
        let whole = n - n % 8;
        for block in a[8..whole].chunks_exact(8) {
            for (partial, &v) in r.iter_mut().zip(block) {
                *partial += v;
            }
        }
        let mut sum = ((r[0] + r[1]) + (r[2] + r[3])) + ((r[4] + r[5]) + (r[6] + r[7]));
        for &v in &a[whole..] {
            sum += v;
        }
        sum
    } else {
        let half = n / 2;
        let half = half - half % 8;
        pairwise_sum(&a[..half]) + pairwise_sum(&a[half..])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// numpy's `linspace(start, stop, n)`.
    fn linspace(start: f64, stop: f64, n: usize) -> Vec<f64> {
        let step = (stop - start) / (n - 1) as f64;
        let mut x: Vec<f64> = (0..n).map(|i| i as f64 * step + start).collect();
        x[n - 1] = stop;
        x
    }

    /// bluesky's PeakStats on `scan([det], motor, -5, 5, 20)` with ophyd.sim's `det`
    /// (exp(−x²/2)), as bluesky 1.15 computed it (the reference in the shared notes on
    /// Bluesky, § 4.1). Bit-for-bit equality against bluesky itself is the end-to-end test's;
    /// here the libm behind `exp` may differ from numpy's in the last bit.
    #[test]
    fn the_reference_scan_gives_bluesky_s_numbers() {
        let x = linspace(-5.0, 5.0, 20);
        let y: Vec<f64> = x.iter().map(|x| (-(x * x) / 2.0).exp()).collect();
        let close = |a: f64, b: f64| (a - b).abs() <= 1e-12;
        let stats = peak_stats(&x, &y, None).unwrap();
        assert!(close(stats.com, -4.440892098500626e-16), "{stats:?}");
        assert!(close(stats.cen.unwrap(), 0.0), "{stats:?}");
        assert!(close(stats.max.0, 0.2631578947368416) && close(stats.max.1, 0.9659665827628697));
        assert!(close(stats.min.0, -5.0) && close(stats.min.1, 3.726653172078671e-06));
        assert_eq!(stats.crossings.len(), 2);
        assert!(close(stats.crossings[0], -1.2106728708879924), "{stats:?}");
        assert!(close(stats.crossings[1], 1.2106728708879924), "{stats:?}");
        assert!(close(stats.fwhm.unwrap(), 2.4213457417759847), "{stats:?}");
        assert_eq!(stats.lin_bkg, None);

        let stats = peak_stats(&x, &y, Some(3)).unwrap();
        let background = stats.lin_bkg.unwrap();
        assert!(
            close(background.b, 1.5410363850936658e-04),
            "{background:?}"
        );
        assert!(background.m.abs() < 1e-18, "{background:?}");
        assert!(close(stats.fwhm.unwrap(), 2.4213457417759847), "{stats:?}");
        // After the background both ends tie; rounding picks the last, as bluesky's did.
        assert_eq!(stats.min.0, 5.0, "{stats:?}");
    }

    /// The same scan with numpy's own x and y (`linspace`, `exp`), as the documents carry them:
    /// every number equals what bluesky 1.15's PeakStats computed from them, to the bit.
    #[test]
    fn numpy_s_points_give_bluesky_s_numbers_to_the_bit() {
        let x = [
            -5.0,
            -4.473684210526316,
            -3.947368421052632,
            -3.4210526315789473,
            -2.8947368421052633,
            -2.368421052631579,
            -1.8421052631578947,
            -1.3157894736842106,
            -0.7894736842105265,
            -0.2631578947368425,
            0.2631578947368416,
            0.7894736842105257,
            1.3157894736842106,
            1.8421052631578947,
            2.3684210526315788,
            2.894736842105263,
            3.421052631578947,
            3.947368421052632,
            4.473684210526315,
            5.0,
        ];
        let y = [
            3.726653172078671e-06,
            4.508661196437081e-05,
            0.00041349765039165023,
            0.0028747184096000987,
            0.015150061425890168,
            0.060524372654591804,
            0.18329179271718735,
            0.4207775500897138,
            0.7322492269229476,
            0.9659665827628695,
            0.9659665827628697,
            0.732249226922948,
            0.4207775500897138,
            0.18329179271718735,
            0.06052437265459185,
            0.015150061425890182,
            0.002874718409600101,
            0.00041349765039165023,
            4.508661196437097e-05,
            3.726653172078671e-06,
        ];
        assert_eq!(x.to_vec(), linspace(-5.0, 5.0, 20), "numpy's linspace");
        let stats = peak_stats(&x, &y, None).unwrap();
        assert_eq!(
            (stats.com, stats.cen, stats.fwhm),
            (-4.440892098500626e-16, Some(0.0), Some(2.4213457417759847))
        );
        assert_eq!(stats.crossings, [-1.2106728708879924, 1.2106728708879924]);
        assert_eq!(stats.max, (0.2631578947368416, 0.9659665827628697));
        assert_eq!(stats.min, (-5.0, 3.726653172078671e-06));
        let stats = peak_stats(&x, &y, Some(3)).unwrap();
        assert_eq!(
            stats.lin_bkg,
            Some(LinearBackground {
                m: 6.058776846242524e-21,
                b: 0.00015410363850936658
            })
        );
        assert_eq!(
            (stats.com, stats.cen, stats.fwhm),
            (
                -4.440892098500626e-16,
                Some(-1.1102230246251565e-16),
                Some(2.4213457417759843)
            )
        );
        assert_eq!(stats.crossings, [-1.2106728708879924, 1.2106728708879921]);
        assert_eq!(
            (stats.max, stats.min),
            (
                (0.2631578947368416, 0.9659665827628697),
                (5.0, 3.726653172078671e-06)
            )
        );
    }

    #[test]
    fn no_points_and_no_crossing_say_so() {
        assert_eq!(peak_stats(&[], &[], None), None);
        assert_eq!(peak_stats(&[1.0], &[1.0, 2.0], None), None);
        let flat = peak_stats(&[0.0, 1.0, 2.0], &[3.0, 3.0, 3.0], None).unwrap();
        assert_eq!((flat.cen, flat.fwhm, flat.crossings.len()), (None, None, 0));
        assert_eq!((flat.max, flat.min), ((0.0, 3.0), (0.0, 3.0)));
        let edge = peak_stats(&[0.0, 1.0, 2.0], &[0.0, 1.0, 2.0], None).unwrap();
        assert_eq!((edge.crossings.len(), edge.fwhm), (1, None));
        assert_eq!(edge.cen, Some(1.0));
    }

    #[test]
    fn sums_pair_as_numpy_does() {
        // 1e16 + 1 + ... : the order of the additions shows in the result.
        let mut values = vec![1.0; 200];
        values[0] = 1e16;
        let naive: f64 = values.iter().sum();
        assert_eq!(naive, 1e16, "each 1 is lost after 1e16 in a plain loop");
        // What np.sum gives for this array (numpy 2.4).
        assert_eq!(pairwise_sum(&values), 1.0000000000000188e16);
        assert_eq!(pairwise_sum(&[0.5, 0.25]), 0.75);
    }
}
