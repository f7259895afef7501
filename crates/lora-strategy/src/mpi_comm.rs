//! [`Comm`] on an Open MPI communicator (rsmpi).
//!
//! MPI itself is started once per process by [`crate::mpi_env::MpiEnv`]; a
//! communicator here is the world or a part of it made by `split`.

use mpi::collective::SystemOperation;
use mpi::topology::{Color, Communicator, SimpleCommunicator};
use mpi::traits::*;

use crate::Result;
use crate::comm::Comm;

pub struct MpiComm {
    comm: SimpleCommunicator,
}

impl MpiComm {
    pub fn new(comm: SimpleCommunicator) -> Self {
        Self { comm }
    }
}

// SAFETY: the handle is an Open MPI communicator; MPI is initialised with
// `MPI_THREAD_SERIALIZED` (`mpi_env`), so any thread may call MPI as long as
// no two do at once. A `MpiComm` is owned by one strategy, used through
// `&mut self`, and so by one thread at a time.
unsafe impl Send for MpiComm {}

impl Comm for MpiComm {
    fn rank(&self) -> usize {
        self.comm.rank() as usize
    }

    fn size(&self) -> usize {
        self.comm.size() as usize
    }

    fn all_reduce_f32(&mut self, buf: &mut [f32]) -> Result<()> {
        let send = buf.to_vec();
        self.comm.all_reduce_into(&send[..], buf, SystemOperation::sum());
        Ok(())
    }

    fn all_reduce_f64(&mut self, buf: &mut [f64]) -> Result<()> {
        let send = buf.to_vec();
        self.comm.all_reduce_into(&send[..], buf, SystemOperation::sum());
        Ok(())
    }

    fn all_gather_u8(&mut self, mine: &[u8], all: &mut [u8]) -> Result<()> {
        self.comm.all_gather_into(mine, all);
        Ok(())
    }

    fn reduce_scatter_f32(&mut self, all: &[f32], mine: &mut [f32]) -> Result<()> {
        self.comm.reduce_scatter_block_into(all, mine, SystemOperation::sum());
        Ok(())
    }

    fn all_gather_f32(&mut self, mine: &[f32], all: &mut [f32]) -> Result<()> {
        self.comm.all_gather_into(mine, all);
        Ok(())
    }

    fn reduce_f32(&mut self, buf: &mut [f32]) -> Result<()> {
        let root = self.comm.process_at_rank(0);
        if self.comm.rank() == 0 {
            let send = buf.to_vec();
            root.reduce_into_root(&send[..], buf, SystemOperation::sum());
        } else {
            root.reduce_into(buf, SystemOperation::sum());
        }
        Ok(())
    }

    fn broadcast_f32(&mut self, buf: &mut [f32]) -> Result<()> {
        self.comm.process_at_rank(0).broadcast_into(buf);
        Ok(())
    }

    fn split(&mut self, colour: u32) -> Result<Box<dyn Comm>> {
        let part = self
            .comm
            .split_by_color(Color::with_value(colour as i32))
            .expect("a defined colour always gives a communicator");
        Ok(Box::new(MpiComm::new(part)))
    }

    fn split_node(&mut self) -> Result<Box<dyn Comm>> {
        Ok(Box::new(MpiComm::new(self.comm.split_shared(self.comm.rank()))))
    }
}
