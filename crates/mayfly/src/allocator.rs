//! The memory allocator of the `mayfly` program.
//!
//! A local run allocates and frees a few thousand small blocks. musl's
//! allocator gives emptied pages back to the kernel at once: a cold run of
//! `/bin/true` made 91 `mmap` and 73 `munmap` calls (strace, supervisor
//! and init together). Each new page then faults again, and a `munmap` in
//! a process with threads may interrupt the other CPUs to flush their TLBs. This allocator keeps what it is given. Small
//! blocks come from one reserved range of address space, carved in size
//! classes, and a freed block goes on its class's list for the next
//! allocation of that class. Nothing is returned to the kernel before the
//! process exits, so its memory stays at its peak, a few hundred KiB.
//!
//! One lock guards the lists, so a child forked while another thread holds
//! it would wait forever. The processes of this program fork only while
//! they have one thread (the supervisor forks the starter first thing, and
//! init forks the command before it starts any thread), or start a child
//! that does not allocate before its exec.
//!
//! Large and over-aligned blocks, blocks beyond the reserved range and
//! every block when the range cannot be reserved come from the C library's
//! allocator. A block is freed by whichever allocator's range holds it.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::UnsafeCell;
use std::ptr;
use std::sync::atomic::{AtomicBool, Ordering};

/// Every block is aligned to this many bytes, as the C library's are.
const MIN_ALIGN: usize = 16;

/// The largest block this allocator serves itself.
const MAX_BLOCK_BYTES: usize = 64 * 1024;

/// Classes of 16 to 256 bytes in steps of 16, then two per power of two:
/// 384, 512, 768 and so on to 64 KiB.
const CLASSES: usize = 32;

/// The address space reserved on the first allocation. Only the pages
/// that blocks use ever get memory.
const RESERVED_BYTES: usize = 64 << 20;

/// Returns the class of a block of `size` bytes (1 to [`MAX_BLOCK_BYTES`]).
fn class_of(size: usize) -> usize {
    if size <= 256 {
        return size.max(1).div_ceil(16) - 1;
    }
    let power = size.next_power_of_two();
    let below_three_quarters = size <= power / 2 + power / 4;
    16 + (power.trailing_zeros() as usize - 9) * 2 + usize::from(!below_three_quarters)
}

/// Returns the size of the blocks of class `class`.
fn class_size(class: usize) -> usize {
    if class < 16 {
        return (class + 1) * 16;
    }
    let power = 512usize << ((class - 16) / 2);
    if (class - 16).is_multiple_of(2) {
        power / 2 + power / 4
    } else {
        power
    }
}

struct Arena {
    /// The reserved range: `start` is 0 until it is reserved.
    start: usize,
    end: usize,
    /// The first byte never handed out.
    next: usize,
    /// The first free block of each class, or null. A free block contains
    /// the address of the next free block of its class.
    free: [*mut u8; CLASSES],
    /// The reservation failed, so every call goes to the C library.
    unavailable: bool,
}

/// See the module's documentation.
pub struct FrontAllocator {
    locked: AtomicBool,
    arena: UnsafeCell<Arena>,
}

// SAFETY: `arena` is read and written only while `locked` is held.
unsafe impl Sync for FrontAllocator {}

impl FrontAllocator {
    pub const fn new() -> Self {
        FrontAllocator {
            locked: AtomicBool::new(false),
            arena: UnsafeCell::new(Arena { start: 0, end: 0, next: 0, free: [ptr::null_mut(); CLASSES], unavailable: false }),
        }
    }

