//! Thread pools that do not spin against each other.
//!
//! A training step alternates gemm (on rayon's pool) with candle's element-wise
//! operations (on candle's own barrier pool). After each job candle's worker
//! spins for 25,000 pause instructions (about a millisecond here) before it
//! sleeps, so on a machine with few cores it takes a core away from the gemm
//! that follows: a profile of the b8 x 64 step had 14% of its samples in that
//! loop. A short spin keeps the hand-off fast and gives the core back: the
//! step took 0.22-0.26 s instead of 0.27-0.30 s (alternated, quiet machine),
//! and b32 x 128 was unchanged (see ARCHITECTURE.md, "Speed of the training step").

/// candle's variable for its barrier pool's spin limit.
const SPIN_LIMIT_VAR: &str = "CANDLE_BARRIER_POOL_SPIN_LIMIT";

/// Spins before candle's idle worker sleeps, unless the user set the variable.
const SPIN_LIMIT: &str = "50";

/// Sets the spin limit of candle's barrier pool (read when the pool starts).
/// Call at the start of `main`, before any other thread exists.
pub fn short_spins() {
    if std::env::var_os(SPIN_LIMIT_VAR).is_none() {
        // SAFETY: called first thing in `main`, while the process has one thread:
        // nothing reads the environment concurrently.
        unsafe { std::env::set_var(SPIN_LIMIT_VAR, SPIN_LIMIT) };
    }
}
