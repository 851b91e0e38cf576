//! 3x3 convolutions (stride 1, padding 1) by Winograd's minimal filtering F(2x2, 3x3): each 2x2
//! block of outputs comes from a 4x4 patch of input through 16 products instead of 36, so the
//! matrix products that carry the work shrink 2.25 times. Per call the kernels are transformed
//! (`U = G g Gᵀ`, 16 matrices `[out, in]`), then per chunk of tiles the input patches are
//! (`V = Bᵀ d B`, 16 matrices `[in, tiles]`), 16 `gemm`s give `M = U V`, and the outputs are
//! `Aᵀ M A` plus the bias, written straight into the NCHW output. The transforms' constants
//! are 0, ±1 and ±1/2, so the result differs from the direct sum by rounding only.
//!
//! Lavin and Gray, "Fast Algorithms for Convolutional Neural Networks" (2015).

use std::cell::RefCell;

use candle_core::{CpuStorage, Layout, Result};
use half::{bf16, f16};

use rayon::prelude::*;

use crate::parallelism;

/// Side of an input patch.
const PATCH: usize = 4;
/// Side of the outputs a patch gives.
const BLOCK: usize = 2;
/// Products per patch: one matrix product each.
const POINTS: usize = PATCH * PATCH;
/// Tiles transformed together, one per vector lane.
const LANES: usize = 16;
/// Bytes of transformed input a chunk of tiles may use.
const CHUNK_BYTES: usize = 32 << 20;
/// Fewest tiles an image must have (32x32 outputs) for the products' savings to outweigh
/// transforming the kernels on every call; smaller maps take the column path.
const MIN_IMAGE_TILES: usize = 256;
/// Largest transformed kernel kept for a call (`16 * out * in` floats); layers with more
/// channels take the column path.
const MAX_KERNEL_FLOATS: usize = 32 << 20;

thread_local! {
    /// The transformed kernels, the chunk's transformed input and its products, kept between
    /// calls so that no step pays for fresh pages.
    static BUFFERS: RefCell<[Vec<f32>; 3]> = const { RefCell::new([Vec::new(), Vec::new(), Vec::new()]) };
}

/// Frees this thread's buffers.
pub(crate) fn release() {
    BUFFERS.with(|buffers| *buffers.borrow_mut() = [Vec::new(), Vec::new(), Vec::new()]);
}

/// Whether a convolution of this shape takes this path: 3x3, stride 1, padding 1, a kernel
/// transform within the budget, and enough tiles per image for the products to pay.
pub(crate) fn applies(
    kernel: (usize, usize),
    stride: usize,
    padding: usize,
    out_channels: usize,
    in_channels: usize,
    tiles: usize,
) -> bool {
    kernel == (3, 3)
        && stride == 1
        && padding == 1
        && POINTS * out_channels * in_channels <= MAX_KERNEL_FLOATS
        && tiles >= MIN_IMAGE_TILES
}

/// Sizes of one convolution (the batch is the output's length over one image's).
pub(crate) struct Shape {
    pub in_channels: usize,
    pub out_channels: usize,
    pub height: usize,
    pub width: usize,
}

impl Shape {
    fn tiles_h(&self) -> usize {
        self.height.div_ceil(BLOCK)
    }
    fn tiles_w(&self) -> usize {
        self.width.div_ceil(BLOCK)
    }
    /// Tiles of one image.
    pub fn image_tiles(&self) -> usize {
        self.tiles_h() * self.tiles_w()
    }
}

