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
/// Fewest tiles an image must have (16x16 outputs) for the products' savings to outweigh
/// transforming the kernels on every call; smaller maps take the column path.
const MIN_IMAGE_TILES: usize = 64;
/// Most transformed kernel values held at once (64 MB): layers with more (`16 * out * in`)
/// run in blocks of output channels, the input transformed again for each block.
const MAX_KERNEL_FLOATS: usize = 16 << 20;

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
pub(crate) fn applies(kernel: (usize, usize), stride: usize, padding: usize, tiles: usize) -> bool {
    kernel == (3, 3) && stride == 1 && padding == 1 && tiles >= MIN_IMAGE_TILES
}

/// Sizes of one convolution (the batch is the output's length over one image's).
#[derive(Clone, Copy)]
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
    convolve_within(
        shape,
        input,
        (weight, weight_layout),
        bias,
        out,
        MAX_KERNEL_FLOATS,
    )
}

/// `convolve` holding at most `kernel_floats` transformed kernel values at once.
fn convolve_within(
    shape: &Shape,
    input: &[f32],
    (weight, weight_layout): (&CpuStorage, &Layout),
    bias: &[f32],
    out: &mut [f32],
    kernel_floats: usize,
) -> Result<()> {
    let Some((start, end)) = weight_layout.contiguous_offsets() else {
        candle_core::bail!("conv2d: the weights must be contiguous")
    };
    let weight_len = shape.out_channels * shape.in_channels * 9;
    if end - start != weight_len || bias.len() != shape.out_channels {
        candle_core::bail!("conv2d: weights or bias do not fit the shape");
    }
    // Output channels in blocks whose transformed kernels fit the budget: each block is a
    // convolution of its own (its weights, bias and output planes), the input transformed again
    // for each.
    let block =
        (kernel_floats / (POINTS * shape.in_channels).max(1)).clamp(1, shape.out_channels.max(1));
    let plane = shape.height * shape.width;
    let out_image_len = shape.out_channels * plane;
    let mut first_channel = 0;
    while first_channel < shape.out_channels {
        let channels = block.min(shape.out_channels - first_channel);
        let block_shape = Shape {
            out_channels: channels,
            ..*shape
        };
        let weights = start + first_channel * shape.in_channels * 9;
        let weights = weights..weights + channels * shape.in_channels * 9;
        let bias = &bias[first_channel..first_channel + channels];
        let planes = first_channel * plane..(first_channel + channels) * plane;
        let outputs = Outputs {
            image_len: out_image_len,
            planes,
        };
        convolve_block(&block_shape, input, weight, weights, bias, &outputs, out)?;
        first_channel += channels;
    }
    Ok(())
}

/// Where a block's output planes lie in each image of the whole output.
struct Outputs {
    /// Values of one output image.
    image_len: usize,
    /// The block's planes within an image.
    planes: std::ops::Range<usize>,
}

