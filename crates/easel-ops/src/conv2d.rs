//! A 2-D convolution for the CPU that spends its time in one matrix product: the input rows
//! a tile of output rows needs are copied, contiguous run by contiguous run, into a reused
//! column buffer; the weights are used where they lie, as a `[out, in * kh * kw]` matrix; the
//! product is written straight into the NCHW output (never read first), then the bias is added
//! plane by plane over the threads. candle's CPU conv2d instead copies the whole input to NHWC,
//! re-lays the weights on every call, gathers the columns one element at a time and adds the
//! bias in a single-threaded pass.
//!
//! Weights may be held in f16 or bf16 (see `weights`); they are widened once per group of tiles
//! (on small maps, once a call). Other
//! devices and dtypes use candle's own convolution (`Conv2d::forward` decides).

use std::cell::RefCell;

use super::f32_slice;
use crate::weights::{for_each_f32_rows, is_cpu_weights_dtype};
use crate::winograd;
use candle_core::{CpuStorage, CustomOp3, DType, Layout, Module, Result, Shape, Tensor};
use candle_nn::{Conv2dConfig, VarBuilder};

/// Bytes of column buffer a tile may use: large enough that the product is efficient, small
/// enough to stay in the caches' reach.
const TILE_BUFFER_BYTES: usize = 8 << 20;

thread_local! {
    /// The column buffer, kept between calls so that no step pays for fresh pages.
    static COLUMNS: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
}

/// Frees this thread's column buffer.
pub(crate) fn release_columns() {
    COLUMNS.with(|columns| *columns.borrow_mut() = Vec::new());
}

/// A convolution layer: weights `[out, in, kh, kw]` (on the CPU in f32, f16 or bf16), a bias
/// in the compute dtype, stride and padding.
#[derive(Debug, Clone)]
pub struct Conv2d {
    weight: Tensor,
    bias: Option<Tensor>,
    config: Conv2dConfig,
}

impl Conv2d {
    /// A layer over these weights (`bias` `[out]`, if any).
    pub fn new(weight: Tensor, bias: Option<Tensor>, config: Conv2dConfig) -> Self {
        Self {
            weight,
            bias,
            config,
        }
    }

    /// The weights.
    pub fn weight(&self) -> &Tensor {
        &self.weight
    }

    /// The bias, if any.
    pub fn bias(&self) -> Option<&Tensor> {
        self.bias.as_ref()
    }

    /// Whether Easel's kernel can run this layer on `x` (f32 on the CPU, no groups or
    /// dilation); candle's runs it otherwise.
    fn own_kernel_runs(&self, x: &Tensor) -> bool {
        x.device().is_cpu()
            && x.dtype() == DType::F32
            && is_cpu_weights_dtype(self.weight.dtype())
            && self.config.groups == 1
            && self.config.dilation == 1
    }
}

impl Module for Conv2d {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        crate::op_times::timed(
            || {
                let w = self.weight.dims();
                format!(
                    "conv{}x{} s{} {:?} -> {}",
                    w[2],
                    w[3],
                    self.config.stride,
                    x.dims(),
                    w[0]
                )
            },
            || self.forward_untimed(x),
        )
    }
}

impl Conv2d {
    /// The layer's output plus `addend`, added in place over the threads (candle's `+` makes
    /// a third tensor on one thread).
    pub fn forward_plus(&self, x: &Tensor, addend: crate::Addend) -> Result<Tensor> {
        let out = self.forward(x)?;
        crate::addend::add_onto(out, addend)
    }

    fn forward_untimed(&self, x: &Tensor) -> Result<Tensor> {
        if self.own_kernel_runs(x) {
            let out_channels = self.weight.dim(0)?;
            let bias = match &self.bias {
                Some(bias) => bias.clone(),
                None => Tensor::zeros(out_channels, DType::F32, x.device())?,
            };
            let op = Conv2dOp {
                stride: self.config.stride,
                padding: self.config.padding,
            };
            return x.contiguous()?.apply_op3_no_bwd(
                &self.weight.contiguous()?,
                &bias.contiguous()?,
                &op,
            );
        }
        let y = x.conv2d(
            &self.weight.to_dtype(x.dtype())?,
            self.config.padding,
            self.config.stride,
            self.config.dilation,
            self.config.groups,
        )?;
        match &self.bias {
            Some(bias) => y.broadcast_add(&bias.reshape((1, bias.dim(0)?, 1, 1))?),
            None => Ok(y),
        }
    }
}

