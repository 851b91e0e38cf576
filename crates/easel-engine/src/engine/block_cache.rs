//! The process's allocator: the system's, except that large blocks (32 MB and more: tensors
//! glibc always maps afresh) are kept when freed and handed out again for the next request of
//! the same size. A decode at 512 px frees and asks for 67 and 134 MB maps over and over, each
//! a fresh `mmap` paid for with a page fault and a zeroed page every 4 KB. At most
//! `MAX_CACHED_BYTES` wait at once; `release_cached_blocks` hands them all back (before the
//! decode, after each job and whenever models are unloaded), so that blocks kept for one
//! phase's sizes do not sit through the next.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::Mutex;

/// Blocks this large and larger are kept for reuse: those glibc maps afresh every time.
const MIN_BLOCK_BYTES: usize = 32 << 20;
/// Most blocks kept at once.
const SLOTS: usize = 32;
/// Most bytes kept at once.
const MAX_CACHED_BYTES: usize = 256 << 20;

/// A freed block waiting for a request of its size and alignment.
#[derive(Clone, Copy)]
struct Block {
    address: usize,
    size: usize,
    align: usize,
}

struct Slots {
    blocks: [Option<Block>; SLOTS],
    bytes: usize,
}

/// The allocator: `System` behind a small cache of large freed blocks.
pub struct BlockCache {
    slots: Mutex<Slots>,
}

#[global_allocator]
static ALLOCATOR: BlockCache = BlockCache {
    slots: Mutex::new(Slots {
        blocks: [None; SLOTS],
        bytes: 0,
    }),
};

impl BlockCache {
    /// A kept block of exactly this layout, taken out of the cache.
    fn take(&self, layout: Layout) -> Option<*mut u8> {
        let mut slots = self.slots.lock().ok()?;
        let slot = slots.blocks.iter_mut().find(|slot| {
            slot.is_some_and(|b| b.size == layout.size() && b.align == layout.align())
        })?;
        let block = slot.take()?;
        slots.bytes -= block.size;
        Some(block.address as *mut u8)
    }

    /// Keeps a freed block if there is room; false when the caller must free it.
    fn keep(&self, address: *mut u8, layout: Layout) -> bool {
        let Ok(mut slots) = self.slots.lock() else {
            return false;
        };
        if slots.bytes + layout.size() > MAX_CACHED_BYTES {
            return false;
        }
        let Some(slot) = slots.blocks.iter_mut().find(|slot| slot.is_none()) else {
            return false;
        };
        *slot = Some(Block {
            address: address as usize,
            size: layout.size(),
            align: layout.align(),
        });
        slots.bytes += layout.size();
        true
    }

    /// Every kept block, out of the cache.
    fn drain(&self) -> Vec<Block> {
        let Ok(mut slots) = self.slots.lock() else {
            return Vec::new();
        };
        slots.bytes = 0;
        // Collected after the lock's work: the Vec's own allocation is small (System's).
        let blocks: [Option<Block>; SLOTS] = std::mem::replace(&mut slots.blocks, [None; SLOTS]);
        drop(slots);
        blocks.into_iter().flatten().collect()
    }
}

// SAFETY: every block handed out is one `System` allocated with exactly the requested layout
// (kept blocks are matched on size and alignment), so `System` frees and reallocates any block
// with the layout its caller gives; a kept block is owned by the cache alone until handed out.
#[allow(unsafe_code)]
unsafe impl GlobalAlloc for BlockCache {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if layout.size() >= MIN_BLOCK_BYTES {
            if let Some(block) = self.take(layout) {
                return block;
            }
        }
        // SAFETY: the caller's layout, as `GlobalAlloc::alloc` requires.
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        if layout.size() >= MIN_BLOCK_BYTES {
            if let Some(block) = self.take(layout) {
                // SAFETY: the block is `layout.size()` bytes, owned by the caller from here.
                unsafe { block.write_bytes(0, layout.size()) };
                return block;
            }
        }
        // SAFETY: as in `alloc`.
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn dealloc(&self, block: *mut u8, layout: Layout) {
        if layout.size() >= MIN_BLOCK_BYTES && self.keep(block, layout) {
            return;
        }
        // SAFETY: `block` came from `System` with `layout` (see the impl's comment).
        unsafe { System.dealloc(block, layout) }
    }

    unsafe fn realloc(&self, block: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: as in `dealloc`; `System` moves or grows its own block.
        unsafe { System.realloc(block, layout, new_size) }
    }
}

/// Hands every kept block back to the system.
pub fn release_cached_blocks() {
    for block in ALLOCATOR.drain() {
        // SAFETY: a kept block is a `System` allocation of this size and alignment that
        // nothing else refers to.
        #[allow(unsafe_code)]
        unsafe {
            System.dealloc(
                block.address as *mut u8,
                Layout::from_size_align_unchecked(block.size, block.align),
            );
        }
    }
}

/// Bytes of freed blocks kept for reuse.
pub fn cached_bytes() -> usize {
    ALLOCATOR.slots.lock().map_or(0, |slots| slots.bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Whether the block at `address` waits in the cache.
    fn is_kept(address: usize) -> bool {
        let slots = ALLOCATOR.slots.lock().expect("slots");
        slots.blocks.iter().flatten().any(|b| b.address == address)
    }

    #[test]
    fn a_freed_large_block_is_handed_out_again_and_released_on_demand() {
        // An odd size no other test asks for, so that tests running alongside can't take it.
        let size = MIN_BLOCK_BYTES + 4096 * 7 + 3;
        let first = vec![1u8; size];
        let address = first.as_ptr() as usize;
        drop(first);
        assert!(is_kept(address));
        // Same size: the very block, zeroed as asked.
        let second = vec![0u8; size];
        assert_eq!(second.as_ptr() as usize, address);
        assert!(second.iter().all(|&b| b == 0));
        assert!(!is_kept(address));
        drop(second);
        release_cached_blocks();
        assert!(!is_kept(address));
        // Small blocks never wait in the cache.
        let small = vec![0u8; 1024];
        let small_address = small.as_ptr() as usize;
        drop(small);
        assert!(!is_kept(small_address));
    }
}
