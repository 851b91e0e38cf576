//! Times Easel's kernels alone on the shapes Stable Diffusion 1.5 gives them at 512x512 (CFG
//! batch of two) and its VAE decoder's: `cargo run --release -p easel-ops --example kernels`,
//! optionally followed by the kinds to time (`conv`, `linear`, `attention`; all by default).
//! Prints the median of three calls after a warm-up, and GFLOP/s counted as the direct
//! convolution's work (so the Winograd path shows above the machine's product rate).

use std::time::Instant;

use candle_core::{DType, Device, Module, Result, Tensor};
use candle_nn::Conv2dConfig;

/// Median milliseconds of three calls of `run` after one warm-up call.
fn median_ms(mut run: impl FnMut() -> Result<Tensor>) -> Result<f64> {
    run()?;
    let mut times = Vec::new();
    for _ in 0..3 {
        let started = Instant::now();
        run()?;
        times.push(started.elapsed().as_secs_f64() * 1e3);
    }
    times.sort_by(f64::total_cmp);
    Ok(times[1])
}

fn main() -> Result<()> {
    easel_ops::denormals::init_compute_threads();
    let device = Device::Cpu;
    let kinds: Vec<String> = std::env::args().skip(1).collect();
    let times = |kind: &str| kinds.is_empty() || kinds.iter().any(|wanted| wanted == kind);
    // (batch, in, out, side): the UNet's levels, then the VAE decoder's.
    let convolutions = [
        (2, 320, 320, 64),
        (2, 960, 320, 64),
        (2, 640, 640, 32),
        (2, 1280, 1280, 16),
        (2, 1280, 1280, 8),
        (2, 2560, 1280, 16),
        (2, 1280, 1280, 32),
        (2, 1920, 640, 32),
        (1, 512, 512, 64),
        (1, 256, 256, 256),
        (1, 128, 128, 512),
    ];
    for held in [DType::F32, DType::F16]
        .into_iter()
        .filter(|_| times("conv"))
    {
        for (batch, channels, out_channels, side) in convolutions {
            let x = Tensor::randn(0f32, 1.0, (batch, channels, side, side), &device)?;
            let weight = Tensor::randn(0f32, 0.05, (out_channels, channels, 3, 3), &device)?
                .to_dtype(held)?;
            let bias = Tensor::zeros(out_channels, DType::F32, &device)?;
            let config = Conv2dConfig {
                padding: 1,
                ..Default::default()
            };
            let conv = easel_ops::Conv2d::new(weight, Some(bias), config);
            let ms = median_ms(|| conv.forward(&x))?;
            let flops = 2.0 * (batch * out_channels * channels * 9 * side * side) as f64;
            println!(
                "conv3x3 {held:?} weights, {batch}x{channels}->{out_channels} at {side}x{side}: \
                 {ms:.1} ms ({:.0} GFLOP/s)",
                flops / ms / 1e6
            );
        }
    }
    // (rows, in, out): SD 1.5's linear layers at each level (q, k, v and out; the
    // feed-forward's in and out), CFG batch of two.
    let linears = [
        (8192, 320, 320),
        (8192, 320, 2560),
        (8192, 1280, 320),
        (2048, 640, 640),
        (2048, 640, 5120),
        (2048, 2560, 640),
        (512, 1280, 1280),
        (512, 1280, 10240),
        (512, 5120, 1280),
    ];
    for (held, (rows, in_features, out_features)) in [DType::F32, DType::F16]
        .into_iter()
        .filter(|_| times("linear"))
        .flat_map(|held| linears.map(|shape| (held, shape)))
    {
        let x = Tensor::randn(0f32, 1.0, (rows, in_features), &device)?;
        let weight =
            Tensor::randn(0f32, 0.05, (out_features, in_features), &device)?.to_dtype(held)?;
        let bias = Tensor::zeros(out_features, DType::F32, &device)?;
        let linear = easel_ops::Linear::new(weight, Some(bias));
        let ms = median_ms(|| linear.forward(&x))?;
        let flops = 2.0 * (rows * in_features * out_features) as f64;
        println!(
            "linear {held:?} weights, {rows}x{in_features}->{out_features}: {ms:.2} ms \
             ({:.0} GFLOP/s)",
            flops / ms / 1e6
        );
    }
    if !times("attention") {
        return Ok(());
    }
    // SD 1.5's self-attention at its 64x64 level: 2 x 8 heads of 4096 tokens, 40 wide.
    let q = Tensor::randn(0f32, 1.0, (2, 8, 4096, 40), &device)?;
    let k = Tensor::randn(0f32, 1.0, (2, 8, 4096, 40), &device)?;
    let v = Tensor::randn(0f32, 1.0, (2, 8, 4096, 40), &device)?;
    let ms = median_ms(|| easel_ops::attention(&q, &k, &v, 1.0 / 40f64.sqrt()))?;
    println!("attention 2x8 heads, 4096 tokens, 40 wide: {ms:.1} ms");
    // The same on tokens as the linear layers give them, [2, 4096, 8 * 40].
    let tokens = |t: &Tensor| t.transpose(1, 2)?.reshape((2, 4096, 320))?.contiguous();
    let (q, k, v) = (tokens(&q)?, tokens(&k)?, tokens(&v)?);
    let ms = median_ms(|| easel_ops::attention_tokens(&q, &k, &v, 8, 1.0 / 40f64.sqrt()))?;
    println!("attention on tokens, the same: {ms:.1} ms");
    Ok(())
}