/// `candle_nn::conv2d`'s loader (same names, shapes and initialisation) for Easel's layer:
/// the weights at `vb`'s dtype, the bias at the compute dtype (`weights::compute_dtype`).
pub fn conv2d(
    in_channels: usize,
    out_channels: usize,
    kernel: usize,
    config: Conv2dConfig,
    vb: VarBuilder,
) -> Result<Conv2d> {
    let weight = vb.get_with_hints(
        (out_channels, in_channels / config.groups, kernel, kernel),
        "weight",
        candle_nn::init::DEFAULT_KAIMING_NORMAL,
    )?;
    let bias = crate::weights::load_bias(in_channels, out_channels, &vb)?;
    Ok(Conv2d::new(weight, Some(bias), config))
}

/// `conv2d` with a square `kernel`, `stride` and `padding` (no groups or dilation).
pub fn conv2d_strided(
    in_channels: usize,
    out_channels: usize,
    kernel: usize,
    stride: usize,
    padding: usize,
    vb: VarBuilder,
) -> Result<Conv2d> {
    let config = Conv2dConfig {
        padding,
        stride,
        ..Default::default()
    };
    conv2d(in_channels, out_channels, kernel, config, vb)
}

/// The kernel's parameters.
struct Conv2dOp {
    stride: usize,
    padding: usize,
}

/// Sizes of one convolution.
#[derive(Debug, Clone, Copy)]
struct Dims {
    batch: usize,
    in_channels: usize,
    height: usize,
    width: usize,
    out_channels: usize,
    kernel_h: usize,
    kernel_w: usize,
    out_h: usize,
    out_w: usize,
    stride: usize,
    padding: usize,
}

impl Dims {
    /// Rows of the column matrix: every input value one output value reads.
    fn k(&self) -> usize {
        self.in_channels * self.kernel_h * self.kernel_w
    }
}

impl CustomOp3 for Conv2dOp {
    fn name(&self) -> &'static str {
        "easel-conv2d"
    }

    fn cpu_fwd(
        &self,
        input: &CpuStorage,
        input_layout: &Layout,
        weight: &CpuStorage,
        weight_layout: &Layout,
        bias: &CpuStorage,
        bias_layout: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (batch, in_channels, height, width) = input_layout.shape().dims4()?;
        let (out_channels, weight_in, kernel_h, kernel_w) = weight_layout.shape().dims4()?;
        if weight_in != in_channels || bias_layout.shape().dims1()? != out_channels {
            candle_core::bail!(
                "conv2d: input {:?}, weight {:?}, bias {:?} do not fit",
                input_layout.shape(),
                weight_layout.shape(),
                bias_layout.shape()
            );
        }
        let padded_h = height + 2 * self.padding;
        let padded_w = width + 2 * self.padding;
        if padded_h < kernel_h || padded_w < kernel_w || self.stride == 0 {
            candle_core::bail!("conv2d: a {kernel_h}x{kernel_w} kernel over {height}x{width}");
        }
        let dims = Dims {
            batch,
            in_channels,
            height,
            width,
            out_channels,
            kernel_h,
            kernel_w,
            out_h: (padded_h - kernel_h) / self.stride + 1,
            out_w: (padded_w - kernel_w) / self.stride + 1,
            stride: self.stride,
            padding: self.padding,
        };
        let input = f32_slice("conv2d", input, input_layout)?;
        let bias = f32_slice("conv2d", bias, bias_layout)?;
        let mut out = crate::output::zeros(batch * out_channels * dims.out_h * dims.out_w);
        let shape = winograd::Shape {
            in_channels,
            out_channels,
            height,
            width,
        };
        if winograd::applies((kernel_h, kernel_w), self.stride, self.padding, &shape) {
            winograd::convolve(&shape, input, weight, weight_layout, bias, &mut out)?;
            return Ok((
                CpuStorage::F32(out),
                Shape::from((batch, out_channels, dims.out_h, dims.out_w)),
            ));
        }
        convolve(&dims, input, (weight, weight_layout), bias, &mut out)?;
        Ok((
            CpuStorage::F32(out),
            Shape::from((batch, out_channels, dims.out_h, dims.out_w)),
        ))
    }
}

