//! The process's allocator: the system's, except that large blocks (32 MB and more: tensors
//! glibc always maps afresh) are kept when freed and handed out again for the next request of
//! the same size. A decode at 512 px frees and asks for 67 and 134 MB maps over and over, each
//! a fresh `mmap` paid for with a page fault and a zeroed page every 4 KB. At most
//! `MAX_CACHED_BYTES` wait at once; `release_cached_blocks` hands them all back (before the
//! decode, after each job and whenever models are unloaded), so that blocks kept for one
//! phase's sizes do not sit through the next.
//!
//! On Linux, blocks of `MIN_HUGE_PAGE_BYTES` and more are also offered to the kernel for
//! transparent huge pages (`madvise(MADV_HUGEPAGE)`; most distributions back only advised
//! memory with them). A 2 MB page takes one page fault and one TLB entry where 4 KB pages take
//! 512: at 512 px SD 1.5's first step (which meets its activations' sizes for the first time)
//! took 7.2 s instead of 7.8 and the VAE decode 7.6 s instead of 8.2; later steps moved within
//! noise.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::sync::Mutex;

/// Blocks this large and larger are kept for reuse: those glibc maps afresh every time.
const MIN_BLOCK_BYTES: usize = 32 << 20;
/// Blocks this large and larger are offered for huge pages: two pages at least, so that the
/// block holds a whole aligned one whatever its start.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
const MIN_HUGE_PAGE_BYTES: usize = 2 * HUGE_PAGE_BYTES;
/// The size of an x86-64 and arm64 Linux huge page.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
const HUGE_PAGE_BYTES: usize = 2 << 20;
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
        let block = unsafe { System.alloc(layout) };
        offer_huge_pages(block, layout.size());
        block
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
        let block = unsafe { System.alloc_zeroed(layout) };
        offer_huge_pages(block, layout.size());
        block
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

/// Advises the kernel to back the whole huge pages inside a fresh block with huge pages (a
/// hint: it changes no byte, and the kernel may decline).
#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn offer_huge_pages(block: *mut u8, size: usize) {
    if block.is_null() {
        return;
    }
    if let Some((start, end)) = huge_page_range(block as usize, size) {
        // SAFETY: `start..end` lies inside the block just allocated, which the caller owns;
        // MADV_HUGEPAGE only marks the range's mapping and changes none of its contents.
        #[allow(unsafe_code)]
        unsafe {
            libc::madvise(start as *mut libc::c_void, end - start, libc::MADV_HUGEPAGE);
        }
    }
}

/// The whole huge pages inside the `size` bytes from `address` when such a block is offered
/// now: none for blocks under `MIN_HUGE_PAGE_BYTES`, nor while this thread is paused.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn huge_page_range(address: usize, size: usize) -> Option<(usize, usize)> {
    // A thread past its locals' teardown counts as unpaused.
    let paused = PAUSES.try_with(|pauses| pauses.get() > 0).unwrap_or(false);
    if size < MIN_HUGE_PAGE_BYTES || paused {
        return None;
    }
    let start = address.next_multiple_of(HUGE_PAGE_BYTES);
    let end = (address + size) / HUGE_PAGE_BYTES * HUGE_PAGE_BYTES;
    (end > start).then_some((start, end))
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn offer_huge_pages(_block: *mut u8, _size: usize) {}

thread_local! {
    /// How many `HugePagesPaused` guards live on this thread.
    static PAUSES: Cell<usize> = const { Cell::new(0) };
}

/// While one lives, the blocks its thread allocates are not offered for huge pages. Weights
/// read from disk take one: asking the kernel for huge pages there made a staged job's load
/// 1.4 s slower (it compacts memory to find them) and no step faster.
pub struct HugePagesPaused(());

impl HugePagesPaused {
    /// Pauses the offer until the guard drops.
    pub fn new() -> Self {
        PAUSES.with(|pauses| pauses.set(pauses.get() + 1));
        Self(())
    }
}

impl Default for HugePagesPaused {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for HugePagesPaused {
    fn drop(&mut self) {
        PAUSES.with(|pauses| pauses.set(pauses.get().saturating_sub(1)));
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

    /// The `VmFlags` line of the mapping in `/proc/self/smaps` that holds `address`.
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    fn mapping_flags(address: usize) -> String {
        let smaps = std::fs::read_to_string("/proc/self/smaps").expect("smaps");
        let mut inside = false;
        for line in smaps.lines() {
            let range = line.split_whitespace().next().unwrap_or("");
            if let Some((start, end)) = range.split_once('-') {
                if let (Ok(start), Ok(end)) = (
                    usize::from_str_radix(start, 16),
                    usize::from_str_radix(end, 16),
                ) {
                    inside = (start..end).contains(&address);
                    continue;
                }
            }
            if inside && line.starts_with("VmFlags:") {
                return line.to_string();
            }
        }
        panic!("no mapping holds {address:#x}")
    }

    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    #[test]
    fn large_blocks_are_offered_for_huge_pages() {
        // `hg` in VmFlags: the range was advised MADV_HUGEPAGE.
        let large = vec![0u8; 3 * HUGE_PAGE_BYTES + 12345];
        let inside = (large.as_ptr() as usize).next_multiple_of(HUGE_PAGE_BYTES);
        let flags = mapping_flags(inside);
        assert!(flags.split_whitespace().any(|f| f == "hg"), "{flags}");
    }

    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    #[test]
    fn only_whole_huge_pages_of_large_blocks_are_offered_and_none_while_paused() {
        let page = HUGE_PAGE_BYTES;
        // The aligned pages inside, not the block's ragged ends.
        assert_eq!(
            huge_page_range(page + 1, 3 * page + 7),
            Some((2 * page, 4 * page))
        );
        assert_eq!(
            huge_page_range(4 * page, 2 * page),
            Some((4 * page, 6 * page))
        );
        // Under two pages a block need not hold an aligned one: never offered.
        assert_eq!(huge_page_range(4 * page, 2 * page - 1), None);
        let paused = HugePagesPaused::new();
        assert_eq!(huge_page_range(4 * page, 8 * page), None);
        drop(paused);
        assert_eq!(
            huge_page_range(4 * page, 8 * page),
            Some((4 * page, 12 * page))
        );
    }
}
