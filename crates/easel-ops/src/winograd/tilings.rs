//! The two Winograd tilings Easel uses for 3x3 kernels, as their 1-D transforms (the 2-D ones
//! apply each to the columns, then to the rows). Each is Toom-Cook's construction on its points,
//! with the rows of `Bᵀ` and `G` scaled against each other so that the input's transform, which
//! runs on every tile, has small integer constants.
//!
//! - F(2x2, 3x3), points 0, 1, -1, ∞: 4x4 patches, 16 products for 4 outputs. Every constant is
//!   0, ±1 or ±1/2, exact in binary.
//! - F(3x3, 3x3), points 0, 1, -1, 1/2, ∞: 5x5 patches, 25 products for 9 outputs (1.44 times
//!   fewer than F(2x2)). `G` holds 1/6, 4/3, 8/3 and 2/3, which round: in f32 the result is
//!   within about 5e-6 of the output's scale for 320 to 2560 input channels (checked in numpy
//!   against the direct sum; F(4x4, 3x3) reached 1.8e-5 and is not used).
//!
//! Lavin and Gray, "Fast Algorithms for Convolutional Neural Networks" (2015).

/// Tiles transformed together, one per vector lane.
pub(super) const LANES: usize = 16;
/// The larger tiling's patch side: arrays of every tiling are this size.
pub(super) const MAX_PATCH: usize = 5;
/// The larger tiling's output side.
pub(super) const MAX_BLOCK: usize = 3;

/// One value of each of `LANES` tiles.
pub(super) type Lanes = [f32; LANES];

/// A tiling F(m x m, 3x3): `BLOCK` = m outputs a side from patches of `PATCH` inputs a side.
pub(super) trait Tiling {
    /// Side of an input patch.
    const PATCH: usize;
    /// Side of the outputs a patch gives.
    const BLOCK: usize;
    /// Products per patch: one matrix product each.
    const POINTS: usize = Self::PATCH * Self::PATCH;

    /// `G g` for one column of kernel taps: `PATCH` values (the rest 0).
    fn kernel(g: [f32; 3]) -> [f32; MAX_PATCH];
    /// `Bᵀ d` for the first `PATCH` of `d`, lane by lane.
    fn input(d: &[Lanes; MAX_PATCH]) -> [Lanes; MAX_PATCH];
    /// `Aᵀ m` for the first `PATCH` of `m`: `BLOCK` outputs, lane by lane.
    fn output(m: &[Lanes; MAX_PATCH]) -> [Lanes; MAX_BLOCK];
}

/// F(2x2, 3x3).
pub(super) struct F2;

impl Tiling for F2 {
    const PATCH: usize = 4;
    const BLOCK: usize = 2;

    #[inline(always)]
    fn kernel([a, b, c]: [f32; 3]) -> [f32; MAX_PATCH] {
        [a, 0.5 * (a + b + c), 0.5 * (a - b + c), c, 0.0]
    }

    #[inline(always)]
    fn input(d: &[Lanes; MAX_PATCH]) -> [Lanes; MAX_PATCH] {
        let mut v = [[0f32; LANES]; MAX_PATCH];
        for lane in 0..LANES {
            let [d0, d1, d2, d3] = [0, 1, 2, 3].map(|i| d[i][lane]);
            v[0][lane] = d0 - d2;
            v[1][lane] = d1 + d2;
            v[2][lane] = d2 - d1;
            v[3][lane] = d1 - d3;
        }
        v
    }

    #[inline(always)]
    fn output(m: &[Lanes; MAX_PATCH]) -> [Lanes; MAX_BLOCK] {
        let mut y = [[0f32; LANES]; MAX_BLOCK];
        for lane in 0..LANES {
            let [m0, m1, m2, m3] = [0, 1, 2, 3].map(|i| m[i][lane]);
            y[0][lane] = m0 + m1 + m2;
            y[1][lane] = m1 - m2 - m3;
        }
        y
    }
}

/// F(3x3, 3x3).
pub(super) struct F3;

impl Tiling for F3 {
    const PATCH: usize = 5;
    const BLOCK: usize = 3;

    #[inline(always)]
    fn kernel([a, b, c]: [f32; 3]) -> [f32; MAX_PATCH] {
        [
            a,
            0.5 * (a + b + c),
            (a - b + c) * (1.0 / 6.0),
            (8.0 * a + 4.0 * b + 2.0 * c) * (1.0 / 3.0),
            0.5 * c,
        ]
    }

    #[inline(always)]
    fn input(d: &[Lanes; MAX_PATCH]) -> [Lanes; MAX_PATCH] {
        let mut v = [[0f32; LANES]; MAX_PATCH];
        for lane in 0..LANES {
            let [d0, d1, d2, d3, d4] = [0, 1, 2, 3, 4].map(|i| d[i][lane]);
            let twice_d3 = d3 + d3;
            v[0][lane] = d0 - d1 - d1 - d2 + twice_d3;
            v[1][lane] = d2 - d1 + twice_d3;
            v[2][lane] = 3.0 * d2 - d1 - twice_d3;
            v[3][lane] = d1 - d3;
            v[4][lane] = d1 - d2 - d2 - d3 + d4 + d4;
        }
        v
    }

    #[inline(always)]
    fn output(m: &[Lanes; MAX_PATCH]) -> [Lanes; MAX_BLOCK] {
        let mut y = [[0f32; LANES]; MAX_BLOCK];
        for lane in 0..LANES {
            let [m0, m1, m2, m3, m4] = [0, 1, 2, 3, 4].map(|i| m[i][lane]);
            y[0][lane] = m0 + m1 + m2 + m3;
            y[1][lane] = m1 - m2 + 0.5 * m3;
            y[2][lane] = m1 + m2 + 0.25 * m3 + m4;
        }
        y
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The 1-D correlation of `taps` over `inputs` through the tiling, against the direct sum.
    fn check<T: Tiling>(taps: [f32; 3], inputs: [f32; MAX_PATCH]) {
        let kernel = T::kernel(taps);
        let d: [Lanes; MAX_PATCH] = std::array::from_fn(|i| [inputs[i]; LANES]);
        let v = T::input(&d);
        let m: [Lanes; MAX_PATCH] = std::array::from_fn(|i| [kernel[i] * v[i][0]; LANES]);
        let y = T::output(&m);
        for (out, y) in y.iter().take(T::BLOCK).enumerate() {
            let direct: f32 = (0..3).map(|k| taps[k] * inputs[out + k]).sum();
            assert!(
                (y[0] - direct).abs() < 1e-5,
                "output {out}: {} vs {direct}",
                y[0]
            );
        }
    }

    #[test]
    fn each_tiling_gives_the_direct_correlation_in_one_dimension() {
        for (taps, inputs) in [
            ([1.0, 0.0, 0.0], [0.5, -1.0, 2.0, 3.0, -0.25]),
            ([0.3, -0.7, 1.1], [1.0, 2.0, -3.0, 0.5, 4.0]),
            ([-2.0, 0.125, 0.9], [0.0, -1.5, 2.5, -0.75, 1.25]),
        ] {
            check::<F2>(taps, inputs);
            check::<F3>(taps, inputs);
        }
    }
}