/// A layer's weights `[out_channels, k]` (f32, f16 or bf16) and their layout.
type Weights<'a> = (&'a CpuStorage, &'a Layout);

/// Bytes of gathered columns one product over the weights serves: several tiles (the images of
/// a batch on a small map, or two tiles of a large one) share one pass over the weights, so
/// that 16-bit weights are widened once for all of them rather than once a tile.
const GROUP_BUFFER_BYTES: usize = 2 * TILE_BUFFER_BYTES;

/// Output rows `first_row..first_row + rows` of image `image`.
#[derive(Clone, Copy)]
struct RowsOf {
    image: usize,
    first_row: usize,
    rows: usize,
}

/// How many of `tiles`, from the first, gather their columns (`columns_len` values each) within
/// `GROUP_BUFFER_BYTES`: at least one.
fn group_size(tiles: &[RowsOf], columns_len: impl Fn(&RowsOf) -> usize) -> usize {
    let mut bytes = 0;
    let fitting = tiles
        .iter()
        .take_while(|tile| {
            bytes += columns_len(tile) * 4;
            bytes <= GROUP_BUFFER_BYTES
        })
        .count();
    fitting.max(1)
}

/// The whole convolution: tiles of output rows, image by image, gathered into columns a group
/// of tiles at a time, each group one pass over the weights with one product per tile.
fn convolve(
    dims: &Dims,
    input: &[f32],
    weight: Weights,
    bias: &[f32],
    out: &mut [f32],
) -> Result<()> {
    let k = dims.k();
    let n = dims.out_h * dims.out_w;
    let image_len = dims.in_channels * dims.height * dims.width;
    let pointwise =
        dims.kernel_h == 1 && dims.kernel_w == 1 && dims.stride == 1 && dims.padding == 0;
    let rows_per_tile = if pointwise {
        dims.out_h
    } else {
        (TILE_BUFFER_BYTES / 4 / (k * dims.out_w).max(1)).clamp(1, dims.out_h)
    };
    let tiles: Vec<RowsOf> = (0..dims.batch)
        .flat_map(|image| {
            (0..dims.out_h)
                .step_by(rows_per_tile)
                .map(move |first_row| RowsOf {
                    image,
                    first_row,
                    rows: rows_per_tile.min(dims.out_h - first_row),
                })
        })
        .collect();
    // Values of a tile's columns (none for a pointwise convolution: it reads the image).
    let columns_len = |tile: &RowsOf| {
        if pointwise {
            0
        } else {
            k * tile.rows * dims.out_w
        }
    };
    COLUMNS.with(|columns| {
        let mut columns = columns.borrow_mut();
        let mut rest = &tiles[..];
        while !rest.is_empty() {
            let (group, after) = rest.split_at(group_size(rest, columns_len));
            rest = after;
            let group_len: usize = group.iter().map(columns_len).sum();
            if columns.len() < group_len {
                columns.resize(group_len, 0.0);
            }
            let mut at = 0;
            for tile in group {
                let len = columns_len(tile);
                let image = &input[tile.image * image_len..(tile.image + 1) * image_len];
                if !pointwise {
                    gather_columns(
                        dims,
                        image,
                        tile.first_row,
                        tile.rows,
                        &mut columns[at..at + len],
                    );
                }
                at += len;
            }
            let mut at = 0;
            let products: Vec<TileProduct> = group
                .iter()
                .map(|tile| {
                    let len = columns_len(tile);
                    let rhs = if pointwise {
                        &input[tile.image * image_len..(tile.image + 1) * image_len]
                    } else {
                        &columns[at..at + len]
                    };
                    at += len;
                    TileProduct {
                        rhs,
                        out_start: tile.image * dims.out_channels * n + tile.first_row * dims.out_w,
                        len: tile.rows * dims.out_w,
                    }
                })
                .collect();
            multiply(dims, weight, &products, n, out)?;
        }
        add_bias_planes(out, bias, n);
        Ok(())
    })
}

