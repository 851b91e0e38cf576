//! Device and precision choice: the only place that knows about Metal and CUDA.

use candle_core::{DType, Device};

/// Which device the user asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DeviceChoice {
    /// Metal when built with `metal`, CUDA when built with `cuda` and a GPU answers, else CPU.
    #[default]
    Auto,
    /// The CPU.
    Cpu,
    /// The CUDA GPU of this ordinal.
    Cuda(usize),
    /// The Mac's GPU.
    Metal,
}

impl DeviceChoice {
    /// Parses `auto`, `cpu`, `cuda`, `cuda:N` or `metal`.
    pub fn parse(text: &str) -> Result<Self, String> {
        match text {
            "auto" => Ok(DeviceChoice::Auto),
            "cpu" => Ok(DeviceChoice::Cpu),
            "metal" => Ok(DeviceChoice::Metal),
            "cuda" => Ok(DeviceChoice::Cuda(0)),
            other => other
                .strip_prefix("cuda:")
                .and_then(|n| n.parse().ok())
                .map(DeviceChoice::Cuda)
                .ok_or_else(|| {
                    format!("unknown device {other:?}; use auto, cpu, cuda, cuda:N or metal")
                }),
        }
    }
}

impl std::fmt::Display for DeviceChoice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DeviceChoice::Auto => write!(f, "auto"),
            DeviceChoice::Cpu => write!(f, "cpu"),
            DeviceChoice::Cuda(n) => write!(f, "cuda:{n}"),
            DeviceChoice::Metal => write!(f, "metal"),
        }
    }
}

/// A device that can't be used.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum DeviceError {
    /// The backend was not compiled in.
    #[error(
        "this build of Easel has no {0} support: rebuild with `--features {0}` or use --device cpu"
    )]
    NotBuilt(&'static str),
    /// The backend is there but the device did not open.
    #[error("the {backend} device could not be opened: {message}")]
    Open {
        /// `cuda` or `metal`.
        backend: &'static str,
        /// What the driver said.
        message: String,
    },
}

/// Opens the chosen device.
pub fn open(choice: DeviceChoice) -> Result<Device, DeviceError> {
    match choice {
        DeviceChoice::Cpu => Ok(Device::Cpu),
        DeviceChoice::Cuda(ordinal) => open_cuda(ordinal),
        DeviceChoice::Metal => open_metal(),
        DeviceChoice::Auto => Ok(open_metal()
            .or_else(|_| open_cuda(0))
            .unwrap_or(Device::Cpu)),
    }
}

#[cfg(feature = "cuda")]
fn open_cuda(ordinal: usize) -> Result<Device, DeviceError> {
    Device::new_cuda(ordinal).map_err(|e| DeviceError::Open {
        backend: "cuda",
        message: e.to_string(),
    })
}

#[cfg(not(feature = "cuda"))]
fn open_cuda(_ordinal: usize) -> Result<Device, DeviceError> {
    Err(DeviceError::NotBuilt("cuda"))
}

#[cfg(feature = "metal")]
fn open_metal() -> Result<Device, DeviceError> {
    Device::new_metal(0).map_err(|e| DeviceError::Open {
        backend: "metal",
        message: e.to_string(),
    })
}

#[cfg(not(feature = "metal"))]
fn open_metal() -> Result<Device, DeviceError> {
    Err(DeviceError::NotBuilt("metal"))
}

/// The default weight precision on `device`: f16 on GPUs, f32 on the CPU.
pub fn default_dtype(device: &Device) -> DType {
    if device.is_cpu() {
        DType::F32
    } else {
        DType::F16
    }
}

/// The precision low-memory mode holds weights in on `device` when none is asked: f16 on the
/// CPU (half of f32's memory; Easel's layers still compute in f32 there), the default
/// elsewhere (already half precision).
pub fn low_memory_dtype(device: &Device) -> DType {
    if device.is_cpu() {
        DType::F16
    } else {
        default_dtype(device)
    }
}

