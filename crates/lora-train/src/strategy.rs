//! The single-process strategy: nothing to combine, the optimizer updates
//! every parameter. Distributed strategies implement the same seam
//! ([`lora_core::strategy::Strategy`]).

use lora_core::Result;
use lora_core::strategy::{StepSums, Strategy};

#[derive(Debug, Default, Clone, Copy)]
pub struct SingleProcess;

impl Strategy for SingleProcess {
    fn name(&self) -> &str {
        "single-process"
    }

    fn reduce(&mut self, _sums: &mut StepSums) -> Result<()> {
        Ok(())
    }
}