/// Adds each output channel's bias to its planes (`plane` values each, channels repeating per
/// image), planes spread over the threads.
fn add_bias_planes(out: &mut [f32], bias: &[f32], plane: usize) {
    use rayon::prelude::*;
    out.par_chunks_mut(plane.max(1))
        .enumerate()
        .for_each(|(index, values)| add_to_all(values, bias[index % bias.len()]));
}

crate::vectorized! {
    /// `value` added to every one of `values`.
    pub(crate) fn add_to_all(values: &mut [f32], value: f32) = add_to_all_generic
}

#[inline(always)]
fn add_to_all_generic(values: &mut [f32], value: f32) {
    for v in values {
        *v += value;
    }
}

/// One tile's product: its columns and where its outputs go.
struct TileProduct<'a> {
    /// `[k, len]` columns.
    rhs: &'a [f32],
    /// Where output channel 0's first value of the tile lies in the output.
    out_start: usize,
    /// Output positions (columns).
    len: usize,
}

/// `out[:, tile] = weight · tile.rhs` for every tile, over one pass of the weights; each output
/// channel's row is `plane` values long.
fn multiply(
    dims: &Dims,
    (weight, layout): Weights,
    tiles: &[TileProduct],
    plane: usize,
    out: &mut [f32],
) -> Result<()> {
    let k = dims.k();
    for tile in tiles {
        let fits = tile.rhs.len() >= k * tile.len
            && tile.out_start + dims.out_channels.saturating_sub(1) * plane + tile.len <= out.len();
        if !fits {
            candle_core::bail!("conv2d: a tile's operands do not fit")
        }
    }
    let out_at = out.as_mut_ptr() as usize;
    let product = |first_channel: usize, weight: &[f32], parallelism: gemm::Parallelism| {
        let channels = weight.len() / k.max(1);
        let out = out_at as *mut f32;
        for tile in tiles {
            // The one unsafe call: gemm takes raw pointers and strides.
            // SAFETY: each tile's outputs are `out_channels` rows of `plane` values from
            // `out_start` within `out` (checked above), of which this product writes rows
            // `first_channel..first_channel + channels` (no other product does) and `len`
            // columns; `weight` is `[channels, k]` and `rhs` `[k, len]`, all row-major and in
            // bounds.
            #[allow(unsafe_code)]
            unsafe {
                gemm::gemm(
                    channels,
                    tile.len,
                    k,
                    out.add(tile.out_start + first_channel * plane),
                    1,
                    plane as isize,
                    false,
                    weight.as_ptr(),
                    1,
                    k as isize,
                    tile.rhs.as_ptr(),
                    1,
                    tile.len as isize,
                    1.0,
                    1.0,
                    false,
                    false,
                    false,
                    parallelism,
                );
            }
        }
    };
    let positions = tiles.iter().map(|tile| tile.len).sum();
    for_each_f32_rows("conv2d", weight, layout, k, positions, product)
}

