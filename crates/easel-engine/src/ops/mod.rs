//! Easel's own tensor operations where candle's are slow on the machines Easel runs on, as
//! candle custom ops with candle's own op as the fallback on other devices and dtypes. Each
//! is tested against candle's on odd shapes.

pub mod attention;
pub mod conv2d;

pub use attention::attention;
pub use conv2d::{conv2d, Conv2d};
