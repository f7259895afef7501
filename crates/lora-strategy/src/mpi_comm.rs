//! [`Comm`] on an Open MPI communicator (rsmpi), every collective with a timeout.
//!
//! MPI itself is started once per process by [`crate::mpi_env::MpiEnv`]; a
//! communicator here is the world or a part of it made by `split`.
//!
//! MPI's blocking collectives cannot give up: a rank whose peer never arrives
//! waits forever. Each collective here is the non-blocking one
//! (`MPI_Iallreduce`, ...), tested until it completes or the timeout passes.
//! The buffers it works on are owned by this module and leaked on a timeout,
//! so that MPI never writes into memory Rust has freed while the job aborts.

use std::time::{Duration, Instant};

use mpi::collective::SystemOperation;
use mpi::datatype::Equivalence;
use mpi::request::{Request, StaticScope};
use mpi::topology::{Color, Communicator, SimpleCommunicator};
use mpi::traits::*;

use crate::comm::Comm;
use crate::{Error, Result};

pub struct MpiComm {
    comm: SimpleCommunicator,
    timeout: Duration,
}

impl MpiComm {
    pub fn new(comm: SimpleCommunicator) -> Self {
        Self {
            comm,
            timeout: Duration::from_secs_f64(crate::DEFAULT_COLLECTIVE_TIMEOUT_S),
        }
    }

    /// Starts a non-blocking collective with `start` on copies of `send` and
    /// of `recv` (MPI's own buffers), waits for it at most the timeout, and
    /// copies the result back into `recv`.
    fn run<T>(
        &self,
        collective: &'static str,
        send: &[T],
        recv: &mut [T],
        start: impl FnOnce(&'static [T], &'static mut [T]) -> Request<'static, [T], StaticScope>,
    ) -> Result<()>
    where
        T: Equivalence + Copy + 'static,
    {
        let bytes = std::mem::size_of_val(send).max(std::mem::size_of_val(recv));
        let send_buf: &'static [T] = Box::leak(send.to_vec().into_boxed_slice());
        let recv_buf: &'static mut [T] = Box::leak(recv.to_vec().into_boxed_slice());
        let (send_ptr, recv_ptr) = (send_buf as *const [T], recv_buf as *mut [T]);
        let mut request = start(send_buf, recv_buf);
        let began = Instant::now();
        loop {
            match request.test() {
                Ok(_) => break,
                Err(pending) => request = pending,
            }
            let waited = began.elapsed();
            if waited > self.timeout {
                // MPI may still write into the buffers: they stay leaked, and
                // the request is never completed (the job is aborted).
                std::mem::forget(request);
                return Err(Error::Timeout {
                    collective,
                    bytes,
                    seconds: self.timeout.as_secs_f64(),
                    rank: self.rank(),
                    size: self.size(),
                });
            }
            // Test in a tight loop for the first millisecond (a collective of
            // ranks in step completes in microseconds); after that the peers
            // are late, and polling every millisecond costs them no core.
            if waited < Duration::from_millis(1) {
                std::thread::yield_now();
            } else {
                std::thread::sleep(Duration::from_micros(500));
            }
        }
        // SAFETY: the request completed, so MPI no longer uses the buffers, and
        // the pointers are the boxes leaked above, not used since.
        let (send_box, recv_box) = unsafe { (Box::from_raw(send_ptr as *mut [T]), Box::from_raw(recv_ptr)) };
        recv.copy_from_slice(&recv_box);
        drop(send_box);
        Ok(())
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
        self.run("all-reduce", &send, buf, |s, r| {
            self.comm
                .immediate_all_reduce_into(StaticScope, s, r, SystemOperation::sum())
        })
    }

    fn all_reduce_f64(&mut self, buf: &mut [f64]) -> Result<()> {
        let send = buf.to_vec();
        self.run("all-reduce", &send, buf, |s, r| {
            self.comm
                .immediate_all_reduce_into(StaticScope, s, r, SystemOperation::sum())
        })
    }

    fn all_gather_u8(&mut self, mine: &[u8], all: &mut [u8]) -> Result<()> {
        self.run("all-gather", mine, all, |s, r| {
            self.comm.immediate_all_gather_into(StaticScope, s, r)
        })
    }

    fn reduce_scatter_f32(&mut self, all: &[f32], mine: &mut [f32]) -> Result<()> {
        self.run("reduce-scatter", all, mine, |s, r| {
            self.comm
                .immediate_reduce_scatter_block_into(StaticScope, s, r, SystemOperation::sum())
        })
    }

    fn all_gather_f32(&mut self, mine: &[f32], all: &mut [f32]) -> Result<()> {
        self.run("all-gather", mine, all, |s, r| {
            self.comm.immediate_all_gather_into(StaticScope, s, r)
        })
    }

    fn reduce_f32(&mut self, buf: &mut [f32]) -> Result<()> {
        let root = self.comm.process_at_rank(0);
        let send = buf.to_vec();
        if self.comm.rank() == 0 {
            self.run("reduce", &send, buf, |s, r| {
                root.immediate_reduce_into_root(StaticScope, s, r, SystemOperation::sum())
            })
        } else {
            // Only the root receives: the others' `buf` stays as it was.
            let mut unused = Vec::new();
            self.run("reduce", &send, &mut unused, |s, _| {
                root.immediate_reduce_into(StaticScope, s, SystemOperation::sum())
            })
        }
    }

    fn broadcast_f32(&mut self, buf: &mut [f32]) -> Result<()> {
        let root = self.comm.process_at_rank(0);
        self.run("broadcast", &[], buf, |_, r| {
            root.immediate_broadcast_into(StaticScope, r)
        })
    }

    fn split(&mut self, colour: u32) -> Result<Box<dyn Comm>> {
        let part = self
            .comm
            .split_by_color(Color::with_value(colour as i32))
            .expect("a defined colour always gives a communicator");
        Ok(Box::new(MpiComm {
            comm: part,
            timeout: self.timeout,
        }))
    }

    fn split_node(&mut self) -> Result<Box<dyn Comm>> {
        Ok(Box::new(MpiComm {
            comm: self.comm.split_shared(self.comm.rank()),
            timeout: self.timeout,
        }))
    }

    fn set_timeout(&mut self, timeout: Duration) {
        self.timeout = timeout;
    }
}
