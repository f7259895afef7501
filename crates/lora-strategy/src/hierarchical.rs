//! `hierarchical`: the gradients are reduced within a node (ranks that share
//! memory, `MPI_COMM_TYPE_SHARED`), all-reduced across the nodes by one
//! leader each, and broadcast within each node. Only the leaders use the
//! network; the update is the one-process update.
//!
//! Tests simulate nodes on one machine: `LORA_SIMULATED_NODES=K` puts ranks
//! `[i * world / K, (i + 1) * world / K)` on node `i` instead of asking MPI.

use lora_core::config::Component;
use lora_core::diag::Diagnostics;
use lora_core::strategy::{StepSums, Strategy};
use serde::Deserialize;

use crate::StrategyEntry;
use crate::base::{Base, from_base};
use crate::comm::{Comm, Meter};

/// Simulated nodes for tests (see the module's documentation).
pub const SIMULATED_NODES_ENV: &str = "LORA_SIMULATED_NODES";

pub struct Hierarchical {
    base: Base,
    node: Meter,
    /// Node leaders (rank 0 of each node) together; `None` on the other ranks.
    leaders: Option<Meter>,
}

impl Hierarchical {
    /// `nodes`: simulated nodes, or `None` for the nodes MPI reports.
    pub fn new(comm: Box<dyn Comm>, nodes: Option<usize>) -> crate::Result<Self> {
        let mut world = Meter::new(comm);
        let node = match nodes {
            Some(k) => {
                let k = k.clamp(1, world.size());
                world.split((world.rank() * k / world.size()) as u32)?
            }
            None => world.split_node()?,
        };
        let node = Meter::new(node);
        let leader = node.rank() == 0;
        let leaders = world.split(if leader { 0 } else { 1 })?;
        Ok(Self {
            base: Base::new(world),
            leaders: leader.then(|| Meter::new(leaders)),
            node,
        })
    }

    /// Nodes and ranks per node, as this rank sees them.
    pub fn shape(&self) -> (Option<usize>, usize) {
        (self.leaders.as_ref().map(Meter::size), self.node.size())
    }
}

impl Strategy for Hierarchical {
    fn name(&self) -> &str {
        "hierarchical"
    }
    from_base!(except rank_figures);
    fn rank_figures(&mut self, step_s: f64) -> lora_core::Result<Vec<lora_core::events::RankFigures>> {
        // The node and leader traffic is this rank's traffic too.
        let (nb, ns) = self.node.take();
        let (lb, ls) = self.leaders.as_mut().map_or((0.0, 0.0), Meter::take);
        let mut figures = self.base.rank_figures(step_s)?;
        let mine: Vec<f64> = vec![nb + lb, ns + ls];
        // Every rank learns every rank's node and leader figures.
        let mut all = vec![0.0f64; 2 * figures.len()];
        all[2 * self.base.meter.rank()..2 * self.base.meter.rank() + 2].copy_from_slice(&mine);
        self.base.meter.all_reduce_f64(&mut all)?;
        self.base.meter.take();
        for f in &mut figures {
            f.bytes_sent += all[2 * f.rank];
            f.comm_s += all[2 * f.rank + 1];
        }
        Ok(figures)
    }

    fn reduce(&mut self, sums: &mut StepSums) -> lora_core::Result<()> {
        self.node.reduce_f32(&mut sums.grads)?;
        if let Some(leaders) = &mut self.leaders {
            leaders.all_reduce_f32(&mut sums.grads)?;
        }
        self.node.broadcast_f32(&mut sums.grads)?;
        Ok(self.base.reduce_scalars(sums)?)
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct NoOptions {}

fn build(c: &Component, comm: Box<dyn Comm>) -> Result<Box<dyn Strategy>, Diagnostics> {
    let _: NoOptions = c.deserialize()?;
    let nodes = std::env::var(SIMULATED_NODES_ENV).ok().and_then(|v| v.parse().ok());
    Hierarchical::new(comm, nodes)
        .map(|h| Box::new(h) as Box<dyn Strategy>)
        .map_err(|e| lora_core::diag::Diagnostic::error("strategy::communicator", e.to_string()).into())
}

inventory::submit! {
    StrategyEntry { name: "hierarchical", exact: true, summary: "exact: reduce within each node, all-reduce across node leaders, broadcast within the node", build }
}
