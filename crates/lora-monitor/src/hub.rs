//! The shared state between the training thread (which records) and the
//! dashboard's connections (which read): a recorder behind a mutex, and a
//! condition variable that wakes live viewers when a point arrives.

use std::sync::{Condvar, Mutex, MutexGuard};
use std::time::Duration;

use crate::record::Recorder;

pub struct Hub {
    state: Mutex<State>,
    wake: Condvar,
}

pub struct State {
    pub recorder: Recorder,
}

impl Hub {
    pub fn new(smoothing: f64) -> Self {
        Self {
            state: Mutex::new(State {
                recorder: Recorder::new(smoothing),
            }),
            wake: Condvar::new(),
        }
    }

    /// The state; a panic in another holder does not make the figures unreadable.
    pub fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Changes the state and wakes every viewer.
    pub fn update<R>(&self, f: impl FnOnce(&mut State) -> R) -> R {
        let r = f(&mut self.lock());
        self.wake.notify_all();
        r
    }

    /// Points from `from` on as the event stream's JSON messages, waiting up
    /// to `timeout` for one to arrive. Also says whether the run has finished.
    pub fn wait_from(&self, from: usize, timeout: Duration) -> (Vec<String>, bool) {
        let guard = self.lock();
        let (guard, _) = self
            .wake
            .wait_timeout_while(guard, timeout, |s| {
                s.recorder.history.len() <= from && !s.recorder.finished
            })
            .unwrap_or_else(|e| e.into_inner());
        let rec = &guard.recorder;
        let new = rec
            .history
            .get(from..)
            .map(|ps| ps.iter().map(|p| rec.to_json(p)).collect())
            .unwrap_or_default();
        (new, rec.finished)
    }
}