/// The convolution of `input` `[B, C, H, W]` with `weight` `[Co, C, 3, 3]` (any dtype Easel's
/// layers hold) plus `bias`, into `out` `[B, Co, H, W]`.
pub(crate) fn convolve(
    shape: &Shape,
    input: &[f32],
    weight: &CpuStorage,
    weight_layout: &Layout,
    bias: &[f32],
    out: &mut [f32],
) -> Result<()> {
    let Some((start, end)) = weight_layout.contiguous_offsets() else {
        candle_core::bail!("conv2d: the weights must be contiguous")
    };
    BUFFERS.with(|buffers| {
        let mut buffers = buffers.borrow_mut();
        let [kernels, patches, products] = &mut *buffers;
        let kernel_len = POINTS * shape.out_channels * shape.in_channels;
        grow(kernels, kernel_len);
        let kernels = &mut kernels[..kernel_len];
        match weight {
            CpuStorage::F32(w) => transform_kernels(&w[start..end], shape, kernels, |x| x),
            CpuStorage::F16(w) => transform_kernels(&w[start..end], shape, kernels, f16::to_f32),
            CpuStorage::BF16(w) => transform_kernels(&w[start..end], shape, kernels, bf16::to_f32),
            _ => candle_core::bail!("conv2d: weights of an unsupported dtype"),
        }
        let image_tiles = shape.image_tiles();
        let chunk = (CHUNK_BYTES / 4 / (POINTS * shape.in_channels).max(1))
            .max(LANES)
            .min(image_tiles);
        grow(patches, POINTS * shape.in_channels * chunk);
        grow(products, POINTS * shape.out_channels * chunk);
        let out_image_len = shape.out_channels * shape.height * shape.width;
        for (image, out_image) in out.chunks_mut(out_image_len).enumerate() {
            let mut first = 0;
            while first < image_tiles {
                let count = chunk.min(image_tiles - first);
                let tiles = Tiles {
                    image,
                    first,
                    count,
                };
                let patches = &mut patches[..POINTS * shape.in_channels * count];
                let products = &mut products[..POINTS * shape.out_channels * count];
                transform_input(shape, input, &tiles, patches);
                multiply(shape, kernels, patches, count, products);
                transform_output(shape, products, bias, &tiles, out_image);
                first += count;
            }
        }
        Ok(())
    })
}

/// A run of tiles of one image, in row-major tile order.
struct Tiles {
    image: usize,
    first: usize,
    count: usize,
}

impl Tiles {
    /// Tile row and column of the `lane`-th tile of the run.
    fn position(&self, shape: &Shape, lane: usize) -> (usize, usize) {
        let tile = self.first + lane;
        (tile / shape.tiles_w(), tile % shape.tiles_w())
    }
}

fn grow(buffer: &mut Vec<f32>, len: usize) {
    if buffer.len() < len {
        buffer.resize(len, 0.0);
    }
}

/// `U = G g Gᵀ` for every pair of channels: `kernels[co][point][c]`, output channels spread
/// over the threads.
fn transform_kernels<T: Copy + Sync>(
    weight: &[T],
    shape: &Shape,
    kernels: &mut [f32],
    to_f32: impl Fn(T) -> f32 + Sync,
) {
    let c = shape.in_channels;
    kernels
        .par_chunks_mut(POINTS * c)
        .zip(weight.par_chunks(c * 9))
        .for_each(|(kernels, weight)| {
            for (channel, g) in weight.chunks_exact(9).enumerate() {
                let g: [f32; 9] = std::array::from_fn(|i| to_f32(g[i]));
                // G g: 4x3, rows g0, (g0+g1+g2)/2, (g0-g1+g2)/2, g2 of each column.
                let mut gg = [[0f32; 3]; PATCH];
                for col in 0..3 {
                    let (a, b, e) = (g[col], g[3 + col], g[6 + col]);
                    gg[0][col] = a;
                    gg[1][col] = 0.5 * (a + b + e);
                    gg[2][col] = 0.5 * (a - b + e);
                    gg[3][col] = e;
                }
                for (row, values) in gg.iter().enumerate() {
                    let (a, b, e) = (values[0], values[1], values[2]);
                    let transformed = [a, 0.5 * (a + b + e), 0.5 * (a - b + e), e];
                    for (col, value) in transformed.into_iter().enumerate() {
                        kernels[(row * PATCH + col) * c + channel] = value;
                    }
                }
            }
        });
}

/// `V = Bᵀ d B` for a run of tiles: `patches[c][point][tile]`, channels spread over the
/// threads.
fn transform_input(shape: &Shape, input: &[f32], tiles: &Tiles, patches: &mut [f32]) {
    let plane = shape.height * shape.width;
    let image = &input[tiles.image * shape.in_channels * plane..][..shape.in_channels * plane];
    patches
        .par_chunks_mut(POINTS * tiles.count)
        .zip(image.par_chunks(plane))
        .for_each(|(patches, channel)| transform_channel(shape, channel, tiles, patches));
}

crate::vectorized! {
    /// `V = Bᵀ d B` of one channel's tiles: `patches[point][tile]`.
    fn transform_channel(shape: &Shape, channel: &[f32], tiles: &Tiles, patches: &mut [f32]) = transform_channel_generic
}

