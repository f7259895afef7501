//! The processes of a run: one, or the ranks of an `mpirun` job.
//!
//! `mpirun -np N lora run pipeline.toml` starts N copies; each finds its
//! rank here (MPI, behind the `mpi` feature) and builds the pipeline's
//! `[strategy]` over the job's communicator. `lora run --nproc N` starts
//! that `mpirun` itself. The same pipeline runs on one process: the strategy
//! then has a group of one, and without a `[strategy]` table the loop's
//! single-process strategy is used (on N processes, `ddp`).

use std::path::Path;
use std::process::Command;

use lora_core::config::Component;
use lora_core::strategy::Strategy;
use lora_core::{Error, Result};
use lora_strategy::ThreadComm;

/// Open MPI's launcher.
pub const MPIRUN: &str = "mpirun";
/// Extra arguments for `mpirun` (`lora run --nproc`), split on whitespace.
pub const MPIRUN_ARGS_ENV: &str = "LORA_MPIRUN_ARGS";

pub struct Processes {
    rank: usize,
    world: usize,
    #[cfg(feature = "mpi")]
    env: Option<lora_strategy::mpi_env::MpiEnv>,
}

impl Processes {
    /// One process, no MPI.
    pub fn single() -> Self {
        Self {
            rank: 0,
            world: 1,
            #[cfg(feature = "mpi")]
            env: None,
        }
    }

    /// The processes of this job: MPI's world when `mpirun` started this one.
    pub fn from_launcher() -> Result<Self> {
        let launched = ["OMPI_COMM_WORLD_SIZE", "PMIX_RANK"]
            .iter()
            .any(|k| std::env::var_os(k).is_some());
        if !launched {
            return Ok(Self::single());
        }
        #[cfg(feature = "mpi")]
        {
            let env = lora_strategy::mpi_env::MpiEnv::init()
                .ok_or_else(|| Error::Other("MPI could not start with MPI_THREAD_SERIALIZED".into()))?;
            Ok(Self {
                rank: env.rank(),
                world: env.size(),
                env: Some(env),
            })
        }
        #[cfg(not(feature = "mpi"))]
        Err(Error::Other(
            "this process was started by mpirun, but lora was built without MPI: build lora-cli with `--features mpi` (needs libopenmpi-dev and libclang-dev)".into(),
        ))
    }

    pub fn rank(&self) -> usize {
        self.rank
    }

    pub fn world(&self) -> usize {
        self.world
    }

    /// The strategy of `[strategy]` (or the default) over this job's processes.
    pub fn strategy(&self, table: Option<&Component>) -> Result<Box<dyn Strategy>> {
        let comm: Box<dyn lora_strategy::Comm> = self.comm();
        match table {
            Some(c) => lora_strategy::build(c, comm).map_err(Error::Invalid),
            None if self.world == 1 => Ok(Box::new(lora_train::strategy::SingleProcess)),
            None => Ok(Box::new(lora_strategy::ddp::Ddp::new(comm, true))),
        }
    }

    fn comm(&self) -> Box<dyn lora_strategy::Comm> {
        #[cfg(feature = "mpi")]
        if let Some(env) = &self.env {
            return env.world();
        }
        Box::new(ThreadComm::group(1).remove(0))
    }

    /// A failure on one rank ends every rank (`MPI_Abort`): the others would
    /// otherwise wait in their next collective. In one process, nothing.
    pub fn abort_others(&self, code: i32) {
        #[cfg(feature = "mpi")]
        if let Some(env) = &self.env
            && self.world > 1
        {
            env.abort(code);
        }
        let _ = code;
    }
}

/// Whether this process runs as root (Open MPI refuses that without consent).
fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status").is_ok_and(|s| {
        s.lines()
            .find_map(|l| l.strip_prefix("Uid:"))
            .and_then(|u| u.split_whitespace().next())
            == Some("0")
    })
}

/// `lora run --nproc N ARGS`: `mpirun -np N <this binary> run ARGS`, waited
/// for; returns its exit code. `--oversubscribe` is added when N exceeds the
/// cores, and root's consent through Open MPI's variables when run as root.
pub fn spawn(nproc: usize, args: &[String]) -> Result<i32> {
    let exe = std::env::current_exe().map_err(|e| Error::Other(format!("cannot find the lora binary: {e}")))?;
    let mut cmd = Command::new(MPIRUN);
    cmd.arg("-np").arg(nproc.to_string());
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    if nproc > cores {
        cmd.arg("--oversubscribe");
    }
    if let Ok(extra) = std::env::var(MPIRUN_ARGS_ENV) {
        cmd.args(extra.split_whitespace());
    }
    if is_root() {
        cmd.env("OMPI_ALLOW_RUN_AS_ROOT", "1")
            .env("OMPI_ALLOW_RUN_AS_ROOT_CONFIRM", "1");
    }
    cmd.arg(Path::new(&exe)).arg("run").args(args);
    let status = cmd.status().map_err(|e| {
        Error::Other(format!(
            "cannot start `{MPIRUN}` ({e}); install Open MPI (Debian: openmpi-bin) or start the ranks with mpirun yourself"
        ))
    })?;
    Ok(status.code().unwrap_or(1))
}
