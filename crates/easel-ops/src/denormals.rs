//! Subnormal floats flushed to zero on the threads that compute. A multiply-add that meets a
//! subnormal operand takes a microcode assist on x86 CPUs, about a hundred times a normal
//! one: a 2-core Xeon ran a matrix product with a third of one operand subnormal at 3.2
//! GFLOP/s against 200. Values that small (below 1.2e-38) change no pixel of a result, so
//! every compute thread flushes them (x86's FTZ and DAZ bits; other CPUs are left as they are).

use std::sync::Once;

/// Flushes subnormal inputs and results to zero on the calling thread (x86-64 only).
pub fn flush_denormals_on_this_thread() {
    #[cfg(target_arch = "x86_64")]
    {
        // MXCSR bit 15: flush results to zero; bit 6: treat inputs as zero.
        const FTZ_DAZ: u32 = (1 << 15) | (1 << 6);
        let mut csr: u32 = 0;
        // SAFETY: `stmxcsr` and `ldmxcsr` read and write the calling thread's SSE control
        // register; setting FTZ and DAZ changes only how subnormal floats are treated.
        #[allow(unsafe_code)]
        unsafe {
            std::arch::asm!("stmxcsr [{}]", in(reg) &mut csr, options(nostack));
            csr |= FTZ_DAZ;
            std::arch::asm!("ldmxcsr [{}]", in(reg) &csr, options(nostack));
        }
    }
}

/// Starts the thread pool candle and the kernels compute on (rayon's global pool) with
/// subnormals flushed on each of its threads, and flushes them on the calling thread. Call it
/// on the thread that runs models, before the first tensor op; later calls only flush the
/// calling thread. When something built the global pool first, its threads keep their
/// setting (and the return value says so).
pub fn init_compute_threads() -> bool {
    static POOL: Once = Once::new();
    let mut ours = false;
    POOL.call_once(|| {
        ours = rayon::ThreadPoolBuilder::new()
            .start_handler(|_| flush_denormals_on_this_thread())
            .build_global()
            .is_ok();
    });
    flush_denormals_on_this_thread();
    ours
}

#[cfg(all(test, target_arch = "x86_64"))]
mod tests {
    use super::*;

    #[test]
    fn subnormal_products_become_zero_on_a_flushed_thread() {
        std::thread::Builder::new()
            .name("flush-test".into())
            .spawn(|| {
                let tiny = std::hint::black_box(1e-30f32);
                assert!(
                    (tiny * 1e-10).is_subnormal(),
                    "unflushed: a subnormal result"
                );
                flush_denormals_on_this_thread();
                assert_eq!(std::hint::black_box(tiny) * 1e-10, 0.0);
                let subnormal = std::hint::black_box(f32::from_bits(1));
                assert_eq!(subnormal * 2.0, 0.0, "subnormal inputs read as zero");
            })
            .expect("a thread")
            .join()
            .expect("the test thread");
    }
}
