//! 3x3 convolutions (stride 1, padding 1) by Winograd's minimal filtering: each block of
//! outputs comes from a larger patch of input through one product per patch point instead of
//! nine per output, so the matrix products that carry the work shrink (2.25 times with
//! F(2x2, 3x3), 3.24 times with F(3x3, 3x3); see `tilings`). Per call the kernels are
//! transformed (`U = G g Gᵀ`, one matrix `[out, in]` per point), then per chunk of tiles the
//! input patches are (`V = Bᵀ d B`, one matrix `[in, tiles]` per point), one `gemm` per point
//! gives `M = U V`, and the outputs are `Aᵀ M A` plus the bias, written straight into the NCHW
//! output. Maps of 64x64 and more take F(3x3) (when the batch holds two such maps or more),
//! smaller ones (down to 16x16) F(2x2), whose tiles fit small maps with less waste at the edges
//! and more of them to a product.
//!
//! Lavin and Gray, "Fast Algorithms for Convolutional Neural Networks" (2015).

mod tilings;

use std::cell::RefCell;

use candle_core::{CpuStorage, Layout, Result};
use half::{bf16, f16};

use rayon::prelude::*;

use tilings::{Lanes, Tiling, F2, F3, LANES, MAX_BLOCK, MAX_PATCH};

/// Bytes of transformed input a chunk of tiles may use.
const CHUNK_BYTES: usize = 32 << 20;
/// Fewest F(2x2) tiles an image must have (16x16 outputs) for the products' savings to
/// outweigh transforming the kernels on every call; smaller maps take the column path.
const MIN_IMAGE_TILES: usize = 64;
/// Smallest map side that takes F(3x3): on 32x32 maps its fewer tiles a product (121 an image)
/// cost as much in packing as the products save (SD's 640 -> 640 34.7 -> 37.1 ms).
const MIN_F3_SIDE: usize = 64;
/// Fewest pixels over the batch for F(3x3): its kernels' transform (25 matrices) is paid once a
/// call. One 64x64 image of 512 channels ran 40 ms with F(2x2) and 49 with F(3x3); two 64x64
/// images of 320 channels 35 and 32 ms, one 256x256 image of 256 channels 216 and 170 ms.
const MIN_F3_PIXELS: usize = 2 * 64 * 64;
/// Most transformed kernel values held at once (64 MB): layers with more (`points * out * in`)
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

