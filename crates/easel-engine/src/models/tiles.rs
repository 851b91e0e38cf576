//! Feature maps cut into overlapping tiles that a convolutional network runs on one at a
//! time, with GroupNorm statistics shared across all of them, so the stitched result equals
//! the untiled one.
//!
//! Each tile is computed over its *padded* rectangle and contributes only its *core*; the
//! cores partition the map. Convolutions read zeros past a padded edge that is not the map's
//! edge, and that error creeps inwards one pixel per 3x3 convolution; a halo wider than the
//! network's reach keeps every core exact. GroupNorm would still see only its tile, so its
//! statistics are taken over the cores of every tile (which together are the whole map) and
//! then applied to each tile: this is what makes tiling exact rather than merely seamless.

use candle_core::{DType, Result, Tensor, D};

use crate::ops::group_norm::{group_statistics, Activation, GroupNorm};

/// A rectangle of a feature map, in that map's pixels.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rect {
    /// Left column.
    pub x: usize,
    /// Top row.
    pub y: usize,
    /// Width.
    pub w: usize,
    /// Height.
    pub h: usize,
}

impl Rect {
    fn scaled(self, numerator: usize, denominator: usize) -> Rect {
        Rect {
            x: self.x * numerator / denominator,
            y: self.y * numerator / denominator,
            w: self.w * numerator / denominator,
            h: self.h * numerator / denominator,
        }
    }
}

/// One tile: its data over `padded`, of which `core` is kept.
#[derive(Debug, Clone)]
pub struct Tile {
    /// `[batch, channels, padded.h, padded.w]`.
    pub data: Tensor,
    /// What this tile computes.
    pub padded: Rect,
    /// What this tile contributes (inside `padded`).
    pub core: Rect,
}

impl Tile {
    /// The core part of the data.
    fn core_data(&self) -> Result<Tensor> {
        self.data
            .narrow(2, self.core.y - self.padded.y, self.core.h)?
            .narrow(3, self.core.x - self.padded.x, self.core.w)
    }
}

/// A feature map as tiles in row-major order.
#[derive(Debug, Clone)]
pub struct Tiles {
    tiles: Vec<Tile>,
    /// Tiles per row.
    columns: usize,
}

/// How a map is cut: core side and halo, in the pixels of the map being cut.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TileLayout {
    /// Side of each core (the last row and column may be smaller).
    pub core: usize,
    /// Extra pixels computed on each inner side of a core.
    pub halo: usize,
}

impl Tiles {
    /// The whole map as one tile.
    pub fn whole(xs: Tensor) -> Result<Self> {
        let (_, _, h, w) = xs.dims4()?;
        let all = Rect { x: 0, y: 0, w, h };
        Ok(Self {
            tiles: vec![Tile {
                data: xs,
                padded: all,
                core: all,
            }],
            columns: 1,
        })
    }

    /// Cuts `xs` `[batch, channels, h, w]` by `layout`. Core edges and padded edges fall on
    /// multiples of `align` (so maps that are later halved stay aligned) unless they are the
    /// map's edge.
    pub fn split(xs: &Tensor, layout: TileLayout, align: usize) -> Result<Self> {
        let (_, _, h, w) = xs.dims4()?;
        let align = align.max(1);
        let core = layout.core.div_ceil(align).max(1) * align;
        let halo = layout.halo.div_ceil(align) * align;
        let starts = |extent: usize| -> Vec<(usize, usize)> {
            (0..extent)
                .step_by(core)
                .map(|start| (start, core.min(extent - start)))
                .collect()
        };
        let rows = starts(h);
        let columns = starts(w);
        let mut tiles = Vec::with_capacity(rows.len() * columns.len());
        for &(y, core_h) in &rows {
            for &(x, core_w) in &columns {
                let core = Rect {
                    x,
                    y,
                    w: core_w,
                    h: core_h,
                };
                let (px, py) = (x.saturating_sub(halo), y.saturating_sub(halo));
                let padded = Rect {
                    x: px,
                    y: py,
                    w: (x + core_w + halo).min(w) - px,
                    h: (y + core_h + halo).min(h) - py,
                };
                let data = xs.narrow(2, py, padded.h)?.narrow(3, px, padded.w)?;
                tiles.push(Tile { data, padded, core });
            }
        }
        Ok(Self {
            tiles,
            columns: columns.len(),
        })
    }

    /// Applies a size-preserving `op` (pointwise, or a stride-1 "same" convolution) to each
    /// tile.
    pub fn map(&self, op: impl Fn(&Tensor) -> Result<Tensor>) -> Result<Self> {
        self.rescaled(1, 1, op)
    }

