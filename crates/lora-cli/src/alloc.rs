//! The allocator of every binary that links this crate.
//!
//! A training step allocates and frees tensors of several megabytes. glibc's
//! malloc maps and unmaps them each time, and a profile showed a third of the
//! step spent by the kernel zeroing fresh pages. mimalloc with purging turned
//! off keeps freed memory for the next step: the same run took 22 s instead of
//! 38 s (see ARCHITECTURE.md, "Performance notes").

//!
//! Dynamic plugins allocate with the C library's malloc (a `cdylib` has its own
//! Rust global allocator, the system one), and objects cross the boundary both
//! ways: a `String` a plugin made is freed by the host, a value the host made is
//! dropped in the plugin. So before the first plugin is loaded,
//! [`share_with_plugins`] switches new allocations to the system allocator, and
//! from then on every free goes to whichever allocator owns the pointer
//! (`mi_is_in_heap_region`). Runs without plugins keep mimalloc's speed and pay
//! nothing: the ownership check only starts after the switch.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicBool, Ordering};

#[global_allocator]
static GLOBAL: HostAllocator = HostAllocator;

/// New allocations go to the system allocator (set once, before loading plugins).
static SHARED_WITH_PLUGINS: AtomicBool = AtomicBool::new(false);

/// Switches to the allocator that plugins use; idempotent.
pub fn share_with_plugins() {
    SHARED_WITH_PLUGINS.store(true, Ordering::SeqCst);
}

/// mimalloc until plugins are loaded; afterwards the system allocator, with frees routed by owner.
pub struct HostAllocator;

fn shared() -> bool {
    SHARED_WITH_PLUGINS.load(Ordering::Relaxed)
}

fn is_mimalloc(ptr: *mut u8) -> bool {
    // SAFETY: a query on mimalloc's own region table; any pointer value is allowed.
    !shared() || unsafe { libmimalloc_sys::mi_is_in_heap_region(ptr.cast()) }
}

// SAFETY: each branch forwards to an allocator that upholds GlobalAlloc's contract, and
// every pointer is freed or resized by the allocator that produced it.
unsafe impl GlobalAlloc for HostAllocator {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        unsafe {
            if shared() {
                System.alloc(layout)
            } else {
                mimalloc::MiMalloc.alloc(layout)
            }
        }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        unsafe {
            if shared() {
                System.alloc_zeroed(layout)
            } else {
                mimalloc::MiMalloc.alloc_zeroed(layout)
            }
        }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe {
            if is_mimalloc(ptr) {
                mimalloc::MiMalloc.dealloc(ptr, layout)
            } else {
                System.dealloc(ptr, layout)
            }
        }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        unsafe {
            if !is_mimalloc(ptr) {
                return System.realloc(ptr, layout, new_size);
            }
            if !shared() {
                return mimalloc::MiMalloc.realloc(ptr, layout, new_size);
            }
            // A mimalloc block grown after the switch moves to the system allocator.
            let new_layout = Layout::from_size_align_unchecked(new_size, layout.align());
            let fresh = System.alloc(new_layout);
            if !fresh.is_null() {
                std::ptr::copy_nonoverlapping(ptr, fresh, layout.size().min(new_size));
                mimalloc::MiMalloc.dealloc(ptr, layout);
            }
            fresh
        }
    }
}

/// `mi_option_purge_delay` in mimalloc.h (v2 and v3, which the crate builds by default): the option after `eager_commit_delay` (14).
const MI_OPTION_PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;

/// Never return freed memory to the operating system (purge delay -1).
pub fn keep_freed_memory() {
    // SAFETY: mi_option_get/set only read and write mimalloc's option table.
    unsafe {
        // The default delay is 1000 ms in mimalloc v3 (10 ms in v2); anything
        // else means the index moved, so leave it alone.
        if matches!(libmimalloc_sys::mi_option_get(MI_OPTION_PURGE_DELAY), 10 | 1000) {
            libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, -1);
        }
    }
}