    fn lock(&self) -> Guard<'_> {
        let mut spins = 0u32;
        while self.locked.compare_exchange_weak(false, true, Ordering::Acquire, Ordering::Relaxed).is_err() {
            spins += 1;
            if spins < 64 {
                std::hint::spin_loop();
            } else {
                std::thread::yield_now();
            }
        }
        Guard { allocator: self }
    }

    /// Returns whether `block` lies in the reserved range.
    fn owns(&self, block: *mut u8) -> bool {
        self.lock().arena().contains(block)
    }

    /// Returns a block of class `class`, or null when the range is spent
    /// or cannot be reserved.
    fn take(&self, class: usize) -> *mut u8 {
        let mut guard = self.lock();
        let arena = guard.arena_mut();
        let head = arena.free[class];
        if !head.is_null() {
            // SAFETY: a free block of this class contains the next one's address.
            arena.free[class] = unsafe { head.cast::<*mut u8>().read() };
            return head;
        }
        if arena.start == 0 && !arena.unavailable && !reserve(arena) {
            arena.unavailable = true;
        }
        if arena.unavailable {
            return ptr::null_mut();
        }
        let size = class_size(class);
        if arena.end - arena.next < size {
            return ptr::null_mut();
        }
        let block = arena.next as *mut u8;
        arena.next += size;
        block
    }

    /// Puts `block` on the free list of `class` when it lies in the
    /// reserved range. Returns whether it did.
    fn give_back(&self, block: *mut u8, class: usize) -> bool {
        let mut guard = self.lock();
        let arena = guard.arena_mut();
        if !arena.contains(block) {
            return false;
        }
        // SAFETY: the block is at least 16 bytes, aligned and no longer used.
        unsafe { block.cast::<*mut u8>().write(arena.free[class]) };
        arena.free[class] = block;
        true
    }
}

impl Default for FrontAllocator {
    fn default() -> Self {
        Self::new()
    }
}

impl Arena {
    fn contains(&self, block: *mut u8) -> bool {
        let address = block as usize;
        self.start != 0 && address >= self.start && address < self.end
    }
}

/// Reserves the range. Returns false when the kernel refuses.
fn reserve(arena: &mut Arena) -> bool {
    // SAFETY: a new private anonymous mapping touches no existing memory.
    let start = unsafe {
        libc::mmap(
            ptr::null_mut(),
            RESERVED_BYTES,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
            -1,
            0,
        )
    };
    if start == libc::MAP_FAILED {
        return false;
    }
    arena.start = start as usize;
    arena.end = arena.start + RESERVED_BYTES;
    arena.next = arena.start;
    true
}

struct Guard<'a> {
    allocator: &'a FrontAllocator,
}

impl Guard<'_> {
    fn arena(&self) -> &Arena {
        // SAFETY: the guard holds the lock.
        unsafe { &*self.allocator.arena.get() }
    }

    fn arena_mut(&mut self) -> &mut Arena {
        // SAFETY: the guard holds the lock, and this borrow ends before it drops.
        unsafe { &mut *self.allocator.arena.get() }
    }
}

impl Drop for Guard<'_> {
    fn drop(&mut self) {
        self.allocator.locked.store(false, Ordering::Release);
    }
}

/// Returns the class that serves `layout` here, or `None` for the C library.
fn served_class(layout: Layout) -> Option<usize> {
    (layout.align() <= MIN_ALIGN && layout.size() <= MAX_BLOCK_BYTES).then(|| class_of(layout.size()))
}

