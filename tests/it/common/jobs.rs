//! Running jobs on an engine in tests: starting one on the CPU, and waiting for a job's end
//! with every event it produced.

use std::sync::Arc;
use std::time::Duration;

use easel_engine::device::DeviceChoice;
use easel_engine::engine::memory::MemoryReport;
use easel_engine::engine::{
    Engine, EngineConfig, EngineError, Event, Fault, FaultPoint, JobId, JobOutput, Strategy,
};

/// The longest a test waits for an engine event.
pub const WAIT: Duration = Duration::from_secs(300);

/// An engine with `config` and no wake-up.
pub fn engine_with(config: EngineConfig) -> Engine {
    Engine::spawn(config, Arc::new(|| {})).expect("engine starts on the CPU")
}

/// An engine on the CPU with the default policies.
pub fn engine() -> Engine {
    engine_with(EngineConfig {
        device: DeviceChoice::Cpu,
        ..Default::default()
    })
}

/// How a job ended.
#[derive(Debug)]
pub enum Outcome {
    /// It finished with this output.
    Finished(JobOutput),
    /// It failed.
    Failed(EngineError),
    /// It was cancelled.
    Cancelled,
}

/// How a job ended, with every event it produced.
pub struct JobEnd {
    /// Every event up to the end.
    pub events: Vec<Event>,
    /// How it ended.
    pub outcome: Outcome,
}

impl JobEnd {
    /// The components whose load began, in order.
    pub fn loads_started(&self) -> Vec<&'static str> {
        self.events
            .iter()
            .filter_map(|e| match e {
                Event::Loading {
                    component,
                    progress,
                    ..
                } if *progress == 0.0 => Some(*component),
                _ => None,
            })
            .collect()
    }

    /// `(step, of)` of every step event.
    pub fn steps(&self) -> Vec<(usize, usize)> {
        self.events
            .iter()
            .filter_map(|e| match e {
                Event::Step { step, of, .. } => Some((*step, *of)),
                _ => None,
            })
            .collect()
    }

    /// The size of every step's preview (`None` for a step without one).
    pub fn preview_sizes(&self) -> Vec<Option<(u32, u32)>> {
        self.events
            .iter()
            .filter_map(|e| match e {
                Event::Step { preview, .. } => Some(preview.as_ref().map(|p| p.dimensions())),
                _ => None,
            })
            .collect()
    }

    /// Every memory report.
    pub fn memory_reports(&self) -> Vec<&MemoryReport> {
        memory_reports(&self.events)
    }

    /// `(strategy, retrying_with)` of every out-of-memory event.
    pub fn fallbacks(&self) -> Vec<(Strategy, Option<Strategy>)> {
        self.events
            .iter()
            .filter_map(|e| match e {
                Event::OutOfMemory {
                    strategy,
                    retrying_with,
                    ..
                } => Some((*strategy, *retrying_with)),
                _ => None,
            })
            .collect()
    }
}

/// The memory reports among `events`.
pub fn memory_reports(events: &[Event]) -> Vec<&MemoryReport> {
    events
        .iter()
        .filter_map(|e| match e {
            Event::Memory(report) => Some(report),
            _ => None,
        })
        .collect()
}

/// The transformer's bytes in each memory report that holds one.
pub fn transformer_bytes(events: &[Event]) -> Vec<u64> {
    memory_reports(events)
        .into_iter()
        .filter_map(|report| {
            report
                .weights_bytes
                .iter()
                .find(|w| w.component == "transformer")
                .map(|w| w.bytes)
        })
        .collect()
}

/// An engine on the CPU whose first `times` attempts at a first step run out of memory.
pub fn engine_out_of_memory_at_first_step(times: usize) -> Engine {
    let failures_left = Arc::new(std::sync::atomic::AtomicUsize::new(times));
    let hook = Arc::new(move |point: FaultPoint| {
        let first_step = matches!(point, FaultPoint::BeforeStep { step: 1, .. });
        let fail = first_step
            && failures_left
                .fetch_update(
                    std::sync::atomic::Ordering::SeqCst,
                    std::sync::atomic::Ordering::SeqCst,
                    |left| left.checked_sub(1),
                )
                .is_ok();
        if fail {
            Fault::OutOfMemory
        } else {
            Fault::Proceed
        }
    });
    engine_with(EngineConfig {
        device: DeviceChoice::Cpu,
        fault_hook: Some(hook),
        ..Default::default()
    })
}

pub fn wait_for(engine: &Engine, job: JobId) -> JobEnd {
    wait_for_with(engine, job, |_| {})
}

pub fn wait_for_with(engine: &Engine, job: JobId, mut on_event: impl FnMut(&Event)) -> JobEnd {
    let mut events = Vec::new();
    loop {
        let event = engine
            .events()
            .recv_timeout(WAIT)
            .expect("the engine reports within the time limit");
        on_event(&event);
        let end = match &event {
            Event::Finished { job: j, output } if *j == job => {
                Some(Outcome::Finished((**output).clone()))
            }
            Event::Failed { job: j, error } if *j == job => Some(Outcome::Failed(error.clone())),
            Event::Cancelled { job: j } if *j == job => Some(Outcome::Cancelled),
            _ => None,
        };
        events.push(event);
        if let Some(outcome) = end {
            return JobEnd { events, outcome };
        }
    }
}

pub fn finished(end: JobEnd) -> JobOutput {
    match end.outcome {
        Outcome::Finished(output) => output,
        Outcome::Failed(error) => panic!("the job failed: {error}"),
        Outcome::Cancelled => panic!("the job was cancelled"),
    }
}

pub fn failure(end: JobEnd) -> EngineError {
    match end.outcome {
        Outcome::Failed(error) => error,
        Outcome::Finished(_) => panic!("expected a failure, the job finished"),
        Outcome::Cancelled => panic!("expected a failure, the job was cancelled"),
    }
}

/// An engine on the CPU in low-memory (staged) mode.
pub fn staged_engine() -> Engine {
    engine_with(EngineConfig {
        device: DeviceChoice::Cpu,
        staged: true,
        ..Default::default()
    })
}

/// A low-memory engine on the CPU holding f32 weights: staging alone, no rounding of them.
pub fn staged_f32_engine() -> Engine {
    engine_with(EngineConfig {
        device: DeviceChoice::Cpu,
        staged: true,
        dtype: Some(candle_core::DType::F32),
        ..Default::default()
    })
}

/// The largest difference between two images' channel values.
pub fn largest_pixel_difference(a: &image::RgbImage, b: &image::RgbImage) -> u8 {
    a.as_raw()
        .iter()
        .zip(b.as_raw())
        .map(|(a, b)| a.abs_diff(*b))
        .max()
        .unwrap_or(0)
}

/// An engine on the CPU whose steps each wait a little, so that a cancel lands mid-run.
pub fn engine_with_slow_steps() -> Engine {
    let hook = Arc::new(|point: FaultPoint| {
        if matches!(point, FaultPoint::BeforeStep { .. }) {
            std::thread::sleep(Duration::from_millis(20));
        }
        Fault::Proceed
    });
    engine_with(EngineConfig {
        device: DeviceChoice::Cpu,
        fault_hook: Some(hook),
        ..Default::default()
    })
}

/// Waits for `job`, cancelling it once its second step is reported.
pub fn cancel_after_second_step(engine: &Engine, job: JobId) -> JobEnd {
    let mut sent = false;
    wait_for_with(engine, job, |event| {
        if matches!(event, Event::Step { step: 2, .. }) && !sent {
            engine.cancel(job).expect("send cancel");
            sent = true;
        }
    })
}
