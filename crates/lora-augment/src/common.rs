//! What every operation shares: its probability, sizes written as `28` or
//! `[28, 32]`, range checks that point at the offending value, and sampling.

use lora_core::config::Component;
use lora_core::diag::{Diagnostic, Diagnostics};
use lora_core::init::SeededRng;
use rand::Rng;

/// Collects range problems, each at its key's value.
pub struct Checks<'a> {
    component: &'a Component,
    diags: Diagnostics,
}

impl<'a> Checks<'a> {
    pub fn new(component: &'a Component) -> Self {
        Self {
            component,
            diags: Diagnostics::default(),
        }
    }

    pub fn require(&mut self, ok: bool, key: &str, message: impl Into<String>) {
        if !ok {
            self.diags.push(
                Diagnostic::error("augment::invalid-value", message.into()).at(self.component.value_location(key)),
            );
        }
    }

    /// `0 <= p <= 1`.
    pub fn probability(&mut self, p: f32) {
        self.require(
            (0.0..=1.0).contains(&p),
            "p",
            format!("p ({p}) is outside the valid range 0 <= p <= 1"),
        );
    }

    /// `lo <= hi`, both within `[min, max]`.
    pub fn range(&mut self, key: &str, [lo, hi]: [f32; 2], min: f32, max: f32) {
        self.require(
            lo <= hi && lo >= min && hi <= max,
            key,
            format!("{key} ([{lo}, {hi}]) must be an interval within [{min}, {max}]"),
        );
    }

    /// `size = [height, width]`, both at least 1.
    pub fn positive_size(&mut self, key: &str, [h, w]: [usize; 2]) {
        self.require(
            h > 0 && w > 0,
            key,
            format!("{key} ([{h}, {w}]) must be at least [1, 1]"),
        );
    }

    pub fn finish<T>(self, value: T) -> Result<T, Diagnostics> {
        if self.diags.has_errors() {
            Err(self.diags)
        } else {
            Ok(value)
        }
    }
}

/// Draws whether an operation with probability `p` applies. The draw is always
/// made, so the streams of later operations do not depend on `p`.
pub fn fires(p: f32, rng: &mut SeededRng) -> bool {
    let u: f32 = rng.random();
    u < p
}

/// Uniform in `[lo, hi]`; exactly `lo` when the interval is empty.
pub fn uniform(lo: f32, hi: f32, rng: &mut SeededRng) -> f32 {
    let u: f32 = rng.random();
    lo + (hi - lo) * u
}

pub fn default_one() -> f32 {
    1.0
}

pub fn default_half() -> f32 {
    0.5
}
