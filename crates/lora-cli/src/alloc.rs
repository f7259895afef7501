//! The allocator of every binary that links this crate.
//!
//! A training step allocates and frees tensors of several megabytes. glibc's
//! malloc maps and unmaps them each time, and a profile showed a third of the
//! step spent by the kernel zeroing fresh pages. mimalloc with purging turned
//! off keeps freed memory for the next step: the same run took 22 s instead of
//! 38 s (see ARCHITECTURE.md, "Performance notes").

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

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