    /// Applies `op` to each tile, whose output is `numerator / denominator` times the size
    /// of its input (2/1 for an upsampler, 1/2 for a strided convolution).
    pub fn rescaled(
        &self,
        numerator: usize,
        denominator: usize,
        op: impl Fn(&Tensor) -> Result<Tensor>,
    ) -> Result<Self> {
        let tiles = self
            .tiles
            .iter()
            .map(|tile| {
                let data = op(&tile.data)?;
                let (_, _, h, w) = data.dims4()?;
                // Sizes come from the data, which for odd sizes rounds as the op does.
                let padded = Rect {
                    w,
                    h,
                    ..tile.padded.scaled(numerator, denominator)
                };
                let mut core = tile.core.scaled(numerator, denominator);
                core.w = core.w.min(padded.x + w - core.x);
                core.h = core.h.min(padded.y + h - core.y);
                if tile.core == tile.padded {
                    core = padded;
                }
                Ok(Tile { data, padded, core })
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Self {
            tiles,
            columns: self.columns,
        })
    }

    /// `op(self, other)` tile by tile, for maps cut the same way (residual sums).
    pub fn zip_map(
        &self,
        other: &Tiles,
        op: impl Fn(&Tensor, &Tensor) -> Result<Tensor>,
    ) -> Result<Self> {
        if self.tiles.len() != other.tiles.len() {
            candle_core::bail!("tiled maps are cut differently")
        }
        let tiles = self
            .tiles
            .iter()
            .zip(&other.tiles)
            .map(|(a, b)| {
                Ok(Tile {
                    data: op(&a.data, &b.data)?,
                    padded: a.padded,
                    core: a.core,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Self {
            tiles,
            columns: self.columns,
        })
    }

    /// GroupNorm with statistics over the whole map (the cores of every tile), then `op` on
    /// each normalised tile before the next is normalised (so no second full copy is held).
    /// `activation` follows the normalisation in the same pass.
    pub fn group_norm_then(
        &self,
        norm: &GroupNorm,
        activation: Activation,
        op: impl Fn(&Tensor) -> Result<Tensor>,
    ) -> Result<Self> {
        let (mean, inv_std) = match self.tiles.as_slice() {
            // A whole map: Easel's kernel takes the statistics in one parallel pass.
            [tile] if tile.padded == tile.core => {
                group_statistics(&tile.data, norm.groups(), norm.eps())?
            }
            _ => self.group_statistics(norm.groups(), norm.eps())?,
        };
        self.map(|data| op(&norm.forward_with(data, &mean, &inv_std, activation)?))
    }

    /// Per-group mean and `1 / sqrt(var + eps)` over every core, `[batch, groups, 1]` in f32
    /// (two passes, as candle's GroupNorm computes them).
    fn group_statistics(&self, groups: usize, eps: f64) -> Result<(Tensor, Tensor)> {
        let grouped = |core: Tensor| -> Result<Tensor> {
            let (batch, _, _, _) = core.dims4()?;
            core.to_dtype(DType::F32)?.reshape((batch, groups, ()))
        };
        let sum = self.sum_over_cores(|core| grouped(core)?.sum_keepdim(D::Minus1))?;
        let channels = self.tiles.first().map_or(Ok(0), |t| t.data.dim(1))?;
        let pixels: usize = self.tiles.iter().map(|t| t.core.w * t.core.h).sum();
        let count = (pixels * (channels / groups)) as f64;
        let mean = (sum / count)?;
        let squares = self.sum_over_cores(|core| {
            grouped(core)?
                .broadcast_sub(&mean)?
                .sqr()?
                .sum_keepdim(D::Minus1)
        })?;
        let inv_std = ((squares / count)? + eps)?.sqrt()?.recip()?;
        Ok((mean, inv_std))
    }

    /// `per_core` of every tile's core, summed.
    fn sum_over_cores(&self, per_core: impl Fn(Tensor) -> Result<Tensor>) -> Result<Tensor> {
        let mut parts = self.tiles.iter().map(|tile| per_core(tile.core_data()?));
        let first = parts
            .next()
            .ok_or_else(|| candle_core::Error::Msg("a map with no tiles".into()))??;
        parts.try_fold(first, |total, part| total + part?)
    }

    /// The cores put back together as one map.
    pub fn stitch(&self) -> Result<Tensor> {
        let rows = self
            .tiles
            .chunks(self.columns)
            .map(|row| {
                let cores = row
                    .iter()
                    .map(Tile::core_data)
                    .collect::<Result<Vec<_>>>()?;
                Tensor::cat(&cores, 3)
            })
            .collect::<Result<Vec<_>>>()?;
        Tensor::cat(&rows, 2)
    }
}