/// One block of output channels (`shape.out_channels` of them, `weights` the range of their
/// weights in `weight`), written into their planes of `out`.
fn convolve_block(
    shape: &Shape,
    input: &[f32],
    weight: &CpuStorage,
    weights: std::ops::Range<usize>,
    bias: &[f32],
    outputs: &Outputs,
    out: &mut [f32],
) -> Result<()> {
    BUFFERS.with(|buffers| {
        let mut buffers = buffers.borrow_mut();
        let [kernels, patches, products] = &mut *buffers;
        let kernel_len = POINTS * shape.out_channels * shape.in_channels;
        grow(kernels, kernel_len);
        let kernels = &mut kernels[..kernel_len];
        match weight {
            CpuStorage::F32(w) => transform_kernels(&w[weights], shape, kernels, |x| x),
            CpuStorage::F16(w) => transform_kernels(&w[weights], shape, kernels, f16::to_f32),
            CpuStorage::BF16(w) => transform_kernels(&w[weights], shape, kernels, bf16::to_f32),
            _ => candle_core::bail!("conv2d: weights of an unsupported dtype"),
        }
        let image_tiles = shape.image_tiles();
        let chunk = (CHUNK_BYTES / 4 / (POINTS * shape.in_channels).max(1))
            .max(LANES)
            .min(image_tiles);
        grow(patches, POINTS * shape.in_channels * chunk);
        grow(products, POINTS * shape.out_channels * chunk);
        let images = input.len() / (shape.in_channels * shape.height * shape.width).max(1);
        for image in 0..images {
            let out_image = &mut out[image * outputs.image_len..][outputs.planes.clone()];
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
/// image. The lanes of one tile row (all of them, or a segment where the run crosses rows)
/// copy each image row's span once and read it at stride 2.
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
    let mut lane = 0;
    while lane < lanes {
        let (ty, tx) = tiles.position(shape, lane_start + lane);
        let count = (lanes - lane).min(shape.tiles_w() - tx);
        let top = (ty * BLOCK) as isize - 1;
        let left = (tx * BLOCK) as isize - 1;
        // The span's columns inside the image.
        let span = BLOCK * count + PATCH - BLOCK;
        let first = (-left).max(0) as usize;
        let last = (width as isize - left).clamp(0, span as isize) as usize;
        for (row, d_row) in d.iter_mut().enumerate() {
            let y = top + row as isize;
            if y < 0 || y as usize >= height || first >= last {
                continue;
            }
            let mut run = [0f32; RUN];
            let start = y as usize * width + (left + first as isize) as usize;
            run[first..last].copy_from_slice(&channel[start..start + (last - first)]);
            for (col, d_value) in d_row.iter_mut().enumerate() {
                if count == LANES {
                    // The whole run in one tile row: fixed-length loops that vectorise.
                    *d_value = std::array::from_fn(|j| run[BLOCK * j + col]);
                } else {
                    for (j, value) in d_value[lane..lane + count].iter_mut().enumerate() {
                        *value = run[BLOCK * j + col];
                    }
                }
            }
        }
        lane += count;
    }
    d
}

/// `M[point] = U[point] V[point]` for each of the 16 points: `products[co][point][tile]`.
fn multiply(shape: &Shape, kernels: &[f32], patches: &[f32], count: usize, products: &mut [f32]) {
    let (co, c) = (shape.out_channels, shape.in_channels);
    let row_stride = (POINTS * count) as isize;
    let products_at = products.as_mut_ptr() as usize;
    let one = |point: usize, parallelism: gemm::Parallelism| {
        let products = products_at as *mut f32;
        // The one unsafe call: gemm takes raw pointers and strides.
        // SAFETY: `kernels` holds `[co][POINTS][c]`, `patches` `[c][POINTS][count]` and
        // `products` `[co][POINTS][count]`, so the point's `[co, c]`, `[c, count]` and
        // `[co, count]` matrices start at `point * c` and `point * count` with row strides
        // `POINTS * c` and `POINTS * count`, all in bounds; points write disjoint columns.
        #[allow(unsafe_code)]
        unsafe {
            gemm::gemm(
                co,
                count,
                c,
                products.add(point * count),
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
                parallelism,
            );
        }
    };
    // The points' products are independent: threads take whole products (each thread's
    // packing stays its own), and split each product only when there are more threads than
    // points. Splitting each product over two threads instead ran SD's 16x16 level 1.7x and
    // its 64x64 level 1.1x slower.
    let threads_each = crate::threads() / POINTS;
    let each = if threads_each > 1 {
        gemm::Parallelism::Rayon(threads_each)
    } else {
        gemm::Parallelism::None
    };
    (0..POINTS)
        .into_par_iter()
        .for_each(|point| one(point, each));
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
/// edges. The lanes of one tile row (all of them, or a segment where the run crosses rows)
/// interleave each output row into a span written in one copy.
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
    let mut lane = 0;
    while lane < lanes {
        let (ty, tx) = tiles.position(shape, lane_start + lane);
        let count = (lanes - lane).min(shape.tiles_w() - tx);
        let left = tx * BLOCK;
        let len = (BLOCK * count).min(width - left);
        for (row, y_row) in y.iter().enumerate() {
            let oy = ty * BLOCK + row;
            if oy >= height {
                break;
            }
            let mut run = [0f32; BLOCK * LANES];
            for (col, y_value) in y_row.iter().enumerate() {
                if count == LANES {
                    // The whole run in one tile row: fixed-length loops that vectorise.
                    for (j, &value) in y_value.iter().enumerate() {
                        run[BLOCK * j + col] = value;
                    }
                } else {
                    for (j, &value) in y_value[lane..lane + count].iter().enumerate() {
                        run[BLOCK * j + col] = value;
                    }
                }
            }
            plane[oy * width + left..][..len].copy_from_slice(&run[..len]);
        }
        lane += count;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Storage, Tensor};

    fn values(t: &Tensor) -> Vec<f32> {
        t.flatten_all()
            .and_then(|t| t.to_vec1::<f32>())
            .expect("values")
    }

    #[test]
    fn output_channels_in_blocks_give_candles_convolution() {
        let device = Device::Cpu;
        let (batch, channels, out_channels, height, width) = (2, 5, 7, 17, 19);
        let x = Tensor::randn(0f32, 1.0, (batch, channels, height, width), &device).expect("x");
        let weight =
            Tensor::randn(0f32, 0.2, (out_channels, channels, 3, 3), &device).expect("weight");
        let bias = Tensor::randn(0f32, 1.0, out_channels, &device).expect("bias");
        let reference = x
            .conv2d(&weight, 1, 1, 1, 1)
            .and_then(|y| y.broadcast_add(&bias.reshape((1, out_channels, 1, 1))?))
            .expect("candle's");
        let reference = values(&reference);
        let shape = Shape {
            in_channels: channels,
            out_channels,
            height,
            width,
        };
        let (storage, layout) = weight.storage_and_layout();
        let Storage::Cpu(storage) = &*storage else {
            panic!("CPU weights")
        };
        // Blocks of 7 (all), 3, 3 and 1, and of 1.
        for per_block in [7, 3, 1] {
            let mut out = vec![f32::NAN; reference.len()];
            convolve_within(
                &shape,
                &values(&x),
                (storage, layout),
                &values(&bias),
                &mut out,
                per_block * POINTS * channels,
            )
            .expect("convolve");
            let worst = out
                .iter()
                .zip(&reference)
                .map(|(a, b)| (a - b).abs())
                .fold(0f32, f32::max);
            assert!(worst < 1e-5, "blocks of {per_block}: {worst}");
        }
    }
}
