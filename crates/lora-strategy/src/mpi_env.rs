//! MPI for a run started by `mpirun`: initialised once, finalised when the
//! run's [`MpiEnv`] is dropped, aborted on a rank's failure so that no rank
//! waits forever in a collective.

use mpi::Threading;
use mpi::environment::Universe;
use mpi::topology::Communicator;

use crate::comm::Comm;
use crate::mpi_comm::MpiComm;

/// The environment variables Open MPI's launcher sets on every rank.
const LAUNCHED: [&str; 2] = ["OMPI_COMM_WORLD_SIZE", "PMIX_RANK"];

/// Whether this process was started by `mpirun` (and so must join its world).
pub fn launched() -> bool {
    LAUNCHED.iter().any(|k| std::env::var_os(k).is_some())
}

pub struct MpiEnv {
    universe: Universe,
}

impl MpiEnv {
    /// Starts MPI with `MPI_THREAD_SERIALIZED` (the loop may run on any one
    /// thread); `None` when it was started already or offers less.
    pub fn init() -> Option<Self> {
        let (universe, level) = mpi::initialize_with_threading(Threading::Serialized)?;
        (level >= Threading::Serialized).then_some(Self { universe })
    }

    pub fn rank(&self) -> usize {
        self.universe.world().rank() as usize
    }

    pub fn size(&self) -> usize {
        self.universe.world().size() as usize
    }

    /// A communicator over every rank of the job (a duplicate of the world, so
    /// that the strategy's collectives never mix with anything else).
    pub fn world(&self) -> Box<dyn Comm> {
        Box::new(MpiComm::new(self.universe.world().duplicate()))
    }

    /// Ends every rank of the job with `code` (`MPI_Abort`): a rank that
    /// failed must not leave the others waiting in a collective.
    pub fn abort(&self, code: i32) -> ! {
        self.universe.world().abort(code)
    }
}