#[inline(always)]
fn transform_channel_generic(shape: &Shape, channel: &[f32], tiles: &Tiles, patches: &mut [f32]) {
    let count = tiles.count;
    let mut lane_start = 0;
    while lane_start < count {
        let lanes = LANES.min(count - lane_start);
        let d = gather_patches(shape, channel, tiles, lane_start, lanes);
        // Bᵀ d: rows d0-d2, d1+d2, d2-d1, d1-d3; then the same on the columns.
        let mut rows = [[[0f32; LANES]; PATCH]; PATCH];
        for col in 0..PATCH {
            for lane in 0..LANES {
                let [a, b, e, f] = [0, 1, 2, 3].map(|row| d[row][col][lane]);
                rows[0][col][lane] = a - e;
                rows[1][col][lane] = b + e;
                rows[2][col][lane] = e - b;
                rows[3][col][lane] = b - f;
            }
        }
        for (row, values) in rows.iter().enumerate() {
            let mut v = [[0f32; LANES]; PATCH];
            for lane in 0..LANES {
                let [a, b, e, f] = [0, 1, 2, 3].map(|col| values[col][lane]);
                v[0][lane] = a - e;
                v[1][lane] = b + e;
                v[2][lane] = e - b;
                v[3][lane] = b - f;
            }
            for (col, lanes_v) in v.iter().enumerate() {
                let at = (row * PATCH + col) * count + lane_start;
                patches[at..at + lanes].copy_from_slice(&lanes_v[..lanes]);
            }
        }
        lane_start += lanes;
    }
}

/// Input values a run of `LANES` tiles of one tile row reads from one image row.
const RUN: usize = BLOCK * LANES + PATCH - BLOCK;

/// `d[row][col][lane]`: the patch of each of `lanes` tiles from `lane_start` on, 0 outside the
/// image. Lanes in one tile row copy each image row's run once and read it at stride 2.
#[inline(always)]
fn gather_patches(
    shape: &Shape,
    channel: &[f32],
    tiles: &Tiles,
    lane_start: usize,
    lanes: usize,
) -> [[[f32; LANES]; PATCH]; PATCH] {
    let (height, width) = (shape.height, shape.width);
    let mut d = [[[0f32; LANES]; PATCH]; PATCH];
    let (ty, tx) = tiles.position(shape, lane_start);
    if lanes == LANES && tx + LANES <= shape.tiles_w() {
        let top = (ty * BLOCK) as isize - 1;
        let left = (tx * BLOCK) as isize - 1;
        // The run's columns inside the image.
        let first = (-left).max(0) as usize;
        let last = (width as isize - left).clamp(0, RUN as isize) as usize;
        for (row, d_row) in d.iter_mut().enumerate() {
            let y = top + row as isize;
            if y < 0 || y as usize >= height || first >= last {
                continue;
            }
            let mut run = [0f32; RUN];
            let start = y as usize * width + (left + first as isize) as usize;
            run[first..last].copy_from_slice(&channel[start..start + (last - first)]);
            for (col, d_value) in d_row.iter_mut().enumerate() {
                for (lane, value) in d_value.iter_mut().enumerate() {
                    *value = run[BLOCK * lane + col];
                }
            }
        }
        return d;
    }
    for lane in 0..lanes {
        let (ty, tx) = tiles.position(shape, lane_start + lane);
        let top = (ty * BLOCK) as isize - 1;
        let left = (tx * BLOCK) as isize - 1;
        for (row, d_row) in d.iter_mut().enumerate() {
            let y = top + row as isize;
            if y < 0 || y as usize >= height {
                continue;
            }
            let line = &channel[y as usize * width..][..width];
            for (col, d_value) in d_row.iter_mut().enumerate() {
                let x = left + col as isize;
                if x >= 0 && (x as usize) < width {
                    d_value[lane] = line[x as usize];
                }
            }
        }
    }
    d
}

/// `M[point] = U[point] V[point]` for each of the 16 points: `products[co][point][tile]`.
fn multiply(shape: &Shape, kernels: &[f32], patches: &[f32], count: usize, products: &mut [f32]) {
    let (co, c) = (shape.out_channels, shape.in_channels);
    let row_stride = (POINTS * count) as isize;
    for point in 0..POINTS {
        // The one unsafe call: gemm takes raw pointers and strides.
        // SAFETY: `kernels` holds `[co][POINTS][c]`, `patches` `[c][POINTS][count]` and
        // `products` `[co][POINTS][count]`, so the point's `[co, c]`, `[c, count]` and
        // `[co, count]` matrices start at `point * c` and `point * count` with row strides
        // `POINTS * c` and `POINTS * count`, all in bounds.
        #[allow(unsafe_code)]
        unsafe {
            gemm::gemm(
                co,
                count,
                c,
                products.as_mut_ptr().add(point * count),
                1,
                row_stride,
                false,
                kernels.as_ptr().add(point * c),
                1,
                (POINTS * c) as isize,
                patches.as_ptr().add(point * count),
                1,
                row_stride,
                0.0,
                1.0,
                false,
                false,
                false,
                parallelism(),
            );
        }
    }
}

