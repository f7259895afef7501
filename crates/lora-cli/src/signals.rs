//! SIGINT and SIGTERM during training: the first sets a flag that the loop
//! reads at the next step boundary (it writes a checkpoint and stops); a second
//! one ends the process at once, as an impatient Ctrl-C expects.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use signal_hook::consts::{SIGINT, SIGTERM};

/// Which signal asked the run to stop, if one did.
#[derive(Clone)]
pub struct StopRequest {
    signal: Arc<AtomicUsize>,
}

impl StopRequest {
    /// Installs the handlers. Before this, a signal ends the process as usual
    /// (nothing has been trained yet).
    pub fn install() -> std::io::Result<Self> {
        let signal = Arc::new(AtomicUsize::new(0));
        let asked = Arc::new(AtomicBool::new(false));
        for sig in [SIGINT, SIGTERM] {
            // Registered first, so it runs first: exits on the second signal only.
            signal_hook::flag::register_conditional_shutdown(sig, 128 + sig, asked.clone())?;
            signal_hook::flag::register(sig, asked.clone())?;
            signal_hook::flag::register_usize(sig, signal.clone(), sig as usize)?;
        }
        Ok(Self { signal })
    }

    /// The signal's name, once one arrived.
    pub fn requested(&self) -> Option<String> {
        match self.signal.load(Ordering::Relaxed) {
            0 => None,
            s if s == SIGTERM as usize => Some("SIGTERM".into()),
            _ => Some("SIGINT".into()),
        }
    }
}
