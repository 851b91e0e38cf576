//! New output buffers. `vec![0.0; len]` clears its memory on the calling thread alone (glibc's
//! `calloc` clears recycled heap memory with one `memset`, and fresh pages fault in one by one
//! as it goes), while the op's threads wait; an op's output is cleared here on every compute
//! thread instead, each clearing (and faulting in) its own chunk.

use std::mem::MaybeUninit;

use rayon::prelude::*;

/// Values cleared per task; outputs up to this long are cleared on the calling thread.
const CHUNK: usize = 1 << 16;

/// `len` zeros, cleared on every compute thread when there are many.
pub(crate) fn zeros(len: usize) -> Vec<f32> {
    if len <= CHUNK {
        return vec![0.0; len];
    }
    let mut out: Vec<f32> = Vec::with_capacity(len);
    out.spare_capacity_mut()
        .par_chunks_mut(CHUNK)
        .for_each(|chunk| chunk.fill(MaybeUninit::new(0.0)));
    // SAFETY: the capacity is `len` and every one of its `len` values was written just above.
    #[allow(unsafe_code)]
    unsafe {
        out.set_len(len)
    };
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn outputs_of_every_length_are_zeros() {
        for len in [0, 1, super::CHUNK, super::CHUNK + 1, 5 * super::CHUNK + 7] {
            let out = super::zeros(len);
            assert_eq!(out.len(), len);
            assert!(out.iter().all(|&v| v == 0.0), "{len}");
        }
    }
}