/// `Y = Aᵀ M A` plus the bias for a run of tiles, written into `out_image` `[Co, H, W]`,
/// output channels spread over the threads.
fn transform_output(
    shape: &Shape,
    products: &[f32],
    bias: &[f32],
    tiles: &Tiles,
    out_image: &mut [f32],
) {
    out_image
        .par_chunks_mut(shape.height * shape.width)
        .zip(products.par_chunks(POINTS * tiles.count))
        .zip(bias.par_iter())
        .for_each(|((plane, products), &bias)| {
            transform_plane(shape, products, bias, tiles, plane)
        });
}

crate::vectorized! {
    /// `Y = Aᵀ M A + bias` of one output channel's tiles, into its plane.
    fn transform_plane(shape: &Shape, products: &[f32], bias: f32, tiles: &Tiles, plane: &mut [f32]) = transform_plane_generic
}

#[inline(always)]
fn transform_plane_generic(
    shape: &Shape,
    products: &[f32],
    bias: f32,
    tiles: &Tiles,
    plane: &mut [f32],
) {
    let count = tiles.count;
    let mut lane_start = 0;
    while lane_start < count {
        let lanes = LANES.min(count - lane_start);
        let mut m = [[[0f32; LANES]; PATCH]; PATCH];
        for (row, m_row) in m.iter_mut().enumerate() {
            for (col, m_value) in m_row.iter_mut().enumerate() {
                let at = (row * PATCH + col) * count + lane_start;
                m_value[..lanes].copy_from_slice(&products[at..at + lanes]);
            }
        }
        // Aᵀ m: rows m0+m1+m2, m1-m2-m3; then the same on the columns.
        let mut rows = [[[0f32; LANES]; PATCH]; BLOCK];
        for col in 0..PATCH {
            for lane in 0..LANES {
                let [a, b, e, f] = [0, 1, 2, 3].map(|row| m[row][col][lane]);
                rows[0][col][lane] = a + b + e;
                rows[1][col][lane] = b - e - f;
            }
        }
        let mut y = [[[0f32; LANES]; BLOCK]; BLOCK];
        for (row, values) in rows.iter().enumerate() {
            for lane in 0..LANES {
                let [a, b, e, f] = [0, 1, 2, 3].map(|col| values[col][lane]);
                y[row][0][lane] = a + b + e + bias;
                y[row][1][lane] = b - e - f + bias;
            }
        }
        scatter_outputs(shape, &y, tiles, lane_start, lanes, plane);
        lane_start += lanes;
    }
}

/// Writes each of `lanes` tiles' outputs `y[row][col][lane]` into `plane`, cut at the image's
/// edges. Lanes in one tile row interleave each output row into a run written in one copy.
#[inline(always)]
fn scatter_outputs(
    shape: &Shape,
    y: &[[[f32; LANES]; BLOCK]; BLOCK],
    tiles: &Tiles,
    lane_start: usize,
    lanes: usize,
    plane: &mut [f32],
) {
    let (height, width) = (shape.height, shape.width);
    let (ty, tx) = tiles.position(shape, lane_start);
    if lanes == LANES && tx + LANES <= shape.tiles_w() {
        let left = tx * BLOCK;
        let len = (BLOCK * LANES).min(width - left);
        for (row, y_row) in y.iter().enumerate() {
            let oy = ty * BLOCK + row;
            if oy >= height {
                break;
            }
            let mut run = [0f32; BLOCK * LANES];
            for (col, y_value) in y_row.iter().enumerate() {
                for (lane, &value) in y_value.iter().enumerate() {
                    run[BLOCK * lane + col] = value;
                }
            }
            plane[oy * width + left..][..len].copy_from_slice(&run[..len]);
        }
        return;
    }
    for lane in 0..lanes {
        let (ty, tx) = tiles.position(shape, lane_start + lane);
        for (row, y_row) in y.iter().enumerate() {
            let oy = ty * BLOCK + row;
            if oy >= height {
                break;
            }
            for (col, y_value) in y_row.iter().enumerate() {
                let ox = tx * BLOCK + col;
                if ox < width {
                    plane[oy * width + ox] = y_value[lane];
                }
            }
        }
    }
}