/// The precision to load weights in on `device` when `asked` (or the default), and a
/// warning when the ask can't be honoured there and another precision is used instead. On the
/// CPU, f16 and bf16 are the precision the weights are held in (half of f32's memory); Easel's
/// layers compute in f32 there (`ops::compute_dtype`), and families whose layers can't widen
/// their weights hold them in f32.
pub fn usable_dtype(device: &Device, asked: Option<DType>) -> (DType, Option<String>) {
    let Some(asked) = asked else {
        return (default_dtype(device), None);
    };
    let name = |dtype: DType| format!("{dtype:?}").to_lowercase();
    let fallback = match asked {
        // bf16 kernels are missing on some Macs (candle #2406); f16 is as fast there.
        DType::BF16 if device.is_metal() => Some(DType::F16),
        DType::F32 | DType::F16 | DType::BF16 => None,
        _ => Some(default_dtype(device)),
    };
    match fallback {
        Some(used) => (
            used,
            Some(format!(
                "{} is not usable for weights on {}; using {} instead",
                name(asked),
                describe(device),
                name(used)
            )),
        ),
        None => (asked, None),
    }
}

/// The kind of device a run computes on, for what its kernels hold and compute in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// The CPU: Easel's layers compute in f32 and its attention holds no score matrix.
    Cpu,
    /// An NVIDIA GPU: layers compute at their weights' precision, attention is materialised.
    Cuda,
    /// A Mac's GPU: layers compute at their weights' precision; Easel's attention is fused.
    Metal,
}

impl Backend {
    /// The backend of `device`.
    pub fn of(device: &Device) -> Self {
        match device.location() {
            candle_core::DeviceLocation::Cpu => Backend::Cpu,
            candle_core::DeviceLocation::Cuda { .. } => Backend::Cuda,
            candle_core::DeviceLocation::Metal { .. } => Backend::Metal,
        }
    }
}

/// The precisions a run holds weights in, in each residency mode, where it runs: what the
/// will-it-fit estimate multiplies a model's values by.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Precision {
    /// Where the run computes.
    pub backend: Backend,
    /// The dtype weights are held in with everything loaded.
    pub full: DType,
    /// The dtype low-memory mode holds them in.
    pub staged: DType,
}

impl Precision {
    /// The CPU's defaults: f32 with everything loaded, f16 in low-memory mode.
    pub const CPU_DEFAULT: Self = Self {
        backend: Backend::Cpu,
        full: DType::F32,
        staged: DType::F16,
    };

    /// The precisions the engine resolves on `device` for the dtype setting `asked` (`None`
    /// for the default): low-memory mode holds f16 on the CPU unless a dtype was asked.
    pub fn on(device: &Device, asked: Option<DType>) -> Self {
        let staged_asked = asked.or(Some(low_memory_dtype(device)));
        Self {
            backend: Backend::of(device),
            full: usable_dtype(device, asked).0,
            staged: usable_dtype(device, staged_asked).0,
        }
    }

    /// The dtype the engine loads weights in: low-memory mode's when `staged`.
    pub fn in_mode(&self, staged: bool) -> DType {
        if staged {
            self.staged
        } else {
            self.full
        }
    }

    /// Bytes of an activation of a layer holding weights of `weights`: f32 on the CPU,
    /// where Easel's layers widen 16-bit weights, else the weights' own.
    pub fn activation_bytes(&self, weights: DType) -> u64 {
        match self.backend {
            Backend::Cpu => 4,
            Backend::Cuda | Backend::Metal => weights.size_in_bytes() as u64,
        }
    }
}

/// A short description for the status bar and logs: "cpu", "cuda:0", "metal".
pub fn describe(device: &Device) -> String {
    match device.location() {
        candle_core::DeviceLocation::Cpu => "cpu".to_string(),
        candle_core::DeviceLocation::Cuda { gpu_id } => format!("cuda:{gpu_id}"),
        candle_core::DeviceLocation::Metal { gpu_id } => format!("metal:{gpu_id}"),
    }
}

/// Device memory `(used, limit)` in bytes where the backend tells it: on CUDA the memory in
/// use on the GPU and its total (`cuMemGetInfo`, all processes); on Metal what candle has
/// allocated and the recommended working set. `None` on the CPU (see the process RSS).
pub fn device_memory_bytes(device: &Device) -> Option<(u64, u64)> {
    match device {
        #[cfg(feature = "cuda")]
        Device::Cuda(cuda) => {
            let (free, total) = cuda.cuda_stream().context().mem_get_info().ok()?;
            Some(((total - free) as u64, total as u64))
        }
        #[cfg(feature = "metal")]
        Device::Metal(metal) => Some((
            metal.device().current_allocated_size() as u64,
            metal.device().recommended_max_working_set_size() as u64,
        )),
        _ => None,
    }
}