/// Fills `columns` (`[k, rows * out_w]`) for output rows `first_row..first_row + rows`: row
/// `(c, ki, kj)` holds, for each output position, the input value under kernel tap `(ki, kj)`
/// of channel `c`, or 0 in the padding. With stride 1 each output row's run is one copy.
fn gather_columns(dims: &Dims, image: &[f32], first_row: usize, rows: usize, columns: &mut [f32]) {
    let out_w = dims.out_w;
    let tile_n = rows * out_w;
    let plane = dims.height * dims.width;
    for c in 0..dims.in_channels {
        let channel = &image[c * plane..(c + 1) * plane];
        for ki in 0..dims.kernel_h {
            for kj in 0..dims.kernel_w {
                let row = (c * dims.kernel_h + ki) * dims.kernel_w + kj;
                let target = &mut columns[row * tile_n..(row + 1) * tile_n];
                // Output columns whose input column `ox * stride + kj - padding` is inside
                // (none when the tap lies past the padded map's right edge: a 1-wide map).
                let first_ox = dims.padding.saturating_sub(kj).div_ceil(dims.stride);
                let last_ox = (dims.width + dims.padding)
                    .checked_sub(kj + 1)
                    .map_or(0, |span| span / dims.stride + 1)
                    .min(out_w)
                    .max(first_ox);
                for r in 0..rows {
                    let segment = &mut target[r * out_w..(r + 1) * out_w];
                    let iy = ((first_row + r) * dims.stride + ki) as isize - dims.padding as isize;
                    if iy < 0 || iy >= dims.height as isize {
                        segment.fill(0.0);
                        continue;
                    }
                    let input_row =
                        &channel[iy as usize * dims.width..(iy as usize + 1) * dims.width];
                    segment[..first_ox].fill(0.0);
                    segment[last_ox..].fill(0.0);
                    let first_ix = first_ox * dims.stride + kj - dims.padding;
                    if dims.stride == 1 {
                        let len = last_ox - first_ox;
                        segment[first_ox..last_ox]
                            .copy_from_slice(&input_row[first_ix..first_ix + len]);
                    } else {
                        for (slot, ix) in segment[first_ox..last_ox]
                            .iter_mut()
                            .zip((first_ix..).step_by(dims.stride))
                        {
                            *slot = input_row[ix];
                        }
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_support::largest_difference;
    use candle_core::Device;

    /// Easel's convolution against candle's on the same operands.
    fn largest_relative_difference(
        shape: (usize, usize, usize, usize),
        out_channels: usize,
        kernel: usize,
        stride: usize,
        padding: usize,
    ) -> f32 {
        let device = Device::Cpu;
        let (b, c, h, w) = shape;
        let x = Tensor::randn(0f32, 1.0, (b, c, h, w), &device).expect("x");
        let weight =
            Tensor::randn(0f32, 0.2, (out_channels, c, kernel, kernel), &device).expect("weight");
        let bias = Tensor::randn(0f32, 1.0, out_channels, &device).expect("bias");
        let config = Conv2dConfig {
            padding,
            stride,
            ..Default::default()
        };
        let ours = Conv2d::new(weight.clone(), Some(bias.clone()), config)
            .forward(&x)
            .expect("ours");
        let reference = x
            .conv2d(&weight, padding, stride, 1, 1)
            .and_then(|y| y.broadcast_add(&bias.reshape((1, out_channels, 1, 1))?))
            .expect("candle's");
        assert_eq!(ours.dims(), reference.dims());
        let scale = reference
            .abs()
            .and_then(|a| a.max_all())
            .and_then(|m| m.to_scalar::<f32>())
            .expect("scale")
            .max(1.0);
        (ours - reference)
            .and_then(|d| d.abs())
            .and_then(|d| d.max_all())
            .and_then(|m| m.to_scalar::<f32>())
            .expect("difference")
            / scale
    }

    #[test]
    fn three_by_three_convolutions_match_candles_on_odd_shapes() {
        for (shape, out_channels, stride, padding) in [
            ((1, 3, 7, 5), 4, 1, 1),
            ((2, 5, 9, 13), 7, 1, 1),
            ((1, 4, 8, 8), 3, 2, 0),
            ((2, 3, 11, 6), 5, 2, 1),
            ((1, 2, 5, 5), 3, 1, 0),
            ((1, 6, 3, 3), 2, 1, 2),
            // A UNet's deepest level at 64 px: 1x1 maps, every tap but the centre padding.
            ((2, 4, 1, 1), 3, 1, 1),
            ((1, 3, 1, 4), 2, 1, 1),
            ((1, 3, 4, 1), 2, 2, 1),
        ] {
            let difference = largest_relative_difference(shape, out_channels, 3, stride, padding);
            assert!(
                difference < 1e-5,
                "{shape:?} -> {out_channels}, stride {stride}, padding {padding}: {difference}"
            );
        }
    }

    #[test]
    fn weights_held_in_half_precision_give_the_f32_result_of_their_rounded_values() {
        let device = Device::Cpu;
        let weight = Tensor::randn(0f32, 0.2, (6, 5, 3, 3), &device).expect("weight");
        let bias = Tensor::randn(0f32, 1.0, 6, &device).expect("bias");
        let config = Conv2dConfig {
            padding: 1,
            ..Default::default()
        };
        // A small map (the column path) and a large one (the Winograd path).
        for (held, side) in [
            (DType::F16, 9),
            (DType::BF16, 9),
            (DType::F16, 35),
            (DType::BF16, 35),
        ] {
            let x = Tensor::randn(0f32, 1.0, (2, 5, side, side - 2), &device).expect("x");
            let held_weight = weight.to_dtype(held).expect("held");
            let rounded = held_weight.to_dtype(DType::F32).expect("rounded");
            let ours = Conv2d::new(held_weight, Some(bias.clone()), config)
                .forward(&x)
                .expect("ours");
            let reference = Conv2d::new(rounded, Some(bias.clone()), config)
                .forward(&x)
                .expect("f32");
            let difference = largest_difference(&ours, &reference);
            assert!(difference < 1e-5, "{held:?} {side}: {difference}");
        }
    }

    #[test]
    fn winograd_convolutions_match_candles_on_odd_shapes() {
        // 3x3, stride 1, padding 1 and at least 16x16 outputs: the Winograd path, with odd
        // sides (a last row and column of half tiles), several chunks and several images.
        for (shape, out_channels) in [
            ((1, 3, 33, 35), 5),
            // 16 tiles a row: every run of lanes is one row, cut at the odd right edge.
            ((1, 4, 35, 31), 3),
            ((2, 7, 32, 41), 4),
            ((1, 1000, 33, 34), 3),
            // Two maps of 64x64 and more: F(3x3), odd sides cutting its 3x3 edge tiles.
            ((2, 6, 65, 67), 5),
        ] {
            let difference = largest_relative_difference(shape, out_channels, 3, 1, 1);
            assert!(
                difference < 1e-5,
                "{shape:?} -> {out_channels}: {difference}"
            );
        }
    }

    #[test]
    fn pointwise_and_large_convolutions_match_candles() {
        assert!(largest_relative_difference((2, 9, 6, 7), 5, 1, 1, 0) < 1e-5);
        assert!(largest_relative_difference((1, 4, 5, 3), 6, 1, 2, 0) < 1e-5);
        // Wide enough that several tiles of output rows are gathered.
        assert!(largest_relative_difference((1, 160, 72, 40), 8, 3, 1, 1) < 1e-5);
    }

    #[test]
    fn tiles_of_several_images_share_a_pass_over_half_precision_weights() {
        let device = Device::Cpu;
        // Stride 2 keeps them off the Winograd path. 200 channels make two tiles an image (29
        // and 7 rows), grouped two by two: a group spans images and tiles of unequal length,
        // its weights widened whole. 130 x 900 x 9 weights (over a million) are widened block by
        // block, each block multiplying both images of the group.
        for (input, out_channels) in [((2, 200, 72, 80), 9), ((2, 900, 20, 20), 130)] {
            let x = Tensor::randn(0f32, 1.0, input, &device).expect("x");
            let weight =
                Tensor::randn(0f32, 0.05, (out_channels, input.1, 3, 3), &device).expect("weight");
            let bias = Tensor::randn(0f32, 1.0, out_channels, &device).expect("bias");
            let config = Conv2dConfig {
                padding: 1,
                stride: 2,
                ..Default::default()
            };
            let held = weight.to_dtype(DType::F16).expect("held");
            let rounded = held.to_dtype(DType::F32).expect("rounded");
            let ours = Conv2d::new(held, Some(bias.clone()), config)
                .forward(&x)
                .expect("ours");
            let reference = x
                .conv2d(&rounded, 1, 2, 1, 1)
                .and_then(|y| y.broadcast_add(&bias.reshape((1, out_channels, 1, 1))?))
                .expect("candle's");
            let difference = largest_difference(&ours, &reference);
            assert!(
                difference < 1e-4,
                "{input:?} -> {out_channels}: {difference}"
            );
        }
    }
}