/// Whether a convolution of this shape takes this path: 3x3, stride 1, padding 1, and enough
/// tiles per image for the products to pay.
pub(crate) fn applies(
    kernel: (usize, usize),
    stride: usize,
    padding: usize,
    shape: &Shape,
) -> bool {
    kernel == (3, 3) && stride == 1 && padding == 1 && shape.image_tiles::<F2>() >= MIN_IMAGE_TILES
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
    fn tiles_h<T: Tiling>(&self) -> usize {
        self.height.div_ceil(T::BLOCK)
    }
    fn tiles_w<T: Tiling>(&self) -> usize {
        self.width.div_ceil(T::BLOCK)
    }
    /// Tiles of one image.
    fn image_tiles<T: Tiling>(&self) -> usize {
        self.tiles_h::<T>() * self.tiles_w::<T>()
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
    let weight = (weight, weight_layout);
    let pixels = input.len() / shape.in_channels.max(1);
    if shape.height.min(shape.width) >= MIN_F3_SIDE && pixels >= MIN_F3_PIXELS {
        convolve_within::<F3>(shape, input, weight, bias, out, MAX_KERNEL_FLOATS)
    } else {
        convolve_within::<F2>(shape, input, weight, bias, out, MAX_KERNEL_FLOATS)
    }
}

/// `convolve` by tiling `T`, holding at most `kernel_floats` transformed kernel values at once.
fn convolve_within<T: Tiling + Kernels>(
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
    let block = (kernel_floats / (T::POINTS * shape.in_channels).max(1))
        .clamp(1, shape.out_channels.max(1));
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
        convolve_block::<T>(&block_shape, input, weight, weights, bias, &outputs, out)?;
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
fn convolve_block<T: Tiling + Kernels>(
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
        let kernel_len = T::POINTS * shape.out_channels * shape.in_channels;
        grow(kernels, kernel_len);
        let kernels = &mut kernels[..kernel_len];
        let taps = match weight {
            CpuStorage::F32(w) => Taps::F32(&w[weights]),
            CpuStorage::F16(w) => Taps::F16(&w[weights]),
            CpuStorage::BF16(w) => Taps::BF16(&w[weights]),
            _ => candle_core::bail!("conv2d: weights of an unsupported dtype"),
        };
        transform_kernels::<T>(taps, shape, kernels);
        let image_tiles = shape.image_tiles::<T>();
        let chunk = (CHUNK_BYTES / 4 / (T::POINTS * shape.in_channels).max(1))
            .max(LANES)
            .min(image_tiles);
        grow(patches, T::POINTS * shape.in_channels * chunk);
        grow(products, T::POINTS * shape.out_channels * chunk);
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
                let patches = &mut patches[..T::POINTS * shape.in_channels * count];
                let products = &mut products[..T::POINTS * shape.out_channels * count];
                transform_input::<T>(shape, input, &tiles, patches);
                multiply::<T>(shape, kernels, patches, count, products);
                transform_output::<T>(shape, products, bias, &tiles, out_image);
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
    fn position<T: Tiling>(&self, shape: &Shape, lane: usize) -> (usize, usize) {
        let tile = self.first + lane;
        (tile / shape.tiles_w::<T>(), tile % shape.tiles_w::<T>())
    }
}

fn grow(buffer: &mut Vec<f32>, len: usize) {
    if buffer.len() < len {
        buffer.resize(len, 0.0);
    }
}

/// A convolution's weights `[co][c][3][3]` as held.
#[derive(Clone, Copy)]
enum Taps<'a> {
    F32(&'a [f32]),
    F16(&'a [f16]),
    BF16(&'a [bf16]),
}

/// `U = G g Gᵀ` for every pair of channels: `kernels[co][point][c]`, output channels spread
/// over the threads, each one's half-precision taps widened first in one vectorised pass
/// (widened one value at a time, they made SD's 16x16 layers 12-16% slower than f32 taps).
/// (Laid out `[c][point][co]` instead, each point's matrix column-major, the products read it
/// unpacked but ran SD's 16x16 layers twice as long.)
fn transform_kernels<T: Tiling>(weight: Taps, shape: &Shape, kernels: &mut [f32]) {
    use half::slice::HalfFloatSliceExt;
    let c = shape.in_channels;
    kernels
        .par_chunks_mut(T::POINTS * c)
        .enumerate()
        .for_each_init(Vec::new, |widened: &mut Vec<f32>, (co, kernels)| {
            let taps = co * c * 9..(co + 1) * c * 9;
            widened.resize(c * 9, 0.0);
            let g: &[f32] = match weight {
                Taps::F32(w) => &w[taps],
                Taps::F16(w) => {
                    w[taps].convert_to_f32_slice(widened);
                    widened
                }
                Taps::BF16(w) => {
                    w[taps].convert_to_f32_slice(widened);
                    widened
                }
            };
            transform_output_channel::<T>(g, kernels);
        });
}

/// One output channel's `U = G g Gᵀ` from its taps `g` `[c][3][3]`: `kernels[point][c]`.
fn transform_output_channel<T: Tiling>(weight: &[f32], kernels: &mut [f32]) {
    let c = weight.len() / 9;
    for (channel, g) in weight.chunks_exact(9).enumerate() {
        let g: [f32; 9] = std::array::from_fn(|i| g[i]);
        // G g: PATCH x 3, one column of taps at a time.
        let columns: [[f32; MAX_PATCH]; 3] =
            std::array::from_fn(|col| T::kernel([g[col], g[3 + col], g[6 + col]]));
        for row in 0..T::PATCH {
            let transformed = T::kernel([columns[0][row], columns[1][row], columns[2][row]]);
            for (col, &value) in transformed.iter().take(T::PATCH).enumerate() {
                kernels[(row * T::PATCH + col) * c + channel] = value;
            }
        }
    }
}

/// The per-tiling input and output transforms, each compiled for the widest vectors the CPU
/// has.
trait Kernels {
    /// `V = Bᵀ d B` of one channel's tiles: `patches[point][tile]`.
    fn transform_channel(shape: &Shape, channel: &[f32], tiles: &Tiles, patches: &mut [f32]);
    /// `Y = Aᵀ M A + bias` of one output channel's tiles, into its plane.
    fn transform_plane(
        shape: &Shape,
        products: &[f32],
        bias: f32,
        tiles: &Tiles,
        plane: &mut [f32],
    );
}

/// `Kernels` for a tiling: its transforms compiled, each, for the widest vectors the CPU has.
macro_rules! kernels_for {
    ($tiling:ident, $channel:ident, $plane:ident) => {
        crate::vectorized! {
            fn $channel(shape: &Shape, channel: &[f32], tiles: &Tiles, patches: &mut [f32]) = transform_channel_generic::<$tiling>
        }
        crate::vectorized! {
            fn $plane(shape: &Shape, products: &[f32], bias: f32, tiles: &Tiles, plane: &mut [f32]) = transform_plane_generic::<$tiling>
        }
        impl Kernels for $tiling {
            fn transform_channel(shape: &Shape, channel: &[f32], tiles: &Tiles, patches: &mut [f32]) {
                $channel(shape, channel, tiles, patches)
            }
            fn transform_plane(
                shape: &Shape,
                products: &[f32],
                bias: f32,
                tiles: &Tiles,
                plane: &mut [f32],
            ) {
                $plane(shape, products, bias, tiles, plane)
            }
        }
    };
}

kernels_for!(F2, transform_channel_f2, transform_plane_f2);
kernels_for!(F3, transform_channel_f3, transform_plane_f3);

/// `V = Bᵀ d B` for a run of tiles: `patches[c][point][tile]`, channels spread over the
/// threads.
fn transform_input<T: Tiling + Kernels>(
    shape: &Shape,
    input: &[f32],
    tiles: &Tiles,
    patches: &mut [f32],
) {
    let plane = shape.height * shape.width;
    let image = &input[tiles.image * shape.in_channels * plane..][..shape.in_channels * plane];
    patches
        .par_chunks_mut(T::POINTS * tiles.count)
        .zip(image.par_chunks(plane))
        .for_each(|(patches, channel)| T::transform_channel(shape, channel, tiles, patches));
}

#[inline(always)]
fn transform_channel_generic<T: Tiling>(
    shape: &Shape,
    channel: &[f32],
    tiles: &Tiles,
    patches: &mut [f32],
) {
    let count = tiles.count;
    // Zeroed once a channel, not once a run of tiles (their memsets cost the convolution 2%):
    // each run overwrites what it reads.
    let mut d = [[[0f32; LANES]; MAX_PATCH]; MAX_PATCH];
    let mut rows = [[[0f32; LANES]; MAX_PATCH]; MAX_PATCH];
    let mut run = [0f32; MAX_RUN];
    let mut lane_start = 0;
    while lane_start < count {
        let lanes = LANES.min(count - lane_start);
        gather_patches::<T>(shape, channel, tiles, (lane_start, lanes), &mut d, &mut run);
        // Bᵀ d on the columns, then the same on the rows.
        for col in 0..T::PATCH {
            let column: [Lanes; MAX_PATCH] = std::array::from_fn(|row| d[row][col]);
            let transformed = T::input(&column);
            for row in 0..T::PATCH {
                rows[row][col] = transformed[row];
            }
        }
        for (row, values) in rows.iter().enumerate().take(T::PATCH) {
            let v = T::input(values);
            for (col, lanes_v) in v.iter().enumerate().take(T::PATCH) {
                let at = (row * T::PATCH + col) * count + lane_start;
                patches[at..at + lanes].copy_from_slice(&lanes_v[..lanes]);
            }
        }
        lane_start += lanes;
    }
}

/// Input values a run of `LANES` tiles of one tile row reads from one image row, at most.
const MAX_RUN: usize = MAX_BLOCK * LANES + MAX_PATCH - MAX_BLOCK;

/// `d[row][col][lane]`: the patch of each of `lanes` tiles from `lane_start` on, 0 outside the
/// image (lanes from `lanes` on are left as they were). The lanes of one tile row (all of
/// them, or a segment where the run crosses rows) copy each image row's span once into `run`
/// and read it at the tiling's stride.
#[inline(always)]
fn gather_patches<T: Tiling>(
    shape: &Shape,
    channel: &[f32],
    tiles: &Tiles,
    (lane_start, lanes): (usize, usize),
    d: &mut [[Lanes; MAX_PATCH]; MAX_PATCH],
    run: &mut [f32; MAX_RUN],
) {
    let (height, width) = (shape.height, shape.width);
    let mut lane = 0;
    while lane < lanes {
        let (ty, tx) = tiles.position::<T>(shape, lane_start + lane);
        let count = (lanes - lane).min(shape.tiles_w::<T>() - tx);
        let top = (ty * T::BLOCK) as isize - 1;
        let left = (tx * T::BLOCK) as isize - 1;
        // The span's columns inside the image.
        let span = T::BLOCK * count + T::PATCH - T::BLOCK;
        let first = (-left).max(0) as usize;
        let last = (width as isize - left).clamp(0, span as isize) as usize;
        for (row, d_row) in d.iter_mut().enumerate().take(T::PATCH) {
            let y = top + row as isize;
            if y < 0 || y as usize >= height || first >= last {
                for d_value in d_row.iter_mut().take(T::PATCH) {
                    d_value[lane..lane + count].fill(0.0);
                }
                continue;
            }
            let start = y as usize * width + (left + first as isize) as usize;
            run[..first].fill(0.0);
            run[first..last].copy_from_slice(&channel[start..start + (last - first)]);
            run[last..span].fill(0.0);
            for (col, d_value) in d_row.iter_mut().enumerate().take(T::PATCH) {
                if count == LANES {
                    // The whole run in one tile row: fixed-length loops that vectorise.
                    *d_value = std::array::from_fn(|j| run[T::BLOCK * j + col]);
                } else {
                    for (j, value) in d_value[lane..lane + count].iter_mut().enumerate() {
                        *value = run[T::BLOCK * j + col];
                    }
                }
            }
        }
        lane += count;
    }
}

/// `M[point] = U[point] V[point]` for each point: `products[co][point][tile]`.
fn multiply<T: Tiling>(
    shape: &Shape,
    kernels: &[f32],
    patches: &[f32],
    count: usize,
    products: &mut [f32],
) {
    let (co, c, points) = (shape.out_channels, shape.in_channels, T::POINTS);
    let row_stride = (points * count) as isize;
    let products_at = products.as_mut_ptr() as usize;
    let one = |point: usize, parallelism: gemm::Parallelism| {
        let products = products_at as *mut f32;
        // The one unsafe call: gemm takes raw pointers and strides.
        // SAFETY: `kernels` holds `[co][points][c]`, `patches` `[c][points][count]` and
        // `products` `[co][points][count]`, so the point's `[co, c]`, `[c, count]` and
        // `[co, count]` matrices start at `point * c` and `point * count` with row strides
        // `points * c` and `points * count`, all in bounds; points write disjoint columns.
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
                (points * c) as isize,
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
    let threads_each = crate::threads() / points;
    let each = if threads_each > 1 {
        gemm::Parallelism::Rayon(threads_each)
    } else {
        gemm::Parallelism::None
    };
    (0..points)
        .into_par_iter()
        .for_each(|point| one(point, each));
}

/// `Y = Aᵀ M A` plus the bias for a run of tiles, written into `out_image` `[Co, H, W]`,
/// output channels spread over the threads.
fn transform_output<T: Tiling + Kernels>(
    shape: &Shape,
    products: &[f32],
    bias: &[f32],
    tiles: &Tiles,
    out_image: &mut [f32],
) {
    out_image
        .par_chunks_mut(shape.height * shape.width)
        .zip(products.par_chunks(T::POINTS * tiles.count))
        .zip(bias.par_iter())
        .for_each(|((plane, products), &bias)| {
            T::transform_plane(shape, products, bias, tiles, plane)
        });
}

#[inline(always)]
fn transform_plane_generic<T: Tiling>(
    shape: &Shape,
    products: &[f32],
    bias: f32,
    tiles: &Tiles,
    plane: &mut [f32],
) {
    let count = tiles.count;
    // Zeroed once a plane, not once a run of tiles: each run overwrites what it reads.
    let mut m = [[[0f32; LANES]; MAX_PATCH]; MAX_PATCH];
    let mut rows = [[[0f32; LANES]; MAX_PATCH]; MAX_BLOCK];
    let mut y = [[[0f32; LANES]; MAX_BLOCK]; MAX_BLOCK];
    let mut lane_start = 0;
    while lane_start < count {
        let lanes = LANES.min(count - lane_start);
        for (row, m_row) in m.iter_mut().enumerate().take(T::PATCH) {
            for (col, m_value) in m_row.iter_mut().enumerate().take(T::PATCH) {
                let at = (row * T::PATCH + col) * count + lane_start;
                m_value[..lanes].copy_from_slice(&products[at..at + lanes]);
            }
        }
        // Aᵀ m on the columns, then the same on the rows.
        for col in 0..T::PATCH {
            let column: [Lanes; MAX_PATCH] = std::array::from_fn(|row| m[row][col]);
            let transformed = T::output(&column);
            for block_row in 0..T::BLOCK {
                rows[block_row][col] = transformed[block_row];
            }
        }
        for (y_row, values) in y.iter_mut().zip(&rows).take(T::BLOCK) {
            *y_row = T::output(values);
            for y_value in y_row.iter_mut().take(T::BLOCK) {
                for value in y_value.iter_mut() {
                    *value += bias;
                }
            }
        }
        scatter_outputs::<T>(shape, &y, tiles, lane_start, lanes, plane);
        lane_start += lanes;
    }
}

/// Writes each of `lanes` tiles' outputs `y[row][col][lane]` into `plane`, cut at the image's
/// edges. The lanes of one tile row (all of them, or a segment where the run crosses rows)
/// interleave each output row into a span written in one copy.
#[inline(always)]
fn scatter_outputs<T: Tiling>(
    shape: &Shape,
    y: &[[Lanes; MAX_BLOCK]; MAX_BLOCK],
    tiles: &Tiles,
    lane_start: usize,
    lanes: usize,
    plane: &mut [f32],
) {
    let (height, width) = (shape.height, shape.width);
    let mut lane = 0;
    while lane < lanes {
        let (ty, tx) = tiles.position::<T>(shape, lane_start + lane);
        let count = (lanes - lane).min(shape.tiles_w::<T>() - tx);
        let left = tx * T::BLOCK;
        let len = (T::BLOCK * count).min(width - left);
        for (row, y_row) in y.iter().enumerate().take(T::BLOCK) {
            let oy = ty * T::BLOCK + row;
            if oy >= height {
                break;
            }
            let mut run = [0f32; MAX_BLOCK * LANES];
            for (col, y_value) in y_row.iter().enumerate().take(T::BLOCK) {
                if count == LANES {
                    // The whole run in one tile row: fixed-length loops that vectorise.
                    for (j, &value) in y_value.iter().enumerate() {
                        run[T::BLOCK * j + col] = value;
                    }
                } else {
                    for (j, &value) in y_value[lane..lane + count].iter().enumerate() {
                        run[T::BLOCK * j + col] = value;
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

    /// Each tiling on `(batch, channels, out_channels, height, width)`, in blocks of output
    /// channels of every size in `per_block`, against candle's convolution.
    fn check<T: Tiling + Kernels>(
        (batch, channels, out_channels, height, width): (usize, usize, usize, usize, usize),
        per_block: &[usize],
    ) {
        let device = Device::Cpu;
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
        for &per_block in per_block {
            let mut out = vec![f32::NAN; reference.len()];
            convolve_within::<T>(
                &shape,
                &values(&x),
                (storage, layout),
                &values(&bias),
                &mut out,
                per_block * T::POINTS * channels,
            )
            .expect("convolve");
            let worst = out
                .iter()
                .zip(&reference)
                .map(|(a, b)| (a - b).abs())
                .fold(0f32, f32::max);
            // Within 1e-5 of the output's scale (at least 1): both sides round, and sums over
            // hundreds of channels reach tens.
            let scale = reference.iter().fold(1f32, |m, v| m.max(v.abs()));
            assert!(
                worst < 1e-5 * scale,
                "F({0}x{0}) on {batch}x{channels}->{out_channels} at {height}x{width}, blocks of \
                 {per_block}: {worst} at scale {scale}",
                T::BLOCK
            );
        }
    }

    #[test]
    fn output_channels_in_blocks_give_candles_convolution() {
        // Blocks of 7 (all), 3, 3 and 1, and of 1; odd sides that cut the edge tiles.
        for shape in [(2, 5, 7, 17, 19), (1, 4, 7, 22, 20)] {
            check::<F2>(shape, &[7, 3, 1]);
            check::<F3>(shape, &[7, 3, 1]);
        }
    }

    #[test]
    fn each_tiling_gives_candles_convolution_over_many_channels() {
        // Sums over many channels, as SD's layers have, and several chunks of tiles.
        check::<F2>((1, 320, 8, 33, 35), &[8]);
        check::<F3>((1, 320, 8, 33, 35), &[8]);
    }
}