// SAFETY: blocks of a class never overlap, are aligned to 16 bytes, at
// least as large as requested and handed out once until freed. Every
// other call goes to the C library's allocator.
unsafe impl GlobalAlloc for FrontAllocator {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if let Some(class) = served_class(layout) {
            let block = self.take(class);
            if !block.is_null() {
                return block;
            }
        }
        System.alloc(layout)
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        if let Some(class) = served_class(layout) {
            let block = self.take(class);
            if !block.is_null() {
                // A reused block still contains its last contents.
                ptr::write_bytes(block, 0, layout.size());
                return block;
            }
        }
        System.alloc_zeroed(layout)
    }

    unsafe fn dealloc(&self, block: *mut u8, layout: Layout) {
        let given_back = served_class(layout).is_some_and(|class| self.give_back(block, class));
        if !given_back {
            System.dealloc(block, layout);
        }
    }

    unsafe fn realloc(&self, block: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let new_layout = Layout::from_size_align_unchecked(new_size, layout.align());
        if let (Some(old), Some(new)) = (served_class(layout), served_class(new_layout)) {
            if old == new && self.owns(block) {
                return block;
            }
        } else if served_class(layout).is_none() && served_class(new_layout).is_none() {
            return System.realloc(block, layout, new_size);
        }
        let moved = self.alloc(new_layout);
        if !moved.is_null() {
            ptr::copy_nonoverlapping(block, moved, layout.size().min(new_size));
            self.dealloc(block, layout);
        }
        moved
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn class_is_smallest_that_fits() {
        for size in 1..=MAX_BLOCK_BYTES {
            let class = class_of(size);
            assert!(class < CLASSES, "size {size} has class {class}");
            assert!(class_size(class) >= size, "size {size} does not fit class {class} of {}", class_size(class));
            assert_eq!(class_size(class) % MIN_ALIGN, 0, "class {class}");
            if class > 0 {
                assert!(class_size(class - 1) < size, "size {size} fits the smaller class {}", class - 1);
            }
        }
        assert_eq!(class_size(CLASSES - 1), MAX_BLOCK_BYTES);
    }

    #[test]
    fn freed_block_is_reused_zeroed() {
        let allocator = FrontAllocator::new();
        let layout = Layout::from_size_align(100, 8).unwrap();
        unsafe {
            let first = allocator.alloc(layout);
            let second = allocator.alloc(layout);
            assert_ne!(first, second);
            assert!(allocator.owns(first));
            assert!(allocator.owns(second));
            assert_eq!(first as usize % MIN_ALIGN, 0);
            first.write_bytes(0xAB, 100);
            allocator.dealloc(first, layout);
            let zeroed = allocator.alloc_zeroed(Layout::from_size_align(97, 16).unwrap());
            assert_eq!(zeroed, first);
            assert!((0..97).all(|i| zeroed.add(i).read() == 0), "a reused block was not zeroed");
        }
    }

    #[test]
    fn large_and_aligned_go_to_libc() {
        let allocator = FrontAllocator::new();
        let large = Layout::from_size_align(MAX_BLOCK_BYTES + 1, 8).unwrap();
        let aligned = Layout::from_size_align(64, 4096).unwrap();
        unsafe {
            let large_block = allocator.alloc(large);
            let aligned_block = allocator.alloc(aligned);
            assert!(!allocator.owns(large_block));
            assert!(!allocator.owns(aligned_block));
            assert_eq!(aligned_block as usize % 4096, 0);
            // A block that the C library allocated is freed there.
            let small = Layout::from_size_align(64, 8).unwrap();
            let foreign = System.alloc(small);
            allocator.dealloc(foreign, small);
            allocator.dealloc(large_block, large);
            allocator.dealloc(aligned_block, aligned);
        }
    }

    #[test]
    fn realloc_keeps_contents() {
        let allocator = FrontAllocator::new();
        unsafe {
            let mut layout = Layout::from_size_align(10, 1).unwrap();
            let mut block = allocator.alloc(layout);
            for i in 0..10 {
                block.add(i).write(i as u8);
            }
            for new_size in [12, 300, 5000, MAX_BLOCK_BYTES + 100, 200_000, 40] {
                let grown = allocator.realloc(block, layout, new_size);
                assert!(!grown.is_null());
                for i in 0..10 {
                    assert_eq!(grown.add(i).read(), i as u8, "byte {i} after a move to {new_size} bytes");
                }
                block = grown;
                layout = Layout::from_size_align(new_size, 1).unwrap();
            }
            assert!(allocator.owns(block));
            allocator.dealloc(block, layout);
        }
    }

    #[test]
    fn threads_get_distinct_blocks() {
        static SHARED: FrontAllocator = FrontAllocator::new();
        let threads: Vec<_> = (0..4)
            .map(|t| {
                std::thread::spawn(move || {
                    let layout = Layout::from_size_align(48, 8).unwrap();
                    let mut live_blocks = Vec::new();
                    for round in 0..2000u32 {
                        let block = unsafe { SHARED.alloc(layout) };
                        unsafe { block.cast::<u32>().write(t * 1_000_000 + round) };
                        live_blocks.push((block as usize, t * 1_000_000 + round));
                        if round % 3 == 0 {
                            let (address, _) = live_blocks.swap_remove(0);
                            unsafe { SHARED.dealloc(address as *mut u8, layout) };
                        }
                    }
                    for (address, value) in &live_blocks {
                        assert_eq!(unsafe { (*address as *const u32).read() }, *value, "a block was handed out twice");
                    }
                    for (address, _) in live_blocks {
                        unsafe { SHARED.dealloc(address as *mut u8, layout) };
                    }
                })
            })
            .collect();
        for thread in threads {
            thread.join().unwrap();
        }
    }
}
