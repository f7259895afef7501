//! A closed stdout or stderr (`lora rules | head`) ends the process quietly, as
//! it ends `cat`: the default action of SIGPIPE, which Rust programs otherwise
//! ignore (and then panic in `println!` on the write error).
//!
//! The one exception is while the dashboard serves: a browser that goes away
//! must not kill a training run, so SIGPIPE is ignored again for those runs
//! (and for `bench --monitoring`), and their writes to a closed pipe are errors.

#[cfg(unix)]
mod sys {
    unsafe extern "C" {
        /// POSIX `signal(2)`; the handler is passed as a plain address (SIG_DFL, SIG_IGN).
        pub fn signal(signum: i32, handler: usize) -> usize;
    }
    /// SIGPIPE is 13 on every Unix that Rust targets.
    pub const SIGPIPE: i32 = 13;
    pub const SIG_DFL: usize = 0;
    pub const SIG_IGN: usize = 1;
}

/// A write to a closed pipe ends the process silently (like `cat`).
pub fn end_quietly_on_closed_pipes() {
    #[cfg(unix)]
    // Safety: setting the default disposition of one signal; no handler code runs.
    unsafe {
        sys::signal(sys::SIGPIPE, sys::SIG_DFL);
    }
}

/// A write to a closed pipe or socket is an error the program handles (Rust's default).
pub fn survive_closed_pipes() {
    #[cfg(unix)]
    // Safety: as above.
    unsafe {
        sys::signal(sys::SIGPIPE, sys::SIG_IGN);
    }
}
